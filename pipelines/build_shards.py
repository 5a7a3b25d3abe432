#!/usr/bin/env python
"""Build verified Zarr + WebDataset stores from session recordings.

    python pipelines/build_shards.py                      # demo sessions -> data/demo_store
    python pipelines/build_shards.py --config configs/data/lab.yaml 'raw/*/datasets/backimage.dset'
    python pipelines/build_shards.py --model-config configs/model/full.yaml   # window from model
    python pipelines/build_shards.py --verify --out data/demo_store
    python pipelines/build_shards.py --store.window_len 20 --print-config  # any config key

Any key of the data config can be set with its dotted name (--store.clip_len 128,
--demo.n_sessions 2; YAML values); the flags below win over them.

Cluster array job (N jobs; see README): every job runs
    --stage ingest --job-index $SLURM_ARRAY_TASK_ID --num-jobs N
then every job runs --stage shards (same flags), then one job runs --stage finalize.
Exit status: 0 on success, 1 if any session failed or verification found problems,
2 for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path

from polar_data.config.data_config import DATA_SECTIONS, load_data_config
from polar_data.config.storage_options import redact_config
from polar_data.config.typed_yaml import ConfigError, override, split_overrides, to_yaml
from polar_data.schema import SPLITS
from polar_data.store.build_lock import BuildLocked, build_lock
from polar_data.store.finalize import finalize, unowned_files
from polar_data.store.ingest import ingest
from polar_data.store.settings import (
    BuildError,
    check_output_folder,
    check_settings,
    resolve_window_len,
    settings,
)
from polar_data.store.shard_stage import write_shards
from polar_data.store.sources import demo_sources, resolve_sources
from polar_data.store.verify import verify


def parse_args(argv=None):
    """(argparse namespace, dotted overrides of the data config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv, DATA_SECTIONS)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("sessions", nargs="*", help=".dset / .nwb paths or globs (default: the "
                   "config's sessions, or the demo sessions)")
    p.add_argument("--config", type=Path, help="data config YAML (configs/data/*.yaml)")
    p.add_argument("--out", type=Path, help="output folder (overrides store.out_dir)")
    p.add_argument("--model-config", type=Path,
                   help="model YAML: derive window_len from it and refuse a too-short one")
    p.add_argument("--workers", type=int, default=1, help="processes (sessions / shards)")
    p.add_argument("--stage", choices=["all", "ingest", "shards", "finalize"], default="all")
    p.add_argument("--job-index", type=int, default=0, help="this job's index (array jobs)")
    p.add_argument("--num-jobs", type=int, default=1, help="number of jobs (array jobs)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow .dset files (Python pickles: only for files you trust)")
    p.add_argument("--nwb-gaze", metavar="NAME",
                   help="NWB: the EyeTracking SpatialSeries to use when a file has several")
    p.add_argument("--nwb-stimulus", metavar="NAME",
                   help="NWB: the stimulus series to use when a file has several")
    p.add_argument("--screen-ppd", type=float,
                   help="NWB: screen image pixels per degree, if the file does not record it")
    p.add_argument("--crop-deg", type=float,
                   help="NWB: gaze-contingent crop side in degrees, if the file does not say")
    p.add_argument("--crop-px", type=int,
                   help="NWB: crop side in pixels when rendering from screen images (51)")
    p.add_argument("--verify", action="store_true",
                   help="only re-read the finished build and check it against its manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved data config as YAML and exit")
    a = p.parse_args(rest)
    if not 0 <= a.job_index < a.num_jobs:
        p.error(f"--job-index {a.job_index} must be in 0..{a.num_jobs - 1}")
    return a, overrides


def summary_table(results, elapsed: float) -> str:
    head = (f"{'session':<16}{'units':>6}{'frames':>9}" + "".join(f"{s:>9}" for s in SPLITS)
            + f"{'MB out':>9}{'MB/s':>8}  status")
    lines = [head, "-" * len(head)]
    tot_frames = tot_bytes = tot_in = 0
    for r in results:
        status = "FAILED" if r.error else ("skipped (done)" if r.skipped else "ok")
        wins = "".join(f"{r.n_windows.get(s, 0):>9}" for s in SPLITS)
        rate = r.frame_bytes / 1e6 / r.seconds if r.seconds and not r.skipped else 0.0
        label = (r.name or r.source.rsplit("/", 1)[-1])[:15]
        lines.append(f"{label:<16}{r.n_units:>6}{r.n_bins:>9}"
                     f"{wins}{r.bytes_written / 1e6:>9.1f}{rate:>8.1f}  {status}")
        tot_frames += r.n_bins
        tot_bytes += r.bytes_written
        tot_in += 0 if r.skipped else r.frame_bytes
    wins = "".join(f"{sum(r.n_windows.get(s, 0) for r in results):>9}" for s in SPLITS)
    lines.append("-" * len(head))
    lines.append(f"{'total':<16}{sum(r.n_units for r in results):>6}{tot_frames:>9}{wins}"
                 f"{tot_bytes / 1e6:>9.1f}{tot_in / 1e6 / max(elapsed, 1e-9):>8.1f}")
    for r in results:  # what the reader repaired (e.g. overlapping trials trimmed)
        if r.notes:
            lines.append(f"{r.name or r.source}: " + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in sorted(r.notes.items())))
    failed = [r for r in results if r.error]
    for r in failed:
        lines.append(f"FAILED {r.error}")  # the error names the source file
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        a, overrides = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = not a.no_progress
    out = None
    try:
        for key in ("screen_ppd", "crop_deg", "crop_px"):  # short for --nwb.<key>, checked
            if getattr(a, key) is not None:
                overrides.append((f"nwb.{key}", str(getattr(a, key))))
        cfg = override(load_data_config(a.config), overrides)
        if a.out is not None:
            cfg.store.out_dir = a.out
        if a.trust_pickle:
            cfg.store.trust_pickle = True
        for flag, key in (("nwb_gaze", "gaze"), ("nwb_stimulus", "stimulus")):  # names as given
            if getattr(a, flag) is not None:
                setattr(cfg.nwb, key, getattr(a, flag))
        if a.print_config:
            print(to_yaml(redact_config(cfg)), end="")  # never print credentials
            return 0
        out = Path(cfg.store.out_dir)
        if a.verify:
            with build_lock(out, "verify"):
                problems = verify(out, progress=progress)
            for p in problems:
                print(f"VERIFY FAILED: {p}", file=sys.stderr)
            print(f"verify {out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
        check_output_folder(out)  # before the lock file: a refused folder is left as it was
        with build_lock(out, a.stage, a.job_index, a.num_jobs):
            return build(a, cfg, out, progress)
    except (BuildError, BuildLocked, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if out is None or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        print(f"error: {out} is not writable ({e.strerror}: {e.filename}): a build needs "
              "write access to its output folder; fix its permissions or give another "
              "--out / store.out_dir", file=sys.stderr)
        return 2


def build(a, cfg, out: Path, progress: bool) -> int:
    """The build stages, run while this process holds the output folder's lock."""
    need = None
    if a.model_config is not None:  # the window rule lives on the model side
        from polar_model.config import load_model_config
        from polar_model.window_rule import WindowTooShort, check_window_len, required_window_len

        model = load_model_config(a.model_config)
        need = required_window_len(model)
        if cfg.store.window_len is not None:
            try:
                check_window_len(model, cfg.store.window_len)
            except WindowTooShort as e:
                raise e.naming("the data config (store.window_len)", str(a.model_config)) from None
    window_len = resolve_window_len(cfg, need)
    patterns = a.sessions or cfg.sessions
    sources = resolve_sources(patterns) if patterns else None
    check_settings(out, settings(cfg, window_len))  # before anything is written there
    if sources is None:
        sources = demo_sources(cfg, out, a.job_index, a.num_jobs, a.workers, progress)
    t0 = time.perf_counter()
    if a.stage in ("all", "ingest"):
        results = ingest(sources, cfg, window_len, out, a.job_index, a.num_jobs,
                         a.workers, progress)
        print(summary_table(results, time.perf_counter() - t0))
        if any(r.error for r in results):
            print("some sessions failed (named above); the others are complete. Fix the "
                  "inputs and re-run the same command.", file=sys.stderr)
            return 1
    if a.stage in ("all", "shards"):
        entries = write_shards(out, sources, cfg, window_len, a.job_index, a.num_jobs,
                               a.workers, progress)
        print(f"wrote {len(entries)} shard(s) to {out / 'wds'}")
    if a.stage in ("all", "finalize"):
        manifest = finalize(out, sources, cfg, window_len)
        n = manifest["n_samples"]
        print(f"manifest {out / 'manifest.json'}: window_len {window_len}, "
              f"{len(manifest['shards'])} shards, clips " +
              ", ".join(f"{s} {n[s]}" for s in SPLITS))
        left = unowned_files(out, manifest)
        if left:
            print(f"left alone: {len(left)} files the build did not write (e.g. {left[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
