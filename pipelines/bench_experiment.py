#!/usr/bin/env python
"""The experiment that matters: the six Polar-V1 configurations and the ResNet + ConvGRU
baseline trained with equal step budgets on the demo store, scored by validation bits per
spike, each as a ratio to the baseline and to the oracle (the ground-truth rates).

    python pipelines/build_shards.py && python pipelines/bench_experiment.py --steps 200

Writes ``reports/experiment/summary.md`` (the table) and each run under
``runs/experiment/steps<N>-lr<lr>/<config>``. A finished run is reused: after changing a
model, delete its runs. CPU-feasible sizes: the demo data config and
``configs/train/cpu_demo.yaml`` with ``--steps`` optimizer steps per model. The score is the
trainer's validation pass after the last step (every val target once); the oracle is the
ground-truth rates scored on the same targets.
"""


from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from train import main as train_main  # noqa: E402

from polar_data.data_config import load_data_config  # noqa: E402
from polar_data.store_info import StoreInfo  # noqa: E402
from polar_model.evaluation import predict_split, score  # noqa: E402


def final_val(run: Path) -> dict | None:
    """The last logged validation metrics of a run, or None if it has none."""
    log = run / "logs" / "metrics.csv"
    if not log.is_file():
        return None
    rows = [r for r in csv.DictReader(log.open()) if r.get("val/bps")]
    return rows[-1] if rows else None


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["baseline", "minimal", "behavior", "jepa", "full", "static", "static_jepa"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float,
                   help="peak learning rate for every model (default: the train config's)")
    p.add_argument("--data", type=Path, default=ROOT / "configs/data/demo.yaml")
    p.add_argument("--train", type=Path, default=ROOT / "configs/train/cpu_demo.yaml")
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--runs", type=Path, default=ROOT / "runs/experiment")
    p.add_argument("--out", type=Path, default=ROOT / "reports/experiment")
    a = p.parse_args(argv)
    tc = yaml.safe_load(a.train.read_text())
    lr = a.lr if a.lr is not None else float(tc["lr"])
    tc.update(max_steps=a.steps, val_every_steps=a.steps, lr=lr, warmup_steps=min(
        tc.get("warmup_steps", 20), a.steps // 5))
    a.out.mkdir(parents=True, exist_ok=True)
    tcfg = a.out / "train.yaml"
    tcfg.write_text(yaml.safe_dump(tc))
    cfg = load_data_config(a.data)
    info = StoreInfo.load(cfg.loader.store or str(cfg.store.out_dir))
    rows = {}
    oracle = score(predict_split(lambda b: b["true_rate"].clamp_min(1e-12).log(), info,
                                 "val"))["oracle"]
    for name in a.configs:
        run = a.runs / f"steps{a.steps}-lr{lr:g}" / name
        done = final_val(run)
        if done is None or int(done["step"]) < a.steps - 1:
            t0 = time.perf_counter()
            rc = train_main(["--data", str(a.data), "--model",
                             str(ROOT / f"configs/model/{name}.yaml"), "--train", str(tcfg),
                             "--out", str(run), "--no-progress"])
            if rc != 0:
                raise SystemExit(f"training {name} failed with status {rc}")
            (run / "train_minutes.txt").write_text(f"{(time.perf_counter() - t0) / 60:.2f}\n")
            done = final_val(run)
        timing = run / "train_minutes.txt"
        minutes = float(timing.read_text()) if timing.is_file() else float("nan")
        rows[name] = (float(done["val/bps"]), float(done["val/bps_clamped"]), minutes)
        print(f"{name}: val BPS {rows[name][0]:.4f} ({minutes:.1f} min)", flush=True)
    base = rows["baseline"][0] if "baseline" in rows else None
    orc = oracle["mean_unclamped"]
    lines = [f"Validation bits per spike after {a.steps} steps each at peak lr {lr:g} "
             "(demo store, CPU).", "",
             "| config | val BPS | clamped | x baseline | - baseline | x oracle | minutes |",
             "|---|---|---|---|---|---|---|"]
    for name, (b, clamped, minutes) in rows.items():
        ratio = f"{b / base:.2f}" if base is not None and base > 0 else "n/a"
        diff = f"{b - base:+.4f}" if base is not None else "n/a"
        lines.append(f"| {name} | {b:.4f} | {clamped:.4f} | {ratio} | {diff} | {b / orc:.2f} "
                     f"| {minutes:.1f} |")
    lines += ["", f"Oracle (ground-truth rates) val BPS: {orc:.4f}. The ratio to the baseline "
              "is given only when the baseline's BPS is positive (a ratio to a loss to the "
              "mean-rate null model has no meaning); '- baseline' is the difference in bits "
              "per spike. Minutes: wall time of the training run when it was made."]
    text = "\n".join(lines)
    (a.out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
