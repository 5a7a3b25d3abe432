"""The demo's eye-tracker calibration error (polar_data.demo.calibration): its size and
smoothness, where the true gaze is written (beside the recorded gaze, never in it), and that
a store built from a demo file holds the recorded gaze only."""

from dataclasses import replace

import numpy as np
import pytest
from conftest import build_tiny

from polar_data.demo.calibration import CalibrationError, CalibrationParams, draw_calibration
from polar_data.demo.generate import (
    DemoConfig,
    generate_session,
    natural_images,
    render_view,
    write_demo_session,
)
from polar_data.demo.truth import injected_offset, read_truth
from polar_data.readers import read_session
from polar_data.sessions.render import hold_last_valid, render_crops

GRID = np.stack(np.meshgrid(np.linspace(-14, 14, 57), np.linspace(-11, 11, 45)), -1).reshape(-1, 2)


@pytest.mark.parametrize("seed", range(4))
def test_field_magnitude_is_in_the_configured_range(seed):
    p = CalibrationParams(field_deg=(0.05, 0.5))
    err = draw_calibration(p, np.random.default_rng(seed), 300.0)
    mag = np.linalg.norm(err.field(GRID), axis=1)
    assert mag.min() >= 0.05 - 1e-3 and mag.max() <= 0.5 + 1e-3, (mag.min(), mag.max())
    assert np.ptp(mag) > 0.1  # it varies across the screen, it is not one constant offset
    far = np.linalg.norm(err.field(np.array([[300.0, -200.0]])), axis=1)
    assert 0.05 - 1e-3 <= far[0] <= 0.5 + 1e-3  # bounded off the screen too
    d = CalibrationParams()  # the default: moderate
    mag = np.linalg.norm(draw_calibration(d, np.random.default_rng(seed), 300.0).field(GRID),
                         axis=1)
    assert mag.max() <= 0.2 + 1e-3 and mag.min() >= 0.05 - 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_field_is_smooth_and_drift_slow(seed):
    err = draw_calibration(CalibrationParams(field_deg=(0.05, 0.5)), np.random.default_rng(seed),
                           300.0)
    h = 0.05  # deg
    for step in ((h, 0.0), (0.0, h)):
        slope = np.linalg.norm(err.field(GRID + step) - err.field(GRID), axis=1) / h
        assert slope.max() < 0.3, slope.max()  # deg of offset per deg of gaze
    t = np.linspace(0, 300, 30001)
    drift = err.drift(t)
    assert np.abs(drift[0]).max() < 1e-12  # calibrated at the start
    mag = np.linalg.norm(drift, axis=1)
    assert abs(mag.max() - 0.05) < 1e-3  # the configured drift
    assert np.linalg.norm(np.diff(drift, axis=0), axis=1).max() / 0.01 < 0.01  # deg/s
    back = CalibrationError.from_json(err.to_json())
    np.testing.assert_allclose(back.field(GRID), err.field(GRID))
    np.testing.assert_allclose(back.drift(t[:50]), err.drift(t[:50]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cfg = DemoConfig(n_sessions=1, duration_s=20.0, crop_px=21, crop_deg=3.0, n_units=(6, 8),
                     calibration=CalibrationParams(field_deg=(0.3, 0.5), drift_deg=0.05))
    images = natural_images()
    d = generate_session(cfg, 0, images)
    out = tmp_path_factory.mktemp("calib")
    _, nwb = write_demo_session(d, out, cfg, images)
    return cfg, d, nwb, out


def test_recorded_minus_true_is_field_drift_and_noise(demo):
    cfg, d, _, _ = demo
    s, true = d.session, d.true_eyepos
    ok = s.eye_valid
    assert np.isnan(true[~ok]).all() and np.isfinite(true[ok]).all()
    diff = (s.eyepos - true)[ok]
    mag = np.linalg.norm(diff, axis=1)
    p = cfg.calibration
    slack = p.drift_deg + 5 * p.noise_deg * np.sqrt(2)
    assert mag.min() >= p.field_deg[0] - slack and mag.max() <= p.field_deg[1] + slack
    resid = diff - d.calibration.field(true[ok]) - d.calibration.drift(s.t[ok] - s.t[0])
    assert abs(resid.std() / p.noise_deg - 1) < 0.1  # white tracker noise of the set size
    assert abs(np.corrcoef(resid[1:, 0], resid[:-1, 0])[0, 1]) < 0.1  # white
    # the error is off: recorded gaze == true gaze, one render
    off = generate_session(replace(cfg, calibration=CalibrationParams(enabled=False)), 0)
    np.testing.assert_array_equal(off.session.eyepos, off.true_eyepos)


def test_neurons_see_the_true_gaze_and_the_session_the_recorded(demo):
    cfg, d, _, _ = demo
    s = d.session
    images = natural_images()
    k = int(s.trial[0])
    sel = np.flatnonzero(s.trial == k)[:200]
    img = images[d.image_index[k]]
    held_true = hold_last_valid(d.true_eyepos[sel], s.eye_valid[sel])  # as the display does
    held_rec = hold_last_valid(s.eyepos[sel], s.eye_valid[sel])
    ok = s.eye_valid[sel]
    seen = render_view(img, held_true[ok], cfg.screen_ppd, cfg.crop_px, cfg.crop_ppd)
    exact = render_crops(img, held_true[ok], cfg.screen_ppd, cfg.crop_px, cfg.crop_ppd)
    assert np.abs(seen.astype(int) - exact).max() <= 1  # the fast renderer's one grey level
    rec = render_crops(img, held_rec[ok], cfg.screen_ppd, cfg.crop_px, cfg.crop_ppd)
    np.testing.assert_array_equal(s.stim[sel][ok], rec)  # the session's crops: recorded gaze
    assert (s.stim[sel][ok] != exact).mean() > 0.1        # which is not what the eye saw
    T = len(sel)  # the rates come from the true-gaze crops
    r_true = d.population.expected_counts(
        render_view(img, held_true, cfg.screen_ppd, cfg.crop_px, cfg.crop_ppd),
        np.zeros(T, int), np.zeros(T, bool), gaze=held_true)
    r_rec = d.population.expected_counts(s.stim[sel], np.zeros(T, int), np.zeros(T, bool),
                                         gaze=held_true)
    # the generator's rates over these: one factor per bin shared by every unit (the saccade
    # gain) for the true-gaze crops, not for the recorded-gaze crops
    na = ~d.population.adapting
    spread_true = np.ptp(np.log(s.true_rate[sel][:, na] / r_true[:, na]), axis=1)
    spread_rec = np.ptp(np.log(s.true_rate[sel][:, na] / r_rec[:, na]), axis=1)
    assert spread_true.max() < 1e-4, spread_true.max()
    assert spread_rec.max() > 1e-2, spread_rec.max()


def test_nwb_gaze_is_recorded_and_true_gaze_sits_in_misc(demo):
    from pynwb import NWBHDF5IO

    _, d, nwb, _ = demo
    s = d.session
    with NWBHDF5IO(str(nwb), "r") as io:
        f = io.read()
        gaze = f.processing["behavior"]["EyeTracking"]["gaze"].data[:]
        misc = f.processing["misc"]
        assert set(misc.data_interfaces) == {"expected_counts", "true_eyepos"}
        true = misc["true_eyepos"].data[:]
        kinds = list(f.units["kind"][:])
    np.testing.assert_array_equal(gaze, s.eyepos)
    np.testing.assert_array_equal(true, d.true_eyepos)
    assert kinds == list(d.population.kind)
    t = read_truth(nwb)
    np.testing.assert_array_equal(t.true_eyepos, d.true_eyepos)
    np.testing.assert_array_equal(t.recorded_eyepos, s.eyepos)
    np.testing.assert_array_equal(t.expected_counts, s.true_rate)
    assert list(t.kind) == list(d.population.kind)
    np.testing.assert_array_equal(t.adapting, d.population.adapting)
    np.testing.assert_array_equal(t.gain_field, d.population.gain_field)
    g = np.array([[0.0, 0.0], [5.0, -3.0], [-8.0, 6.0]])
    np.testing.assert_allclose(injected_offset(nwb, g), d.calibration.field(g))
    # the reader reads the recorded gaze
    np.testing.assert_array_equal(read_session(nwb).eyepos, s.eyepos)


def test_a_store_built_with_calibration_error_holds_no_true_gaze(demo, tmp_path):
    import zarr

    _, d, nwb, _ = demo
    s = d.session
    out = tmp_path / "store"
    assert build_tiny(tmp_path, [nwb], out, target_rate_hz=240.0) == 0
    root = zarr.open_group(str(out / "zarr"), mode="r")
    (name,) = list(root.group_keys())
    g = root[name]
    assert not any("true" in k and "rate" not in k for k in g.array_keys())
    idx = np.searchsorted(s.t, g["t"][...])
    np.testing.assert_allclose(s.t[idx], g["t"][...])
    stored = g["eyepos"][...]
    np.testing.assert_array_equal(stored, s.eyepos[idx])  # the recorded gaze, exactly
    ok = np.isfinite(stored).all(1)
    assert np.linalg.norm(stored[ok] - d.true_eyepos[idx][ok], axis=1).min() > 0.2
    for shard in (out / "wds").glob("*.tar"):  # nor does any shard member name it
        import tarfile

        with tarfile.open(shard) as tar:
            assert not any("true_eyepos" in m.name for m in tar.getmembers())


def test_a_demo_file_with_its_ground_truth_passes_the_dandi_inspector(demo):
    nwbinspector = pytest.importorskip("nwbinspector")
    _, _, nwb, _ = demo
    msgs = [m for m in nwbinspector.inspect_nwbfile(
        nwbfile_path=str(nwb), config=nwbinspector.load_config("dandi")) if m is not None]
    bad = [m for m in msgs if m.importance.name in ("CRITICAL", "BEST_PRACTICE_VIOLATION")]
    assert bad == [], [(m.check_function_name, m.message) for m in bad]
