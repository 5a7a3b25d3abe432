"""The demo population's families and modifiers respond as specified (polar_data.demo.families,
polar_data.demo.population): each against a control family that does not."""

import numpy as np
import pytest

from polar_data.config.data_config import DataConfig, load_data_config
from polar_data.config.typed_yaml import ConfigError, FieldError, from_dict
from polar_data.demo.families import DEFAULT_MIX, FAMILIES, POLAR_FAMILY
from polar_data.demo.generate import DemoConfig, natural_images
from polar_data.demo.population import PopulationParams, V1Population

P, PPD, RATE = 51, 12.75, 240.0  # the demo's crops: 51 px over 4 deg


@pytest.fixture(scope="module")
def pop():
    """Many units of every family, no modifiers."""
    return V1Population(PopulationParams(adaptation_frac=0.0, gain_field_frac=0.0), P, PPD, RATE,
                        np.random.default_rng(0), n_units=60,
                        extra_rng=np.random.default_rng(1))


def _grid():
    c = (np.arange(P) - (P - 1) / 2) / PPD
    return np.meshgrid(c, -c)


def _steady(pop, frames):
    T = len(frames)
    return pop.expected_counts(frames, np.zeros(T, int), np.zeros(T, bool))[-1]


def _grating(pop, n, phase, ori=None, contrast=1.0, radius=None, T=20):
    X, Y = _grid()
    o = pop.orientation[n] if ori is None else ori
    dx, dy = X - pop.center[n, 0], Y - pop.center[n, 1]
    g = 127 * contrast * np.cos(2 * np.pi * pop.sf[n] * (dx * np.cos(o) + dy * np.sin(o))
                                + phase)
    if radius is not None:
        g = g * (np.hypot(dx, dy) <= radius)
    return np.repeat(np.rint(127 + g)[None].astype(np.uint8), T, axis=0)


PHASES = np.linspace(0, 2 * np.pi, 8, endpoint=False)


def _best(pop, n, **kw):
    """Steady response of unit n to its best-phase grating."""
    return max(_steady(pop, _grating(pop, n, p, **kw))[n] for p in PHASES)


def _units(pop, kind):
    u = np.flatnonzero(pop.kind == kind)
    assert len(u) >= 3, kind
    return u


def test_every_family_is_drawn_and_rates_are_realistic(pop):
    assert set(pop.kind) == set(FAMILIES)
    rng = np.random.default_rng(3)
    img = natural_images()[0]
    T = 1200  # drifting crops of a photograph: a few fixations
    ys, xs = rng.integers(0, 400, 12).repeat(100), rng.integers(0, 400, 12).repeat(100)
    ys = ys + np.tile(np.arange(100) // 10, 12)
    frames = np.stack([img[y : y + P, x : x + P] for y, x in zip(ys, xs)])
    r = pop.expected_counts(frames, np.repeat(np.arange(12), 100), np.zeros(T, bool))
    hz = r.mean(0) * RATE
    assert np.isfinite(r).all() and (r >= 0).all()
    assert (hz > 1).all() and (hz < 60).all(), dict(zip(pop.kind, hz.round(1)))


def test_normalised_units_saturate_with_contrast(pop):
    norm = [_best(pop, n) / _best(pop, n, contrast=0.5) for n in _units(pop, "normalised")]
    cx = [_best(pop, n) / _best(pop, n, contrast=0.5) for n in _units(pop, "complex")]
    assert max(norm) < 1.4, norm            # well below 2: saturated
    assert min(cx) > 1.5 and np.median(cx) > 1.8, cx  # about proportional to contrast


def test_surround_units_fall_with_patch_size(pop):
    for kind, falls in (("surround", True), ("complex", False)):
        for n in _units(pop, kind):
            sigma = pop.params.rf_sigma_cycles / pop.sf[n]
            r = [_best(pop, n, radius=k * sigma) for k in (0.75, 1.0, 1.5, 2.0, 3.0, 5.0)]
            if falls:
                assert np.argmax(r) <= 1 and r[-1] < 0.5 * max(r), (n, r)
            else:
                assert r[-1] >= 0.95 * max(r), (n, r)  # grows to the full field


def test_dog_units_are_untuned_for_orientation(pop):
    oris = np.linspace(0, np.pi, 8, endpoint=False)
    for kind in ("dog", "complex"):
        for n in _units(pop, kind):
            r = np.array([_best(pop, n, ori=o) for o in oris])
            spread = (r.max() - r.min()) / r.max()
            assert spread < 0.2 if kind == "dog" else spread > 0.5, (kind, n, spread)


def _bar(pop, n, length, shift, T=20):
    X, Y = _grid()
    th, sf = pop.orientation[n], pop.sf[n]
    dx, dy = X - pop.center[n, 0], Y - pop.center[n, 1]
    u = dx * np.cos(th) + dy * np.sin(th) - shift   # across the bar
    v = -dx * np.sin(th) + dy * np.cos(th)          # along it
    bright = (np.abs(u) <= 0.25 / sf) & (np.abs(v) <= length / 2)
    return np.repeat((127 + 127 * bright)[None].astype(np.uint8), T, axis=0)


def test_endstopped_units_prefer_short_bars(pop):
    for kind in ("endstopped", "complex"):
        for n in _units(pop, kind):
            sigma = pop.params.rf_sigma_cycles / pop.sf[n]

            def best(length, n=n):
                return max(_steady(pop, _bar(pop, n, length, s))[n]
                           for s in np.linspace(-0.5, 0.5, 9) / pop.sf[n])

            ratio = best(2 * sigma) / best(6.0)  # short bar over one crossing the crop
            assert ratio > 1.5 if kind == "endstopped" else ratio < 1.0, (kind, n, ratio)


def _drift(pop, n, sign, T=120, tf=6.0):
    X, Y = _grid()
    th = pop.orientation[n]
    u = (X - pop.center[n, 0]) * np.cos(th) + (Y - pop.center[n, 1]) * np.sin(th)
    t = np.arange(T)[:, None, None] / RATE
    return np.rint(127 + 100 * np.cos(2 * np.pi * (pop.sf[n] * u - sign * tf * t))
                   ).astype(np.uint8)


def test_direction_units_prefer_one_drift_direction(pop):
    T = 120
    d = list(np.flatnonzero(pop.is_direction))
    for kind in ("direction", "complex"):
        for n in _units(pop, kind):
            r = [pop.expected_counts(_drift(pop, n, s), np.zeros(T, int),
                                     np.zeros(T, bool))[60:, n].mean() for s in (1, -1)]
            ratio = r[0] / r[1]  # steady state: drift one way over the other
            if kind == "complex":
                assert 0.9 < ratio < 1.1, (n, ratio)
            else:  # the kernel's sign picks the direction, the same way for every unit
                pref = ratio if pop.dir_sign[d.index(n)] < 0 else 1 / ratio
                assert pref > 1.5, (n, ratio)


def test_adaptation_lowers_the_rate_after_a_burst_of_its_own_spikes():
    pop = V1Population(PopulationParams(adaptation_frac=0.5), 21, 7.0, RATE,
                       np.random.default_rng(2), n_units=8)
    assert pop.adapting.sum() == 4
    T = 800
    base = np.full((T, 8), 0.05, np.float32)
    spikes = np.zeros((T, 8), np.int32)
    spikes[100:105] = 1  # a burst of 5 spikes in every unit
    trial = np.zeros(T, int)
    lam = pop.adapted_intensity(base, spikes, trial)
    after = lam[105] / base[105]
    assert (after[pop.adapting] < 0.75).all(), after
    np.testing.assert_array_equal(lam[:, ~pop.adapting], base[:, ~pop.adapting])
    np.testing.assert_array_equal(lam[:101], base[:101])  # causal: only past spikes count
    late = 105 + int(5 * pop.adapt_tau_ms.max() / 1000 * RATE)
    assert late < T and (lam[late, pop.adapting] > 0.95 * base[late, pop.adapting]).all()
    # a new trial forgets the history
    trial2 = np.repeat([0, 1], [105, T - 105])
    np.testing.assert_array_equal(pop.adapted_intensity(base, spikes, trial2)[105:],
                                  base[105:])


def test_adapting_spikes_follow_their_conditional_intensity():
    """The sampler's spikes have the distribution of a bin-by-bin draw, and the intensity it
    returns is the conditional intensity given them."""
    pop = V1Population(PopulationParams(adaptation_frac=1.0, adaptation_strength=0.4), 21,
                       7.0, RATE, np.random.default_rng(4), n_units=4)
    T = 48000
    base = np.full((T, 4), 0.1, np.float32)
    trial = np.repeat(np.arange(40), T // 40)
    counts, lam = pop.sample(base, trial, np.random.default_rng(5))
    np.testing.assert_allclose(lam, pop.adapted_intensity(base, counts, trial), rtol=1e-5)
    ref = np.zeros((T, 4), int)  # the plain bin-by-bin draw
    rng, h, dec, a = np.random.default_rng(6), np.zeros(4), pop._decay(), pop.adapt_strength
    for t in range(T):
        if t == 0 or trial[t] != trial[t - 1]:
            h[:] = 0.0
        ref[t] = rng.poisson(base[t] * np.exp(-a * h))
        h = dec * (h + ref[t])
    m, mr = counts.mean(0), ref.mean(0)
    assert (m < 0.9 * 0.1).all()  # adapted below the unadapted mean
    se = np.sqrt(mr / T) * 3  # counts are nearly Poisson; a generous bound
    np.testing.assert_allclose(m, mr, atol=4 * se.max())
    # the spike-triggered intensity dips right after a spike
    for n in range(4):
        s = np.flatnonzero(counts[:-1, n] > 0)
        assert lam[s + 1, n].mean() < 0.9 * lam[:, n].mean()


def test_gain_field_changes_the_rate_with_gaze_only_for_its_units():
    pop = V1Population(PopulationParams(gain_field_frac=0.5), 21, 7.0, RATE,
                       np.random.default_rng(7), n_units=10)
    gf = pop.gain_field
    assert gf.sum() == 5
    img = natural_images()[0]
    frames = np.stack([img[100 + k : 121 + k, 200 : 221] for k in range(30)])
    T = len(frames)
    rates = []
    for g in ((-6.0, 0.0), (6.0, 0.0), (0.0, -5.0), (0.0, 5.0), (0.0, 0.0)):
        gaze = np.tile(np.array(g), (T, 1))
        rates.append(pop.expected_counts(frames, np.zeros(T, int), np.zeros(T, bool),
                                         gaze=gaze))
    centre = pop.expected_counts(frames, np.zeros(T, int), np.zeros(T, bool))
    np.testing.assert_allclose(rates[-1], centre, rtol=1e-6)  # gain 1 at the centre
    for r in rates[:-1]:
        np.testing.assert_array_equal(r[:, ~gf], centre[:, ~gf])
        ratio = r[:, gf] / centre[:, gf]
        assert (ratio >= 1 - pop.params.gain_field_depth - 1e-6).all()
        assert (ratio <= 1 + pop.params.gain_field_depth + 1e-6).all()
    spread = np.ptp(np.stack([r[-1, gf] / centre[-1, gf] for r in rates[:-1]]), axis=0)
    assert (spread > 0.1).all(), spread


def test_mix_is_checked_and_yaml_settable(tmp_path):
    with pytest.raises(FieldError, match="allowed: complex, simple, normalised"):
        PopulationParams(mix={"simple": 0.5, "gabor": 0.5})
    with pytest.raises(FieldError, match="sum to 1"):
        PopulationParams(mix={"simple": 0.5, "complex": 0.4})
    with pytest.raises(ConfigError, match="demo.population.mix"):
        from_dict(DataConfig, {"demo": {"population": {"mix": {"dog": 2.0}}}})
    cfg = from_dict(DataConfig, {"demo": {"population": {"mix": {"dog": 0.5, "surround": 0.5}}}})
    pop = V1Population(cfg.demo.population, 21, 7.0, RATE, np.random.default_rng(0), n_units=12)
    assert set(pop.kind) == {"dog", "surround"}
    # the default: every family, Polar-V1's own two at most a third
    mix = DemoConfig().population.mix
    assert set(mix) == set(FAMILIES) and sum(mix[k] for k in POLAR_FAMILY) <= 1 / 3 + 1e-9
    assert mix == DEFAULT_MIX
    pop = V1Population(PopulationParams(), 21, 7.0, RATE, np.random.default_rng(1), n_units=24)
    assert set(pop.kind) == set(FAMILIES)


def test_family_config_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "data"
    for kind in FAMILIES:
        cfg = load_data_config(root / f"demo_family_{kind}.yaml")
        assert cfg.demo.population.mix == {kind: 1.0}
        assert str(cfg.store.out_dir) == f"data/demo_family_{kind}_store"
    old = load_data_config(root / "demo_polar_family.yaml").demo
    assert old.population.mix == {"simple": 0.5, "complex": 0.5}
    assert old.population.adaptation_frac == 0 and old.population.gain_field_frac == 0
    assert not old.calibration.enabled
