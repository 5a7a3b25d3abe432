"""The trainer end to end on small stores: learning, exact resume, guards, oracle, DDP."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_config, train_config

from polar_data.loaders.store_info import StoreInfo
from polar_model.training import report as evaluate
from polar_model.training import trainer as train
from polar_model.training.evaluation import predict_split, score
from polar_model.training.runs import metrics_path

ROOT = Path(__file__).resolve().parents[1]


def _losses(run: Path) -> dict[int, float]:
    rows = csv.DictReader(metrics_path(run).open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _val_nll(module, data_cfg) -> float:
    import lightning as L

    from polar_data.config.data_config import load_data_config
    from polar_model.training.datamodule import PolarDataModule

    dm = PolarDataModule(load_data_config(data_cfg))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    return trainer.validate(module, datamodule=dm, verbose=False)[0]["val/nll"]


@pytest.mark.slow  # minutes of training; test_quality has the fast learning checks
def test_two_epochs_improve_validation_loss(tmp_path, small_demo_store):
    from polar_model.training.lit_module import EncodingModule

    data = data_config(tmp_path, small_demo_store)
    run = tmp_path / "run"
    assert train.main(["--data", str(data), "--model", str(ROOT / "configs/model/minimal.yaml"),
                       "--train", str(train_config(tmp_path, max_epochs=2, head_lr_mult=1.0)),
                       "--out", str(run),
                       "--no-progress"]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    trained = EncodingModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    fresh = EncodingModule(**{k: trained.hparams[k] for k in ("run_config", "spec")})
    before, after = _val_nll(fresh, data), _val_nll(trained, data)
    assert after < before - 1e-3, (before, after)


class _Preempted(Exception):
    """Stands in for a cluster job killed mid-epoch."""


@pytest.mark.slow  # the quick exact-resume check is tests/test_preemption.py
def test_resume_mid_epoch_reproduces_the_rest_of_the_run(tmp_path, small_demo_store,
                                                         monkeypatch):
    """Kill a run in the middle of its first epoch, just after the validation that saved
    ``last.ckpt``; resume from it: every later step (the rest of that epoch, then the whole
    second one) has the uninterrupted run's loss, so optimizer, schedule, JEPA teacher and
    data order all resumed exactly."""
    import lightning as L

    from polar_data.config.data_config import load_data_config
    from polar_model.training.datamodule import PolarDataModule

    data = data_config(tmp_path, small_demo_store, batch_size=16)
    per_epoch = len(PolarDataModule(load_data_config(data)).train_dataloader())
    stop = per_epoch // 2
    model = str(ROOT / "configs/model/static_jepa.yaml")  # its JEPA teacher must resume too
    whole, half, resumed = tmp_path / "whole", tmp_path / "half", tmp_path / "resumed"
    tc = str(train_config(tmp_path, max_epochs=2, val_every_steps=stop))
    args = ["--data", str(data), "--model", model, "--train", tc, "--no-progress"]
    assert train.main([*args, "--out", str(whole)]) == 0

    class KillAfterCheckpoint(L.Callback):
        def on_train_batch_start(self, trainer, *_):
            if trainer.global_step == stop:  # validation at `stop` has saved last.ckpt
                raise _Preempted

    make = train.make_trainer
    monkeypatch.setattr(train, "make_trainer", lambda *a: _with(make(*a), KillAfterCheckpoint()))
    with pytest.raises(_Preempted):
        train.main([*args, "--out", str(half)])
    monkeypatch.undo()
    assert train.main([*args, "--out", str(resumed), "--resume",
                       str(half / "checkpoints" / "last.ckpt")]) == 0
    a, b = _losses(whole), _losses(resumed)
    assert min(b) == stop and set(b) == {s for s in a if s >= stop}, (stop, sorted(b))
    for s in b:
        assert abs(a[s] - b[s]) < 1e-6 * max(1.0, abs(a[s])), (s, a[s], b[s])


def _with(trainer, callback):
    trainer.callbacks.insert(0, callback)
    return trainer


def test_jepa_guard_refuses_a_short_window_store(tmp_path, tiny_store, capsys):
    data = data_config(tmp_path, tiny_store)  # window_len 6 < 4 + 8
    rc = train.main(["--data", str(data), "--model", str(ROOT / "configs/model/full.yaml"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "window_len = 6" in err and ">= 12" in err and str(tiny_store) in err
    assert "build_shards.py --model-config" in err


def test_oracle_predictions_score_the_oracle(small_demo_store):
    info = StoreInfo.load(str(small_demo_store))
    preds = predict_split(lambda b: torch.log(b["true_rate"].clamp_min(1e-12)), info, "val")
    s = score(preds)
    np.testing.assert_allclose(s["units"], s["oracle_units"], rtol=1e-5, atol=1e-7,
                               equal_nan=True)  # float32 exp(log(r)) round trip
    assert s["oracle"]["mean_unclamped"] > 0.05
    assert abs(s["fraction_of_oracle"] - 1) < 1e-5


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_uneven_shards_finish(tmp_path, small_demo_store):
    import json
    import shutil

    store = tmp_path / "store"
    shutil.copytree(small_demo_store, store, ignore=shutil.ignore_patterns("zarr", "sessions"))
    manifest = json.loads((store / "manifest.json").read_text())
    train_shards = [e for e in manifest["shards"] if e["split"] == "train"]
    if len(train_shards) % 2 == 0:  # make the two ranks' shard counts differ
        from polar_data.store.manifest import seal

        manifest["shards"].remove(train_shards[-1])
        (store / "manifest.json").write_text(json.dumps(seal(manifest)))  # a deliberate edit
    assert len(StoreInfo.load(str(store)).shard_urls("train")) % 2 == 1
    data = data_config(tmp_path, store, kind="wds", num_workers=1, sample_len=16)
    cmd = [sys.executable, str(ROOT / "pipelines/train.py"), "--data", str(data),
           "--model", str(ROOT / "configs/model/minimal.yaml"),
           "--train", str(train_config(tmp_path, max_epochs=1, max_steps=6)),
           "--out", str(tmp_path / "ddp"), "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()


def test_non_finite_loss_fails_loudly_naming_the_session(small_demo_store):
    from polar_model.spec import DataSpec
    from polar_model.training.lit_module import EncodingModule
    from polar_model.training.run_config import TrainConfig

    info = StoreInfo.load(str(small_demo_store))
    spec = DataSpec(info.window_len, info.rate_hz, info.frame_hw, info.ppd, info.n_units,
                    info.mean_rates, info.sessions)
    from polar_model.config import load_model_config

    module = EncodingModule.create(load_model_config(ROOT / "configs/model/static.yaml"), spec,
                                   TrainConfig())
    from polar_data.loaders.batches import normalise_stim
    from polar_data.loaders.zarr_windows import ZarrWindows

    batch = normalise_stim(ZarrWindows(info, "train", "clip").__getitems__([0]),
                           info.pixel_mean, info.pixel_std)
    batch["stim"][0, 0, -1, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=info.sessions[0]):
        module._loss(batch, "train")


def test_evaluate_writes_the_report_with_ema_weights(tmp_path, small_demo_store):
    data = data_config(tmp_path, small_demo_store)
    run = tmp_path / "run"
    assert train.main(["--data", str(data), "--model", str(ROOT / "configs/model/static.yaml"),
                       "--train", str(train_config(tmp_path, max_steps=4, val_every_steps=2,
                                                   ema_decay=0.9)),
                       "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "report"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert evaluate.main([str(ckpt), "--data", str(data), "--out", str(out)]) == 0
    for f in ("summary.md", "summary.json", "units.csv", "saccade_triggered.png",
              "filters.png", "readout_positions.png", "training_curves.png"):
        assert (out / f).is_file(), f
        if f.endswith(".png"):
            assert (out / f).with_suffix(".pdf").is_file(), f  # a vector copy of every plot
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["static"]["val"]["oracle"]["mean_unclamped"] > 0
    info = StoreInfo.load(str(small_demo_store))
    want = [(s, u) for s, ids in zip(info.sessions, info.unit_ids) for u in ids]
    val = summary["static"]["val"]
    assert list(zip(val["unit_session"], val["unit_ids"])) == want  # recording ids, not 0..N
    rows = list(csv.DictReader((out / "units.csv").open()))
    assert [(r["session"], int(r["unit_id"])) for r in rows if r["split"] == "val"] == want
    assert "| static | test |" in (out / "summary.md").read_text()
    assert not (out / "saccade_gain.png").exists()  # static models have no saccade gain


def test_saccade_gain_plot_for_behaviour_models(tmp_path):
    from types import SimpleNamespace

    from polar_model.config import load_model_config
    from polar_model.models import build_model
    from polar_model.spec import DataSpec

    spec = DataSpec(window_len=16, rate_hz=120.0, frame_hw=(27, 27), ppd=7.0, n_units=(4, 5),
                    mean_rates=((0.05,) * 4, (0.05,) * 5), session_names=("a", "b"))
    model = build_model(load_model_config(ROOT / "configs/model/behavior.yaml"), spec)
    assert [sg.kernel.shape for sg in model.saccade_gain] == [(4, 30), (5, 30)]  # 250 ms
    evaluate.plot_saccade_gain({"behavior": SimpleNamespace(model=model)},
                               SimpleNamespace(rate_hz=120.0, has_true_rate=True), tmp_path)
    assert (tmp_path / "saccade_gain.png").stat().st_size > 10_000
