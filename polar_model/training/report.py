"""Evaluate checkpoints on a store's val and test splits and write a report folder.

    python pipelines/evaluate.py runs/full/checkpoints/best.ckpt runs/baseline/checkpoints/best.ckpt
    python pipelines/evaluate.py runs/*/checkpoints/best.ckpt --out reports/demo

Checkpoints are read with ``weights_only=True`` (a file carrying code is refused, naming it)
and each must have been trained on the store given (``--data`` / ``--loader.store``): another
store (other sessions, unit ids, split seed or trials per split) is refused naming the
difference, exit status 2, before anything is written.

Report (``--out``, default ``reports/latest``):
    summary.md / summary.json   per checkpoint and split: mean BPS (unclamped, clamped),
                                the oracle's (demo stores) and the fraction of it; per session
    units.csv                   BPS of every unit (session, recording unit id), every
                                checkpoint, val and test
Every plot is written as PNG and PDF.
    bps_scatter.png             per-unit val BPS of each model against the baseline's
    saccade_traces.png          observed vs predicted rates around saccades
    saccade_triggered.png       saccade-triggered average response, observed vs predicted
                                (onsets: the first behaviour model's own saccade gate)
    filters.png                 the learned quadrature filters per level (Polar-V1 models)
    saccade_gain.png            learned saccade-locked gain per unit (behaviour models), with
                                the demo's ground-truth curve on demo stores
    readout_positions.png       readout Gaussian centres per session
    training_curves.png         loss and val BPS from each run's CSV log
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from polar_data.config.data_config import load_data_config
from polar_data.config.storage_options import redact_config, usable_config
from polar_data.config.typed_yaml import ConfigError, override, split_overrides, to_yaml
from polar_data.demo.population import PopulationParams, saccade_gain_curve
from polar_data.loaders.store_info import StoreInfo
from polar_data.schema import StoreError
from polar_data.store.zarr_groups import open_store
from polar_model.config import PolarConfig
from polar_model.gaze import GazeEncoder, kinematics
from polar_model.training import REPO
from polar_model.training.checkpoints import (
    CheckpointError,
    check_same_store,
    load_module,
    read_checkpoint,
)
from polar_model.training.evaluation import predict_split, score
from polar_model.training.lit_module import EncodingModule
from polar_model.training.run_config import DATA_SECTIONS
from polar_model.training.runs import metrics_path
from polar_model.training.store_facts import data_facts, store_identity

SPLITS = ("val", "test")
plt.rcParams.update({"figure.constrained_layout.use": True, "font.size": 9,
                     "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
                     "axes.spines.top": False, "axes.spines.right": False})


def save(fig, out: Path, stem: str) -> None:
    """PNG for reading, PDF (vector) for talks and papers."""
    fig.savefig(out / f"{stem}.png", dpi=150)
    fig.savefig(out / f"{stem}.pdf")
    plt.close(fig)


def unit_labels(preds, info: StoreInfo) -> tuple[list[str], list[int]]:
    """(session, recording unit id) of every unit, in the order ``score`` concatenates."""
    sessions, ids = [], []
    for p in preds:
        uids = info.unit_ids[info.sessions.index(p.name)]
        sessions += [p.name] * len(uids)
        ids += [int(u) for u in uids]
    return sessions, ids


def load(ckpt: Path, info: StoreInfo | None = None, facts: dict | None = None
         ) -> EncodingModule:
    """The checkpoint's module (eval mode), read with ``weights_only=True``; with ``info``
    and ``facts`` (the store's data facts), refused unless it was trained on that store.
    Raises CheckpointError naming the file."""
    ckpt_dict = read_checkpoint(ckpt)
    if info is not None:
        check_same_store(ckpt, ckpt_dict, facts, info.base)
    module = load_module(ckpt, ckpt_dict)
    if info is not None and (tuple(module.spec.session_names) != info.sessions
                             or tuple(module.spec.n_units) != info.n_units):
        raise CheckpointError(f"{ckpt}: trained on sessions {list(module.spec.session_names)} "
                              f"with {list(module.spec.n_units)} units, the store {info.base} "
                              f"holds {list(info.sessions)} with {list(info.n_units)}")
    return module


def saccade_detector(modules: dict, eyepos: np.ndarray, session: int,
                     rate_hz: float) -> GazeEncoder:
    """The saccade gate the report's onsets come from: the first behaviour model's own
    (:class:`~polar_model.gaze.GazeEncoder`: its fitted threshold, its noise estimate for
    ``session``). With no behaviour model among ``modules``, the default model's detector
    (``PolarConfig()``), its noise estimated from this session's gaze ``eyepos [T, 2]`` (deg,
    finite bins) as training estimates it."""
    for m in modules.values():
        if hasattr(m.model, "gaze"):
            return m.model.gaze
    detector = GazeEncoder.from_config(PolarConfig(), 1.0 / rate_hz, session + 1)
    with torch.no_grad():
        v, _ = kinematics(torch.as_tensor(eyepos, dtype=torch.float32)[None], 1.0 / rate_hz)
        detector.train().noise_of(v[:, torch.isfinite(v).all(-1)[0]], session)
    return detector.eval()


def saccade_onsets(modules: dict, eyepos: np.ndarray, session: int,
                   rate_hz: float) -> np.ndarray:
    """Onset bins of the (micro)saccades in one session's gaze ``eyepos [T, 2]`` (deg): where
    :func:`saccade_detector`'s gate opens (:meth:`GazeEncoder.saccade_onsets`)."""
    detector = saccade_detector(modules, eyepos, session, rate_hz)
    return detector.saccade_onsets(torch.as_tensor(eyepos), session).cpu().numpy()


def plot_scatter(results: dict, base: str, out: Path) -> None:
    others = [k for k in results if k != base]
    if not others:
        return
    fig, axes = plt.subplots(1, len(others), figsize=(3.2 * len(others), 3.2), squeeze=False)
    b = np.asarray(results[base]["val"]["units"])
    for ax, name in zip(axes[0], others):
        m = np.asarray(results[name]["val"]["units"])
        ax.scatter(b, m, s=8, alpha=0.7)
        lo, hi = np.nanmin([b, m]), np.nanmax([b, m])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"{base} (bits/spike)")
        ax.set_ylabel(f"{name} (bits/spike)")
        ax.set_title(name)
    fig.suptitle("per-unit validation bits per spike")
    save(fig, out, "bps_scatter")


def plot_saccades(preds: dict, modules: dict, info: StoreInfo, out: Path) -> None:
    """The first session's saccade-triggered averages and traces, at the onsets of
    :func:`saccade_onsets` on its gaze."""
    root = open_store(f"{info.base}/zarr")
    name0 = next(iter(preds))
    s = 0
    sp = preds[name0][s]
    eyepos = root[sp.name]["eyepos"][...]
    on = saccade_onsets(modules, eyepos, s, info.rate_hz)
    pre, post = int(0.1 * info.rate_hz), int(0.3 * info.rate_hz)
    ok = [o for o in on if o - pre >= 0 and o + post < len(eyepos)
          and sp.dfs[o - pre : o + post].any(1).all()]
    t = (np.arange(-pre, post) / info.rate_hz) * 1000
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if ok:
        obs = np.mean([sp.robs[o - pre : o + post].mean(1) for o in ok], 0) * info.rate_hz
        ax.plot(t, obs, "k", lw=2, label=f"observed ({len(ok)} saccades)")
        if sp.true_rate is not None:
            tr = np.mean([sp.true_rate[o - pre : o + post].mean(1) for o in ok], 0)
            ax.plot(t, tr * info.rate_hz, "k:", label="ground truth")
        for name, p in preds.items():
            pr = np.mean([p[s].rate[o - pre : o + post].mean(1) for o in ok], 0)
            ax.plot(t, pr * info.rate_hz, label=name)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("time from saccade onset (ms)")
    ax.set_ylabel("population mean rate (spikes/s)")
    ax.set_title(f"saccade-triggered average, {sp.name}, validation")
    ax.legend(fontsize=7)
    save(fig, out, "saccade_triggered")
    # traces: the validation stretch with most saccades, three best-predicted units
    if not ok:
        return
    o = ok[len(ok) // 2]
    a, b = max(o - int(0.5 * info.rate_hz), 0), min(o + int(1.5 * info.rate_hz), len(eyepos))
    units = np.argsort(-np.nan_to_num(sp.bps()))[:3]
    fig, axes = plt.subplots(len(units), 1, figsize=(7, 2 * len(units)), sharex=True)
    tt = np.arange(a, b) / info.rate_hz
    kern = np.ones(5) / 5
    for ax, u in zip(np.atleast_1d(axes), units):
        ax.plot(tt, np.convolve(sp.robs[a:b, u], kern, "same") * info.rate_hz, "k",
                label="observed (smoothed)")
        for name, p in preds.items():
            ax.plot(tt, p[s].rate[a:b, u] * info.rate_hz, label=name, lw=1)
        for x in on[(on >= a) & (on < b)]:
            ax.axvline(x / info.rate_hz, color="grey", lw=0.6, ls="--")
        uid = info.unit_ids[info.sessions.index(sp.name)][u]
        ax.set_ylabel(f"{sp.name} unit {uid}\n(spikes/s)")
    np.atleast_1d(axes)[0].legend(fontsize=7, ncol=3)
    np.atleast_1d(axes)[-1].set_xlabel("time (s); dashed: saccade onsets")
    save(fig, out, "saccade_traces")


def plot_filters(modules: dict, out: Path) -> None:
    polar = {k: m for k, m in modules.items() if hasattr(m.model, "filters")}
    if not polar:
        return
    name, m = next(iter(polar.items()))
    banks = m.model.filters
    M = banks[0].theta.numel()
    fig, axes = plt.subplots(len(banks), M, figsize=(1.1 * M, 1.2 * len(banks)),
                             squeeze=False)
    for lvl, bank in enumerate(banks):
        ker = bank.kernels().detach()[:M, 0]
        for j in range(M):
            axes[lvl, j].imshow(ker[j], cmap="RdBu_r")
            axes[lvl, j].axis("off")
        axes[lvl, 0].set_title(f"level {lvl}", fontsize=7, loc="left")
    fig.suptitle(f"{name}: even filters per level (odd = their quadrature partners)")
    save(fig, out, "filters")


def plot_saccade_gain(modules: dict, info: StoreInfo, out: Path) -> None:
    """Gain exp(kernel) against time after saccade onset: every unit thin, median thick."""
    behaviour = {k: m for k, m in modules.items() if hasattr(m.model, "saccade_gain")}
    if not behaviour:
        return
    fig, axes = plt.subplots(1, len(behaviour), figsize=(4 * len(behaviour), 3), squeeze=False)
    for ax, (name, m) in zip(axes[0], behaviour.items()):
        gains = np.concatenate([np.exp(sg.kernel.detach().numpy())
                                for sg in m.model.saccade_gain])  # [units, K]
        ms = np.arange(gains.shape[1]) / info.rate_hz * 1000
        ax.plot(ms, gains.T, color="C0", lw=0.4, alpha=0.3)
        ax.plot(ms, np.median(gains, 0), color="C0", lw=2, label="learned (median unit)")
        if info.has_true_rate:
            p = PopulationParams()
            ax.plot(ms, saccade_gain_curve(len(ms), info.rate_hz, p.saccade_suppression,
                                           p.saccade_enhancement),
                    "k--", lw=1.5, label="demo ground truth")
        ax.axhline(1.0, color="0.6", lw=0.8)
        ax.set_xlabel("time after saccade onset (ms)")
        ax.set_ylabel("rate gain")
        ax.set_title(f"{name}: saccade-locked gain", fontsize=10)
        ax.legend(fontsize=7)
    save(fig, out, "saccade_gain")


def plot_readouts(modules: dict, out: Path) -> None:
    """Readout centres in degrees from the crop centre (x right, y up)."""
    fig, axes = plt.subplots(1, len(modules), figsize=(3 * len(modules), 3.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], modules.items()):
        half = np.array(m.spec.frame_hw[::-1]) / 2 / m.spec.ppd  # degrees to the crop edge
        for s, r in enumerate(m.model.readouts):
            mu = r.mu.detach().numpy() * half
            ax.scatter(mu[:, 0], -mu[:, 1], s=8, label=m.spec.session_names[s])
        ax.set_xlim(-half[0], half[0])
        ax.set_ylim(-half[1], half[1])
        ax.set_aspect("equal")
        ax.set_xlabel("x (deg)")
        ax.set_ylabel("y (deg)")
        ax.set_title(name)
    axes[0, 0].legend()
    fig.suptitle("readout Gaussian centres")
    save(fig, out, "readout_positions")


def plot_curves(ckpts: dict, out: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, ckpt in ckpts.items():
        log = metrics_path(ckpt.parent.parent)
        if not log.is_file():
            continue
        rows = list(csv.DictReader(log.open()))
        tr = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
        va = [(int(r["step"]), float(r["val/bps"])) for r in rows if r.get("val/bps")]
        if tr:
            a1.plot(*zip(*tr), label=name, lw=0.8)
        if va:
            a2.plot(*zip(*va), "o-", label=name)
    a1.set_xlabel("optimizer step")
    a1.set_ylabel("train loss (Poisson NLL per bin)")
    a2.set_xlabel("optimizer step")
    a2.set_ylabel("validation (bits/spike)")
    a2.legend(fontsize=7)
    save(fig, out, "training_curves")


def write_summary(results: dict, out: Path) -> str:
    lines = ["| model | split | BPS (mean) | BPS (clamped) | oracle BPS | fraction of oracle |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for split in SPLITS:
            s = r[split]
            orc = s.get("oracle", {}).get("mean_unclamped", float("nan"))
            lines.append(f"| {name} | {split} | {s['bps']['mean_unclamped']:.4f} | "
                         f"{s['bps']['mean_clamped']:.4f} | {orc:.4f} | "
                         f"{s.get('fraction_of_oracle', float('nan')):.3f} |")
    table = "\n".join(lines)
    (out / "summary.md").write_text("# Evaluation\n\n" + table + "\n")
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    with open(out / "units.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "split", "session", "unit_id", "bps", "oracle_bps"])
        for name, r in results.items():
            for split in SPLITS:
                orc = r[split].get("oracle_units", [None] * len(r[split]["units"]))
                for sess, uid, b, o in zip(r[split]["unit_session"], r[split]["unit_ids"],
                                           r[split]["units"], orc):
                    w.writerow([name, split, sess, uid, b, o])
    return table


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv, DATA_SECTIONS)
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", type=Path)
    p.add_argument("--data", type=Path, default=REPO / "configs/data/demo.yaml",
                   help="data config; any key can be set with --<section>.<key> VALUE")
    p.add_argument("--out", type=Path, default=REPO / "reports/latest")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved data config as YAML and exit")
    a = p.parse_args(rest)
    if a.batch_size < 1:
        p.error(f"--batch-size: must be >= 1, got {a.batch_size}")
    try:
        cfg = usable_config(override(load_data_config(a.data), overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.print_config:
        print(to_yaml(redact_config(cfg)), end="")
        return 0
    if not a.checkpoints:
        p.error("give at least one checkpoint")
    options = cfg.loader.storage_options
    try:
        info = StoreInfo.load(cfg.loader.store or str(cfg.store.out_dir), options)
        facts = data_facts(info, store_identity(info, options))
        open_store(f"{info.base}/zarr")  # predictions read the store's (local) Zarr part
        loaded = [(ckpt, load(ckpt, info, facts)) for ckpt in a.checkpoints]
    except (StoreError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    modules, ckpts, results, preds = {}, {}, {}, {}
    for ckpt, m in loaded:
        name = m.model_cfg.name
        if name in modules:
            name = f"{name}:{ckpt.parent.parent.name}"
        modules[name], ckpts[name] = m, ckpt
        results[name] = {}
        for split in SPLITS:
            pr = predict_split(
                lambda b, m=m: m(b).log_rate,  # EncodingModule.forward: the batch layout
                info, split, a.batch_size, progress=True)
            results[name][split] = score(pr)
            sessions, ids = unit_labels(pr, info)
            results[name][split].update(unit_session=sessions, unit_ids=ids)
            if split == "val":
                preds[name] = pr
    base = next((k for k, m in modules.items() if m.model_cfg.kind == "resnet_convgru"),
                next(iter(modules)))
    table = write_summary(results, a.out)
    plot_scatter(results, base, a.out)
    plot_saccades(preds, modules, info, a.out)
    plot_filters(modules, a.out)
    plot_saccade_gain(modules, info, a.out)
    plot_readouts(modules, a.out)
    plot_curves(ckpts, a.out)
    print(table)
    print(f"report: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
