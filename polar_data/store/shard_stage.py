"""Stage 2, ``shards``: cut the clips of every ingested session into interleaved WebDataset
shards (:mod:`polar_data.store.shards` writes one); job ``j`` of ``n`` writes shards
``j, j + n, ...``. A shard is keyed by its content (its clips, the window length and the sha256
of every source whose clips it holds) and rewritten only when that key changes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from polar_data.config.data_config import DataConfig
from polar_data.store.checksum import default_threads, sha256_bytes
from polar_data.store.manifest import withdraw, write_json_atomic
from polar_data.store.pools import InlinePool, WorkerDied, threads_per_worker, worker_pool
from polar_data.store.records import part_path
from polar_data.store.safe_names import session_folder_name
from polar_data.store.settings import BuildError
from polar_data.store.zarr_groups import open_root


def _ingested(out_dir: Path, sources: list[str]) -> dict[str, str]:
    """{session name: sha256 of its source} for every source, from the ingest records."""
    out = {}
    for src in sources:
        part = part_path(out_dir, src)
        if not part.is_file():
            raise BuildError(f"{src}: not ingested yet; run --stage ingest for every job first")
        rec = json.loads(part.read_text())
        out[session_folder_name(rec["name"], part)] = rec["sha256"]
    return dict(sorted(out.items()))


def sessions_root(out_dir: Path):
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
    root = sessions_root(out)
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
    root = sessions_root(out_dir)
    missing = [n for n in names if n not in set(root.group_keys())]
    if missing:
        raise BuildError(f"{out_dir / 'zarr'}: session group(s) {missing} missing; re-run ingest")
    table = clip_table(root, window_len, names)
    frame_bytes = max(int(root[n]["stim"].shape[1] * root[n]["stim"].shape[2]) for n in names)
    plan = plan_shards(table, frame_bytes, window_len, cfg.store.clip_len,
                       cfg.store.shard_target_mb, cfg.store.shard_seed)
    return names, digests, [(n, rows, _shard_inputs(rows, names, digests, window_len))
                            for n, rows in plan]


def shard_done(out_dir: Path, name: str, inputs: str) -> bool:
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
    for :func:`polar_data.store.ingest.ingest`."""
    names, _, plan = shard_plan(out_dir, sources, cfg, window_len)
    (out_dir / "wds").mkdir(parents=True, exist_ok=True)
    todo = [p for p in plan[job_index::num_jobs] if not shard_done(out_dir, p[0], p[2])]
    entries = []
    with worker_pool(workers, pool) as pool:
        if isinstance(pool, InlinePool) and len(todo) > 1:
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
                               threads_per_worker(workers))
                   for n, rows, key in todo]
        for (n, _, _), f in tqdm(list(zip(todo, futures)), desc="write shards",
                                 disable=not progress):
            try:
                entries.append(f.result())
            except WorkerDied as e:
                raise BuildError(f"{out_dir / 'wds' / n}: {e} while writing it; re-run with "
                                 "fewer --workers or more memory") from e
    return entries
