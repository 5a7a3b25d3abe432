"""Build the stores: sessions -> Zarr groups -> WebDataset shards -> manifest.

Stages (``pipelines/build_shards.py --stage ...``; ``all`` runs them in order):

1. ``ingest``: read each session (``.dset`` / ``.nwb``; the demo sessions are generated first
   when no session is given), resample, filter, split by trial and write its Zarr group.
   Job ``j`` of ``n`` (``--job-index j --num-jobs n``) takes sessions ``j, j + n, ...``.
2. ``shards``: cut clips of all sessions into interleaved WebDataset shards; job ``j`` writes
   shards ``j, j + n, ...``. Needs every session ingested.
3. ``finalize``: write the Zarr root group and ``manifest.json`` (checksums of everything).

Safety: every output is written under a temporary name and renamed when complete; a re-run
with the same arguments skips what is complete, redoes what is not and produces
byte-identical files. A session that fails is reported by name; other sessions' outputs are
untouched. ``build.json`` records the settings; a different setting in an existing output
folder is refused.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zarr
from tqdm.auto import tqdm

from .checksum import sha256_file
from .config import to_dict
from .data_config import DEFAULT_WINDOW_LEN, DataConfig
from .manifest import MANIFEST, file_table, write_json_atomic
from .schema import CONVENTIONS, SCHEMA_VERSION, SPLITS, StoreError
from .session import SessionError

STAGES = ("ingest", "shards", "finalize")


class BuildError(RuntimeError):
    """The build cannot go on; the message says what and how to fix it."""


@dataclass
class SessionResult:
    """What ingesting one session produced (or why it failed)."""

    source: str
    name: str = ""
    error: str = ""
    skipped: bool = False
    n_bins: int = 0
    n_units: int = 0
    frame_bytes: int = 0
    n_windows: dict = field(default_factory=dict)
    n_clips: dict = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0


# ----------------------------------------------------------------------------- settings


def resolve_window_len(cfg: DataConfig, model_config: str | Path | None) -> int:
    """The store's window length: the config's, else what the model needs, else 16.

    Refuses (BuildError naming both numbers) a window shorter than the model's
    ``jepa_delta + min_context``.
    """
    asked = cfg.store.window_len
    if model_config is None:
        return asked if asked is not None else DEFAULT_WINDOW_LEN
    from polar_model.build import required_window_len
    from polar_model.config import load_model_config

    mcfg = load_model_config(model_config)
    need = required_window_len(mcfg)
    if asked is None:
        return max(need, DEFAULT_WINDOW_LEN)
    if asked < need:
        raise BuildError(
            f"store.window_len = {asked} is too short for {model_config}: the model needs "
            f"window_len >= {need} (jepa_delta + min_context). Raise store.window_len to "
            f"{need} or leave it unset so --model-config derives it."
        )
    return asked


def resolve_sources(patterns: list[str]) -> list[Path]:
    """Expand paths / globs to a sorted list of session files; unknown patterns are errors."""
    out = []
    for pat in patterns:
        hits = sorted(glob.glob(str(pat), recursive=True))
        if not hits:
            raise BuildError(f"{pat}: no session file matches")
        out += [Path(h) for h in hits]
    bad = [p for p in out if p.suffix not in (".dset", ".nwb")]
    if bad:
        raise BuildError(f"{bad[0]}: not a session file (.dset or .nwb)")
    return sorted(set(out))


def settings(cfg: DataConfig, window_len: int, sources: list[Path]) -> dict:
    store = to_dict(cfg.store)
    store.pop("out_dir")
    return {"schema_version": SCHEMA_VERSION, "window_len": window_len, "store": store,
            "sources": [str(p) for p in sources],
            "demo": to_dict(cfg.demo) if not cfg.sessions else None}


def check_settings(out_dir: Path, wanted: dict) -> None:
    """Write ``build.json`` or refuse if the folder was built with other settings."""
    path = out_dir / "build.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have != wanted:
            diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
            raise BuildError(
                f"{out_dir} was built with different settings ({', '.join(diff)} differ). "
                "Use another store.out_dir or delete the folder."
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, wanted)
    # the root group exists from the start (sessions are its children); its attributes,
    # which open_store checks, are written only by finalize
    zarr.open_group(store=str(out_dir / "zarr"), mode="a", zarr_format=3)


# ----------------------------------------------------------------------------- demo


def _demo_one(cfg: DataConfig, index: int, folder: str) -> str:
    from .demo.generate import generate_session, natural_images, write_demo_session

    images = natural_images()
    demo = generate_session(cfg.demo, index, images)
    write_demo_session(demo, folder, cfg.demo, images)
    return demo.session.name


def demo_sources(cfg: DataConfig, out_dir: Path, job_index: int, num_jobs: int, workers: int,
                 progress: bool) -> list[Path]:
    """Generate (if missing) the demo sessions; return all demo NWB paths."""
    folder = out_dir / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"demo{i:02d}.nwb" for i in range(cfg.demo.n_sessions)]
    todo = [i for i in range(job_index, cfg.demo.n_sessions, num_jobs)
            if not (paths[i].is_file()
                    and (folder / f"demo{i:02d}" / "datasets" / "backimage.dset").is_file())]
    if todo:
        with _pool(workers) as pool:
            futures = [pool.submit(_demo_one, cfg, i, str(folder)) for i in todo]
            for f in tqdm(futures, desc="generate demo sessions", disable=not progress):
                f.result()
    return paths


# ----------------------------------------------------------------------------- ingest


def _part_path(out_dir: Path, source: Path) -> Path:
    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:16]
    return out_dir / "parts" / f"session-{key}.json"


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ingest_one(source: str, cfg: DataConfig, window_len: int, out_dir: str,
               progress: bool = False) -> SessionResult:
    """Read, check and write one session's Zarr group; never raises for bad input."""
    from .readers import read_session
    from .zarr_store import write_session_group

    t0 = time.perf_counter()
    src, out = Path(source), Path(out_dir)
    part = _part_path(out, src)
    res = SessionResult(source=str(src))
    try:
        digest = sha256_file(src)
        if part.is_file():
            done = json.loads(part.read_text())
            if done.get("sha256") == digest and (out / "zarr" / done["name"]).is_dir():
                return SessionResult(**done["result"], skipped=True)
        steps = tqdm(total=3, desc=src.name, leave=False, disable=not progress)
        session = read_session(src, trust_pickle=cfg.store.trust_pickle,
                               target_rate_hz=cfg.store.target_rate_hz)
        steps.update()
        final = out / "zarr" / session.name
        tmp = out / ".partial" / session.name
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        attrs = write_session_group(session, tmp, window_len, cfg.store)
        steps.update()
        if final.exists():  # an older, unrecorded copy (crash between rename and marker)
            shutil.rmtree(final)
        tmp.replace(final)
        steps.update()
        steps.close()
        res.name = session.name
        res.n_bins, res.n_units = session.n_bins, session.n_units
        res.frame_bytes = int(session.stim.nbytes)
        res.n_windows, res.n_clips = attrs["n_windows"], attrs["n_clips"]
        res.bytes_written = _dir_bytes(final)
        res.seconds = time.perf_counter() - t0
        # no timings in the record: a rebuilt folder must be byte-identical
        record = {k: v for k, v in res.__dict__.items() if k not in ("skipped", "seconds")}
        part.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(part, {"source": str(src), "sha256": digest, "name": session.name,
                                 "result": record})
    except (SessionError, StoreError, ValueError, OSError, KeyError) as e:
        res.error = f"{src}: {e}" if str(src) not in str(e) else str(e)
    return res


def ingest(sources: list[Path], cfg: DataConfig, window_len: int, out_dir: Path,
           job_index: int = 0, num_jobs: int = 1, workers: int = 1,
           progress: bool = True) -> list[SessionResult]:
    mine = sources[job_index::num_jobs]
    results = []
    with _pool(workers) as pool:
        futures = [pool.submit(ingest_one, str(s), cfg, window_len, str(out_dir),
                               progress and workers == 1) for s in mine]
        for f in tqdm(futures, desc="ingest sessions", disable=not progress):
            results.append(f.result())
    names = [r.name for r in results if r.name]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise BuildError(f"two sources give the same session name(s) {sorted(dup)}")
    return results


# ----------------------------------------------------------------------------- shards


def _session_names(out_dir: Path, sources: list[Path]) -> list[str]:
    names = []
    for src in sources:
        part = _part_path(out_dir, src)
        if not part.is_file():
            raise BuildError(f"{src}: not ingested yet; run --stage ingest for every job first")
        names.append(json.loads(part.read_text())["name"])
    return sorted(names)


def _open_sessions_root(out_dir: Path):
    return zarr.open_group(store=str(out_dir / "zarr"), mode="r", zarr_format=3)


def _shard_one(out_dir: str, name: str, rows, window_len: int, names: list[str]) -> dict:
    from .wds_shards import write_shard

    out = Path(out_dir)
    root = _open_sessions_root(out)
    entry = write_shard(root, names, out / "wds" / name, rows, window_len)
    write_json_atomic(out / "parts" / f"shard-{name}.json", entry)
    return entry


def shard_plan(out_dir: Path, sources: list[Path], cfg: DataConfig, window_len: int):
    from .wds_shards import clip_table, plan_shards

    names = _session_names(out_dir, sources)
    root = _open_sessions_root(out_dir)
    missing = [n for n in names if n not in set(root.group_keys())]
    if missing:
        raise BuildError(f"{out_dir / 'zarr'}: session group(s) {missing} missing; re-run ingest")
    table = clip_table(root, window_len)
    frame_bytes = max(int(root[n]["stim"].shape[1] * root[n]["stim"].shape[2]) for n in names)
    return names, plan_shards(table, frame_bytes, window_len, cfg.store.clip_len,
                              cfg.store.shard_target_mb, cfg.store.shard_seed)


def write_shards(out_dir: Path, sources: list[Path], cfg: DataConfig, window_len: int,
                 job_index: int = 0, num_jobs: int = 1, workers: int = 1,
                 progress: bool = True) -> list[dict]:
    names, plan = shard_plan(out_dir, sources, cfg, window_len)
    (out_dir / "wds").mkdir(parents=True, exist_ok=True)
    mine = plan[job_index::num_jobs]
    todo = [(n, rows) for n, rows in mine
            if not ((out_dir / "wds" / n).is_file()
                    and (out_dir / "parts" / f"shard-{n}.json").is_file())]
    entries = []
    with _pool(workers) as pool:
        futures = [pool.submit(_shard_one, str(out_dir), n, rows, window_len, names)
                   for n, rows in todo]
        for f in tqdm(futures, desc="write shards", disable=not progress):
            entries.append(f.result())
    return entries


# ----------------------------------------------------------------------------- finalize


def finalize(out_dir: Path, sources: list[Path], cfg: DataConfig, window_len: int) -> dict:
    """Write the Zarr root group attributes and ``manifest.json``; returns the manifest."""
    names, plan = shard_plan(out_dir, sources, cfg, window_len)
    shards = []
    for n, _ in plan:
        part = out_dir / "parts" / f"shard-{n}.json"
        path = out_dir / "wds" / n
        if not (part.is_file() and path.is_file()):
            raise BuildError(f"{path}: shard not written; run --stage shards for every job")
        entry = json.loads(part.read_text())
        entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
        shards.append(entry)
    sessions = {}
    root_r = _open_sessions_root(out_dir)
    stats = []
    for n in names:
        a = dict(root_r[n].attrs)
        sessions[n] = {k: a[k] for k in ("n_bins", "n_units", "rate_hz", "ppd", "frame_hw",
                                         "n_windows", "n_clips", "source", "has_true_rate",
                                         "unit_ids", "mean_rate")}
        stats.append(a["pixel_stats"])
    count = sum(s["count"] for s in stats)
    mean = sum(s["mean"] * s["count"] for s in stats) / count
    var = sum((s["std"] ** 2 + s["mean"] ** 2) * s["count"] for s in stats) / count - mean**2
    root_attrs = {
        "schema_version": SCHEMA_VERSION, "conventions": CONVENTIONS, "sessions": names,
        "window_len": window_len, "clip_len": cfg.store.clip_len,
        "splits": dict(cfg.store.splits), "split_seed": cfg.store.split_seed,
        "pixel_stats": {"mean": mean, "std": max(var, 0.0) ** 0.5, "count": count},
    }
    root = zarr.open_group(store=str(out_dir / "zarr"), mode="a", zarr_format=3)
    root.attrs.put(root_attrs)
    partial = out_dir / ".partial"
    if partial.exists():
        shutil.rmtree(partial)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "conventions": CONVENTIONS,
        "window_len": window_len,
        "clip_len": cfg.store.clip_len,
        "pixel_stats": root_attrs["pixel_stats"],
        "sessions": sessions,
        "shards": shards,
        "n_samples": {s: sum(e["n_samples"] for e in shards if e["split"] == s) for s in SPLITS},
        "zarr_files": file_table(out_dir / "zarr"),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------- helpers


def _pool(workers: int):
    """A process pool (spawn: zarr's I/O threads do not survive fork), or an inline one."""
    if workers <= 1:
        return _InlinePool()
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


class _Lazy:
    def __init__(self, fn, args):
        self._fn, self._args = fn, args

    def result(self):
        return self._fn(*self._args)


class _InlinePool:
    """Runs each submission in this process when its result is asked for (workers = 1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        return _Lazy(fn, args)
