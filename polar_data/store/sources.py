"""The sessions a build reads: paths and globs expanded to session files (a session split into
files given as its core file), or the demo sessions, generated into the store's
``sessions/`` folder when no session is given."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from polar_data.config.data_config import DataConfig
from polar_data.store.pools import WorkerDied, worker_pool
from polar_data.store.records import source_key
from polar_data.store.settings import BuildError


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

    given = {source_key(p) for p in out}
    grouped = set()
    for p in out:
        core = companion_core(p)
        if core is not None and source_key(core) in given:
            continue  # read with its core file
        if core is not None and "://" not in p and Path(core).is_file():
            raise BuildError(f"{p}: a companion file of the session split into files whose "
                             f"core file {core} is beside it but was not given: give {core} "
                             "(its companions are read with it)")
        grouped.add(p)
    return sorted(grouped)


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
        with worker_pool(workers) as pool:
            futures = [pool.submit(_demo_one, cfg, i, str(folder)) for i in todo]
            for i, f in tqdm(list(zip(todo, futures)), desc="generate demo sessions",
                             disable=not progress):
                try:
                    f.result()
                except WorkerDied as e:
                    raise BuildError(f"{paths[i]}: {e} while generating it; re-run with "
                                     "fewer --workers or more memory") from e
    return [str(p) for p in paths]
