"""Stage 1, ``ingest``: read each session (``.dset`` / ``.nwb``), resample, filter, split by trial
and write its Zarr group under ``<out>/zarr/<name>``, written in a temporary folder and renamed
when complete; job ``j`` of ``n`` takes sessions ``j, j + n, ...``. A session is skipped while
its source's sha256 is the one it was ingested from. Any exception while ingesting a session
(or a worker process that dies) fails that session only, reported with its file."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from polar_data.config.data_config import DataConfig
from polar_data.schema import CONVENTIONS
from polar_data.sessions.session_source import chunk_bounds
from polar_data.store.checksum import default_threads
from polar_data.store.manifest import withdraw, write_json_atomic
from polar_data.store.pools import InlinePool, WorkerDied, threads_per_worker, worker_pool
from polar_data.store.records import part_path, source_key, written_groups
from polar_data.store.safe_names import inside, session_folder_name
from polar_data.store.settings import BuildError

_COMMIT = threading.Lock()  # sessions ingested side by side replace final folders one by one


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


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _ours(out_dir: Path, group: Path) -> bool:
    """Whether the session group folder ``group`` was written by this build: named by its
    records, or (a build killed between renaming the group into place and writing its
    record) its own attributes say it is this code's group of that name."""
    if group.name in written_groups(out_dir):
        return True
    try:
        attrs = json.loads((group / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False
    return (attrs.get("name") == group.name and attrs.get("conventions") == CONVENTIONS
            and "source" in attrs)


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
    part = part_path(out, src)
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
            tmp = inside(out, out / ".partial" / f"{name}.{part_path(out, src).stem}")
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
        write_json_atomic(part, {"source": source_key(src), "sha256": digest, "name": name,
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
    ``pool``: a pool from :func:`~polar_data.store.pools.worker_pool` to use (default: one of
    ``workers`` for this call)."""
    mine = sources[job_index::num_jobs]
    results = []
    with worker_pool(workers, pool) as pool:
        side_by_side = None
        if isinstance(pool, InlinePool) and len(mine) > 1 and default_threads() > 1:
            # one process: two sessions at a time, so that one's reading (which holds the
            # GIL) overlaps the other's compression; each writes only its own files
            side_by_side = pool = ThreadPoolExecutor(2)
        try:
            futures = [pool.submit(ingest_one, str(s), cfg, window_len, str(out_dir),
                                   progress and workers == 1 and side_by_side is None,
                                   threads_per_worker(workers))
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
