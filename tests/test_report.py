"""polar_model.training.report: the saccade onsets of the report are the models' own gate."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from polar_data.demo.eye_movements import GazeParams, simulate_gaze
from polar_data.loaders.store_info import StoreInfo
from polar_data.store.zarr_groups import open_store
from polar_model.config import load_model_config
from polar_model.models import build_model
from polar_model.spec import DataSpec
from polar_model.training import report
from polar_model.training.evaluation import SessionPredictions
from polar_model.training.store_facts import spec_of

ROOT = Path(__file__).resolve().parents[1]
RATE = 120.0


def gate_onsets(model, eyepos: np.ndarray, session: int) -> np.ndarray:
    """Rising edges of the model's forward gate (> 0.5) on one session's gaze."""
    with torch.no_grad():
        q = model.gaze(torch.as_tensor(eyepos)[None], session)[1][0, :, 0].numpy() > 0.5
    return np.flatnonzero(q & ~np.r_[False, q[:-1]])


def behaviour_model(spec: DataSpec, session: int, eyepos: np.ndarray, lam: float):
    """The behaviour config, its noise estimate for ``session`` set from ``eyepos`` as
    training sets it, and its lambda moved off the default to ``lam``."""
    model = build_model(load_model_config(ROOT / "configs/model/behavior.yaml"), spec)
    model.train()
    finite = np.isfinite(eyepos).all(1)
    model.gaze(torch.as_tensor(eyepos[finite][:3000])[None], session)
    with torch.no_grad():
        model.gaze._lam.fill_(math.log(math.expm1(lam)))
    return model.eval()


@pytest.fixture(scope="module")
def demo_gaze():
    """60 s of demo gaze at 120 Hz (240 Hz averaged, as the store resamples) with the true
    onsets, and a few lost bins (NaN)."""
    tr = simulate_gaze(int(60 * 240), 240.0, np.random.default_rng(5),
                       GazeParams(blink_rate_hz=0.0))
    T = len(tr.eyepos) // 2
    eyepos = tr.eyepos[: 2 * T].reshape(T, 2, 2).mean(1).astype(np.float32)
    eyepos[[100, 2000, 2001]] = np.nan
    return eyepos, (tr.saccades[:, 0] // 2).astype(int)


def test_onsets_are_the_first_behaviour_models_gate_with_its_own_parameters(demo_gaze):
    eyepos, _ = demo_gaze
    spec = DataSpec(16, RATE, (21, 21), 7.0, (3, 4), ((0.05,) * 3, (0.05,) * 4), ("a", "b"))
    model = behaviour_model(spec, 1, eyepos, lam=4.0)
    static = build_model(load_model_config(ROOT / "configs/model/static.yaml"), spec)
    modules = {"static": SimpleNamespace(model=static),
               "behavior": SimpleNamespace(model=model)}
    got = report.saccade_onsets(modules, eyepos, 1, RATE)
    want = gate_onsets(model, eyepos, 1)
    np.testing.assert_array_equal(got, want)
    assert len(want) > 20
    # its own lambda and session noise, not a detector of the report's: another lambda or
    # the other session's (untouched) noise estimate gives other onsets
    assert not np.array_equal(gate_onsets(model, eyepos, 0), want)
    with torch.no_grad():
        model.gaze._lam.fill_(math.log(math.expm1(8.0)))
    assert not np.array_equal(report.saccade_onsets(modules, eyepos, 1, RATE), want)


def test_without_a_behaviour_model_the_default_detector_finds_the_saccades(demo_gaze):
    """No model has a gate (static, baseline): the default config's detector, its noise
    estimated from the session's gaze, finds the demo's true onsets (within 2 bins)."""
    eyepos, onsets = demo_gaze
    spec = DataSpec(16, RATE, (21, 21), 7.0, (3,), ((0.05,) * 3,), ("a",))
    static = build_model(load_model_config(ROOT / "configs/model/static.yaml"), spec)
    got = report.saccade_onsets({"static": SimpleNamespace(model=static)}, eyepos, 0, RATE)
    hit = np.array([((got >= o) & (got <= o + 2)).any() for o in onsets])
    assert hit.mean() > 0.9 and len(got) < 1.2 * len(onsets)


def test_saccade_plot_uses_the_models_gate_on_the_stores_gaze(tmp_path, small_demo_store,
                                                              monkeypatch):
    info = StoreInfo.load(str(small_demo_store))
    root = open_store(f"{info.base}/zarr")
    name = info.sessions[0]
    eyepos = root[name]["eyepos"][...]
    model = behaviour_model(spec_of(info), 0, eyepos, lam=5.0)
    modules = {"behavior": SimpleNamespace(model=model)}
    robs = root[name]["robs"][...]
    preds = {"behavior": [SessionPredictions(name, np.full(robs.shape, 0.1, np.float32), robs,
                                             np.ones(robs.shape, bool), None)]}
    used = []

    def spy(*args):
        used.append(report_onsets(*args))
        return used[-1]

    report_onsets = report.saccade_onsets
    monkeypatch.setattr(report, "saccade_onsets", spy)
    report.plot_saccades(preds, modules, info, tmp_path)
    assert (tmp_path / "saccade_triggered.png").is_file()
    assert (tmp_path / "saccade_traces.png").is_file()
    assert len(used) == 1
    np.testing.assert_array_equal(used[0], gate_onsets(model, eyepos, 0))
    assert len(used[0]) > 10
