"""Fits on data not made in the model's image: the default recipe on demo populations of
each family, with and without eye-tracker calibration error, over demo seeds, scored as the
fraction of the ground truth's (oracle's) validation bits per spike, overall and per unit kind.

    python pipelines/bench_realism.py                            # the default demo, seed 0
    python pipelines/bench_realism.py --data configs/data/demo_family_*.yaml --seeds 0 1 2
    python pipelines/bench_realism.py --data configs/data/demo_exact_gaze.yaml  # exact gaze
    python pipelines/bench_realism.py --tag noshift --model.shifter=false       # another recipe

Each (data config, seed) is a case with its own folder under ``--out``,
``<data stem>_s<seed>[_<tag>]`` (``--tag`` names a recipe given by train.py overrides):
``store/`` (built from the demo config with ``--demo.seed``), ``run/`` (``pipelines/train.py``
with the model and train configs and the overrides given) and ``eval/``
(``pipelines/evaluate.py`` on the best checkpoint). A case whose ``eval/summary.json``
exists is read, not redone, so the table can be built in parts (e.g. one case per cluster
job) and printed again with the same command.

Per unit kind (the demo's ground truth, ``polar_data.demo.truth``): the kind's summed val BPS
over its summed oracle BPS (each unit's mean over its val targets). Printed and written to
``<out>/summary.md`` / ``summary.json``; wall time per case (build, train, evaluate) is
included, so the cost of a table is stated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (a python script of this checkout) with its output in ``log``; seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT,
                               cwd=ROOT)
    if code != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return time.perf_counter() - t0


def kinds_of(store: Path) -> dict[tuple[str, int], str]:
    """(session, unit id) -> the unit's kind, from the demo NWB files kept in the store."""
    from polar_data.demo.truth import read_truth

    out = {}
    for nwb in sorted((store / "sessions").glob("*.nwb")):
        truth = read_truth(nwb)
        for uid, kind in zip(truth.unit_ids.tolist(), truth.kind.tolist()):
            out[(nwb.stem, int(uid))] = str(kind)
    return out


def shifter_error(case: Path, every: int = 10) -> dict:
    """How well the trained shifter recovered the injected calibration field, in arcmin RMS
    over the sessions' valid gaze samples (every ``every``-th bin), both with their means
    removed (a constant offset trades off against the readout positions): the shifter at the
    recorded gaze against the field at the true gaze (the drift and noise are not the
    field's), and the field itself (what a model without a shifter is off by). {} when the
    model has no shifter or the demo no calibration error."""
    import numpy as np
    import torch

    import polar_model
    from polar_data.demo.truth import read_truth

    model = polar_model.load(case / "run/checkpoints/best.ckpt").module.model
    if getattr(model, "shifter", None) is None:
        return {}
    err, field = [], []
    for i, name in enumerate(model.spec.session_names):
        truth = read_truth(case / "store/sessions" / f"{name}.nwb")
        if not truth.calibration.enabled:
            return {}
        ok = np.flatnonzero(np.isfinite(truth.recorded_eyepos).all(1)
                            & np.isfinite(truth.true_eyepos).all(1))[::every]
        with torch.no_grad():
            got = model.shifter.gaze_shift(torch.from_numpy(truth.recorded_eyepos[ok]),
                                           i).double().numpy()
        want = truth.calibration.field(truth.true_eyepos[ok])
        err.append((got - got.mean(0)) - (want - want.mean(0)))
        field.append(want - want.mean(0))
    rms = lambda x: float(np.sqrt((np.concatenate(x) ** 2).sum(1).mean()) * 60)  # noqa: E731
    return {"shift_error_arcmin": rms(err), "field_arcmin": rms(field)}


def score(case: Path) -> dict:
    """Overall and per-kind val fraction of the oracle of a finished case."""
    summary = json.loads((case / "eval" / "summary.json").read_text())
    (name, res), = summary.items()
    val = res["val"]
    kinds = kinds_of(case / "store")
    bps, orc = defaultdict(float), defaultdict(float)
    for sess, uid, b, o in zip(val["unit_session"], val["unit_ids"], val["units"],
                               val["oracle_units"]):
        k = kinds.get((sess, int(uid)), "?")
        bps[k] += b
        orc[k] += o
    per_kind = {k: bps[k] / orc[k] for k in sorted(bps) if orc[k] > 0}
    return {"val_bps": val["bps"]["mean_unclamped"],
            "oracle_bps": val["oracle"]["mean_unclamped"],
            "fraction": val["fraction_of_oracle"], "per_kind": per_kind,
            **shifter_error(case)}


def one_case(data: Path, seed: int, a, extra: list[str]) -> dict:
    case = a.out / f"{data.stem}_s{seed}{'_' + a.tag if a.tag else ''}"
    case.mkdir(parents=True, exist_ok=True)
    times = json.loads((case / "times.json").read_text()) if (case / "times.json").exists() \
        else {}
    if not (case / "eval" / "summary.json").exists():
        store = case / "store"
        flags = ["--config", str(data), "--out", str(store), f"--demo.seed={seed}"]
        if not (store / "manifest.json").exists():
            times["build_s"] = run(["pipelines/build_shards.py", *flags, "--no-progress"],
                                   case / "build.log")
        train = ["pipelines/train.py", "--data", str(data), "--loader.store", str(store),
                 "--out", str(case / "run"), "--no-progress", *extra]
        if a.model:
            train += ["--model", str(a.model)]
        if a.train:
            train += ["--train", str(a.train)]
        if a.steps:
            train += ["--train.max_steps", str(a.steps)]
        times["train_s"] = run(train, case / "train.log")
        times["eval_s"] = run(["pipelines/evaluate.py", str(case / "run/checkpoints/best.ckpt"),
                               "--data", str(data), "--loader.store", str(store), "--out",
                               str(case / "eval")], case / "eval.log")
        (case / "times.json").write_text(json.dumps(times))
    return {"case": case.name, "data": data.stem, "tag": a.tag, "seed": seed,
            **score(case), **times}


def table(rows: list[dict]) -> str:
    kinds = sorted({k for r in rows for k in r["per_kind"]})
    head = ["case", "val BPS", "oracle BPS", "fraction of oracle", *kinds,
            "field (arcmin)", "shifter error (arcmin)", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["case"], f"{r['val_bps']:.4f}", f"{r['oracle_bps']:.4f}",
                 f"**{r['fraction']:.3f}**",
                 *(f"{r['per_kind'][k]:.2f}" if k in r["per_kind"] else "" for k in kinds),
                 *(f"{r[k]:.2f}" if k in r else "-" for k in ("field_arcmin",
                                                               "shift_error_arcmin")),
                 f"{r.get('train_s', float('nan')) / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", default=[ROOT / "configs/data/demo.yaml"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--tag", default="", help="names the recipe of the train.py overrides given")
    p.add_argument("--model", type=Path, default=None, help="default: train.py's")
    p.add_argument("--train", type=Path, default=None, help="default: train.py's")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps (default: recipe)")
    p.add_argument("--out", type=Path, default=ROOT / "reports/realism")
    a, extra = p.parse_known_args(argv)  # the rest goes to train.py (dotted overrides)
    if extra and not a.tag:
        p.error(f"train.py overrides {extra} need a --tag naming that recipe")
    a.out = a.out.resolve()
    rows = []
    for data in a.data:
        for seed in a.seeds:
            rows.append(one_case(data.resolve(), seed, a, extra))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    (a.out / "summary.md").write_text(text + "\n")
    (a.out / "summary.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
