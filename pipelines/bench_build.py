#!/usr/bin/env python
"""Benchmark the store build against a plain copy and a naive one-sample-per-window layout.

On demo sessions totalling at least ``--gb`` GB of stored frames (default 1.0, real-sized
151 x 151 crops at 120 Hz), all measured in this run:

* ingestion throughput (MB of frames per second, NWB crops -> Zarr + shards) as a ratio to
  a plain copy of the same frame bytes (a raw file copied with shutil), and to one zstd pass
  over the same frames at the store's level (numcodecs, the store's chunks, as many threads
  as the cores this process may use, which the build's workers share; fastest of 3), printed
  as ``ingestion / zstd pass`` (target >= 0.25);
* bytes on disk of the Zarr store and of the WebDataset shards, each as a ratio to one
  zstd-compressed copy of the frames (same level): target <= 1.15;
* the same for the old pipeline's layout, every window materialised as its own compressed
  sample; it is measured on ``--naive-windows`` windows and extrapolated to all windows
  (that layout would not fit on this disk otherwise).

    python pipelines/bench_build.py               # ~1 GB of frames, a few minutes
    python pipelines/bench_build.py --gb 0.1      # quick look
    python pipelines/bench_build.py --memory      # peak RSS per worker: 5, 15, 60-min sessions
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
import yaml

from polar_data.config.data_config import load_data_config
from polar_data.demo.generate import (
    DemoConfig,
    generate_session,
    natural_images,
    write_sized_sessions,
)
from polar_data.store.build import build_store
from polar_data.store.checksum import default_threads
from polar_data.store.zarr_groups import open_store


def plain_copy_seconds(folder: Path, nbytes: int) -> float:
    src, dst = folder / "frames.raw", folder / "frames.copy"
    block = np.random.default_rng(0).integers(0, 256, size=64 << 20, dtype=np.uint8)
    with open(src, "wb") as f:
        left = nbytes
        while left > 0:
            f.write(block[: min(left, block.size)].tobytes())
            left -= block.size
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    dt = time.perf_counter() - t0
    src.unlink()
    dst.unlink()
    return dt


def compressed_once_bytes(zarr_dir: Path, level: int) -> int:
    root = open_store(zarr_dir)
    codec = numcodecs.Zstd(level=level)
    total = 0
    for name in root.attrs["sessions"]:
        stim = root[name]["stim"]
        for i in range(0, stim.shape[0], 256):
            total += len(codec.encode(np.ascontiguousarray(stim[i : i + 256])))
    return total


def zstd_pass_seconds(zarr_dir: Path, level: int, threads: int, repeats: int = 3) -> float:
    """Seconds for one zstd pass over every session's frames, frames already in memory:
    numcodecs ``Zstd(level)`` on the store's own chunks (``chunk_bins`` frames each), by a
    pool of ``threads`` threads (numcodecs releases the GIL). The fastest of ``repeats``
    passes (the least disturbed by other load; a faster pass makes the ratio lower)."""
    from concurrent.futures import ThreadPoolExecutor

    root = open_store(zarr_dir)
    codec = numcodecs.Zstd(level=level)
    blocks = []
    for name in root.attrs["sessions"]:
        stim = root[name]["stim"]
        rows = stim.chunks[0]
        data = stim[...]
        blocks += [np.ascontiguousarray(data[i : i + rows]) for i in range(0, len(data), rows)]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(codec.encode, blocks))
            best = min(best, time.perf_counter() - t0)
    return best


def naive_layout(zarr_dir: Path, window_len: int, n_windows: int, level: int
                 ) -> tuple[float, float, int]:
    """Bytes per window and seconds per window of materialising windows one by one."""
    root = open_store(zarr_dir)
    codec = numcodecs.Zstd(level=level)
    name = root.attrs["sessions"][0]
    g = root[name]
    stim = g["stim"][...]
    ends = g["windows/train"][...][:n_windows]
    t0 = time.perf_counter()
    total = 0
    for e in ends:
        total += len(codec.encode(np.ascontiguousarray(stim[e - window_len + 1 : e + 1])))
    dt = time.perf_counter() - t0
    all_windows = sum(sum(root[n].attrs["n_windows"].values()) for n in root.attrs["sessions"])
    return total / len(ends), dt / len(ends), all_windows


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _peak_rss_build(src: Path, out: Path, chunk_bins: int | None) -> tuple[float, float]:
    """(peak RSS MB, seconds) of one build of ``src`` with one worker, in a fresh process."""
    import subprocess

    cfg = out.parent / f"{out.name}.yaml"
    store = {"out_dir": str(out)}
    if chunk_bins is not None:
        store["ingest_chunk_bins"] = chunk_bins
    cfg.write_text(yaml.safe_dump({"store": store}))
    script = Path(__file__).with_name("build_shards.py")
    code = ("import runpy, sys, time; t0 = time.perf_counter(); "
            f"sys.argv = ['build_shards.py', '--config', {str(cfg)!r}, '--workers', '1', "
            f"'--no-progress', {str(src)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
            "print('RESULT', int(hwm.split()[1]) / 1024, time.perf_counter() - t0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"build of {src} failed:\n{done.stdout}\n{done.stderr}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")][-1]
    _, rss, sec = line.split()
    return float(rss), float(sec)


def memory_benchmark(work: Path, minutes: list[float]) -> None:
    """Peak RSS of one worker building one demo session (51 x 51 crops, NWB screen layout,
    240 Hz -> 120 Hz) of each length; the slope in MB of RSS per GB of source frames."""
    from polar_data.demo.generate import write_demo_session

    images = natural_images()
    rows = []
    for m in minutes:
        cfg = DemoConfig(n_sessions=1, duration_s=60.0 * m, seed=int(m))
        print(f"generating a {m:g}-minute demo session...", flush=True)
        d = generate_session(cfg, 0, images, scratch=work / "scratch")
        gb = d.session.n_bins * cfg.crop_px**2 / 1e9
        _, nwb = write_demo_session(d, work / f"src{m:g}", cfg, images, dset=False)
        del d
        shutil.rmtree(work / "scratch", ignore_errors=True)
        rss, sec = _peak_rss_build(nwb, work / f"store{m:g}", None)
        rows.append((m, gb, rss, sec))
        shutil.rmtree(work / f"store{m:g}", ignore_errors=True)
    print(f"\n{'minutes':>8}{'GB frames (240 Hz)':>20}{'peak RSS MB':>13}{'build s':>9}"
          f"{'MB/s frames':>13}")
    for m, gb, rss, sec in rows:
        print(f"{m:>8g}{gb:>20.2f}{rss:>13.0f}{sec:>9.1f}{gb * 1e3 / sec:>13.1f}")
    (m0, g0, r0, _), (m1, g1, r1, _) = rows[0], rows[-1]
    print(f"\nslope: {(r1 - r0) / (g1 - g0):.0f} MB of RSS per GB of source frames "
          f"({m0:g} -> {m1:g} min); peak per worker {max(r for _, _, r, _ in rows):.0f} MB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=1.0, help="GB of stored frames (>= 1 for the "
                   "reported figures)")
    p.add_argument("--crop-px", type=int, default=151)
    p.add_argument("--rate", type=float, default=120.0)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--workers", type=int, default=1, help="build worker processes, as "
                   "build_shards.py --workers (default 1, its default: one process, two "
                   "sessions side by side, compressing in threads; see polar_data.store.build)")
    p.add_argument("--naive-windows", type=int, default=3000)
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: tmp)")
    p.add_argument("--memory", type=float, nargs="*", metavar="MINUTES",
                   help="instead: peak RSS of one worker building demo sessions of these "
                   "lengths (default 5 15 60)")
    a = p.parse_args(argv)
    if a.memory is not None:
        work = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=a.workdir))
        try:
            memory_benchmark(work, a.memory or [5.0, 15.0, 60.0])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_build_", dir=a.workdir))
    try:
        print(f"generating demo sessions ({a.gb:g} GB of {a.crop_px}x{a.crop_px} frames)...")
        src, frames = write_sized_sessions(work / "src", a.gb, a.crop_px, a.rate, a.sessions)
        frame_bytes = frames * a.crop_px**2
        store = {"out_dir": str(work / "store"), "target_rate_hz": None}
        cfg = work / "bench.yaml"
        cfg.write_text(yaml.safe_dump({"store": store}))

        t_copy = plain_copy_seconds(work, frame_bytes)
        t0 = time.perf_counter()
        dcfg = load_data_config(cfg)
        level = dcfg.store.zstd_level
        manifest = build_store(dcfg, [str(p) for p in src], workers=a.workers)
        t_build = time.perf_counter() - t0
        window_len = manifest["window_len"]
        zarr_bytes = folder_bytes(work / "store" / "zarr")
        zarr_stim = folder_bytes(work / "store" / "zarr") - sum(
            folder_bytes(d) for d in (work / "store" / "zarr").glob("*/*")
            if d.is_dir() and d.name != "stim")
        wds_bytes = folder_bytes(work / "store" / "wds")
        once = compressed_once_bytes(work / "store" / "zarr", level)
        # the reference pass gets the cores the build may use: every core this process
        # may run on (the build's worker processes share them, each compressing in threads)
        cores = default_threads()
        t_zstd = zstd_pass_seconds(work / "store" / "zarr", level, cores)
        per_win, sec_win, n_win = naive_layout(work / "store" / "zarr", window_len,
                                               a.naive_windows, level)
        naive_bytes = per_win * n_win
        mb = frame_bytes / 1e6
        rows = [
            ("plain copy of frame bytes (baseline)", mb / t_copy, 1.0, None, None),
            (f"one zstd-{level} pass over the frames ({cores} threads)", mb / t_zstd,
             t_copy / t_zstd, None, None),
            ("ours: NWB -> Zarr + shards (all stages)", mb / t_build, t_copy / t_build,
             zarr_bytes, zarr_bytes / once),
            ("  Zarr store, stim arrays only", None, None, zarr_stim, zarr_stim / once),
            ("  WebDataset shards", None, None, wds_bytes, wds_bytes / once),
            ("naive one-sample-per-window (extrapolated)", mb / (sec_win * n_win),
             t_copy / (sec_win * n_win), naive_bytes, naive_bytes / once),
        ]
        print(f"\nframes: {frames} x {a.crop_px}x{a.crop_px} = {mb:.0f} MB; window_len "
              f"{window_len}; {n_win} valid windows; one compressed copy = {once / 1e6:.1f} MB")
        print(f"{'layout':<44}{'MB/s':>9}{'x copy':>9}{'MB on disk':>12}{'x once':>9}")
        for name, rate, ratio, size, sratio in rows:
            def f(v, fmt):
                width = int(fmt.split(".")[0])
                return format(v, fmt) if v is not None else "-".rjust(width)
            print(f"{name:<44}{f(rate, '9.1f')}{f(ratio, '9.3f')}"
                  f"{f(size and size / 1e6, '12.1f')}{f(sratio, '9.3f')}")
        print(f"\nworkers={a.workers} (build processes) on {cores} cores; naive layout measured "
              f"on {a.naive_windows} windows.")
        print(f"ingestion / zstd pass: {t_zstd / t_build:.2f}   (MB/s of the whole build over "
              f"MB/s of one zstd-{level} pass over the same frames, {cores} threads on the same "
              f"{cores} cores, measured in this run; target >= 0.25)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
