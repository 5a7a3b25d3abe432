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
    rates = model.predict(session.stim, session.eyepos, session="s1", history="window")
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


# ---- predicting in clips (history="clip") against one window per bin (history="window") ----


def _per_window(model, stim, eyepos, session, trial=None):
    """The reference: every predictable bin from its own window, one at a time."""
    out = np.full((len(stim), len(model.unit_ids(session))), np.nan, np.float32)
    W, index = model.window_len, model.sessions.index(session)
    for e in np.flatnonzero(model.predictable(eyepos, trial)):
        x = normalise_stim(torch.from_numpy(stim[e - W + 1 : e + 1][None, None]),
                           model.pixel_mean, model.pixel_std)
        with torch.no_grad():
            lr = model.module.model(x, torch.from_numpy(eyepos[e - W + 1 : e + 1][None]),
                                    index, last_only=True).log_rate
        out[e] = lr[0, -1].exp().numpy()
    return out


def _train(tmp, store, model_yaml):
    from polar_model.training import trainer as train

    run = tmp / "run"
    assert train.main(["--data", str(data_config(tmp, store)), "--model", str(model_yaml),
                       "--train", str(train_config(tmp, max_steps=3)), "--out", str(run),
                       "--no-progress"]) == 0
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def static_w1(tmp_path_factory, tiny_sources):
    """A static model trained on a store of window_len 1 (no history at all)."""
    from conftest import build_tiny

    tmp = tmp_path_factory.mktemp("w1")
    assert build_tiny(tmp, tiny_sources, tmp / "store", window_len=1) == 0
    return _train(tmp, tmp / "store", ROOT / "configs/model/static.yaml")


def _session_with_gaps(model, tiny_sources):
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    eyepos = session.eyepos.copy()
    eyepos[[50, 71, 72, 150]] = np.nan  # invalid gaze stretches inside trials
    return session, eyepos


def test_window_history_is_the_per_window_path(trained, tiny_sources):
    model = polar_model.load(trained)
    session, eyepos = _session_with_gaps(model, tiny_sources)
    want = _per_window(model, session.stim, eyepos, "s1", session.trial)
    for frames in (1, 7, 10_000):  # one window per pass .. all at once
        got = model.predict(session.stim, eyepos, "s1", session.trial, history="window",
                            batch_frames=frames)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_rows_stay_inside_trials(trained, tiny_sources):
    """With trial ids, no window crosses a trial start: each trial's first window_len - 1
    bins are NaN, and a trial's rates do not depend on the trial before it."""
    model = polar_model.load(trained)
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    W, trial = model.window_len, session.trial
    starts = np.flatnonzero(np.r_[True, trial[1:] != trial[:-1]])
    assert len(starts) > 2
    for history in ("clip", "window"):
        rates = model.predict(session.stim, session.eyepos, "s1", trial, history=history)
        one = model.predict(session.stim, session.eyepos, "s1", history=history)
        heads = (starts[:, None] + np.arange(W - 1)[None]).ravel()
        assert np.isnan(rates[heads]).all() and np.isfinite(one[heads[heads >= W - 1]]).any()
        stim = session.stim.copy()
        stim[: starts[1]] = 255 - stim[: starts[1]]  # another first trial
        again = model.predict(stim, session.eyepos, "s1", trial, history=history)
        np.testing.assert_array_equal(again[starts[1]:], rates[starts[1]:])
        assert not np.allclose(again[: starts[1]], rates[: starts[1]], equal_nan=True)


def test_clip_history_is_what_evaluate_scores(trained, tiny_store, tiny_sources):
    """history="clip" with the store's clip_len gives, on every val target, the rates
    evaluate.py's clip pass over the store gives."""
    from polar_model.training.evaluation import predict_split

    model = polar_model.load(trained)
    info = StoreInfo.load(str(tiny_store))
    preds = predict_split(lambda b: model.module(b).log_rate, info, "val")
    want = preds[1].rate
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    got = model.predict(session.stim, session.eyepos, "s1", session.trial, clip_len=info.clip_len)
    scored = np.isfinite(want).all(1)
    assert scored.sum() > 20
    np.testing.assert_allclose(got[scored], want[scored], rtol=1e-4, atol=1e-6)
    assert np.isfinite(got[scored]).all()


def test_clip_history_runs_the_state_through_the_clip(trained, tiny_sources):
    """A recurrent model's clip targets see the clip's history: the first target of each
    clip is its window's prediction, the later ones are not (the state did not restart)."""
    model = polar_model.load(trained)
    session, eyepos = _session_with_gaps(model, tiny_sources)
    clip = model.predict(session.stim, eyepos, "s1", session.trial, clip_len=8)
    window = model.predict(session.stim, eyepos, "s1", session.trial, history="window")
    np.testing.assert_array_equal(np.isnan(clip), np.isnan(window))
    clips = model.clips(eyepos, session.trial, clip_len=8)
    firsts = clips[:, 0]
    np.testing.assert_allclose(clip[firsts], window[firsts], rtol=1e-5, atol=1e-7)
    later = np.concatenate([np.arange(s + 1, s + n) for s, n in clips])
    assert len(later) and not np.allclose(clip[later], window[later], rtol=1e-3)


def test_clip_results_do_not_depend_on_batching(trained, tiny_sources):
    model = polar_model.load(trained)
    session, eyepos = _session_with_gaps(model, tiny_sources)
    want = model.predict(session.stim, eyepos, "s1", session.trial, clip_len=8,
                         batch_frames=1)  # one clip per pass, no padding
    for frames in (20, 10_000):
        got = model.predict(session.stim, eyepos, "s1", session.trial, clip_len=8,
                            batch_frames=frames)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_input_shorter_than_one_clip(trained, tiny_sources):
    """An input shorter than one clip is one short clip: the rates of its bins in a longer
    input (where the clip starts at the same bin)."""
    model = polar_model.load(trained)
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    T0 = model.window_len + 10
    long = model.predict(session.stim, session.eyepos, "s1", clip_len=64)
    short = model.predict(session.stim[:T0], session.eyepos[:T0], "s1", clip_len=64)
    ok = model.predictable(session.eyepos[:T0])
    assert short.shape == (T0, 4) and ok.sum() > 5 and np.isfinite(short[ok]).all()
    np.testing.assert_allclose(short, long[:T0], rtol=1e-5, atol=1e-7)
    empty = model.predict(session.stim[:2], session.eyepos[:2], "s1")  # no full window
    assert empty.shape == (2, 4) and np.isnan(empty).all()


def test_static_model_w1_same_rates_either_history(static_w1, tiny_sources):
    model = polar_model.load(static_w1)
    assert model.window_len == 1
    session, eyepos = _session_with_gaps(model, tiny_sources)
    clip = model.predict(session.stim, eyepos, "s1", session.trial, clip_len=16)
    window = model.predict(session.stim, eyepos, "s1", session.trial, history="window")
    np.testing.assert_array_equal(np.isnan(clip).all(1), ~np.isfinite(eyepos).all(1))
    np.testing.assert_allclose(clip, window, rtol=1e-5, atol=1e-7)
    # window_len 1: every bin is a window, yet clips still end at trial starts
    clips = model.clips(eyepos, session.trial, clip_len=16)
    last = clips[:, 0] + clips[:, 1] - 1
    assert (session.trial[clips[:, 0]] == session.trial[last]).all()
    assert len(clips) > len(model.clips(eyepos, None, clip_len=16))


def test_static_model_same_rates_either_history(tmp_path_factory, tiny_store, tiny_sources):
    model = polar_model.load(_train(tmp_path_factory.mktemp("static"), tiny_store,
                                    ROOT / "configs/model/static.yaml"))
    assert model.window_len == 6
    session, eyepos = _session_with_gaps(model, tiny_sources)
    clip = model.predict(session.stim, eyepos, "s1", session.trial, clip_len=16)
    window = model.predict(session.stim, eyepos, "s1", session.trial, history="window")
    assert np.isfinite(clip).any()
    np.testing.assert_allclose(clip, window, rtol=1e-5, atol=1e-7)


def test_predict_refuses_bad_arguments(trained, tiny_sources):
    model = polar_model.load(trained)
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    args = (session.stim, session.eyepos, "s1")
    for kw, match in [({"history": "trial"}, "history must be one of"),
                      ({"clip_len": 0}, "clip_len must be"), ({"clip_len": 2.5}, "clip_len"),
                      ({"batch_frames": 0}, "batch_frames must be"),
                      ({"start_bin": -1}, "start_bin must be"),
                      ({"trial": session.trial[:-1]}, "trial must be")]:
        with pytest.raises(ValueError, match=match):
            model.predict(*args, **kw)


def test_progress_bar_on_request(trained, tiny_sources, capsys):
    model = polar_model.load(trained)
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    model.predict(session.stim, session.eyepos, "s1")
    assert "predict s1" not in capsys.readouterr().err  # a short input: no bar
    model.predict(session.stim, session.eyepos, "s1", progress=True)
    assert "predict s1" in capsys.readouterr().err


def test_start_bin_gives_a_drifting_shifter_the_session_clock(tmp_path_factory, tiny_store,
                                                             tiny_sources):
    """A shifter with drift reads each bin's session time: a piece of a session predicted
    with its start_bin gets the rates of the whole session's prediction."""
    tmp = tmp_path_factory.mktemp("drift")
    from polar_model.training import trainer as train

    run = tmp / "run"
    assert train.main(["--data", str(data_config(tmp, tiny_store)),
                       "--model", str(ROOT / "configs/model/behavior.yaml"),
                       "--train", str(train_config(tmp, max_steps=2)), "--out", str(run),
                       "--model.shifter_drift", "true", "--no-progress"]) == 0
    model = polar_model.load(run / "checkpoints" / "last.ckpt")
    with torch.no_grad():  # a drift large enough to move the crops by pixels
        model.module.model.shifter.drift.normal_(0, 0.3)
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    k = 100
    whole = model.predict(session.stim, session.eyepos, "s1", history="window")
    piece = model.predict(session.stim[k:], session.eyepos[k:], "s1", history="window",
                          start_bin=k)
    ok = np.isfinite(piece).all(1)
    assert ok.sum() > 20
    np.testing.assert_allclose(piece[ok], whole[k:][ok], rtol=1e-5, atol=1e-7)
    moved = model.predict(session.stim[k:], session.eyepos[k:], "s1", history="window")
    assert not np.allclose(moved[ok], piece[ok], rtol=1e-3)
