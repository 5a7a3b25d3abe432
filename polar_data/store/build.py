"""Build the stores: sessions -> Zarr groups -> WebDataset shards -> manifest.

Stages (``pipelines/build_shards.py --stage ...``; ``all`` runs them in order, as
:func:`build_store` does in one call), one module each:

1. ``ingest`` (:mod:`polar_data.store.ingest`): read each session (``.dset`` / ``.nwb``; the
   demo sessions are generated first when no session is given,
   :mod:`polar_data.store.sources`), resample, filter, split by trial and write its Zarr
   group. Job ``j`` of ``n`` (``--job-index j --num-jobs n``) takes sessions
   ``j, j + n, ...``.
2. ``shards`` (:mod:`polar_data.store.shard_stage`): cut clips of all sessions into
   interleaved WebDataset shards; job ``j`` writes shards ``j, j + n, ...``. Needs every
   session ingested.
3. ``finalize`` (:mod:`polar_data.store.finalize`): write the Zarr root group and
   ``manifest.json`` (checksums of everything: frame chunks and shards were hashed as they
   were written, their digests kept in ``parts/``, :mod:`polar_data.store.records`; the other
   files, all small, are read and hashed here).

What a build is asked for and the check of the output folder: :mod:`polar_data.store.settings`;
the worker processes: :mod:`polar_data.store.pools`.

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
  (and counted once, :func:`polar_data.store.finalize.unowned_files`);
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

from pathlib import Path

from polar_data.config.data_config import DataConfig
from polar_data.store.build_lock import build_lock
from polar_data.store.finalize import finalize
from polar_data.store.ingest import ingest
from polar_data.store.pools import worker_pool
from polar_data.store.settings import (
    BuildError,
    check_output_folder,
    check_settings,
    resolve_window_len,
    settings,
)
from polar_data.store.shard_stage import write_shards


def build_store(cfg: DataConfig, sources: list[str], window_len: int | None = None,
                workers: int = 1, progress: bool = False) -> dict:
    """Every stage in one call, holding the output folder's lock: ingest ``sources`` into
    ``cfg.store.out_dir``, write the shards and the manifest; returns the manifest. A failed
    session raises BuildError naming it (the command line reports it instead)."""
    out = Path(cfg.store.out_dir)
    window_len = window_len or resolve_window_len(cfg)
    check_output_folder(out)  # before the lock file: a refused folder is left as it was
    with build_lock(out, "all"):
        check_settings(out, settings(cfg, window_len))
        with worker_pool(workers) as pool:  # one pool (worker start-up) for both stages
            failed = [r.error for r in ingest(sources, cfg, window_len, out, workers=workers,
                                              progress=progress, pool=pool) if r.error]
            if failed:
                raise BuildError("; ".join(failed))
            write_shards(out, sources, cfg, window_len, workers=workers, progress=progress,
                         pool=pool)
        return finalize(out, sources, cfg, window_len)
