#!/usr/bin/env python
"""Quality against time for the default training run, so that regressions show.

    python pipelines/bench_quality.py                     # the default run, as train.py does it
    python pipelines/bench_quality.py --data my_demo.yaml --out reports/quality-seed3

Trains the default recipe (``configs/model/full.yaml`` + ``configs/train/cpu_demo.yaml`` on
the data config's store, validating every ``--val-every`` steps instead of the config's) and
reports the validation fraction of the oracle's bits per spike reached after 5, 10 and 30
minutes of wall time (the last validation at or before each mark; validation time counts),
and at the end. Writes ``summary.md`` / ``summary.json`` to ``--out``. A run folder that
already holds a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from polar_data.config.typed_yaml import load_config, to_dict
from polar_model.training.run_config import TrainConfig
from polar_model.training.runs import validation_curve as curve
from polar_model.training.trainer import main as train_main

ROOT = Path(__file__).resolve().parents[1]
MARKS = (5.0, 10.0, 30.0)


def at_marks(rows: list[dict], marks=MARKS) -> dict:
    """{mark: (step, minutes, fraction of oracle) of the last validation by then, or None}."""
    out = {}
    for m in marks:
        done = [r for r in rows if float(r.get("time/minutes") or "inf") <= m]
        r = done[-1] if done else None
        out[m] = None if r is None else (int(r["step"]) + 1, float(r["time/minutes"]),
                                         float(r.get("val/fraction_of_oracle") or "nan"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "configs/data/demo.yaml")
    p.add_argument("--model", type=Path, default=ROOT / "configs/model/full.yaml")
    p.add_argument("--train", type=Path, default=ROOT / "configs/train/cpu_demo.yaml")
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--run", type=Path, default=ROOT / "runs/quality")
    p.add_argument("--out", type=Path, default=ROOT / "reports/quality")
    a = p.parse_args(argv)
    tc = to_dict(load_config(a.train, TrainConfig))  # the file over TrainConfig's defaults
    tc["val_every_steps"] = a.val_every
    rows = curve(a.run)
    if not rows or int(rows[-1]["step"]) < tc["max_steps"] - 1:
        a.run.mkdir(parents=True, exist_ok=True)
        (a.run / "train.yaml").write_text(yaml.safe_dump(tc))
        t0 = time.perf_counter()
        rc = train_main(["--data", str(a.data), "--model", str(a.model), "--train",
                         str(a.run / "train.yaml"), "--out", str(a.run), "--no-progress"])
        if rc != 0:
            raise SystemExit(f"training failed with status {rc}")
        (a.run / "train_minutes.txt").write_text(f"{(time.perf_counter() - t0) / 60:.2f}\n")
        rows = curve(a.run)
    marks = at_marks(rows)
    last = rows[-1]
    every = int(rows[1]["step"]) - int(rows[0]["step"]) if len(rows) > 1 else a.val_every
    lines = [f"Default run ({a.model.name}, {a.train.name}, {tc['max_steps']} steps), "
             f"validation every {every} steps (minutes from the start of fitting; placing the "
             "readouts before it is not counted).", "",
             "| after | step | minutes | val fraction of oracle |", "|---|---|---|---|"]
    for m, v in marks.items():
        lines.append(f"| {m:g} min | " + (" | ".join([str(v[0]), f"{v[1]:.1f}", f"{v[2]:.3f}"])
                                            if v else "- | - | (no validation yet)") + " |")
    lines.append(f"| end | {int(last['step']) + 1} | {float(last['time/minutes']):.1f} | "
                 f"{float(last['val/fraction_of_oracle']):.3f} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    (a.out / "summary.json").write_text(json.dumps(
        {"marks": {str(k): v for k, v in marks.items()},
         "end": {"step": int(last["step"]) + 1, "minutes": float(last["time/minutes"]),
                 "fraction_of_oracle": float(last["val/fraction_of_oracle"]),
                 "val_bps": float(last["val/bps"])}}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
