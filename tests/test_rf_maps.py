"""Readout placement from receptive-field maps (polar_model.rf_maps, training.placement)."""

import numpy as np
import pytest
import torch

from polar_model.readout import MultiLevelGaussianReadout
from polar_model.rf_maps import RFMapper

H = W = 33
RATE = 120.0
LAG = 4  # bins: 33 ms at 120 Hz, inside the mapper's 25-60 ms


def _frames(T, rng):
    """Smooth noise frames [T, H, W] (every bin new), zero mean, unit std."""
    x = torch.from_numpy(rng.standard_normal((T, 1, H + 8, W + 8)).astype(np.float32))
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256.0)[None, None]
    x = torch.nn.functional.conv2d(x, k)[:, 0, 2:-2, 2:-2]
    return (x - x.mean()) / x.std()


def _gabor(cx, cy, theta, freq=0.18, sigma=2.5, phase=0.0):
    """[H, W] Gabor centred at pixel (cx, cy) (x right, y down)."""
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32),
                            torch.arange(W, dtype=torch.float32), indexing="ij")
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    return torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * torch.cos(2 * np.pi * freq * u + phase)


def test_rf_maps_find_a_simple_and_a_complex_cell_where_they_are():
    """Poisson units at known positions, lagged by LAG bins: a simple cell (rectified Gabor
    response) and a complex cell (energy of a Gabor pair). The mapper's positions land
    within 1.5 px of the truth; a unit that follows nothing has a low peak."""
    rng = np.random.default_rng(0)
    T, hist = 6000, 8
    frames = _frames(T + hist, rng)
    simple_at, complex_at = (8.0, 22.0), (24.0, 10.0)
    g_s = _gabor(*simple_at, theta=0.3)
    g_c0, g_c1 = (_gabor(*complex_at, theta=1.9, phase=p) for p in (0.0, np.pi / 2))
    lin = (frames * g_s).sum((1, 2))
    energy = (frames * g_c0).sum((1, 2)) ** 2 + (frames * g_c1).sum((1, 2)) ** 2
    drive = torch.stack([torch.relu(lin / lin.std()), energy / energy.std(),
                         torch.zeros(T + hist)], 1)
    rate = 0.05 + 0.4 * drive
    lagged = torch.cat([torch.zeros(LAG, 3), rate[:-LAG]])
    counts = torch.poisson(lagged, generator=torch.Generator().manual_seed(0))
    m = RFMapper(3, (H, W), RATE)
    L = 100
    for a in range(hist, T + hist - L + 1, L):  # clips: hist bins of history, L targets
        stim = frames[a - hist : a + L][None, None]
        m.update(stim, counts[a : a + L][None], torch.ones(1, L, 3, dtype=torch.bool))
    pos, height = m.positions()
    px = (pos + 1) / 2 * (torch.tensor([W, H]) - 1)  # back to pixels (x, y)
    assert torch.dist(px[0], torch.tensor(simple_at)) < 1.5, px[0]
    assert torch.dist(px[1], torch.tensor(complex_at)) < 1.5, px[1]
    assert height[2] < 0.5 * min(height[0], height[1]), height


def test_rf_maps_use_each_units_valid_bins_only():
    """A unit masked where it would correlate elsewhere is mapped from its valid bins."""
    rng = np.random.default_rng(1)
    T = 4000
    frames = _frames(T, rng)
    lin_a = (frames * _gabor(8, 8, 0.0)).sum((1, 2))
    lin_b = (frames * _gabor(24, 24, 0.0)).sum((1, 2))
    half = torch.arange(T) < T // 2
    drive = torch.where(half, lin_a, lin_b)  # first half follows A, second half B
    counts = torch.poisson(0.05 + 0.4 * torch.relu(drive / drive.std()),
                           generator=torch.Generator().manual_seed(1))
    counts = torch.cat([torch.zeros(LAG), counts[:-LAG]])[:, None]
    valid = (~half).roll(LAG)[:, None]  # unit valid only while it follows B
    m = RFMapper(1, (H, W), RATE)
    for a in range(8, T - 100 + 1, 100):
        m.update(frames[a - 8 : a + 100][None, None], counts[a : a + 100][None],
                 valid[a : a + 100][None])
    pos, _ = m.positions()
    px = (pos[0] + 1) / 2 * (W - 1)
    assert torch.dist(px, torch.tensor([24.0, 24.0])) < 1.5, px


def test_readout_place_and_per_level_sigma():
    r = MultiLevelGaussianReadout(3, 2, 4, [0.1, 0.2, 0.3], sigma=[0.04, 0.08])
    mu = torch.tensor([[0.5, -0.2], [0.0, 0.0], [-0.9, 0.99]])
    r.place(mu)
    assert torch.allclose(r.mu, mu.clamp(-0.95, 0.95), atol=1e-6)
    assert torch.allclose(r.log_sigma.exp()[0, :, 0], torch.tensor([0.04, 0.08]))
    with pytest.raises(ValueError, match="positions must be"):
        r.place(torch.zeros(2, 2))


def test_placement_reads_the_training_split_only(monkeypatch, small_demo_store):
    """The positions come from training clips only (no look at val or test), and they move
    the readouts of a built model."""
    from polar_data.loaders.store_info import StoreInfo
    from polar_model.config import PolarConfig
    from polar_model.models import build_model
    from polar_model.training import placement
    from polar_model.training.store_facts import spec_of

    info = StoreInfo.load(str(small_demo_store))
    splits = []
    real = placement.every_clip

    def spy(info, split, *a, **k):
        splits.append(split)
        return real(info, split, *a, **k)

    monkeypatch.setattr(placement, "every_clip", spy)
    monkeypatch.setattr(placement, "_MAPPED", {})  # maps made by other tests in this process
    model = build_model(PolarConfig(use_behavior=False, n_levels=3), spec_of(info))
    before = [r.mu.clone() for r in model.readouts]
    line = placement.place_readouts(model, info, progress=False)
    assert splits == ["train"]
    assert "placed" in line
    for r, b in zip(model.readouts, before):
        assert not torch.allclose(r.mu, b)
        assert r.mu.abs().max() <= 0.95 + 1e-6
    # a second model on the same store gets the same positions without mapping again
    again = build_model(PolarConfig(use_behavior=False, n_levels=3), spec_of(info))
    placement.place_readouts(again, info, progress=False)
    assert splits == ["train"]
    for r, q in zip(model.readouts, again.readouts):
        torch.testing.assert_close(r.mu, q.mu)


def test_a_store_without_zarr_keeps_the_readouts_at_the_centre(tmp_path, small_demo_store):
    """Shards-only stores (e.g. streamed from object storage) train without placement."""
    import shutil

    from polar_data.loaders.store_info import StoreInfo
    from polar_model.config import PolarConfig
    from polar_model.models import build_model
    from polar_model.training.placement import place_readouts
    from polar_model.training.store_facts import spec_of

    store = tmp_path / "store"
    shutil.copytree(small_demo_store, store, ignore=shutil.ignore_patterns("zarr", "sessions"))
    info = StoreInfo.load(str(store))
    model = build_model(PolarConfig(use_behavior=False, n_levels=3), spec_of(info))
    before = [r.mu.clone() for r in model.readouts]
    assert "crop centre" in place_readouts(model, info, progress=False)
    assert all(torch.equal(r.mu, b) for r, b in zip(model.readouts, before))


def test_lag_averaged_features_are_the_mean_of_the_lagged_responses():
    """The running-sum lag average and the strided level-0 filtering give, per target bin,
    the mean over the lags of each level's energy, even and odd responses (level 0 at every
    second pixel), computed here directly from the filter bank."""
    torch.manual_seed(0)
    B, S, L = 2, 20, 9
    stim = torch.randn(B, 1, S, H, W)
    mapper = RFMapper(3, (H, W), RATE)
    feats = mapper._features(stim, L)
    first = S - L
    bands = mapper.pyramid(stim[:, 0].reshape(B * S, 1, H, W))
    for level, (band, bank) in enumerate(zip(bands, mapper.banks)):
        even, odd = bank(band)
        if level == 0:
            even, odd = even[..., ::2, ::2], odd[..., ::2, ::2]
        f = torch.stack([torch.sqrt(even**2 + odd**2), even, odd], 1).view(B, S, -1)
        want = sum(f[:, first - lag : S - lag] for lag in mapper.lags) / len(mapper.lags)
        torch.testing.assert_close(feats[level], want.reshape(B * L, -1), rtol=1e-4,
                                   atol=1e-4)
