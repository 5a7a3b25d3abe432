"""Verification of a finished store against its manifest (``build_shards.py --verify``).

:func:`verify` re-reads everything: every file against its size and sha256, every figure
the loaders rely on recomputed from the data, every shard sample compared with the Zarr
group's rows it was cut from, and (optionally) every source file still found at its recorded
path re-hashed. It returns a list of problems, each naming the file (empty: all good).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from polar_data.schema import SPLITS, StoreError
from polar_data.store.checksum import sha256_file
from polar_data.store.manifest import MANIFEST, load_manifest

# dtype of every per-bin array of a session group (zarr_groups.write_session_group)
ARRAY_DTYPES = {"stim": "uint8", "eyepos": "float32", "eye_valid": "bool", "trial": "int64",
                "t": "float64", "robs": "int32", "dfs": "bool", "split": "int8",
                "true_rate": "float32"}


def verify(out_dir: str | Path, progress: bool = False, check_sources: bool = True) -> list[str]:
    """Re-read the whole build under ``out_dir``; return problems (empty = all good).

    Checks files against their hashes, then recomputes from the data every figure the loaders
    rely on (shapes, dtypes, windows, clips, counts per split, pixel statistics, mean rates,
    window length, samples per shard) and compares it with the manifest, the Zarr attributes
    and ``build.json``; with ``check_sources``, re-hashes each source file still found at its
    recorded path and reports any that changed since the build.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    try:
        manifest = load_manifest(out_dir)
    except StoreError as e:
        return [str(e)]
    problems: list[str] = []
    zdir = out_dir / "zarr"
    listed = manifest["zarr_files"]
    present = {p.relative_to(zdir).as_posix() for p in zdir.rglob("*") if p.is_file()}
    for rel in sorted(present - set(listed)):
        if not _in_store_groups(rel, manifest):
            continue  # beside the store's groups: not read by any loader, left alone

        problems.append(f"{zdir / rel}: file not in the manifest")
    for rel, info in tqdm(sorted(listed.items()), desc="verify zarr files", disable=not progress):
        p = zdir / rel
        if not p.is_file():
            problems.append(f"{p}: listed in the manifest but missing")
        elif p.stat().st_size != info["bytes"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {info['bytes']} "
                            "(truncated or rewritten)")
        elif sha256_file(p) != info["sha256"]:
            problems.append(f"{p}: sha256 mismatch (corrupted)")
    if not problems:
        try:
            problems += _verify_figures(out_dir, manifest, progress)
        except Exception as e:  # a decode error must be reported, whatever its type
            problems.append(f"{zdir}: cannot decode the store ({type(e).__name__}: {e})")
    problems += _verify_shards(out_dir, manifest, progress)
    if check_sources:
        problems += _verify_sources(manifest)
    return problems


def _in_store_groups(rel: str, manifest: dict) -> bool:
    """Whether ``rel`` (a path below ``zarr/``) is the root's metadata or lies in one of the
    manifest's session groups: the files Zarr reads when a loader opens the store. A file
    there that the manifest does not list is a problem (e.g. a chunk Zarr would read instead
    of the fill value); anything else was not written by the build and is left alone."""
    head = rel.split("/", 1)[0]
    return rel == "zarr.json" or ("/" in rel and head in manifest["sessions"])


def _differs(where: str, what: str, have, want) -> list[str]:
    return [] if have == want else [f"{where}: {what} is {have!r} in the data, the manifest "
                                    f"says {want!r}"]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _verify_figures(out_dir: Path, manifest: dict, progress: bool) -> list[str]:
    """Recompute every per-session and store-wide figure from the Zarr data."""
    from tqdm.auto import tqdm

    from polar_data.sessions.clips import cut_clips
    from polar_data.sessions.validity import valid_window_ends
    from polar_data.store.zarr_groups import (
        open_store,
        pixel_stats,
        read_session_group,
        stats_from_sums,
        train_mean_rates,
    )

    zdir = out_dir / "zarr"
    root = open_store(zdir)
    W = manifest["window_len"]
    problems = []
    build = out_dir / "build.json"
    if build.is_file():
        problems += _differs(str(build), "window_len", json.loads(build.read_text())
                             .get("window_len"), W)
    ra = dict(root.attrs)
    problems += _differs(str(zdir), "window_len (root attribute)", ra.get("window_len"), W)
    problems += _differs(str(zdir), "clip_len (root attribute)", ra.get("clip_len"),
                         manifest["clip_len"])
    groups = set(root.group_keys())
    problems += _differs(str(zdir), "session list", sorted(groups & set(manifest["sessions"])),
                         sorted(manifest["sessions"]))
    totals = [0, 0, 0]
    for name, summ in tqdm(sorted(manifest["sessions"].items()), desc="verify figures",
                           disable=not progress):
        where = str(zdir / name)
        g = root[name]
        ga = dict(g.attrs)
        arrays = read_session_group(g)
        for key, dtype in ARRAY_DTYPES.items():
            if key in arrays and str(arrays[key].dtype) != dtype:
                problems.append(f"{where}/{key}: dtype {arrays[key].dtype}, expected {dtype}")
        T, H, Wd = arrays["stim"].shape
        N = arrays["robs"].shape[1]
        problems += _differs(where, "n_bins", T, summ["n_bins"])
        problems += _differs(where, "n_units", N, summ["n_units"])
        problems += _differs(where, "frame_hw", [H, Wd], list(summ["frame_hw"]))
        problems += _differs(where, "number of unit ids", N, len(summ["unit_ids"]))
        problems += _differs(where, "window_len (group attribute)", ga.get("window_len"), W)
        problems += _differs(where, "has_true_rate", "true_rate" in g, summ["has_true_rate"])
        for key in ("eyepos", "eye_valid", "trial", "t", "robs", "dfs", "split"):
            if arrays[key].shape[0] != T:
                problems.append(f"{where}/{key}: {arrays[key].shape[0]} bins, stim has {T}")
        if problems:
            continue
        if not (np.diff(arrays["t"]) > 0).all():
            problems.append(f"{where}/t: times are not strictly increasing")
        ok = arrays["eye_valid"] & np.isfinite(arrays["eyepos"]).all(axis=1)
        valid = valid_window_ends(ok, arrays["trial"], W)
        if (arrays["dfs"] & ~valid[:, None]).any():
            problems.append(f"{where}/dfs: a unit counts at a bin whose window is not valid")
        for code, split in enumerate(SPLITS):
            mask = valid & (arrays["split"] == code)
            ends = np.flatnonzero(mask)
            stored = g[f"windows/{split}"][...]
            if not np.array_equal(stored, ends):
                problems.append(f"{where}/windows/{split}: {len(stored)} stored window ends "
                                f"differ from the {len(ends)} valid windows of {W} bins")
            problems += _differs(where, f"n_windows[{split}]", len(ends),
                                 summ["n_windows"][split])
            clips = cut_clips(mask, manifest["clip_len"])
            if not np.array_equal(g[f"clips/{split}"][...], clips):
                problems.append(f"{where}/clips/{split}: stored clips differ from the clips "
                                "recomputed from the windows")
            problems += _differs(where, f"n_clips[{split}]", len(clips), summ["n_clips"][split])
        stats = pixel_stats(arrays["stim"])
        for k in ("count", "sum", "sum_sq"):
            problems += _differs(where, f"pixel_stats.{k}", stats[k], summ["pixel_stats"][k])
            totals[("count", "sum", "sum_sq").index(k)] += stats[k]
        rates = train_mean_rates(arrays["robs"], arrays["dfs"], arrays["split"])
        if not all(_close(a, b) for a, b in zip(rates, summ["mean_rate"])):
            problems.append(f"{where}: mean_rate differs from the training bins' mean counts")
    if not problems:
        want = stats_from_sums(*totals)
        have = manifest["pixel_stats"]
        for k in ("count", "sum", "sum_sq"):
            problems += _differs(str(out_dir / MANIFEST), f"pixel_stats.{k}", want[k], have[k])
        for k in ("mean", "std"):
            if not _close(want[k], have[k]):
                problems.append(f"{out_dir / MANIFEST}: pixel_stats.{k} is {have[k]}, the "
                                f"frames give {want[k]}")
            if not _close(want[k], ra["pixel_stats"][k]):
                problems.append(f"{zdir}: root pixel_stats.{k} differs from the frames")
    return problems


def _verify_shards(out_dir: Path, manifest: dict, progress: bool) -> list[str]:
    """Hashes of every shard and sample; samples, targets and sessions counted per shard."""
    from tqdm.auto import tqdm

    problems = []
    wdir = out_dir / "wds"
    readers = _GroupReaders(out_dir / "zarr")
    for entry in tqdm(manifest["shards"], desc="verify shards", disable=not progress):
        p = wdir / entry["name"]
        if not p.is_file():
            problems.append(f"{p}: shard missing")
            continue
        if p.stat().st_size != entry["bytes"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {entry['bytes']}")
            continue
        if sha256_file(p) != entry["sha256"]:
            problems.append(f"{p}: sha256 mismatch (corrupted)")
            continue
        try:
            problems += _check_shard_figures(p, entry, manifest, readers)
        except StoreError as e:
            problems.append(str(e))
    for split in SPLITS:
        n = sum(e["n_samples"] for e in manifest["shards"] if e["split"] == split)
        problems += _differs(str(out_dir / MANIFEST), f"n_samples[{split}]", n,
                             manifest["n_samples"][split])
        clips = sum(s["n_clips"][split] for s in manifest["sessions"].values())
        problems += _differs(str(out_dir / MANIFEST), f"clips of {split} over all shards", n,
                             clips)
    return problems


class _GroupReaders:
    """The Zarr store's session groups, each opened once (:class:`~polar_data.store.shards.
    GroupReader`), for comparing shard samples with the rows they were cut from."""

    def __init__(self, zarr_dir: Path):
        self.zarr_dir, self.root, self.groups = zarr_dir, None, {}

    def __getitem__(self, name: str):
        from polar_data.store.shards import GroupReader
        from polar_data.store.zarr_groups import open_store

        if name not in self.groups:
            try:  # a damaged store is reported by the checks of its files and figures
                if self.root is None:
                    self.root = open_store(self.zarr_dir)
                self.groups[name] = GroupReader(self.root[name])
            except Exception:
                self.groups[name] = None
        return self.groups[name]


def _differs_from_zarr(path: Path, key: str, clip: dict, g) -> list[str]:
    """The members of one decoded sample that differ from the Zarr rows it was cut from
    (exact, NaN equal to NaN): a sample edited together with its sha256 in the manifest."""
    meta = clip["meta"]
    start, n = int(meta["start"]), int(meta["n_targets"])
    a, b = start - (int(meta["window_len"]) - 1), start + n
    rows = {"stim": (a, b), "eyepos": (a, b), "t": (a, b), "robs": (start, b),
            "dfs": (start, b)}
    if "true_rate" in clip:
        rows["true_rate"] = (start, b)
    bad = []
    for member, (lo, hi) in rows.items():
        want = g.read(member, lo, hi) if lo >= 0 else None
        have = clip[member]
        if want is None or want.shape != have.shape or not np.array_equal(
                have, want, equal_nan=have.dtype.kind == "f"):
            bad.append(member)
    return [] if not bad else [
        f"{path}: sample {key!r}: {', '.join(bad)} differ(s) from the Zarr group "
        f"{meta['session']!r} (rows {a}..{b - 1}): the shard or the group was edited"]


def _check_shard_figures(path: Path, entry: dict, manifest: dict,
                         readers: _GroupReaders | None = None) -> list[str]:
    """Each sample's hash, then its key in the manifest's order, its figures and (with
    ``readers``) its arrays against the Zarr group's rows."""
    import webdataset as wds

    from polar_data.store.shards import decode_clip, sample_digest

    problems = []
    n = targets = 0
    sessions: dict[str, int] = {}
    order = entry.get("samples")
    try:
        files = wds.tariterators.tar_file_expander([{"url": str(path), "stream":
                                                    open(path, "rb")}],
                                                   handler=wds.reraise_exception)
        for raw in wds.tariterators.group_by_keys(files, handler=wds.reraise_exception):
            key = raw["__key__"]
            if entry["sample_sha256"].get(key) != sample_digest(raw):
                problems.append(f"{path}: sample {key!r} does not match its sha256")
                continue
            if order is not None and (n >= len(order) or order[n] != key):
                problems.append(f"{path}: sample {n} is {key!r}, the manifest lists "
                                f"{order[n] if n < len(order) else 'no more samples'!r}")
            c = decode_clip(raw)
            meta = c["meta"]
            group = readers[meta["session"]] if readers is not None else None
            if group is not None and meta["session"] in manifest["sessions"]:
                problems += _differs_from_zarr(path, key, c, group)
            n += 1
            targets += meta["n_targets"]
            sessions[meta["session"]] = sessions.get(meta["session"], 0) + 1
            if meta["window_len"] != manifest["window_len"]:
                problems.append(f"{path}: sample {key} has window_len {meta['window_len']}, "
                                f"the manifest says {manifest['window_len']}")
            if meta["split"] != entry["split"]:
                problems.append(f"{path}: sample {key} is of split {meta['split']}")
            if not np.isfinite(c["t"]).all():
                problems.append(f"{path}: sample {key} has non-finite times")
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    problems += _differs(str(path), "samples", n, entry["n_samples"])
    problems += _differs(str(path), "owned targets", targets, entry["n_targets"])
    problems += _differs(str(path), "samples per session", dict(sorted(sessions.items())),
                         entry["sessions"])
    return problems


def _verify_sources(manifest: dict) -> list[str]:
    """Sources still found at their recorded path whose content changed since the build."""
    problems = []
    for name, summ in sorted(manifest["sessions"].items()):
        src = summ["source"]
        p = Path(src.get("path", ""))
        if src.get("sha256") and p.is_file() and sha256_file(p) != src["sha256"]:
            problems.append(f"{p}: source of session {name!r} changed since the build; re-run "
                            "the same build command to re-ingest it")
    return problems
