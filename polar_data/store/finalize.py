"""Stage 3, ``finalize``: remove what this build wrote that no current source produces, write
the Zarr root group's attributes and ``manifest.json`` (checksums of everything: frame chunks
and shards were hashed as they were written, their digests kept in ``parts/``; the other
files, all small, are read and hashed here). Files the build did not write are left alone and
counted (:func:`unowned_files`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from polar_data.config.data_config import DataConfig
from polar_data.schema import CONVENTIONS, SCHEMA_VERSION, SPLITS
from polar_data.store.build_lock import LOCK_NAME
from polar_data.store.checksum import sha256_file
from polar_data.store.manifest import (
    MANIFEST,
    WITHDRAWN,
    seal,
    seal_key,
    withdraw,
    write_json_atomic,
)
from polar_data.store.records import part_path, written_groups, written_shards
from polar_data.store.safe_names import inside, session_folder_name
from polar_data.store.settings import BuildError
from polar_data.store.shard_stage import sessions_root, shard_done, shard_plan
from polar_data.store.zarr_groups import open_root, stats_from_sums


def _remove_stale(out_dir: Path, names: list[str], shard_names: set[str]) -> None:
    """Delete the session groups and shards this build wrote that no current source
    produces (a source removed, or renamed by a change in place), so the manifest lists
    exactly what is there; files the build did not write are left alone. The manifest is
    withdrawn before anything is deleted."""
    zdir, wdir = out_dir / "zarr", out_dir / "wds"
    groups = [zdir / g for g in sorted(written_groups(out_dir) - set(names))
              if (zdir / g).is_dir()]
    known = written_shards(out_dir) | shard_names
    shards = [wdir / n for n in sorted(known - shard_names) if (wdir / n).is_file()]
    partials = [wdir / f"{n}.partial" for n in sorted(known) if (wdir / f"{n}.partial")
                .is_file()]
    if groups or shards or partials:
        withdraw(out_dir)
    for p in groups:
        shutil.rmtree(inside(out_dir, p))
    for p in shards + partials:
        inside(out_dir, p).unlink()
    for p in shards:
        (out_dir / "parts" / f"shard-{p.name}.json").unlink(missing_ok=True)
    partial = out_dir / ".partial"  # the build's scratch folder (sessions being ingested)
    if partial.exists():
        shutil.rmtree(partial)
    for p in out_dir.glob(LOCK_NAME + ".*"):  # array-job slots (finalize holds the folder)
        p.unlink()


# top-level entries of a store that are the build's own (``sessions/``: the demo's sources)
_OWN_ENTRIES = {"build.json", MANIFEST, WITHDRAWN, "parts", ".partial", "zarr", "wds",
                "sessions"}


def unowned_files(out_dir: Path, manifest: dict) -> list[Path]:
    """Files in the store ``out_dir`` that the build did not write and leaves alone: in
    ``zarr/`` and ``wds/`` those the manifest does not name, beside them anything that is
    not the build's own."""
    out_dir = Path(out_dir)
    zdir, listed = out_dir / "zarr", set(manifest.get("zarr_files", {}))
    shards = {e["name"] for e in manifest.get("shards", [])}
    found = [p for p in sorted(zdir.rglob("*"))
             if p.is_file() and p.relative_to(zdir).as_posix() not in listed]
    found += [p for p in sorted((out_dir / "wds").glob("*"))
              if p.name not in shards and not p.name.endswith(".partial")]
    for p in sorted(out_dir.iterdir()):
        if p.name in _OWN_ENTRIES or p.name.startswith(LOCK_NAME) or p.name.endswith(
                ".partial"):
            continue
        found += [p] if not p.is_dir() else [q for q in sorted(p.rglob("*")) if q.is_file()]
    return found


def finalize(out_dir: Path, sources: list[str], cfg: DataConfig, window_len: int) -> dict:
    """Write the Zarr root group attributes and ``manifest.json``; returns the manifest."""
    names, digests, plan = shard_plan(out_dir, sources, cfg, window_len)
    shards = []
    for n, _, key in plan:
        path = out_dir / "wds" / n
        if not shard_done(out_dir, n, key):
            raise BuildError(f"{path}: shard missing or made from other sources; run "
                             "--stage shards for every job")
        entry = json.loads((out_dir / "parts" / f"shard-{n}.json").read_text())
        size = path.stat().st_size
        if entry.get("bytes") != size or not entry.get("sha256"):  # not hashed when written
            entry.update(bytes=size, sha256=sha256_file(path))
        shards.append(entry)
    _remove_stale(out_dir, names, {n for n, _, _ in plan})
    sessions = {}
    root_r = sessions_root(out_dir)
    stats = []
    for n in names:
        a = dict(root_r[n].attrs)
        sessions[n] = {k: a[k] for k in ("n_bins", "n_units", "rate_hz", "ppd", "frame_hw",
                                         "n_windows", "n_clips", "source", "has_true_rate",
                                         "unit_ids", "mean_rate", "pixel_stats")}
    stats = [sessions[n]["pixel_stats"] for n in names]
    pixels = stats_from_sums(*(sum(s[k] for s in stats) for k in ("count", "sum", "sum_sq")))
    root_attrs = {
        "schema_version": SCHEMA_VERSION, "conventions": CONVENTIONS, "sessions": names,
        "window_len": window_len, "clip_len": cfg.store.clip_len,
        "splits": dict(cfg.store.splits), "split_seed": cfg.store.split_seed,
        "pixel_stats": pixels,
    }
    root = open_root(out_dir / "zarr", mode="a")
    if dict(root.attrs) != json.loads(json.dumps(root_attrs)):
        withdraw(out_dir)  # the root's metadata changes
        root.attrs.put(root_attrs)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "conventions": CONVENTIONS,
        "window_len": window_len,
        "clip_len": cfg.store.clip_len,
        "pixel_stats": pixels,
        "sessions": sessions,
        "shards": shards,
        "n_samples": {s: sum(e["n_samples"] for e in shards if e["split"] == s) for s in SPLITS},
        "zarr_files": _zarr_file_table(out_dir, sources),
    }
    manifest = seal(manifest, seal_key())
    path = out_dir / MANIFEST
    if not path.is_file() or json.loads(path.read_text()) != manifest:
        write_json_atomic(path, manifest)  # else unchanged: left in place for its readers
    (out_dir / WITHDRAWN).unlink(missing_ok=True)
    return manifest


def _zarr_file_table(out_dir: Path, sources: list[str]) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} of the store's own files in ``zarr/`` (the
    root's metadata and the session groups of ``sources``; anything else there was not
    written by the build), taking the sha256 of each frame chunk file from its session's
    ingest record (hashed as it was written) while the file still has the recorded size;
    every other file is read and hashed."""
    known: dict[str, dict] = {}
    folder = out_dir / "zarr"
    paths = [folder / "zarr.json"]
    for src in sources:
        rec = json.loads(part_path(out_dir, src).read_text())
        name = session_folder_name(rec["name"], part_path(out_dir, src))
        for rel, info in rec.get("files", {}).items():
            known[f"{name}/{rel}"] = info
        paths += sorted((folder / name).rglob("*"))
    out = {}
    for p in paths:
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            size = p.stat().st_size
            info = known.get(rel)
            out[rel] = ({"bytes": size, "sha256": info["sha256"]}
                        if info and info["bytes"] == size
                        else {"bytes": size, "sha256": sha256_file(p)})
    return out
