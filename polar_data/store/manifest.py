"""The build manifest (``<out>/manifest.json``) and verification against it.

The manifest lists every file of the Zarr store (bytes, sha256), every WebDataset shard
(samples with their sha256, owned targets, sessions, bytes, sha256), per-session summaries
(source file and its sha256, shapes, counts, pixel statistics, mean rates) and the store-wide
figures the loaders rely on. It carries its own checksum (``manifest_sha256``): an edited
manifest is refused on load; with ``POLAR_SEAL_KEY`` set when building, it also carries an
HMAC-SHA256 of itself under that key (``seal_hmac``), checked on load whenever the key is set,
so that an edited and re-sealed manifest is refused too. ``verify`` re-reads everything,
recomputes every figure from the data, compares every shard sample with the Zarr group's
rows, and returns a list of problems, each naming the file.

A rebuild withdraws the manifest (:func:`withdraw`, an atomic rename) before it changes any
file the manifest names, so a store whose build is under way or was interrupted has no
manifest and every loader refuses it with a message saying so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import fsspec
import numpy as np

from polar_data.schema import SPLITS, StoreError, check_schema
from polar_data.store.checksum import sha256_bytes, sha256_file

MANIFEST = "manifest.json"
WITHDRAWN = MANIFEST + ".withdrawn"  # the old manifest while a rebuild changes its files
SEAL = "manifest_sha256"
HMAC_FIELD = "seal_hmac"
SEAL_KEY_ENV = "POLAR_SEAL_KEY"  # the key of the keyed seal (build and load time)
NOT_FINISHED = ("this store is being (re)built or its build was interrupted: run the build "
                "again (pipelines/build_shards.py with the same arguments)")

# dtype of every per-bin array of a session group (zarr_store.write_session_group)
ARRAY_DTYPES = {"stim": "uint8", "eyepos": "float32", "eye_valid": "bool", "trial": "int64",
                "t": "float64", "robs": "int32", "dfs": "bool", "split": "int8",
                "true_rate": "float32"}


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _canonical(manifest: dict, *without: str) -> bytes:
    body = {k: v for k, v in manifest.items() if k not in without}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _digest(manifest: dict) -> str:
    return sha256_bytes(_canonical(manifest, SEAL))


def _hmac(manifest: dict, key: str) -> str:
    """HMAC-SHA256 under ``key`` of the manifest's canonical JSON without either seal."""
    return hmac.new(key.encode(), _canonical(manifest, SEAL, HMAC_FIELD),
                    hashlib.sha256).hexdigest()


def seal_key() -> str | None:
    """The keyed seal's key, from the environment variable ``POLAR_SEAL_KEY`` (None: unset)."""
    return os.environ.get(SEAL_KEY_ENV) or None


def seal(manifest: dict, key: str | None = None) -> dict:
    """``manifest`` plus its own checksum (sha256 of its canonical JSON without the seal);
    with ``key``, first its HMAC-SHA256 under that key (``seal_hmac``)."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    if key:
        body[HMAC_FIELD] = _hmac(body, key)
    return {**body, SEAL: _digest(body)}


def withdraw(out_dir: Path) -> None:
    """Rename ``manifest.json`` to ``manifest.json.withdrawn`` (atomic), so that no loader
    takes the store for finished while a rebuild changes the files the manifest names."""
    try:
        (Path(out_dir) / MANIFEST).replace(Path(out_dir) / WITHDRAWN)
    except FileNotFoundError:
        pass


def last_manifest(out_dir: Path) -> dict:
    """The last manifest written in ``out_dir`` (current or withdrawn), unchecked, for the
    build's record of what it wrote; {} when there is none or it cannot be read."""
    for name in (MANIFEST, WITHDRAWN):
        try:
            m = json.loads((Path(out_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            return m
    return {}


def file_table(folder: Path) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} of every file below ``folder`` (sorted)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = {"bytes": p.stat().st_size,
                                                     "sha256": sha256_file(p)}
    return out


def load_manifest(base: str | Path, storage_options: dict | None = None) -> dict:
    """The manifest of the store at ``base`` (folder or fsspec URL), checked: present, valid
    JSON, this schema version, and its own checksum. Raises StoreError naming the file."""
    url = str(base).rstrip("/") + "/" + MANIFEST
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError as e:
        raise StoreError(f"{url}: manifest missing: {NOT_FINISHED}") from e
    except ValueError as e:
        raise StoreError(f"{url}: manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise StoreError(f"{url}: the manifest is not a JSON object")
    check_schema(manifest, url)  # version and conventions
    if manifest.get(SEAL) != _digest(manifest):
        raise StoreError(f"{url}: the manifest's checksum does not match its contents (edited "
                         "or corrupted); rebuild, or re-run the build to rewrite it")
    _check_keyed_seal(manifest, url, seal_key())
    return manifest


def _check_keyed_seal(manifest: dict, url: str, key: str | None) -> None:
    """With a key (``POLAR_SEAL_KEY`` set), the manifest must carry its HMAC under that key."""
    if not key:
        return
    have = manifest.get(HMAC_FIELD)
    if not isinstance(have, str):
        raise StoreError(f"{url}: no {HMAC_FIELD} although {SEAL_KEY_ENV} is set (the store "
                         f"was built without the key); rebuild it with {SEAL_KEY_ENV} set, or "
                         "unset it to accept unkeyed stores")
    if not hmac.compare_digest(have, _hmac(manifest, key)):
        raise StoreError(f"{url}: {HMAC_FIELD} does not match under {SEAL_KEY_ENV} (the "
                         "manifest was edited by someone without the key, or built with "
                         "another key); rebuild the store")


def check_chunk_files(zarr_dir: Path, table: dict[str, dict], full_hash: bool = False) -> None:
    """Cheap check before reading a Zarr store: every file the manifest lists exists with its
    recorded size (``full_hash``: and its sha256). Raises StoreError naming array and chunk
    (Zarr itself would return the fill value for a missing chunk)."""
    zarr_dir = Path(zarr_dir)
    for rel, info in table.items():
        p = zarr_dir / rel
        where = f"{zarr_dir}: array {rel.rsplit('/', 1)[0]!r}, file {rel!r}"
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{where} is missing (the store is incomplete or damaged; "
                             "rebuild it or run build_shards.py --verify)") from None
        if size != info["bytes"]:
            raise StoreError(f"{where} has {size} bytes, the manifest says {info['bytes']} "
                             "(truncated or rewritten)")
        if full_hash and sha256_file(p) != info["sha256"]:
            raise StoreError(f"{where} does not match its sha256 (corrupted)")


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
