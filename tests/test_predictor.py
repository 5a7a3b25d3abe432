"""polar_model.load(ckpt).predict(...) works on a session read from disk, with no store, and
matches the model's output through the loader on the same bins."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_config, train_config

import polar_model
from polar_data.loaders.batches import normalise_stim
from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.zarr_windows import ZarrWindows
from polar_data.readers import read_session
from polar_data.sessions.validity import valid_window_ends

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_store):
    tmp = tmp_path_factory.mktemp("pred")
    run = tmp / "run"
    from polar_model.training import trainer as train

    assert train.main(["--data", str(data_config(tmp, tiny_store)),
                       "--model", str(ROOT / "configs/model/behavior.yaml"),
                       "--train", str(train_config(tmp, max_steps=3)), "--out", str(run),
                       "--no-progress"]) == 0
    return run / "checkpoints" / "last.ckpt"


def test_load_carries_what_prediction_needs(trained, tiny_store):
    model = polar_model.load(trained)
    info = StoreInfo.load(str(tiny_store))
    assert model.sessions == info.sessions and model.window_len == info.window_len
    assert model.rate_hz == info.rate_hz and model.pixel_std == info.pixel_std
    assert model.unit_ids("s1").tolist() == list(info.unit_ids[1]) == [10, 11, 12, 13]
    assert not model.module.training
    with pytest.raises(KeyError, match="unknown session 'nope'"):
        model.unit_ids("nope")


def test_predict_on_a_session_from_disk_matches_the_loader(trained, tiny_store, tiny_sources):
    model = polar_model.load(trained)
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    rates = model.predict(session.stim, session.eyepos, session="s1")
    T, N = session.n_bins, session.n_units
    assert rates.shape == (T, N) and rates.dtype == np.float32
    W = model.window_len
    assert np.isnan(rates[: W - 1]).all()  # before the first full window
    info = StoreInfo.load(str(tiny_store))
    ds = ZarrWindows(info, "train", "window")
    rows = [i for i in range(len(ds)) if ds.index[i, 0] == 1][:20]
    batch = normalise_stim(ds.__getitems__(rows), info.pixel_mean, info.pixel_std)
    with torch.no_grad():
        want = model.module.model(batch["stim"], batch["eyepos"], 1,
                                  last_only=True).log_rate[:, -1].exp().numpy()
    got = rates[batch["end"].numpy()]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    invalid = ~np.isfinite(session.eyepos).all(axis=1)
    assert invalid.any() and np.isnan(rates[invalid]).all()  # windows with lost gaze


def test_predicted_rows_are_the_stores_window_rule(trained, tiny_sources):
    """A row is predicted exactly where the store's rule calls its window valid (the input
    one trial): every bin of the window_len ending there has finite gaze."""
    model = polar_model.load(trained)
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    eyepos = session.eyepos.copy()
    eyepos[[5, 40, 41, 90]] = np.nan  # runs of finite gaze shorter and longer than a window
    rates = model.predict(session.stim, eyepos, session="s1")
    finite = np.isfinite(eyepos).all(axis=1)
    want = valid_window_ends(finite, np.zeros(len(finite), dtype=np.int64), model.window_len)
    assert want.any() and not want.all()
    np.testing.assert_array_equal(np.isfinite(rates).all(axis=1), want)
    assert np.isnan(rates[~want]).all()


def test_run_folder_and_checkpoint_carry_the_whole_config(trained):
    from polar_model.training.run_config import load_run_config, run_config_from_hparams

    run = trained.parent.parent
    saved = load_run_config(config=run / "config.yaml")
    hparams = torch.load(trained, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert run_config_from_hparams(hparams) == saved
    assert saved.model.name == "behavior" and saved.train.max_steps == 3
    assert saved.loader.kind == "zarr" and not hasattr(saved, "store")  # the build's
    module = polar_model.load(trained).module  # the module's own configs are the tree's
    assert module.model_cfg == saved.model and module.train_cfg == saved.train
