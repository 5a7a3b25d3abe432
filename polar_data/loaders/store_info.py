"""What a finished store says about itself, read from its ``manifest.json`` (local path or any
fsspec URL), so a loader or a model can be set up without touching the data."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from polar_data.schema import SPLITS, StoreError
from polar_data.store.manifest import MANIFEST, SEAL, load_manifest


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


@dataclass(frozen=True)
class StoreInfo:
    """Summary of a store: ``base`` (folder or URL holding manifest.json, zarr/, wds/)."""

    base: str
    window_len: int
    clip_len: int
    pixel_mean: float
    pixel_std: float
    sessions: tuple[str, ...]           # sorted; a batch's ``session`` indexes this
    n_units: tuple[int, ...]
    unit_ids: tuple[tuple[int, ...], ...]  # per session, the recording's unit ids
    mean_rates: tuple[tuple[float, ...], ...]  # spikes per bin, per unit
    rate_hz: float
    frame_hw: tuple[int, int]
    ppd: float                          # crop pixels per degree
    has_true_rate: bool
    shards: tuple[dict, ...]            # manifest entries (name, split, n_samples, ...)
    n_windows: dict                     # split -> valid windows over all sessions
    n_targets: dict                     # split -> clip targets owned over all shards

    zarr_files: dict                    # relative path -> {bytes, sha256} of the Zarr store
    seal: str = ""                      # the manifest's own checksum: which build this is

    @classmethod
    def load(cls, base: str, storage_options: dict | None = None) -> StoreInfo:
        """Read and check ``<base>/manifest.json`` (see :func:`.manifest.load_manifest`)."""
        url = join(str(base), "manifest.json")
        manifest = load_manifest(base, storage_options)  # schema checked there
        names = tuple(sorted(manifest["sessions"]))
        sess = [manifest["sessions"][n] for n in names]
        rates = {s["rate_hz"] for s in sess}
        hws = {tuple(s["frame_hw"]) for s in sess}
        ppds = {round(s["ppd"], 6) for s in sess}
        if len(rates) != 1 or len(hws) != 1 or len(ppds) != 1:
            raise StoreError(f"{url}: sessions differ in rate {rates}, frame size {hws} or "
                             f"pixels per degree {ppds}; one store holds one geometry")
        shards = tuple(manifest["shards"])
        return cls(
            base=str(base),
            window_len=int(manifest["window_len"]),
            clip_len=int(manifest["clip_len"]),
            pixel_mean=float(manifest["pixel_stats"]["mean"]),
            pixel_std=float(manifest["pixel_stats"]["std"]),
            sessions=names,
            n_units=tuple(int(s["n_units"]) for s in sess),
            unit_ids=tuple(tuple(int(u) for u in s["unit_ids"]) for s in sess),
            mean_rates=tuple(tuple(float(r) for r in s["mean_rate"]) for s in sess),
            rate_hz=float(rates.pop()),
            frame_hw=hws.pop(),
            ppd=float(ppds.pop()),
            has_true_rate=all(s["has_true_rate"] for s in sess),
            shards=shards,
            n_windows={sp: sum(s["n_windows"][sp] for s in sess) for sp in SPLITS},
            n_targets={sp: sum(e["n_targets"] for e in shards if e["split"] == sp)
                       for sp in SPLITS},
            zarr_files=manifest["zarr_files"],
            seal=str(manifest.get(SEAL, "")),
        )

    def shard_urls(self, split: str) -> list[tuple[str, dict]]:
        """(URL, manifest entry) of every shard of ``split``, in manifest order."""
        return [(join(join(self.base, "wds"), e["name"]), e) for e in self.shards
                if e["split"] == split]


class StoreWatch:
    """Notices that a local store changed under a reader: :meth:`check` takes one ``stat``
    of ``manifest.json`` and, only when that file is not the one it saw last (another inode,
    time or size), re-reads it and compares its seal with the one the reader opened. A
    rebuild withdraws the manifest before it changes any file and writes a new one at the
    end, so a check made after a read sees any change that read could have seen. Raises
    StoreError naming the store."""

    def __init__(self, base: str, seal: str):
        self.path, self.seal, self._seen = Path(base) / MANIFEST, seal, None

    def check(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self._changed("its manifest was withdrawn: a rebuild is under way or was "
                                "interrupted") from None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        try:
            seal = json.loads(self.path.read_bytes()).get(SEAL)
        except (OSError, ValueError, AttributeError):
            seal = None
        if seal != self.seal:
            raise self._changed("it was rebuilt: its manifest is another one now")
        self._seen = seen

    def _changed(self, why: str) -> StoreError:
        return StoreError(f"{self.path.parent}: the store changed while reading ({why}); what "
                          "was read may mix two builds. Start again once its build has "
                          "finished.")
