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
* a session's folder name comes from :func:`polar_data.store.safe_names.session_folder_name`, and
  every path is checked to lie inside the output folder before anything is deleted or written;
* one writer per output folder (:mod:`polar_data.store.build_lock`);
* the build owns only what it wrote: an existing non-empty folder that is not one of its
  stores (no ``build.json``) is refused; inside a store only what the manifest or the
  build's records (``parts/``) name is ever removed or replaced, anything else is left alone
  (and counted once, :func:`unowned_files`);
* rebuilds are atomic for readers: the manifest is withdrawn (renamed, see
  :func:`polar_data.store.manifest.withdraw`) before the first file it names changes, and written
  again only at the end of ``finalize``; a re-run that changes nothing leaves it in place;
* any exception while ingesting a session is reported with the session's file, and the other
  sessions complete; so is a worker process that dies (e.g. killed by the out-of-memory
  killer): only the session it held fails, a fresh process takes its place;
* ``build.json`` records what changes the output (schema, window length, store and demo
  settings), not how the command was spelled; a different setting is refused.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import queue
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from tqdm.auto import tqdm

from polar_data.config.data_config import DEFAULT_WINDOW_LEN, DataConfig
from polar_data.config.storage_options import without_storage_options
from polar_data.config.typed_yaml import to_dict
from polar_data.schema import CONVENTIONS, SCHEMA_VERSION, SPLITS
from polar_data.sessions.session_source import chunk_bounds
from polar_data.store.build_lock import LOCK_NAME
from polar_data.store.checksum import default_threads, sha256_bytes, sha256_file
from polar_data.store.manifest import (
    MANIFEST,
    WITHDRAWN,
    last_manifest,
    seal,
    seal_key,
    withdraw,
    write_json_atomic,
)
from polar_data.store.safe_names import inside, session_folder_name
from polar_data.store.zarr_groups import open_root, stats_from_sums

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
    notes: dict = field(default_factory=dict)  # what the reader repaired, counted (trims)


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
    URLs (``s3://bucket/x.nwb``) are kept as they are (NWB only).

    A session split into files (``<stem>.nwb`` + ``<stem>_image.nwb`` / ``<stem>_behavior.nwb``,
    as DANDI:000628 is) is one source, written as its core file's path ``<stem>.nwb``: the
    reader finds the companions beside it, reads and hashes them with it
    (:func:`polar_data.readers.nwb.session_files`). So a companion listed with its core is
    dropped here; one listed without its core is refused when the core is beside it (give the
    core), else kept as a session of its own (a file that happens to end in ``_image``)."""
    from polar_data.readers.nwb import companion_core

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

    def key(p: str) -> str:
        return p if "://" in p else str(Path(p).resolve())

    given = {key(p) for p in out}
    grouped = set()
    for p in out:
        core = companion_core(p)
        if core is not None and key(core) in given:
            continue  # read with its core file
        if core is not None and "://" not in p and Path(core).is_file():
            raise BuildError(f"{p}: a companion file of the session split into files whose "
                             f"core file {core} is beside it but was not given: give {core} "
                             "(its companions are read with it)")
        grouped.add(p)
    return sorted(grouped)


def settings(cfg: DataConfig, window_len: int) -> dict:
    """What changes the output: schema, window length, store and demo settings. Not recorded:
    the output folder, the trust flag and the source paths (sources are tracked by content,
    per session, in ``parts/``)."""
    store = to_dict(cfg.store)
    for key in ("out_dir", "trust_pickle", "ingest_chunk_bins"):  # do not change the output
        store.pop(key)
    nwb = without_storage_options(to_dict(cfg.nwb))  # how to reach the files, not what
    nwb.pop("max_memory_gb")  # a budget of the machine building, not of the output
    return {"schema_version": SCHEMA_VERSION, "window_len": window_len, "store": store,
            "nwb": nwb, "demo": to_dict(cfg.demo) if not cfg.sessions else None}


def check_output_folder(out_dir: Path) -> None:
    """Refuse to build into an existing folder that is not one of this code's stores: a
    non-empty folder without ``build.json`` (lock files and a ``build.json`` being written by
    another job of the same array do not count). Reads only, so a refused folder is left
    exactly as it was."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir} is a file, not a folder: give another --out / "
                         "store.out_dir")
    if not out_dir.is_dir() or (out_dir / "build.json").is_file():
        return
    other = sorted(p.name for p in out_dir.iterdir()
                   if not p.name.startswith(LOCK_NAME) and p.name != "build.json.partial")
    if other:
        shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        raise BuildError(f"{out_dir} exists and is not a store built by this code (no "
                         f"build.json; it holds {shown}): refusing to build into it. Give a "
                         "new or empty folder as --out / store.out_dir.")


def check_settings(out_dir: Path, wanted: dict) -> None:
    """Write ``build.json`` or refuse if the folder was built with other settings (or is
    not one of our stores, :func:`check_output_folder`)."""
    check_output_folder(out_dir)
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
    from polar_data.demo.generate import generate_session, natural_images, write_demo_session

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
            for i, f in tqdm(list(zip(todo, futures)), desc="generate demo sessions",
                             disable=not progress):
                try:
                    f.result()
                except WorkerDied as e:
                    raise BuildError(f"{paths[i]}: {e} while generating it; re-run with "
                                     "fewer --workers or more memory") from e
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
    from polar_data.readers import open_session, source_sha256
    from polar_data.sessions.session_source import resample_factor, session_chunks
    from polar_data.store.zarr_groups import write_session_group

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
            notes = dict(sess.notes)
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
            withdraw(out)  # the store changes: no loader may take it for finished
            if final.exists():  # an older copy (changed source, or crash before the marker)
                if not _ours(out, final):
                    raise BuildError(f"{final} exists and was not written by this build (no "
                                     "record names it); move it away or use another output "
                                     "folder")
                shutil.rmtree(final)
            tmp.replace(final)
        res.name, res.notes = name, notes
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
                except WorkerDied as e:  # e.g. the out-of-memory killer
                    results.append(SessionResult(source=str(src), error=(
                        f"{src}: {e} while ingesting it; nothing of it was marked done. "
                        "Re-run with fewer --workers or more memory (WorkerDied)")))
                except Exception as e:
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
    from polar_data.store.shards import write_shard

    out = Path(out_dir)
    withdraw(out)  # this shard changes: no loader may take the store for finished
    root = _open_sessions_root(out)
    entry = write_shard(root, names, out / "wds" / name, rows, window_len, threads=threads,
                        readers=readers)
    entry["inputs"] = inputs
    write_json_atomic(out / "parts" / f"shard-{name}.json", entry)
    return entry


def shard_plan(out_dir: Path, sources: list[str], cfg: DataConfig, window_len: int):
    """(session names, {name: source sha256}, [(shard name, rows, content key), ...])."""
    from polar_data.store.shards import clip_table, plan_shards

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
    """Whether shard ``name`` is written from ``inputs``, with a record that lists its
    samples in order (a record from before that list existed: the shard is written again)."""
    part = out_dir / "parts" / f"shard-{name}.json"
    if not ((out_dir / "wds" / name).is_file() and part.is_file()):
        return False
    rec = json.loads(part.read_text())
    return rec.get("inputs") == inputs and "samples" in rec


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
        for (n, _, _), f in tqdm(list(zip(todo, futures)), desc="write shards",
                                 disable=not progress):
            try:
                entries.append(f.result())
            except WorkerDied as e:
                raise BuildError(f"{out_dir / 'wds' / n}: {e} while writing it; re-run with "
                                 "fewer --workers or more memory") from e
    return entries


# ----------------------------------------------------------------------------- finalize


def _records(out_dir: Path, kind: str) -> list[dict]:
    """The build's records in ``parts/`` of ``kind`` (``session`` or ``shard``)."""
    out = []
    for p in sorted((out_dir / "parts").glob(f"{kind}-*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _written_groups(out_dir: Path) -> set[str]:
    """Session groups this build wrote: named by the last manifest (current or withdrawn) or
    by an ingest record."""
    names = set(last_manifest(out_dir).get("sessions", {}))
    for rec in _records(out_dir, "session"):
        if isinstance(rec.get("name"), str):
            names.add(session_folder_name(rec["name"], out_dir / "parts"))
    return names


def _written_shards(out_dir: Path) -> set[str]:
    """Shards this build wrote: named by the last manifest or by a shard record."""
    names = {e.get("name") for e in last_manifest(out_dir).get("shards", [])}
    names |= {rec.get("name") for rec in _records(out_dir, "shard")}
    return {n for n in names if isinstance(n, str) and "/" not in n and n not in ("", "..")}


def _ours(out_dir: Path, group: Path) -> bool:
    """Whether the session group folder ``group`` was written by this build: named by its
    records, or (a build killed between renaming the group into place and writing its
    record) its own attributes say it is this code's group of that name."""
    if group.name in _written_groups(out_dir):
        return True
    try:
        attrs = json.loads((group / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False
    return (attrs.get("name") == group.name and attrs.get("conventions") == CONVENTIONS
            and "source" in attrs)


def _remove_stale(out_dir: Path, names: list[str], shard_names: set[str]) -> None:
    """Delete the session groups and shards this build wrote that no current source
    produces (a source removed, or renamed by a change in place), so the manifest lists
    exactly what is there; files the build did not write are left alone. The manifest is
    withdrawn before anything is deleted."""
    zdir, wdir = out_dir / "zarr", out_dir / "wds"
    groups = [zdir / g for g in sorted(_written_groups(out_dir) - set(names))
              if (zdir / g).is_dir()]
    known = _written_shards(out_dir) | shard_names
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
    """:func:`polar_data.store.manifest.file_table` of the store's own files in ``zarr/`` (the
    root's metadata and the session groups of ``sources``; anything else there was not
    written by the build), taking the sha256 of each frame chunk file from its session's
    ingest record (hashed as it was written) while the file still has the recorded size;
    every other file is read and hashed."""
    known: dict[str, dict] = {}
    folder = out_dir / "zarr"
    paths = [folder / "zarr.json"]
    for src in sources:
        rec = json.loads(_part_path(out_dir, src).read_text())
        name = session_folder_name(rec["name"], _part_path(out_dir, src))
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


# ----------------------------------------------------------------------------- all stages


def build_store(cfg: DataConfig, sources: list[str], window_len: int | None = None,
                workers: int = 1, progress: bool = False) -> dict:
    """Every stage in one call, holding the output folder's lock: ingest ``sources`` into
    ``cfg.store.out_dir``, write the shards and the manifest; returns the manifest. A failed
    session raises BuildError naming it (the command line reports it instead)."""
    from polar_data.store.build_lock import build_lock

    out = Path(cfg.store.out_dir)
    window_len = window_len or resolve_window_len(cfg)
    check_output_folder(out)  # before the lock file: a refused folder is left as it was
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
    """A pool of worker processes (:class:`_WorkerPool`), or an inline one; ``shared``: an
    open pool to use instead (left open)."""
    if shared is not None:
        return _Borrowed(shared)
    if workers <= 1:
        return _InlinePool()
    return _WorkerPool(workers)


class WorkerDied(RuntimeError):
    """A worker process ended before returning its task's result (killed, e.g. by the
    out-of-memory killer, or crashed); the message says how it ended."""


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        oom = " (e.g. by the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{oom}"
    return f"the worker process exited with status {exitcode} without a result"


def _worker_main(conn) -> None:
    """One worker process: run each ``(fn, args)`` received, send back ``(True, result)``
    or ``(False, exception)``; stop on ``None`` or when the pool's end of the pipe closes."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        fn, args = job
        try:
            out = (True, fn(*args))
        except Exception as e:
            out = (False, e)
        try:
            conn.send(out)
        except Exception as e:  # a result or exception that cannot be pickled
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


class _WorkerPool:
    """``workers`` processes (spawn: zarr's I/O threads do not survive fork), each running
    one task at a time, each fed by one thread of this process. ``submit`` returns a
    :class:`concurrent.futures.Future`. A process that dies (SIGKILL from the out-of-memory
    killer, a crash) fails only the task it held, with :class:`WorkerDied` saying how it
    ended; a fresh process takes its place for the next task and every other task runs as
    if nothing happened (a ``ProcessPoolExecutor`` fails every pending task instead)."""

    def __init__(self, workers: int):
        self._ctx = mp.get_context("spawn")
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._procs: dict[int, mp.Process] = {}
        self._threads = [threading.Thread(target=self._feed, args=(i,), daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:  # e.g. Ctrl-C: tasks not started are not run
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
            for p in list(self._procs.values()):
                p.terminate()
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        return False

    def _start(self, slot: int):
        ours, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(theirs,), daemon=True)
        proc.start()
        theirs.close()
        self._procs[slot] = proc
        return proc, ours

    def _feed(self, slot: int) -> None:
        proc = conn = None
        try:
            while (job := self._jobs.get()) is not None:
                fut, fn, args = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    if proc is None:
                        proc, conn = self._start(slot)
                    ok, value = self._run(proc, conn, fn, args)
                except WorkerDied as e:
                    conn.close()
                    proc = conn = None
                    fut.set_exception(e)
                    continue
                except BaseException as e:  # e.g. the arguments cannot be pickled
                    fut.set_exception(e)
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        finally:
            if conn is not None:
                try:
                    conn.send(None)
                except OSError:
                    pass
                conn.close()
                proc.join()

    @staticmethod
    def _run(proc, conn, fn, args):
        """Send one task to ``proc`` and wait for its result or its end."""
        try:
            conn.send((fn, args))
            wait([conn, proc.sentinel])
            if conn.poll():  # a result sent just before the process ended still counts
                return conn.recv()
        except (EOFError, OSError):
            pass
        proc.join()
        raise WorkerDied(_how_it_ended(proc.exitcode))


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
