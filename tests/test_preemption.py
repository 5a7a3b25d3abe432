"""Preemption: SIGTERM mid-epoch -> last.ckpt -> clean exit -> exact resume."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import data_config, train_config

from polar_model.training import trainer as train

ROOT = Path(__file__).resolve().parents[1]


class _SignalAt(L.Callback):
    """Sends this process ``signum`` during training step ``step`` (as a scheduler would)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_mid_epoch_saves_and_resume_reaches_the_same_weights(tmp_path, tiny_store,
                                                                    monkeypatch, signum):
    from polar_data.config.data_config import load_data_config
    from polar_model.training.datamodule import PolarDataModule

    data = data_config(tmp_path, tiny_store, batch_size=4)
    per_epoch = len(PolarDataModule(load_data_config(data)).train_dataloader())
    stop = per_epoch // 2 + 1
    # no validation inside the run: last.ckpt at the signal can only come from the handler
    tc = str(train_config(tmp_path, max_epochs=2, val_every_steps=10_000))
    args = ["--data", str(data), "--model", str(ROOT / "configs/model/static.yaml"),
            "--train", tc, "--no-progress"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train.main([*args, "--out", str(whole)]) == 0

    make = train.make_trainer

    def with_signal(*a):
        trainer = make(*a)
        trainer.callbacks.insert(0, _SignalAt(stop, signum))
        return trainer

    monkeypatch.setattr(train, "make_trainer", with_signal)
    with pytest.raises(SystemExit) as exit_info:  # the job ends cleanly, not with a traceback
        train.main([*args, "--out", str(cut)])
    assert exit_info.value.code in (None, 0)
    monkeypatch.undo()
    last = cut / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == stop + 1  # the batch in flight finished, then saved
    assert train.main([*args, "--out", str(tmp_path / "resumed"), "--resume", str(last)]) == 0
    a = _weights(whole / "checkpoints" / "last.ckpt")
    b = _weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None) or signum != signal.SIGUSR1


def test_last_checkpoint_is_written_at_every_validation(tmp_path, tiny_store):
    data = data_config(tmp_path, tiny_store, batch_size=4)
    tc = str(train_config(tmp_path, max_steps=4, val_every_steps=2))
    run = tmp_path / "run"

    class Record(L.Callback):
        steps = []

        def on_validation_end(self, trainer, *_):
            pass

        def on_train_batch_start(self, trainer, *_):
            last = run / "checkpoints" / "last.ckpt"
            if last.is_file():
                self.steps.append(torch.load(last, map_location="cpu",
                                             weights_only=True)["global_step"])

    make = train.make_trainer
    train.make_trainer = lambda *a: (lambda t: (t.callbacks.append(Record()), t)[1])(make(*a))
    try:
        assert train.main(["--data", str(data), "--model",
                           str(ROOT / "configs/model/static.yaml"), "--train", tc,
                           "--out", str(run), "--no-progress"]) == 0
    finally:
        train.make_trainer = make
    assert sorted(set(Record.steps)) == [2]  # written at the validation of step 2 ...
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert final["global_step"] == 4  # ... and at the end
