#!/usr/bin/env python
"""Train-step time, parameters and peak memory of every model config vs the baseline.

Forward + backward + AdamW step on CPU, batch 32, 51 x 51 frames, window 16 (window mode:
one predicted bin per sample), one session of 32 units; ``--clip 32 --batch 8`` is the
trainer's clip mode (32 predicted bins per sample after 15 bins of history, the default
batch). Predicted bins per second = batch x predicted bins per sample / step time. Each
configuration runs in its own process, so its peak resident memory (``ru_maxrss``, the
process's high-water mark, minus the same process's mark before the model was built) is its
own. Ratios are to the ResNet + ConvGRU baseline measured in this run.
Targets: the full model no slower than the baseline, at most 0.75 x its parameters, at most
its peak memory; ``full+autograd_dynamics`` (the same model with the dynamics step by step
through autograd, the reference of the written-out backward) is the before of that row.

    python pipelines/bench_model.py              # all configs, ~3 minutes on 2 cores
    python pipelines/bench_model.py --steps 3 --batch 8
    python pipelines/bench_model.py --clip 32 --batch 8   # clip mode, the trainer's batch
    python pipelines/bench_model.py --device cuda --precision bf16-mixed   # on a GPU

On CUDA, peak memory is ``torch.cuda.max_memory_allocated`` and steps are timed after a
synchronize; ``bf16-mixed`` runs the image path under bfloat16 autocast (gaze stays float32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["baseline", "minimal", "behavior", "jepa", "full", "static", "static_jepa",
           "full+autograd_dynamics"]
# +option: that config with the option on (autograd_dynamics: the dynamics step by step
# through autograd, the reference the default's written-out backward is tested against)


def one(name: str, steps: int, batch: int, window: int, device: str = "cpu",
        precision: str = "32-true", clip: int = 0) -> dict:
    import torch

    from polar_model.config import load_model_config
    from polar_model.losses import masked_poisson_nll
    from polar_model.models import build_model
    from polar_model.spec import DataSpec

    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    L = clip or 1                       # predicted bins per sample
    S = window + L - 1                  # bins of stimulus per sample
    spec = DataSpec(window, 120.0, (51, 51), 12.75, (32,), (tuple([0.05] * 32),), ("s",))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config, _, option = name.partition("+")
    cfg = load_model_config(ROOT / f"configs/model/{config}.yaml")
    if option:
        setattr(cfg, option, True)
    m = build_model(cfg, spec).to(dev).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    stim = torch.randn(batch, 1, S, 51, 51, device=dev)
    eyepos = torch.cumsum(torch.randn(batch, S, 2) * 0.05, 1).to(dev)
    y = torch.poisson(torch.full((batch, L, 32), 0.05)).to(dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times, first_s = [], 0.0
    for i in range(steps + 1):
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            out = m(stim, eyepos, 0, last_only=not clip)
        loss = masked_poisson_nll(out.log_rate.float(), y, torch.ones_like(y))
        if out.jepa_loss is not None:
            loss = loss + m.cfg.lambda_jepa * out.jepa_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_teacher()
        if cuda:
            torch.cuda.synchronize(dev)
        if i:  # the first step warms up allocators (and compiles)
            times.append(time.perf_counter() - t0)
        else:
            first_s = time.perf_counter() - t0
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    ms = 1000 * sorted(times)[len(times) // 2]
    return {"name": name, "ms": ms, "bins_s": batch * L / (ms / 1000),
            "params": sum(p.numel() for p in m.parameters() if p.requires_grad),
            "peak_mb": peak_mb, "first_s": first_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--clip", type=int, default=0,
                   help="predicted bins per sample (clip mode); 0: window mode (one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--configs", nargs="+", default=CONFIGS[1:], metavar="NAME",
                   help="configs to compare with the baseline (always run first)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            p.error(f"--device {a.device}: this torch sees no CUDA device")
    if a.one:
        print(json.dumps(one(a.one, a.steps, a.batch, a.window, a.device, a.precision,
                             a.clip)))
        return 0
    rows = []
    for name in ["baseline", *a.configs]:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(a.steps),
                              "--batch", str(a.batch), "--window", str(a.window),
                              "--device", a.device, "--precision", a.precision,
                              "--clip", str(a.clip)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    mode = f"clip mode, {a.clip} predicted bins" if a.clip else "window mode, 1 predicted bin"
    print(f"train step (fwd + bwd + AdamW), {a.device}, {a.precision}, batch {a.batch}, "
          f"51x51, window {a.window}, {mode} per sample, median of {a.steps} steps")
    print(f"{'config':<22}{'params':>10}{'x base':>8}{'step ms':>10}{'x base':>8}"
          f"{'bins/s':>9}{'peak MB':>10}{'x base':>8}{'first s':>9}")
    for r in rows:
        print(f"{r['name']:<22}{r['params']:>10,}{r['params'] / base['params']:>8.3f}"
              f"{r['ms']:>10.0f}{r['ms'] / base['ms']:>8.2f}{r['bins_s']:>9.0f}"
              f"{r['peak_mb']:>10.0f}{r['peak_mb'] / base['peak_mb']:>8.2f}{r['first_s']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
