#!/usr/bin/env python
"""Bins per second of ``polar_model.load(ckpt).predict`` against the trainer's step, in one run.

One model (the default run's, ``PolarConfig()``, or ``--model configs/model/X.yaml``; random
weights: speed does not depend on them), 51 x 51 frames, window 16, one session of 32 units,
and one generated input of ``--seconds`` at 120 Hz in trials of ``--trial-s`` with a blink
(invalid gaze) in each. Rows, each timed in this process, each bins/s a median of
``--repeats``:

* ``train step``: forward + backward + AdamW step in clip mode, ``--batch`` clips of
  ``--clip`` targets (the trainer's batch: 8 x 32), model in training mode;
* ``forward, clip``: the same batch, forward only (eval mode, no grad);
* ``predict, clip``: :meth:`Predictor.predict` over the whole input (``history="clip"``,
  ``--clip-len`` / ``--batch-frames``: its defaults unless given);
* ``predict, window``: ``history="window"`` (one window per bin, the path before clips), on
  the first ``--window-bins`` bins only (it is ``window_len`` times the work).

Ratios are to the train step and to the forward-only clip pass of this run. The peak
resident memory that ``predict, clip`` added (``ru_maxrss`` after it minus before it; it runs
first, so the mark is its own) is printed under the table.

    python pipelines/bench_predict.py                    # ~2 minutes on 2 quiet cores
    python pipelines/bench_predict.py --batch-frames 256 512 1024   # sweep the batch knob
    python pipelines/bench_predict.py --device cuda
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def session(seconds: float, trial_s: float, hw: int, rate_hz: float, seed: int = 0):
    """uint8 frames [T, hw, hw], gaze [T, 2] deg (a random walk, NaN in one 100 ms blink a
    trial) and trial ids [T]."""
    rng = np.random.default_rng(seed)
    T, per = int(seconds * rate_hz), int(trial_s * rate_hz)
    stim = rng.integers(0, 256, size=(T, hw, hw), dtype=np.uint8)
    eyepos = np.cumsum(rng.normal(0, 0.02, size=(T, 2)), 0).astype(np.float32)
    trial = (np.arange(T) // per).astype(np.int64)
    blink = int(0.1 * rate_hz)
    for start in range(per // 2, T, per):
        eyepos[start : start + blink] = np.nan
    return stim, eyepos, trial


def rates(rows: list, repeats: int, sync) -> list[float]:
    """bins/s of each ``(fn, bins, repeats)`` row, a median over its repeats; the rows are
    timed round-robin, so a neighbour's load on shared cores falls on all of them alike."""
    for fn, _, n in rows:
        if n > 1:
            fn()  # warm-up (allocators, first-call costs)
    times = [[] for _ in rows]
    for r in range(repeats):
        for (fn, _, n), t in zip(rows, times):
            if r < n:
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                t.append(time.perf_counter() - t0)
    return [bins / sorted(t)[len(t) // 2] for (_, bins, _), t in zip(rows, times)]


def main(argv=None) -> int:
    import torch

    from polar_model.config import PolarConfig, load_model_config
    from polar_model.losses import masked_poisson_nll
    from polar_model.spec import DataSpec
    from polar_model.training.lit_module import EncodingModule
    from polar_model.training.predictor import BATCH_FRAMES, CLIP_LEN, Predictor
    from polar_model.training.run_config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a model YAML (default: the default run's PolarConfig())")
    p.add_argument("--seconds", type=float, default=30.0, help="input length (s)")
    p.add_argument("--trial-s", type=float, default=4.0, help="trial length (s)")
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--batch", type=int, default=8, help="train step: clips per batch")
    p.add_argument("--clip", type=int, default=32, help="train step: targets per clip")
    p.add_argument("--clip-len", type=int, default=CLIP_LEN, help="predict: targets per clip")
    p.add_argument("--batch-frames", type=int, nargs="+", default=[BATCH_FRAMES],
                   help="predict: frames per forward (several: one row each)")
    p.add_argument("--window-bins", type=int, default=600,
                   help="predict, window: bins of the input it runs on")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    rate_hz, hw, n = 120.0, 51, 32
    cfg = load_model_config(Path(a.model)) if a.model else PolarConfig()
    spec = DataSpec(a.window, rate_hz, (hw, hw), 12.75, (n,), (tuple([0.05] * n),), ("s",))
    module = EncodingModule.create(cfg, spec, TrainConfig())
    pred = Predictor(module, {"pixel_mean": 127.5, "pixel_std": 74.0,
                              "unit_ids": {"s": list(range(n))}}, dev)
    stim, eyepos, trial = session(a.seconds, a.trial_s, hw, rate_hz)
    n_pred = int(pred.predictable(eyepos, trial).sum())

    # predict first: its peak resident memory is then its own (ru_maxrss is a high mark)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pred.predict(stim, eyepos, "s", trial, clip_len=a.clip_len, batch_frames=a.batch_frames[0])
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024

    model = pred.module.model
    S = a.clip + a.window - 1
    x = torch.randn(a.batch, 1, S, hw, hw, device=dev)
    g = torch.cumsum(torch.randn(a.batch, S, 2) * 0.02, 1).to(dev)
    end = torch.arange(a.batch, device=dev) * S + S - 1
    y = torch.poisson(torch.full((a.batch, a.clip, n), 0.05)).to(dev)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)

    def step():
        model.train()
        out = model(x, g, 0, end=end)
        loss = masked_poisson_nll(out.log_rate.float(), y, torch.ones_like(y))
        for extra in (out.jepa_loss, out.penalty):
            if extra is not None:
                loss = loss + 0.1 * extra
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_teacher()
        model.eval()

    def forward():
        with torch.no_grad():
            model(x, g, 0, end=end)

    wb = min(a.window_bins, len(stim))
    names = [f"train step ({a.batch} x {a.clip}, fwd + bwd)", f"forward, clip ({a.batch} x "
             f"{a.clip})"] + [f"predict, clip (clip_len {a.clip_len}, batch_frames {f})"
                              for f in a.batch_frames] + [f"predict, window ({wb} bins)"]
    bins = a.batch * a.clip
    rows = [(step, bins, a.repeats), (forward, bins, a.repeats)] + [
        (lambda f=f: pred.predict(stim, eyepos, "s", trial, clip_len=a.clip_len,
                                  batch_frames=f), n_pred, a.repeats) for f in a.batch_frames
    ] + [(lambda: pred.predict(stim[:wb], eyepos[:wb], "s", trial[:wb], history="window"),
          int(pred.predictable(eyepos[:wb], trial[:wb]).sum()), 1)]
    measured = rates(rows, a.repeats, sync)
    train, fwd = measured[:2]

    print(f"{cfg.name}: window {a.window}, {hw} x {hw}, {n} units, {a.seconds:g} s input "
          f"({len(stim)} bins, {n_pred} predictable), torch threads "
          f"{torch.get_num_threads()}, {a.device}")
    print(f"{'path':<52} {'bins/s':>9} {'/ train':>8} {'/ fwd':>7}")
    for name, rate in zip(names, measured):
        print(f"{name:<52} {rate:>9.0f} {rate / train:>8.2f} {rate / fwd:>7.2f}")
    print(f"peak RSS added by predict, clip (batch_frames {a.batch_frames[0]}): "
          f"{peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
