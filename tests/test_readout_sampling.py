"""Readout position sampling (Lurz et al. 2021; ``readout_sample_positions``): in training each
forward pass reads every unit at a position drawn from N(mu, sigma_pos^2) (sigma_pos learned),
in evaluation at mu; off, positions are mu always and the readout has no sigma_pos."""

import pytest
import torch

from polar_model.config import BaselineConfig, PolarConfig
from polar_model.models import build_model
from polar_model.readout import MultiLevelGaussianReadout
from polar_model.spec import DataSpec


def _spec():
    return DataSpec(window_len=4, rate_hz=120.0, frame_hw=(21, 21), ppd=7.0, n_units=(5,),
                    mean_rates=((0.1,) * 5,), session_names=("s0",))


def _configs(sample: bool):
    return [PolarConfig(use_jepa=False, n_levels=2, n_pairs=4,
                        readout_sample_positions=sample),
            BaselineConfig(res_channels=(8, 8), gru_hidden=8, front_channels=4,
                           readout_sample_positions=sample)]


def test_positions_vary_between_training_passes_and_are_the_mean_in_eval():
    torch.manual_seed(0)
    r = MultiLevelGaussianReadout(6, 3, 4, [0.1] * 6, 0.05, "softplus", sample_positions=True)
    r.train()
    a, b = r.positions(), r.positions()
    assert not torch.allclose(a, b)
    spread = torch.stack([r.positions() for _ in range(400)]) - r.mu.detach()
    # isotropic, per unit, of the learned std (initially the first level's mask std)
    assert spread.mean(0).abs().max() < 0.015
    assert spread.std(0).sub(0.05).abs().max() < 0.012
    r.eval()
    assert torch.equal(r.positions(), r.mu) and torch.equal(r.positions(), r.positions())
    # sigma_pos learns: it gets a gradient through the sampled positions
    r.train()
    r.positions().pow(2).sum().backward()
    assert r.log_sigma_pos.grad is not None and r.log_sigma_pos.grad.abs().sum() > 0
    # off: positions are mu in training too, and there is no sigma_pos
    off = MultiLevelGaussianReadout(6, 3, 4, [0.1] * 6, 0.05, "softplus").train()
    assert off.log_sigma_pos is None and torch.equal(off.positions(), off.mu)


@pytest.mark.parametrize("i", [0, 1], ids=["polar", "baseline"])
def test_a_model_samples_in_training_and_reads_the_mean_in_eval(i):
    g = torch.Generator().manual_seed(0)
    stim = torch.randn(2, 1, 6, 21, 21, generator=g)
    eyepos = torch.randn(2, 6, 2, generator=g) * 0.1
    torch.manual_seed(0)
    m = build_model(_configs(True)[i], _spec())
    torch.manual_seed(0)
    plain = build_model(_configs(False)[i], _spec())
    with torch.no_grad():
        m.train()
        t1, t2 = m(stim, eyepos, 0).log_rate, m(stim, eyepos, 0).log_rate
        # the same weights and buffers (training passes set the gaze noise), no sampling
        plain.load_state_dict({k: v for k, v in m.state_dict().items()
                               if "log_sigma_pos" not in k})
        m.eval()
        e1, e2 = m(stim, eyepos, 0).log_rate, m(stim, eyepos, 0).log_rate
        ref = plain.eval()(stim, eyepos, 0).log_rate
        ref_train = plain.train()(stim, eyepos, 0).log_rate  # (same noise buffer: as before)
    assert not torch.allclose(t1, t2, atol=1e-6)       # a new draw per training pass
    assert torch.equal(e1, e2) and torch.allclose(e1, ref, atol=1e-6)  # eval: the mean
    assert torch.allclose(ref_train, ref, atol=1e-6)   # off: no sampling in training either
