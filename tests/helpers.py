"""Small hand-made sessions for unit tests (no generator involved)."""

from __future__ import annotations

import numpy as np

from polar_data.sessions.session import Session


def tiny_session(n_trials=3, bins_per_trial=20, n_units=4, hw=9, rate=240.0, seed=0,
                 name="tiny") -> Session:
    rng = np.random.default_rng(seed)
    T = n_trials * bins_per_trial
    trial = np.repeat(np.arange(n_trials), bins_per_trial).astype(np.int64)
    t = np.concatenate([k * 10.0 + np.arange(bins_per_trial) / rate for k in range(n_trials)])
    eyepos = rng.normal(0, 2, size=(T, 2)).astype(np.float32)
    valid = np.ones(T, bool)
    valid[5:8] = False
    eyepos[5:8] = np.nan
    unit_valid = np.ones((T, n_units), bool)
    unit_valid[: T // 2, 0] = False
    return Session(
        name=name, rate_hz=rate, ppd=10.0,
        stim=rng.integers(0, 256, size=(T, hw, hw), dtype=np.uint8),
        eyepos=eyepos, eye_valid=valid, trial=trial, t=t,
        robs=rng.poisson(0.5, size=(T, n_units)).astype(np.int32),
        unit_ids=np.arange(10, 10 + n_units, dtype=np.int64),
        unit_valid=unit_valid,
        true_rate=np.full((T, n_units), 0.5, np.float32),
    )


def spike_times_from_counts(session: Session, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    dt = 1.0 / session.rate_hz
    out = []
    for j in range(session.n_units):
        c = session.robs[:, j]
        out.append(np.sort(np.repeat(session.t, c) + rng.uniform(0.05, 0.95, c.sum()) * dt))
    return out


def assert_sessions_equal(a: Session, b: Session, stim=True):
    assert a.name == b.name
    assert abs(a.rate_hz - b.rate_hz) < 1e-9 and abs(a.ppd - b.ppd) < 1e-9
    assert a.stim_type == b.stim_type
    if stim:
        np.testing.assert_array_equal(a.stim, b.stim)
    np.testing.assert_array_equal(a.eyepos, b.eyepos)  # NaN == NaN here
    np.testing.assert_array_equal(a.eye_valid, b.eye_valid)
    np.testing.assert_array_equal(a.trial, b.trial)
    np.testing.assert_allclose(a.t, b.t, rtol=0, atol=1e-9)
    # spikes while a unit is not observed are not data (NWB drops them: obs_intervals)
    np.testing.assert_array_equal(a.robs * a.unit_mask(), b.robs * b.unit_mask())
    np.testing.assert_array_equal(a.unit_ids, b.unit_ids)
    np.testing.assert_array_equal(a.unit_mask(), b.unit_mask())
    if a.true_rate is None or b.true_rate is None:
        assert a.true_rate is None and b.true_rate is None
    else:
        np.testing.assert_array_equal(a.true_rate, b.true_rate)


def load_pipeline(name: str):
    """Import ``pipelines/<name>.py`` as a module (pipelines/ is scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "pipelines" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pipelines_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
