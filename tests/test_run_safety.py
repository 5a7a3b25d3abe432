"""The training side of the safety issue: checkpoints that carry code, truncated or empty
checkpoints, credentials in run folders, runs tied to their store, one run per folder, and a
checkpoint whenever a run ends (items 1, 3, 4, 12, 13, 14, 16 of issue 28)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny, data_config, train_config
from helpers import spike_times_from_counts, tiny_session

import polar_model
from polar_data.demo.nwb_writer import write_nwb
from polar_model.training import report as evaluate
from polar_model.training import trainer as train
from polar_model.training.runs import metrics_path

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "configs/model/static.yaml")


def _train(tmp: Path, store: Path, out: Path, *extra, steps: int = 3, epochs: int = 2,
           val_every: int = 1000, **loader) -> int:
    d = tmp / f"cfg-{out.name}"
    d.mkdir(parents=True, exist_ok=True)
    tc = train_config(d, max_steps=steps, max_epochs=epochs, val_every_steps=val_every)
    return train.main(["--data", str(data_config(d, store, **loader)), "--model", MODEL,
                       "--train", str(tc), "--out", str(out), "--no-progress",
                       *map(str, extra)])


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_store):
    """A finished 3-step run on ``tiny_store`` (treat as read-only)."""
    tmp = tmp_path_factory.mktemp("safe_run")
    assert _train(tmp, tiny_store, tmp / "run") == 0
    return tmp / "run"


def _sources(d: Path, names, n_units) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (name, n) in enumerate(zip(names, n_units)):
        s = tiny_session(n_trials=8, bins_per_trial=80, n_units=n, seed=10 + k, name=name)
        out.append(write_nwb(s, d / f"{name}.nwb", spike_times_from_counts(s), layout="crops"))
    return out


@pytest.fixture(scope="module")
def other_stores(tmp_path_factory, tiny_sources):
    """Stores unlike ``tiny_store``: other sessions with the same unit counts (3, 4, 5);
    the same sources split with split_seed 1; other sessions with other unit counts."""
    tmp = tmp_path_factory.mktemp("other_stores")
    stores = {}
    for key, names, units in (("sessions", ["t0", "t1", "t2"], [3, 4, 5]),
                              ("units", ["u0", "u1", "u2"], [4, 4, 4])):
        stores[key] = tmp / key / "store"
        src = _sources(tmp / key / "src", names, units)
        assert build_tiny(tmp / key, src, stores[key]) == 0
    (tmp / "seed").mkdir()
    stores["seed"] = tmp / "seed" / "store"
    assert build_tiny(tmp / "seed", tiny_sources, stores["seed"], split_seed=1) == 0
    return stores


# ----------------------------------------------- 1, 16: checkpoints carry no code, are named


class _Payload:
    """Unpickling this creates ``marker`` (stands in for any code a checkpoint could run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_copy(good: Path, bad: Path, marker: Path) -> Path:
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, bad)
    return bad


def test_a_checkpoint_carrying_code_is_refused_naming_it_and_nothing_runs(run, tiny_store,
                                                                         tmp_path, capsys):
    marker = tmp_path / "marker"
    bad = _hostile_copy(run / "checkpoints" / "last.ckpt", tmp_path / "bad.ckpt", marker)
    torch.load(bad, map_location="cpu", weights_only=False)  # the payload is real
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*refused"):
        polar_model.load(bad)
    assert not marker.exists()
    data = data_config(tmp_path, tiny_store)
    assert evaluate.main([str(bad), "--data", str(data), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert _train(tmp_path, tiny_store, tmp_path / "resumed", "--resume", bad, steps=5) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "refused" in err
    assert not marker.exists()
    assert not (tmp_path / "resumed" / "checkpoints").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_and_truncated_checkpoints_are_named(run, tiny_store, tmp_path, capsys, damage):
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes(b"" if damage == "empty" else good[: len(good) // 2])
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        polar_model.load(bad)
    data = data_config(tmp_path, tiny_store)
    assert evaluate.main([str(bad), "--data", str(data), "--out", str(tmp_path / "rep")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert _train(tmp_path, tiny_store, tmp_path / "resumed", "--resume", bad, steps=5) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and ("empty" in err if damage == "empty" else "truncated" in err)


# ---------------------------------------------------------------- 3: secrets never written


def test_the_redaction_rule_keeps_how_to_connect_and_drops_every_credential():
    from polar_data.config.storage_options import REDACTED, redact, usable

    kept = {"endpoint_url": "http://minio:9000", "anon": False, "profile": "lab",
            "region_name": "eu-west-1", "use_ssl": True, "requester_pays": True,
            "config_kwargs": {"signature_version": "s3v4"}, "default_block_size": 5}
    secret = ["key", "secret", "token", "password", "aws_access_key_id",
              "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
              "connection_string", "credentials", "SSECustomerKey", "client_secret"]
    options = {**kept, **{k: f"v-{k}" for k in secret},
               "client_kwargs": {"aws_secret_access_key": "nested", "region_name": "x"}}
    red = redact(options)
    assert {k: red[k] for k in kept} == kept
    assert all(red[k] == REDACTED for k in secret)
    assert red["client_kwargs"] == {"aws_secret_access_key": REDACTED, "region_name": "x"}
    assert options["key"] == "v-key"  # a copy
    assert usable(red) == {**kept, "client_kwargs": {"region_name": "x"}}


def test_storage_option_secrets_are_in_no_file_of_the_run(tmp_path, tiny_store):
    secrets = {"key": "AKIADISTINCTKEY4242", "secret": "s3cr3t-distinct-0815",
               "token": "tok-distinct-777"}
    loader = {"storage_options": {**secrets, "endpoint_url": "file:///keep-me"}}
    d = tmp_path / "cfg"
    d.mkdir()
    data = data_config(d, tiny_store, **loader)
    cfg = yaml.safe_load(data.read_text())
    cfg["nwb"] = {"storage_options": {"client_kwargs": {"aws_secret_access_key":
                                                        "nwb-distinct-secret-99"},
                                      "anon": "false"}}
    data.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert train.main(["--data", str(data), "--model", MODEL, "--train",
                       str(train_config(d, max_steps=2)), "--out", str(out),
                       "--no-progress"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.name.split(".")[0] for p in files}
    assert {"config", "hparams", "events", "best", "last", "metrics"} <= kinds, kinds
    for p in files:
        blob = p.read_bytes()
        for s in [*secrets.values(), "nwb-distinct-secret-99"]:
            assert s.encode() not in blob, (p, s)
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["loader"]["storage_options"]["endpoint_url"] == "file:///keep-me"
    assert "nwb" not in written  # a build section: the build's, not in what a run records
    # read back for a resume: the placeholders are not credentials (the environment is)
    a, overrides = train.parse_args(["--config", str(out / "config.yaml")])
    again = train.resolve_config(a, overrides)
    assert again.loader.storage_options == {"endpoint_url": "file:///keep-me"}


# ------------------------------------------------------------- 4: runs tied to their store


@pytest.mark.parametrize("which, named", [
    ("sessions", r"sessions added: \['t0', 't1', 't2'\]; sessions removed: \['s0', 's1', 's2'\]"),
    ("seed", r"split_seed: 0 in the checkpoint, 1 in the store"),
])
def test_resume_and_evaluate_refuse_another_store_naming_the_difference(
        run, other_stores, tmp_path, capsys, which, named):
    store, last = other_stores[which], run / "checkpoints" / "last.ckpt"
    assert _train(tmp_path, store, tmp_path / "resumed", "--resume", last, steps=5) == 2
    err = capsys.readouterr().err
    assert re.search(named, err) and str(last) in err and "Traceback" not in err, err
    if which == "seed":
        assert "trials in each split" in err  # which trials went where, not only the seed
    assert not (tmp_path / "resumed" / "checkpoints").exists()
    data = data_config(tmp_path, store)
    assert evaluate.main([str(last), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.search(named, err) and str(last) in err, err


def test_other_unit_counts_give_a_clean_error_even_when_allowed(run, other_stores, tmp_path,
                                                               capsys):
    last = run / "checkpoints" / "last.ckpt"
    assert _train(tmp_path, other_stores["units"], tmp_path / "resumed", "--resume", last,
                  "--allow-new-store", steps=5) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "do not fit" in err and "Traceback" not in err
    assert re.search(r"readouts\.0\.\S+: \[3.*\] in the checkpoint, \[4.*\] here", err), err


def test_allow_new_store_fine_tunes_and_records_the_earlier_store(run, other_stores,
                                                                 tmp_path):
    last = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "tuned"
    assert _train(tmp_path, other_stores["sessions"], out, "--resume", last,
                  "--allow-new-store", steps=5) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    facts = ckpt["data_facts"]  # the sessions are the spec's (a checkpoint says it once)
    assert ckpt["global_step"] == 5
    assert list(ckpt["hyper_parameters"]["spec"]["session_names"]) == ["t0", "t1", "t2"]
    (earlier,) = facts["previous_stores"]
    assert earlier["sessions"] == ["s0", "s1", "s2"]
    old = torch.load(last, map_location="cpu", weights_only=True)["data_facts"]
    assert earlier["manifest_sha256"] == old["manifest_sha256"] != facts["manifest_sha256"]
    # and the fine-tuned run is now tied to its new store
    assert _train(tmp_path, other_stores["sessions"], tmp_path / "again", "--resume",
                  out / "checkpoints" / "last.ckpt", steps=6) == 0


# -------------------------------------------------------------- 12: one run per folder


def test_a_second_run_into_a_held_folder_is_refused_and_a_dead_holder_does_not_block(
        tmp_path, tiny_store, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from pathlib import Path\n"
         "from polar_model.training.trainer import run_folder_lock\n"
         f"with run_folder_lock(Path({str(out)!r})):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(tmp_path, tiny_store, out, steps=2) == 2
        err = capsys.readouterr().err
        assert str(out) in err and f"pid {holder.pid}" in err, err
        assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    finally:
        holder.kill()  # as the OOM killer would: no clean-up runs
        holder.wait()
    time.sleep(0.1)
    with train.run_folder_lock(out):  # the dead holder's lock is gone
        pass


# ---------------------------------------------------- 13: settings only the store can judge


def test_a_batch_larger_than_the_train_split_is_refused(tmp_path, tiny_store, capsys):
    assert _train(tmp_path, tiny_store, tmp_path / "run", steps=2, batch_size=500) == 2
    err = capsys.readouterr().err
    assert "loader.batch_size = 500" in err and "train split" in err
    assert re.search(r"holds \d+ clips", err), err


# ------------------------------------------------ 14: a checkpoint whenever a run ends


@pytest.mark.parametrize("ends_by", ["max_steps", "max_epochs"])
def test_a_run_shorter_than_its_first_validation_still_writes_a_scored_best(
        tmp_path, tiny_store, capsys, ends_by):
    out = tmp_path / "run"
    steps, epochs = (2, 2) if ends_by == "max_steps" else (1000, 1)
    assert _train(tmp_path, tiny_store, out, steps=steps, epochs=epochs) == 0
    printed = capsys.readouterr().out
    best = out / "checkpoints" / "best.ckpt"
    assert f"best checkpoint: {best} (val/bps " in printed, printed
    assert re.search(r"\(val/bps -?\d+\.\d+", printed) and "n/a" not in printed, printed
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert torch.load(best, map_location="cpu", weights_only=True)["global_step"] == (
        last["global_step"])  # validated after the last step
    assert ends_by == "max_epochs" or last["global_step"] == 2
    rows = list(csv.DictReader(metrics_path(out).open()))
    assert [int(r["step"]) for r in rows if r.get("val/bps")] == [last["global_step"] - 1]


class _StoreVanished(OSError):
    """Stands in for the store going away in the middle of training."""


@pytest.mark.parametrize("where", ["loader", "training_step", "after_validation"])
def test_an_exception_in_the_loop_saves_a_resumable_last_checkpoint(tmp_path, tiny_store,
                                                                    monkeypatch, capsys,
                                                                    where):
    """The store vanishing under the loader (between batches), or an exception inside a
    training step (the batch half done; also the first one after a validation, whose
    ``last.ckpt`` is kept): ``last.ckpt`` resumes at the failed batch."""
    import lightning as L

    from polar_data.loaders.zarr_windows import ZarrWindows
    from polar_model.training.lit_module import EncodingModule

    real, calls = ZarrWindows.__getitems__, []
    real_step = EncodingModule.training_step

    def failing_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise _StoreVanished("s3://lab/store: the bucket is gone")
        return real_step(self, batch, batch_idx)

    class Arm(L.Callback):  # count the reads of the training loop only (not RF placement)
        def on_train_start(self, *_):
            calls.append("armed")

    def vanishing(self, indices):
        if calls:
            calls.append(1)
            if len(calls) > 4:
                raise _StoreVanished("s3://lab/store: the bucket is gone")
        return real(self, indices)

    make = train.make_trainer
    monkeypatch.setattr(train, "make_trainer",
                        lambda *a: (lambda t: (t.callbacks.append(Arm()), t)[1])(make(*a)))
    if where == "loader":
        monkeypatch.setattr(ZarrWindows, "__getitems__", vanishing)
    else:
        monkeypatch.setattr(EncodingModule, "training_step", failing_step)
    out = tmp_path / "run"
    val_every = 3 if where == "after_validation" else 1000
    with pytest.raises(_StoreVanished) as info:
        _train(tmp_path, tiny_store, out, steps=6, val_every=val_every)
    monkeypatch.undo()
    last = out / "checkpoints" / "last.ckpt"
    note = " ".join(getattr(info.value, "__notes__", []))
    assert f"{last}" in note and f"--resume {last}" in note, note
    assert f"{last}" in capsys.readouterr().err
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= step < 6 and f"step {step}" in note
    resumed = tmp_path / "resumed"
    assert _train(tmp_path, tiny_store, resumed, "--resume", last, steps=6,
                  val_every=val_every) == 0
    done = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert done["global_step"] == 6
    rows = csv.DictReader(metrics_path(resumed).open())
    trained = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert trained == list(range(step, 6)), trained  # the interrupted batch, then the rest
