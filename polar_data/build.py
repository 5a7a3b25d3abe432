"""Build the stores: sessions -> Zarr groups -> WebDataset shards -> manifest.

Stages (``pipelines/build_shards.py --stage ...``; ``all`` runs them in order):

1. ``ingest``: read each session (``.dset`` / ``.nwb``; the demo sessions are generated first
   when no session is given), resample, filter, split by trial and write its Zarr group.
   Job ``j`` of ``n`` (``--job-index j --num-jobs n``) takes sessions ``j, j + n, ...``.
2. ``shards``: cut clips of all sessions into interleaved WebDataset shards; job ``j`` writes
   shards ``j, j + n, ...``. Needs every session ingested.
3. ``finalize``: write the Zarr root group and ``manifest.json`` (checksums of everything:
   frame chunks and shards were hashed as they were written, their digests kept in
   ``parts/``; the other files, all small, are read and hashed here).

Speed: frames are compressed by threads (zstd, sha256 and numpy release the GIL): each Zarr
frame chunk is compressed, hashed and written by one task; clips of a shard are compressed
by a pool and written in order; in one process two sessions are ingested and several shards
written side by side. None of this changes a byte of the output (tested).

Safety (see the README's "Safety" section):

* every output is written under a temporary name and renamed when complete; a re-run with the
  same arguments skips what is complete, redoes what is not and produces byte-identical files;
* what is done is keyed by content: a session is skipped only if its source's sha256 is the
  one it was ingested from, and a shard only if the sources of every clip in it are unchanged,
  so a source changed in place is re-ingested and every shard holding it rewritten;
* a session's folder name comes from :func:`polar_data.safe_names.session_folder_name`, and
  every path is checked to lie inside the output folder before anything is deleted or written;
* one writer per output folder (:mod:`polar_data.build_lock`);
* any exception while ingesting a session is reported with the session's file, and the other
  sessions complete;
* ``build.json`` records what changes the output (schema, window length, store and demo
  settings), not how the command was spelled; a different setting is refused.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .checksum import default_threads, sha256_bytes, sha256_file
from .data_config import DEFAULT_WINDOW_LEN, DataConfig
from .manifest import MANIFEST, seal, write_json_atomic
from .safe_names import inside, session_folder_name
from .schema import CONVENTIONS, SCHEMA_VERSION, SPLITS
from .session_source import chunk_bounds
from .typed_yaml import to_dict
from .zarr_store import open_root, stats_from_sums

STAGES = ("ingest", "shards", "finalize")
_COMMIT = threading.Lock()  # sessions ingested side by side replace final folders one by one


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


def resolve_window_len(cfg: DataConfig, model_need: int | None = None,
                       model_name: str = "the model") -> int:
    """The store's window length: the config's, else what the model needs, else 16.

    ``model_need``: the shortest window the model can use (the model side computes it, e.g.
    ``jepa_delta + min_context``); a configured window shorter than that is refused
    (BuildError naming both numbers).
    """
    asked = cfg.store.window_len
    if model_need is None:
        return asked if asked is not None else DEFAULT_WINDOW_LEN
    if asked is None:
        return max(model_need, DEFAULT_WINDOW_LEN)
    if asked < model_need:
        raise BuildError(
            f"store.window_len = {asked} is too short for {model_name}: the model needs "
            f"window_len >= {model_need} (jepa_delta + min_context). Raise store.window_len "
            f"to {model_need} or leave it unset so --model-config derives it."
        )
    return asked


def resolve_sources(patterns: list[str]) -> list[str]:
    """Expand paths / globs to a sorted list of session files; unknown patterns are errors.
    URLs (``s3://bucket/x.nwb``) are kept as they are (NWB only)."""
    out = []
    for pat in patterns:
        pat = str(pat)
        if "://" in pat:
            if not pat.endswith(".nwb"):
                raise BuildError(f"{pat}: only NWB files can be read from a URL")
            out.append(pat)
            continue
        hits = sorted(glob.glob(pat, recursive=True))
        if not hits:
            raise BuildError(f"{pat}: no session file matches")
        out += hits
    bad = [p for p in out if not p.endswith((".dset", ".nwb"))]
    if bad:
        raise BuildError(f"{bad[0]}: not a session file (.dset or .nwb)")
    return sorted(set(out))


def settings(cfg: DataConfig, window_len: int) -> dict:
    """What changes the output: schema, window length, store and demo settings. Not recorded:
    the output folder, the trust flag and the source paths (sources are tracked by content,
    per session, in ``parts/``)."""
    store = to_dict(cfg.store)
    for key in ("out_dir", "trust_pickle", "ingest_chunk_bins"):  # do not change the output
        store.pop(key)
    nwb = to_dict(cfg.nwb)
    nwb.pop("storage_options")  # how to reach the files (credentials), not what they hold
    return {"schema_version": SCHEMA_VERSION, "window_len": window_len, "store": store,
            "nwb": nwb, "demo": to_dict(cfg.demo) if not cfg.sessions else None}


def check_settings(out_dir: Path, wanted: dict) -> None:
    """Write ``build.json`` or refuse if the folder was built with other settings."""
    path = out_dir / "build.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have.get("schema_version") != wanted["schema_version"]:
            raise BuildError(
                f"{out_dir} was built by another version of this code (store schema "
                f"{have.get('schema_version')!r}, this code writes {wanted['schema_version']}). "
                "Delete the folder or use another store.out_dir."
            )
        nothing_built = not any((out_dir / "parts").glob("session-*.json"))
        if have != wanted and nothing_built:  # e.g. a first try that failed on every session
            write_json_atomic(path, wanted)
            return
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
    open_root(out_dir / "zarr", mode="a")


# ----------------------------------------------------------------------------- demo


def _demo_one(cfg: DataConfig, index: int, folder: str) -> str:
    from .demo.generate import generate_session, natural_images, write_demo_session

    images = natural_images()
    scratch = Path(folder) / f".scratch-{index:02d}"  # frames memory-mapped, not held
    try:
        demo = generate_session(cfg.demo, index, images, scratch=scratch)
        write_demo_session(demo, folder, cfg.demo, images)
        return demo.session.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def demo_sources(cfg: DataConfig, out_dir: Path, job_index: int, num_jobs: int, workers: int,
                 progress: bool) -> list[str]:
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
    return [str(p) for p in paths]


# ----------------------------------------------------------------------------- ingest


def _source_key(source: str) -> str:
    """A source's location: a URL as given, a local path resolved."""
    return source if "://" in str(source) else str(Path(source).resolve())


def _part_path(out_dir: Path, source: str) -> Path:
    key = hashlib.sha1(_source_key(source).encode()).hexdigest()[:16]
    return out_dir / "parts" / f"session-{key}.json"


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ingest_one(source: str, cfg: DataConfig, window_len: int, out_dir: str,
               progress: bool = False, threads: int | None = None) -> SessionResult:
    """Read, check and write one session's Zarr group; never raises: any exception is
    reported in ``SessionResult.error`` with the source file and the exception's type.
    ``threads``: compression threads (default: one per core). The session's record in
    ``parts/`` lists the bytes and sha256 of its frame chunk files, hashed as they were
    written, for the manifest."""
    from .readers import open_session, source_sha256
    from .session_source import resample_factor, session_chunks
    from .zarr_store import write_session_group

    t0 = time.perf_counter()
    src, out = str(source), Path(out_dir)
    part = _part_path(out, src)
    res = SessionResult(source=src)
    try:
        digest = source_sha256(src, cfg.nwb.storage_options)
        if part.is_file():
            done = json.loads(part.read_text())
            name = session_folder_name(done.get("name", ""), part)
            if done.get("sha256") == digest and (out / "zarr" / name).is_dir():
                return SessionResult(**done["result"], skipped=True)
        with open_session(src, trust_pickle=cfg.store.trust_pickle, nwb=cfg.nwb,
                          sha256=digest) as sess:
            name = session_folder_name(sess.name, src)
            factor = resample_factor(sess.rate_hz, cfg.store.target_rate_hz, src)
            final = inside(out, out / "zarr" / name)
            # one temporary folder per source: sessions ingested side by side may share a
            # name (an error reported once both are done, as when they run one by one)
            tmp = inside(out, out / ".partial" / f"{name}.{_part_path(out, src).stem}")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.parent.mkdir(parents=True, exist_ok=True)

            def named(chunks):  # the safe folder name; the file's own name kept in attrs
                for chunk in chunks:
                    chunk.extra["name_in_file"] = chunk.name
                    chunk.name = name
                    yield chunk

            n_chunks = len(chunk_bounds(sess.trial, cfg.store.ingest_chunk_bins))
            chunks = tqdm(session_chunks(sess, factor, cfg.store.ingest_chunk_bins),
                          total=n_chunks, desc=src.rsplit("/", 1)[-1], leave=False,
                          disable=not progress)
            files: dict[str, tuple[int, str]] = {}
            attrs = write_session_group(named(chunks), tmp, window_len, cfg.store,
                                        threads=threads, files=files)
        with _COMMIT:
            if final.exists():  # an older copy (changed source, or crash before the marker)
                shutil.rmtree(final)
            tmp.replace(final)
        res.name = name
        res.n_bins, res.n_units = attrs["n_bins"], attrs["n_units"]
        res.frame_bytes = int(attrs["pixel_stats"]["count"])
        res.n_windows, res.n_clips = attrs["n_windows"], attrs["n_clips"]
        res.bytes_written = _dir_bytes(final)
        res.seconds = time.perf_counter() - t0
        # no timings in the record: a rebuilt folder must be byte-identical
        record = {k: v for k, v in res.__dict__.items() if k not in ("skipped", "seconds")}
        part.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(part, {"source": _source_key(src), "sha256": digest, "name": name,
                                 "result": record,
                                 "files": {k: {"bytes": b, "sha256": h}
                                           for k, (b, h) in sorted(files.items())}})
    except Exception as e:  # a malformed file may raise anything: report it, go on
        msg = str(e) if src in str(e) else f"{src}: {e}"
        res.error = f"{msg} ({type(e).__name__})"
    return res


def ingest(sources: list[str], cfg: DataConfig, window_len: int, out_dir: Path,
           job_index: int = 0, num_jobs: int = 1, workers: int = 1,
           progress: bool = True, pool=None) -> list[SessionResult]:
    """Ingest this job's sources; a failed session is reported in its result, never raised.
    ``pool``: a pool from :func:`_pool` to use (default: one of ``workers`` for this call)."""
    mine = sources[job_index::num_jobs]
    results = []
    with _pool(workers, pool) as pool:
        side_by_side = None
        if isinstance(pool, _InlinePool) and len(mine) > 1 and default_threads() > 1:
            # one process: two sessions at a time, so that one's reading (which holds the
            # GIL) overlaps the other's compression; each writes only its own files
            side_by_side = pool = ThreadPoolExecutor(2)
        try:
            futures = [pool.submit(ingest_one, str(s), cfg, window_len, str(out_dir),
                                   progress and workers == 1 and side_by_side is None,
                                   _threads(workers))
                       for s in mine]
            for src, f in tqdm(list(zip(mine, futures)), desc="ingest sessions",
                               disable=not progress):
                try:
                    results.append(f.result())
                except Exception as e:  # the worker process itself died
                    results.append(SessionResult(source=str(src),
                                                 error=f"{src}: {e} ({type(e).__name__})"))
        finally:
            if side_by_side is not None:  # on Ctrl-C: the sessions not started are not
                side_by_side.shutdown(cancel_futures=True)
    by_name: dict[str, list[str]] = {}
    for r in results:
        if r.name:
            by_name.setdefault(r.name, []).append(r.source)
    dup = {n: s for n, s in by_name.items() if len(s) > 1}
    if dup:
        raise BuildError("; ".join(f"{' and '.join(s)} both give session name {n!r}"
                                   for n, s in sorted(dup.items()))
                         + ": give the sessions distinct names")
    return results


# ----------------------------------------------------------------------------- shards


def _ingested(out_dir: Path, sources: list[str]) -> dict[str, str]:
    """{session name: sha256 of its source} for every source, from the ingest records."""
    out = {}
    for src in sources:
        part = _part_path(out_dir, src)
        if not part.is_file():
            raise BuildError(f"{src}: not ingested yet; run --stage ingest for every job first")
        rec = json.loads(part.read_text())
        out[session_folder_name(rec["name"], part)] = rec["sha256"]
    return dict(sorted(out.items()))


def _open_sessions_root(out_dir: Path):
    return open_root(out_dir / "zarr")  # before finalize: no schema attributes yet


def _shard_inputs(rows, names: list[str], digests: dict[str, str], window_len: int) -> str:
    """Content key of a shard: its clips, window length and the sha256 of every source whose
    clips it holds. A shard is reused only while this key is unchanged."""
    used = sorted({names[int(r[0])] for r in rows})
    return sha256_bytes(json.dumps({"rows": [[int(x) for x in r] for r in rows],
                                    "window_len": window_len,
                                    "sources": {n: digests[n] for n in used}}).encode())


def _shard_one(out_dir: str, name: str, rows, window_len: int, names: list[str],
               inputs: str, threads: int | None = None, readers: dict | None = None) -> dict:
    from .wds_shards import write_shard

    out = Path(out_dir)
    root = _open_sessions_root(out)
    entry = write_shard(root, names, out / "wds" / name, rows, window_len, threads=threads,
                        readers=readers)
    entry["inputs"] = inputs
    write_json_atomic(out / "parts" / f"shard-{name}.json", entry)
    return entry


def shard_plan(out_dir: Path, sources: list[str], cfg: DataConfig, window_len: int):
    """(session names, {name: source sha256}, [(shard name, rows, content key), ...])."""
    from .wds_shards import clip_table, plan_shards

    digests = _ingested(out_dir, sources)
    names = list(digests)
    root = _open_sessions_root(out_dir)
    missing = [n for n in names if n not in set(root.group_keys())]
    if missing:
        raise BuildError(f"{out_dir / 'zarr'}: session group(s) {missing} missing; re-run ingest")
    table = clip_table(root, window_len, names)
    frame_bytes = max(int(root[n]["stim"].shape[1] * root[n]["stim"].shape[2]) for n in names)
    plan = plan_shards(table, frame_bytes, window_len, cfg.store.clip_len,
                       cfg.store.shard_target_mb, cfg.store.shard_seed)
    return names, digests, [(n, rows, _shard_inputs(rows, names, digests, window_len))
                            for n, rows in plan]


def _shard_done(out_dir: Path, name: str, inputs: str) -> bool:
    part = out_dir / "parts" / f"shard-{name}.json"
    return ((out_dir / "wds" / name).is_file() and part.is_file()
            and json.loads(part.read_text()).get("inputs") == inputs)


def write_shards(out_dir: Path, sources: list[str], cfg: DataConfig, window_len: int,
                 job_index: int = 0, num_jobs: int = 1, workers: int = 1,
                 progress: bool = True, pool=None) -> list[dict]:
    """Write this job's shards whose content key changed (or that are missing); ``pool`` as
    for :func:`ingest`."""
    names, _, plan = shard_plan(out_dir, sources, cfg, window_len)
    (out_dir / "wds").mkdir(parents=True, exist_ok=True)
    todo = [p for p in plan[job_index::num_jobs] if not _shard_done(out_dir, p[0], p[2])]
    entries = []
    with _pool(workers, pool) as pool:
        if isinstance(pool, _InlinePool) and len(todo) > 1:
            # one process: shards written side by side by threads, each shard's clips in
            # order (a shard may hold a single clip); what each writes is unchanged
            threads = ThreadPoolExecutor(default_threads())
            readers: dict = {}  # each session group opened once for all shards
            try:
                futures = [threads.submit(_shard_one, str(out_dir), n, rows, window_len,
                                          names, key, 1, readers) for n, rows, key in todo]
                for f in tqdm(futures, desc="write shards", disable=not progress):
                    entries.append(f.result())
            finally:  # on an error (or Ctrl-C) the shards not started are not written
                threads.shutdown(cancel_futures=True)
            return entries
        futures = [pool.submit(_shard_one, str(out_dir), n, rows, window_len, names, key,
                               _threads(workers))
                   for n, rows, key in todo]
        for f in tqdm(futures, desc="write shards", disable=not progress):
            entries.append(f.result())
    return entries


# ----------------------------------------------------------------------------- finalize


def _remove_stale(out_dir: Path, names: list[str], shard_names: set[str]) -> None:
    """Delete session groups and shards that no current source produces (a source removed,
    or renamed by a change in place), so the manifest lists exactly what is there."""
    zdir = out_dir / "zarr"
    for p in zdir.iterdir():
        if p.is_dir() and p.name not in names:
            shutil.rmtree(inside(out_dir, p))
    for p in (out_dir / "wds").glob("*"):
        if p.is_file() and p.name not in shard_names:
            inside(out_dir, p).unlink()
            (out_dir / "parts" / f"shard-{p.name}.json").unlink(missing_ok=True)
    partial = out_dir / ".partial"
    if partial.exists():
        shutil.rmtree(partial)
    for p in out_dir.glob(".build.lock.*"):  # array-job slots (finalize holds the folder alone)
        p.unlink()


def finalize(out_dir: Path, sources: list[str], cfg: DataConfig, window_len: int) -> dict:
    """Write the Zarr root group attributes and ``manifest.json``; returns the manifest."""
    names, digests, plan = shard_plan(out_dir, sources, cfg, window_len)
    shards = []
    for n, _, key in plan:
        path = out_dir / "wds" / n
        if not _shard_done(out_dir, n, key):
            raise BuildError(f"{path}: shard missing or made from other sources; run "
                             "--stage shards for every job")
        entry = json.loads((out_dir / "parts" / f"shard-{n}.json").read_text())
        size = path.stat().st_size
        if entry.get("bytes") != size or not entry.get("sha256"):  # not hashed when written
            entry.update(bytes=size, sha256=sha256_file(path))
        shards.append(entry)
    _remove_stale(out_dir, names, {n for n, _, _ in plan})
    sessions = {}
    root_r = _open_sessions_root(out_dir)
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
    manifest = seal(manifest)
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def _zarr_file_table(out_dir: Path, sources: list[str]) -> dict[str, dict]:
    """:func:`polar_data.manifest.file_table` of ``zarr/``, taking the sha256 of each frame
    chunk file from its session's ingest record (hashed as it was written) while the file
    still has the recorded size; every other file is read and hashed."""
    known: dict[str, dict] = {}
    for src in sources:
        rec = json.loads(_part_path(out_dir, src).read_text())
        name = session_folder_name(rec["name"], _part_path(out_dir, src))
        for rel, info in rec.get("files", {}).items():
            known[f"{name}/{rel}"] = info
    folder = out_dir / "zarr"
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            size = p.stat().st_size
            info = known.get(rel)
            out[rel] = ({"bytes": size, "sha256": info["sha256"]}
                        if info and info["bytes"] == size
                        else {"bytes": size, "sha256": sha256_file(p)})
    return out


# ----------------------------------------------------------------------------- all stages


def build_store(cfg: DataConfig, sources: list[str], window_len: int | None = None,
                workers: int = 1, progress: bool = False) -> dict:
    """Every stage in one call, holding the output folder's lock: ingest ``sources`` into
    ``cfg.store.out_dir``, write the shards and the manifest; returns the manifest. A failed
    session raises BuildError naming it (the command line reports it instead)."""
    from .build_lock import build_lock

    out = Path(cfg.store.out_dir)
    window_len = window_len or resolve_window_len(cfg)
    with build_lock(out, "all"):
        check_settings(out, settings(cfg, window_len))
        with _pool(workers) as pool:  # one pool (worker start-up) for both stages
            failed = [r.error for r in ingest(sources, cfg, window_len, out, workers=workers,
                                              progress=progress, pool=pool) if r.error]
            if failed:
                raise BuildError("; ".join(failed))
            write_shards(out, sources, cfg, window_len, workers=workers, progress=progress,
                         pool=pool)
        return finalize(out, sources, cfg, window_len)


# ----------------------------------------------------------------------------- helpers


def _pool(workers: int, shared=None):
    """A process pool (spawn: zarr's I/O threads do not survive fork), or an inline one;
    ``shared``: an open pool to use instead (left open)."""
    if shared is not None:
        return _Borrowed(shared)
    if workers <= 1:
        return _InlinePool()
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


def _threads(workers: int) -> int:
    """Compression threads per worker process: the cores shared among the workers, at
    least 2 (so a worker's reading overlaps its compression)."""
    return max(2, -(-default_threads() // max(1, workers)))


class _Borrowed:
    """A pool used by one stage and closed by its owner."""

    def __init__(self, pool):
        self._pool = pool

    def __enter__(self):
        return self._pool

    def __exit__(self, *exc):
        return False


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
