#!/usr/bin/env python
"""Benchmark our loaders against the old pipeline's in-RAM loader, on one store, in one run.

Baseline (what the lab's loader did): every session loaded into RAM as float32 (pixel-
normalised), a map-style dataset that gathers each window per sample in Python, a shuffled
DataLoader with the same number of workers (forked: they share the arrays copy-on-write).

Ours: the streaming WebDataset loader and the Zarr random-access loader, each in window mode
(one predicted bin per sample) and clip mode (clip_len predicted bins per sample). Our
workers hand over uint8 frames (a quarter of float32's bytes between processes); the timed
loop normalises every batch of ours in the main process (``polar_data.loaders.batches.
normalise_stim``, as training does after the batch transfer), so every row ends with the
float32 frames a model takes: the baseline and the peers normalise in their workers and hand
over float32.

Reported per loader: windows (= predicted bins) per second and peak memory of the main
process and its workers together (sum of PSS from /proc, sampled every 50 ms). Every row runs
``--rounds`` times (default 3), the rows in turn, and shows its median rate (on a shared
machine whose speed drifts, interleaving keeps each ratio within a round) and its first
round's peak (later rounds start from a main process that earlier rows have grown). The
peers' copies are written in a child process, before the first round. Targets:
streaming window mode >= baseline; clip mode >= 5 x window mode in predicted bins/s; peak
memory <= 1/5 of the baseline's.

    python pipelines/bench_loaders.py                       # builds a >= 2 GB demo store
    python pipelines/bench_loaders.py --store data/demo_store --batches 100
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from polar_data.config.data_config import load_data_config
from polar_data.demo.generate import write_sized_sessions
from polar_data.loaders.batches import normalise_stim, pad_clip, sample
from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.streaming import ShardStream
from polar_data.loaders.zarr_windows import LocalityBatchSampler, ZarrWindows, identity
from polar_data.store.build import build_store
from polar_data.store.zarr_groups import open_store


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out + [g for c in out for g in _children(c)]


class PeakMemory:
    """Samples the PSS of this process and all its descendants; ``peak_mb`` after exit."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_pss_kb(p) for p in [me, *_children(me)]))
            time.sleep(self.every)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 1024


class InRamWindows(Dataset):
    """The old pipeline: float32 sessions in RAM, one window gathered per __getitem__."""

    def __init__(self, store: Path, split: str):
        root = open_store(store / "zarr")
        info = StoreInfo.load(str(store))
        self.W = info.window_len
        self.stim, self.eye, self.robs, self.dfs, self.index = [], [], [], [], []
        n_max = max(info.n_units)  # mixed-session batches: units padded, masked by dfs
        for s, name in enumerate(root.attrs["sessions"]):
            g = root[name]
            self.stim.append((g["stim"][...].astype(np.float32) - 127.0) / 255.0)
            self.eye.append(g["eyepos"][...])
            pad = ((0, 0), (0, n_max - info.n_units[s]))
            self.robs.append(np.pad(g["robs"][...].astype(np.float32), pad))
            self.dfs.append(np.pad(g["dfs"][...].astype(np.float32), pad))
            ends = g[f"windows/{split}"][...]
            self.index += [(s, int(e)) for e in ends]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        s, e = self.index[i]
        lo = e - self.W + 1
        return {"stim": torch.from_numpy(self.stim[s][lo : e + 1].copy()).unsqueeze(0),
                "eyepos": torch.from_numpy(self.eye[s][lo : e + 1].copy()),
                "robs": torch.from_numpy(self.robs[s][e]),
                "dfs": torch.from_numpy(self.dfs[s][e]),
                "dataset_idx": s}


# ----------------------------------------------------------------------------- peers
PEER_EXTRA = ('litdata comes with the [bench] extra: pip install -e ".[bench]"; with a CPU-only '
              'torch (whose matching torchvision is not on PyPI) use: pip install --no-deps '
              'litdata && pip install lightning-utilities obstore tifffile boto3')


def peer_rows(store: Path, info: StoreInfo, split: str = "train") -> list[tuple[int, int, int]]:
    """(session index, first target, targets) of every stored clip of ``split``."""
    root = open_store(store / "zarr")
    return [(i, int(a), int(n)) for i, name in enumerate(info.sessions)
            for a, n in root[name][f"clips/{split}"][...]]


@functools.lru_cache(maxsize=2)
def _opened(store: str):
    return StoreInfo.load(store), open_store(Path(store) / "zarr")


def read_peer_clip(store: str, row: tuple[int, int, int]) -> dict:
    """One clip as plain numpy arrays, the same bins as our shards hold, padded like our
    loaders pad (to ``clip_len`` targets; units to the store's largest session)."""
    info, root = _opened(store)
    g = root[info.sessions[row[0]]]
    W, L, n_max = info.window_len, info.clip_len, max(info.n_units)
    s, n = row[1], row[2]
    item = pad_clip(sample(g["stim"][s - W + 1 : s + n], g["eyepos"][s - W + 1 : s + n],
                           g["robs"][s : s + n], g["dfs"][s : s + n], row[0], s + n - 1), L)
    pad = ((0, 0), (0, n_max - item["robs"].shape[1]))
    return {"stim": item["stim"], "eyepos": item["eyepos"].astype(np.float32),
            "robs": np.pad(item["robs"], pad).astype(np.float32),
            "dfs": np.pad(item["dfs"], pad).astype(np.float32)}


class PeerCollate:
    """What our loaders hand the model, made from the peers' samples: stim normalised to
    float32 [B, 1, S, H, W], gaze, counts and masks as float32."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, samples):
        if isinstance(samples, dict):  # litdata's default batching: a dict of lists/tensors
            samples = [dict(zip(samples, v)) for v in zip(*samples.values())]
        stim = torch.from_numpy(np.stack([np.asarray(x["stim"]) for x in samples]))
        return {"stim": normalise_stim(stim, self.mean, self.std).unsqueeze(1),
                **{k: torch.from_numpy(np.stack([np.asarray(x[k]) for x in samples]))
                   for k in ("eyepos", "robs", "dfs")}}


def write_litdata(store: Path, rows: list, out: Path) -> None:
    from functools import partial

    from litdata import optimize

    optimize(fn=partial(read_peer_clip, str(store)), inputs=rows, output_dir=str(out),
             chunk_bytes="64MB", num_workers=1, start_method="spawn")


def _in_child(fn, *args):
    """``fn(*args)`` in a fresh process: writing the peers' copies grows this process (and
    litdata's optimize leaves helper processes behind), which the rows' memory would count."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def litdata_loader(out: Path, batch: int, workers: int, mean: float, std: float):
    from litdata import StreamingDataLoader, StreamingDataset

    ds = StreamingDataset(str(out), shuffle=True, seed=0)
    return StreamingDataLoader(ds, batch_size=batch, num_workers=workers,
                               collate_fn=PeerCollate(mean, std), drop_last=True)


def write_plain_wds(store: Path, rows: list, out: Path, shard_mb: float = 64.0) -> list[str]:
    """Per-clip ``.npy`` members in plain tar shards (webdataset's TarWriter and encoder)."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    urls, tw, size = [], None, 0.0
    for k, row in enumerate(rows):
        if tw is None or size > shard_mb * 1e6:
            if tw is not None:
                tw.close()
            urls.append(str(out / f"plain-{len(urls):05d}.tar"))
            tw, size = wds.TarWriter(urls[-1]), 0.0
        clip = read_peer_clip(str(store), row)
        tw.write({"__key__": f"{k:08d}", **{f"{n}.npy": v for n, v in clip.items()}})
        size += sum(v.nbytes for v in clip.values())
    tw.close()
    return urls


def plain_wds_loader(urls: list[str], batch: int, workers: int, mean: float, std: float):
    """The usual plain-webdataset pipeline: shard shuffle, sample shuffle, decode, batch."""
    import webdataset as wds

    ds = (wds.WebDataset(urls, shardshuffle=len(urls), workersplitter=wds.split_by_worker,
                         nodesplitter=wds.split_by_node, empty_check=False)
          .shuffle(32).decode().rename_keys(stim="stim.npy", eyepos="eyepos.npy",
                                            robs="robs.npy", dfs="dfs.npy")
          .batched(batch, collation_fn=PeerCollate(mean, std), partial=False))
    return wds.WebLoader(ds, batch_size=None, num_workers=workers,
                         persistent_workers=workers > 0)


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6


# ----------------------------------------------------------------------------- timing


def run(make_loader, batches: int, per_batch) -> tuple[float, float]:
    """(predicted bins per second, peak MB) over ``batches`` batches after 3 warm-up."""
    with PeakMemory() as mem:
        loader = make_loader()
        it = iter(loader)
        for _ in range(3):
            next(it)
        t0 = time.perf_counter()
        bins = 0
        for _ in range(batches):
            try:
                batch = next(it)
            except StopIteration:  # a short split: go on into the next epoch
                it = iter(loader)
                batch = next(it)
            bins += per_batch(batch)
        dt = time.perf_counter() - t0
        del it, loader
    return bins / dt, mem.peak_mb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, help="an existing store (default: build one)")
    p.add_argument("--gb", type=float, default=2.0, help="GB of frames for a built store")
    p.add_argument("--crop-px", type=int, default=51)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-peers", action="store_true", help="skip litdata / plain webdataset")
    p.add_argument("--rounds", type=int, default=3,
                   help="times each row runs, in turn with the others; the median rate is shown")
    a = p.parse_args(argv)

    work = None
    store = a.store
    if store is None:
        work = Path(tempfile.mkdtemp(prefix="bench_loaders_"))
        print(f"building a {a.gb:g} GB demo store of {a.crop_px}x{a.crop_px} frames...")
        src, _ = write_sized_sessions(work / "src", a.gb, a.crop_px, 120.0, 4, seed=1)
        cfg = work / "c.yaml"
        cfg.write_text(yaml.safe_dump({"store": {"out_dir": str(work / "store"),
                                                 "target_rate_hz": None}}))
        build_store(load_data_config(cfg), [str(p) for p in src], workers=2)
        shutil.rmtree(work / "src")
        store = work / "store"
    try:
        info = StoreInfo.load(str(store))
        frames_gb = sum(s["n_bins"] * s["frame_hw"][0] * s["frame_hw"][1]
                        for s in __import__("json").loads(
                            (store / "manifest.json").read_text())["sessions"].values()) / 1e9
        B, nw = a.batch, a.workers
        kw = {"num_workers": nw, "persistent_workers": nw > 0}
        rows = []

        def window_bins(b):
            return b["robs"].shape[0]

        def clip_bins(b):
            return int(b["robs"].shape[0] * b["robs"].shape[1])

        def ours(count):
            """Our rows: normalise the uint8 frames here, in the main process (timed)."""
            def per_batch(b):
                b = normalise_stim(b, info.pixel_mean, info.pixel_std)
                return count(b)
            return per_batch

        # (name, mode, make_loader, bins of a batch): every row runs once per round, the
        # rows in turn, and reports its median rate over the rounds (this VM's speed drifts
        # by up to 2x within minutes: interleaving keeps the ratios within one round's drift)
        specs = [("baseline: in-RAM float32, per-sample windows", "window",
                  lambda: DataLoader(InRamWindows(store, "train"), batch_size=B, shuffle=True,
                                     **kw), window_bins),
                 ("ours: WebDataset streaming", "window",
                  lambda: DataLoader(ShardStream(info, "train", "window", B, num_workers=nw,
                                                 batches_per_epoch=10**6),
                                     batch_size=None, **kw), ours(window_bins))]
        for verify in (True, False):
            specs.append(("ours: WebDataset streaming" + ("" if verify else
                                                          ", no sample sha256 check"), "clip",
                          lambda v=verify: DataLoader(
                              ShardStream(info, "train", "clip", max(1, B // 8),
                                          num_workers=nw, batches_per_epoch=10**6,
                                          verify_checksums=v),
                              batch_size=None, **kw), ours(clip_bins)))
        for mode, bs in (("window", B), ("clip", max(1, B // 8))):
            def mk(mode=mode, bs=bs):
                ds = ZarrWindows(info, "train", mode)
                return DataLoader(ds, batch_sampler=LocalityBatchSampler(ds, bs),
                                  collate_fn=identity, **kw)
            specs.append(("ours: Zarr random access", mode, mk,
                          ours(window_bins if mode == "window" else clip_bins)))
        disk = {"ours: WebDataset streaming": folder_mb(store / "wds"),
                "ours: Zarr random access": folder_mb(store / "zarr")}
        peer_dir = Path(tempfile.mkdtemp(prefix="bench_peers_"))
        n_ours = len(specs)
        if not a.no_peers:
            clips = peer_rows(store, info)
            mean, std = info.pixel_mean, info.pixel_std
            bc = max(1, B // 8)
            urls = _in_child(write_plain_wds, store, clips, peer_dir / "plain")
            disk["peer: plain webdataset (.npy tar)"] = folder_mb(peer_dir / "plain")
            specs.append(("peer: plain webdataset (.npy tar)", "clip",
                          lambda: plain_wds_loader(urls, bc, nw, mean, std), clip_bins))
            try:
                _in_child(write_litdata, store, clips, peer_dir / "litdata")
            except ImportError:
                print(f"litdata not installed: {PEER_EXTRA}")
            else:
                disk["peer: litdata (optimize + StreamingDataset)"] = folder_mb(
                    peer_dir / "litdata")
                specs.append(("peer: litdata (optimize + StreamingDataset)", "clip",
                              lambda: litdata_loader(peer_dir / "litdata", bc, nw, mean, std),
                              clip_bins))
        try:
            measured = [[] for _ in specs]
            for _ in range(a.rounds):
                for spec, out in zip(specs, measured):
                    out.append(run(spec[2], a.batches, spec[3]))
        finally:
            shutil.rmtree(peer_dir, ignore_errors=True)
        # peak memory from the first round: later rounds start from a main process that
        # earlier rows (the in-RAM baseline above all) have grown
        rows = [(name, mode, float(np.median([m[0] for m in ms])), ms[0][1])
                for (name, mode, *_), ms in zip(specs, measured)]
        peers = rows[n_ours:]
        base_rate, base_mem = rows[0][2], rows[0][3]
        win_rate = rows[1][2]
        print(f"\nstore {store}: {frames_gb:.2f} GB of frames, window_len {info.window_len}, "
              f"clip_len {info.clip_len}, {nw} workers, batch {B} windows / {max(1, B // 8)} "
              f"clips; bins/s: median of {a.rounds} rounds, peak MB: the first round's")
        print(f"{'loader':<56}{'mode':>7}{'bins/s':>10}{'x base':>8}{'peak MB':>10}"
              f"{'x base':>8}{'disk MB':>9}")
        for name, mode, rate, mem in rows:
            mb = disk.get(name.split(",")[0], float("nan"))
            print(f"{name:<56}{mode:>7}{rate:>10.0f}{rate / base_rate:>8.2f}{mem:>10.0f}"
                  f"{mem / base_mem:>8.3f}{mb:>9.0f}")
        print(f"\nclip mode vs window mode (streaming): {rows[2][2] / win_rate:.1f}x predicted "
              "bins per second")
        print(f"streaming clip mode with / without the per-sample sha256 check: "
              f"{rows[2][2] / rows[3][2]:.2f}")
        if peers:
            best = max(p[2] for p in peers)
            print(f"streaming clip mode / best peer: {rows[2][2] / best:.2f}")
        else:
            print(f"no peer measured ({PEER_EXTRA})")
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
