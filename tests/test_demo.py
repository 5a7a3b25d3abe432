"""Demo generator: gaze statistics, ground-truth population, both file formats."""

from dataclasses import replace

import numpy as np
import pytest
from helpers import assert_sessions_equal

from polar_data.demo.eye_movements import (
    DOCUMENTED_RANGES,
    GazeParams,
    detect_saccades,
    gaze_statistics,
    main_sequence,
    simulate_gaze,
)
from polar_data.demo.generate import (
    DemoConfig,
    generate_session,
    natural_images,
    write_demo_session,
)
from polar_data.demo.population import PopulationParams, V1Population
from polar_data.readers import read_session


@pytest.fixture(scope="module")
def trace():
    return simulate_gaze(240 * 120, 240.0, np.random.default_rng(1))


def test_gaze_is_deterministic_per_seed():
    a = simulate_gaze(2000, 240.0, np.random.default_rng(5))
    b = simulate_gaze(2000, 240.0, np.random.default_rng(5))
    c = simulate_gaze(2000, 240.0, np.random.default_rng(6))
    np.testing.assert_array_equal(a.eyepos, b.eyepos)
    assert not np.array_equal(np.nan_to_num(a.eyepos), np.nan_to_num(c.eyepos))


def test_gaze_statistics_in_documented_ranges(trace):
    st = gaze_statistics(trace, 240.0)
    lo, hi = DOCUMENTED_RANGES["fixation_median_s"]
    assert lo <= st["fixation_median_s"] <= hi
    lo, hi = DOCUMENTED_RANGES["fraction_invalid"]
    assert lo <= st["fraction_invalid"] <= hi
    lo, hi = DOCUMENTED_RANGES["microsaccade_rate_hz"]
    assert lo <= st["microsaccade_rate_hz"] <= hi
    big = trace.saccades[trace.saccades[:, 2] > 5]
    assert len(big) > 10 and big[:, 3].min() > DOCUMENTED_RANGES["large_saccade_peak_min_deg_s"]
    assert trace.saccades[:, 3].max() <= DOCUMENTED_RANGES["saccade_peak_velocity_deg_s"][1]


def test_main_sequence_holds_in_the_trace(trace):
    # peak speed and duration grow with amplitude, as simulated and as measured from the trace
    s = trace.saccades
    assert np.corrcoef(s[:, 2], s[:, 3])[0, 1] > 0.8
    assert np.corrcoef(s[:, 2], s[:, 1] - s[:, 0])[0, 1] > 0.8
    det = detect_saccades(trace.eyepos, trace.valid, 240.0, threshold_deg_s=60)
    big = det[det[:, 2] > 1]
    assert np.polyfit(big[:, 2], big[:, 3], 1)[0] > 10  # deg/s per deg
    # detected peak speeds match the main sequence within sampling error
    pred = np.array([main_sequence(a, GazeParams())[1] for a in big[:, 2]])
    assert np.median(np.abs(big[:, 3] - pred) / pred) < 0.25


def test_detected_saccades_match_simulated(trace):
    sim = trace.saccades[trace.saccades[:, 2] > 1]
    det = detect_saccades(trace.eyepos, trace.valid, 240.0, threshold_deg_s=60)
    hits = sum(np.abs(det[:, 0] - on).min() <= 2 for on in sim[:, 0])
    assert hits / len(sim) > 0.9


def test_gaze_bounds_nan_and_rate(trace):
    bx, by = GazeParams().bounds_deg
    ok = trace.valid
    assert np.isfinite(trace.eyepos[ok]).all() and np.isnan(trace.eyepos[~ok]).all()
    assert (np.abs(trace.eyepos[ok, 0]) <= bx + 1e-6).all()
    assert (np.abs(trace.eyepos[ok, 1]) <= by + 1e-6).all()
    slow = simulate_gaze(120 * 60, 120.0, np.random.default_rng(2))
    st = gaze_statistics(slow, 120.0)
    assert 0.12 <= st["fixation_median_s"] <= 0.5


@pytest.fixture(scope="module")
def pop():
    return V1Population(PopulationParams(mix={"simple": 0.5, "complex": 0.5}), 41, 10.0, 240.0,
                        np.random.default_rng(0), n_units=16)


def _grating(pop, n, phase, ori=None, T=1):
    c = (np.arange(pop.crop_px) - (pop.crop_px - 1) / 2) / pop.ppd
    X, Y = np.meshgrid(c, -c)
    o = pop.orientation[n] if ori is None else ori
    u = X * np.cos(o) + Y * np.sin(o)
    g = 127 + 100 * np.cos(2 * np.pi * pop.sf[n] * u + phase)
    return np.repeat(g[None].round().astype(np.uint8), T, axis=0)


def _steady(pop, frames):
    T = len(frames)
    return pop.expected_counts(frames, np.zeros(T, int), np.zeros(T, bool))[-1]


def test_population_tuning_and_phase_invariance(pop):
    phases = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    for n in range(pop.n_units):
        pref = [_steady(pop, _grating(pop, n, p, T=30))[n] for p in phases]
        orth = [_steady(pop, _grating(pop, n, p, pop.orientation[n] + np.pi / 2, 30))[n]
                for p in phases]
        assert max(pref) > 1.5 * max(orth), n
        modulation = (max(pref) - min(pref)) / max(pref)
        if pop.is_complex[n]:
            assert modulation < 0.3, n
        else:
            assert modulation > 0.5, n


def test_population_rates_causality_and_trial_restart(pop):
    rng = np.random.default_rng(3)
    img = natural_images()[0]
    T = 600
    ys, xs = rng.integers(0, 400, T), rng.integers(0, 400, T)
    frames = np.stack([img[y : y + 41, x : x + 41] for y, x in zip(ys, xs)])
    trial = np.repeat([0, 1], T // 2)
    onset = np.zeros(T, bool)
    r = pop.expected_counts(frames, trial, onset)
    assert np.isfinite(r).all() and (r >= 0).all()
    mean_hz = r.mean(0) * 240
    assert (mean_hz > 1).all() and (mean_hz < 60).all()
    later = frames.copy()
    later[400:] = 255 - later[400:]
    r2 = pop.expected_counts(later, trial, onset)
    np.testing.assert_array_equal(r[:400], r2[:400])  # causal
    first = frames.copy()
    first[:300] = 0
    r3 = pop.expected_counts(first, trial, onset)
    np.testing.assert_array_equal(r[300:], r3[300:])  # no leakage across the trial edge


def test_saccadic_suppression_then_enhancement(pop):
    T = 240
    frames = _grating(pop, 0, 0.0, T=T)
    onset = np.zeros(T, bool)
    onset[100] = True
    r = pop.expected_counts(frames, np.zeros(T, int), onset)
    base = pop.expected_counts(frames, np.zeros(T, int), np.zeros(T, bool))
    gain = (r / base).mean(1)
    assert gain[100 + 13] < 0.6  # ~55 ms: suppressed
    assert gain[100 + 36] > 1.3  # ~150 ms: enhanced
    assert abs(gain[100 + 110] - 1) < 0.05


def test_unit_valid_partial_fraction(pop):
    m = pop.unit_valid(1000, np.random.default_rng(0))
    partial = (~m).any(0)
    assert partial.sum() == round(pop.params.partial_frac * pop.n_units)
    for n in np.flatnonzero(partial):  # one contiguous valid part
        assert np.abs(np.diff(m[:, n].astype(int))).sum() == 1


def test_generator_deterministic_and_files_agree(tmp_path):
    cfg = DemoConfig(n_sessions=1, duration_s=12.0)
    images = natural_images()
    a = generate_session(cfg, 0, images)
    b = generate_session(cfg, 0, images)
    assert_sessions_equal(a.session, b.session)
    dset, nwb = write_demo_session(a, tmp_path, cfg, images)
    from_dset = read_session(dset, trust_pickle=True)
    from_nwb = read_session(nwb)  # screen layout: the reader renders crops itself
    assert_sessions_equal(from_dset, a.session)
    assert_sessions_equal(from_nwb, a.session)
    s = a.session
    assert s.unit_valid is not None and (~s.unit_valid).any()
    assert (~s.eye_valid).any() and s.true_rate is not None
    # the .dset holds unselected clusters too; cids picked the right columns
    import torch
    blob = torch.load(dset, weights_only=False)
    assert blob["covariates"]["robs"].shape[1] == s.n_units + cfg.n_noise_clusters
    crops = generate_session(replace(cfg, nwb_layout="crops"), 0, images)
    _, nwb2 = write_demo_session(crops, tmp_path / "c", replace(cfg, nwb_layout="crops"), images)
    assert_sessions_equal(read_session(nwb2), a.session)
