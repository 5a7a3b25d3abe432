"""The build manifest (``<out>/manifest.json``) and verification against it.

The manifest lists every file of the Zarr store (bytes, sha256) and every WebDataset shard
(samples, owned targets, sessions, bytes, sha256), plus per-session summaries. ``verify``
re-reads everything and returns a list of problems, each naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checksum import sha256_file
from .schema import SCHEMA_VERSION, SPLITS, StoreError
from .wds_shards import count_tar_samples, decode_clip

MANIFEST = "manifest.json"


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def file_table(folder: Path) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} of every file below ``folder`` (sorted)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = {"bytes": p.stat().st_size,
                                                     "sha256": sha256_file(p)}
    return out


def load_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: manifest missing; the build did not finish "
                         "(re-run pipelines/build_shards.py with the same arguments)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise StoreError(f"{path}: manifest is not valid JSON ({e})") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {manifest.get('schema_version')!r}, "
                         f"expected {SCHEMA_VERSION}; rebuild the store")
    return manifest


def verify(out_dir: str | Path, progress: bool = False) -> list[str]:
    """Re-read the whole build under ``out_dir``; return problems (empty = all good)."""
    from tqdm.auto import tqdm

    from .zarr_store import open_store, read_session_group

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
        problems.append(f"{zdir / rel}: file not in the manifest")
    for rel, info in tqdm(sorted(listed.items()), desc="verify zarr files", disable=not progress):
        p = zdir / rel
        if not p.is_file():
            problems.append(f"{p}: listed in the manifest but missing")
            continue
        if p.stat().st_size != info["bytes"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {info['bytes']} "
                            "(truncated or rewritten)")
        elif sha256_file(p) != info["sha256"]:
            problems.append(f"{p}: sha256 mismatch (corrupted)")
    if not problems:  # decode every array and check shapes against the session summaries
        try:
            root = open_store(zdir)
            for name, summ in manifest["sessions"].items():
                arrays = read_session_group(root[name])
                T, N = summ["n_bins"], summ["n_units"]
                if arrays["stim"].shape[0] != T or arrays["robs"].shape != (T, N):
                    problems.append(f"{zdir / name}: shapes {arrays['stim'].shape}, "
                                    f"{arrays['robs'].shape} differ from the manifest's "
                                    f"T={T}, N={N}")
                for split in SPLITS:
                    n = root[name][f"windows/{split}"].shape[0]
                    if n != summ["n_windows"][split]:
                        problems.append(f"{zdir / name}/windows/{split}: {n} windows, "
                                        f"manifest says {summ['n_windows'][split]}")
        except Exception as e:  # a decode error must be reported, whatever its type
            problems.append(f"{zdir}: cannot decode the store ({type(e).__name__}: {e})")
    wdir = out_dir / "wds"
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
            n = count_tar_samples(p)
            if n != entry["n_samples"]:
                problems.append(f"{p}: {n} samples, manifest says {entry['n_samples']}")
            _decode_all(p)
        except StoreError as e:
            problems.append(str(e))
    return problems


def _decode_all(path: Path) -> None:
    import webdataset as wds

    try:
        for sample in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
            c = decode_clip(sample)
            if not np.isfinite(c["t"]).all():
                raise StoreError(f"{path}: sample {sample['__key__']} has non-finite times")
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
