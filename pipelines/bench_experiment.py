"""The experiment that matters: the six Polar-V1 configurations and the ResNet + ConvGRU
baseline trained with equal step budgets on the demo store, over several seeds, scored by
validation bits per spike: mean +- spread over seeds, the fraction of the oracle (the demo's
ground-truth rates on the same targets) and the difference / ratio to the baseline.

    python pipelines/build_shards.py && python pipelines/bench_experiment.py --steps 600

Writes ``reports/experiment/summary.md`` (the table), ``learning_curves.png`` (fraction of
oracle against training minutes, one line per config, mean over seeds) and each run under
``runs/experiment/steps<N>-lr<lr>/<config>-seed<k>``. A finished run is reused: after
changing a model, delete its runs. Each config trains with ``configs/train/cpu_demo.yaml``
(seed, ``--steps`` optimizer steps, cosine over them), or with ``configs/train/<config>.yaml``
when that exists (a config's own tuned recipe; the baseline's sweep chose the shared one:
README, The experiment). The score is the trainer's validation pass after the last step
(every val target once).
"""


from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from polar_data.config.typed_yaml import load_config, to_dict
from polar_model.training.run_config import TrainConfig
from polar_model.training.runs import final_validation as final_val
from polar_model.training.runs import validation_curve as curve
from polar_model.training.trainer import main as train_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["baseline", "minimal", "behavior", "jepa", "full", "static", "static_jepa"]


def _ms(x) -> str:
    x = np.asarray(x, float)
    return f"{x.mean():.4f} +- {x.std(ddof=1) if len(x) > 1 else 0.0:.4f}"


def plot_curves(curves: dict, out: Path) -> None:
    """Fraction of oracle against minutes, mean over seeds at each validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        mins = np.mean([[float(x.get("time/minutes") or "nan") for x in r[:n]] for r in runs], 0)
        frac = np.array([[float(x.get("val/fraction_of_oracle") or "nan") for x in r[:n]]
                         for r in runs])
        ax.plot(mins, frac.mean(0), marker="o", ms=3, label=name)
        if len(runs) > 1:
            ax.fill_between(mins, frac.min(0), frac.max(0), alpha=0.15)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("training minutes (wall time, validation included)")
    ax.set_ylabel("val fraction of oracle BPS")
    ax.set_title("learning curves (mean over seeds; band: min-max)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=float,
                   help="peak learning rate for every model (default: each model's own)")
    p.add_argument("--val-every", type=int, default=100, help="steps between validations")
    p.add_argument("--data", type=Path, default=ROOT / "configs/data/demo.yaml")
    p.add_argument("--train", type=Path, default=ROOT / "configs/train/cpu_demo.yaml")
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--runs", type=Path, default=ROOT / "runs/experiment")
    p.add_argument("--out", type=Path, default=ROOT / "reports/experiment")
    a = p.parse_args(argv)
    def train_file(path: Path) -> dict:  # a train file over TrainConfig's defaults
        return to_dict(load_config(path, TrainConfig))

    base_tc = train_file(a.train)
    a.out.mkdir(parents=True, exist_ok=True)
    rows, curves = {}, {}
    for name in a.configs:
        model_yaml = ROOT / f"configs/model/{name}.yaml"
        own = ROOT / f"configs/train/{name}.yaml"  # a config's own tuned settings, if any
        tc0 = train_file(own) if own.is_file() else base_tc
        lr = a.lr if a.lr is not None else float(tc0["lr"])
        rows[name], curves[name] = [], []
        for seed in a.seeds:
            run = a.runs / f"steps{a.steps}-lr{'own' if a.lr is None else f'{lr:g}'}" \
                / f"{name}-seed{seed}"
            done = final_val(run)
            if done is None or int(done["step"]) < a.steps - 1:
                tc = dict(tc0, max_steps=a.steps, val_every_steps=min(a.val_every, a.steps),
                          lr=lr, seed=seed)
                run.mkdir(parents=True, exist_ok=True)
                (run / "train.yaml").write_text(yaml.safe_dump(tc))
                t0 = time.perf_counter()
                rc = train_main(["--data", str(a.data), "--model", str(model_yaml),
                                 "--train", str(run / "train.yaml"), "--out", str(run),
                                 "--no-progress"])
                if rc != 0:
                    raise SystemExit(f"training {name} (seed {seed}) failed with status {rc}")
                (run / "train_minutes.txt").write_text(f"{(time.perf_counter() - t0) / 60:.2f}\n")
                done = final_val(run)
            timing = run / "train_minutes.txt"
            minutes = float(timing.read_text()) if timing.is_file() else float("nan")
            frac = float(done.get("val/fraction_of_oracle") or "nan")
            rows[name].append((float(done["val/bps"]), frac, minutes))
            curves[name].append(curve(run))
            print(f"{name} seed {seed}: val BPS {rows[name][-1][0]:.4f}, fraction of oracle "
                  f"{frac:.3f} ({minutes:.1f} min)", flush=True)
    base = np.mean([r[0] for r in rows["baseline"]]) if "baseline" in rows else None
    lines = [f"Validation bits per spike after {a.steps} steps per run, seeds {a.seeds} "
             "(demo store, CPU); mean +- standard deviation over seeds.", "",
             "| config | val BPS | fraction of oracle | - baseline | x baseline | minutes |",
             "|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        b = np.array([r[0] for r in rs])
        ratio = f"{b.mean() / base:.2f}" if base is not None and base > 0 else "n/a"
        diff = f"{b.mean() - base:+.4f}" if base is not None else "n/a"
        lines.append(f"| {name} | {_ms(b)} | {_ms([r[1] for r in rs])} | {diff} | {ratio} "
                     f"| {np.nanmean([r[2] for r in rs]):.1f} |")
    lines += ["", "The ratio to the baseline is given only when the baseline's mean BPS is "
              "positive (a ratio to a loss to the mean-rate null model has no meaning); "
              "'- baseline' is the difference in bits per spike. Minutes: wall time of a run "
              "when it was made (machine load varies)."]
    text = "\n".join(lines)
    (a.out / "summary.md").write_text(text + "\n")
    plot_curves(curves, a.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
