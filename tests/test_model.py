"""Polar-V1 and the baseline: gradients, init, causality, time order, physics, JEPA, metrics."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from polar_data.config.typed_yaml import ConfigError
from polar_data.demo.population import saccade_gain_curve
from polar_model.config import config_from_dict, load_model_config
from polar_model.dynamics import PolarDynamics, PolarLevel, polar_level_autograd
from polar_model.gaze import GazeEncoder, SaccadeGain
from polar_model.losses import masked_poisson_nll
from polar_model.metrics import BPSAccumulator, bits_per_spike, oracle_bps, summarize_bps
from polar_model.models import build_model
from polar_model.polar_decomposition import polar_decompose
from polar_model.quadrature import QuadratureFilterBank
from polar_model.readout import MultiLevelGaussianReadout, pool
from polar_model.spec import DataSpec
from polar_model.temporal_summary import TemporalSummarizer
from polar_model.window_rule import required_window_len

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["minimal", "behavior", "jepa", "full", "static", "static_jepa", "baseline"]
W = 12
RATE = 0.05


def spec(window=W, hw=(27, 27), n_units=(6,)):
    return DataSpec(window_len=window, rate_hz=120.0, frame_hw=hw, ppd=7.0, n_units=n_units,
                    mean_rates=tuple(tuple([RATE] * n) for n in n_units),
                    session_names=tuple(f"s{i}" for i in range(len(n_units))))


def model(name, overrides=None, **kw):
    torch.manual_seed(0)
    cfg = load_model_config(ROOT / f"configs/model/{name}.yaml")
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    return build_model(cfg, spec(**kw))


def batch(B=2, S=W + 3, hw=27, seed=0, saccade=True):
    g = torch.Generator().manual_seed(seed)
    stim = torch.randn(B, 1, S, hw, hw, generator=g)
    eyepos = torch.cumsum(torch.randn(B, S, 2, generator=g) * 0.02, 1)
    if saccade:  # a 5 deg saccade over 3 bins in the middle
        eyepos[:, S // 2 :] += torch.tensor([5.0, -2.0])
    return stim, eyepos


@pytest.mark.parametrize("name", CONFIGS)
def test_every_parameter_gets_a_gradient(name):
    m = model(name).train()
    stim, eyepos = batch()
    out = m(stim, eyepos, 0)
    y = torch.poisson(torch.full_like(out.log_rate, 0.5))
    loss = masked_poisson_nll(out.log_rate, y, torch.ones_like(y))
    if out.jepa_loss is not None:
        loss = loss + 0.5 * out.jepa_loss
    loss.backward()
    dead = [n for n, p in m.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().max() == 0)]
    assert dead == []


@pytest.mark.parametrize("name", CONFIGS)
def test_initial_log_rates_are_sane(name):
    m = model(name).eval()
    stim, eyepos = batch(B=4)
    with torch.no_grad():
        out = m(stim, eyepos, 0)
    lr = out.log_rate
    assert torch.isfinite(lr).all()
    assert lr.std() < 1.0 and abs(lr.mean() - math.log(RATE)) < 1.0
    y = torch.poisson(torch.full_like(lr, RATE))
    assert torch.isfinite(masked_poisson_nll(lr, y, torch.ones_like(y)))


@pytest.mark.parametrize("name", CONFIGS)
def test_causal_and_time_ordered(name):
    m = model(name).eval()
    stim, eyepos = batch(S=W + 5)
    with torch.no_grad():
        ref = m(stim, eyepos, 0).log_rate  # outputs for bins W-1 .. S-1
        cut = W + 1  # perturb bins > cut (frames and gaze)
        s2, g2 = stim.clone(), eyepos.clone()
        s2[:, :, cut + 1 :] = torch.randn_like(s2[:, :, cut + 1 :])
        g2[:, cut + 1 :] += 3.0
        out = m(s2, g2, 0).log_rate
        k = cut - (W - 1)  # output index of bin `cut`
        assert torch.allclose(out[:, : k + 1], ref[:, : k + 1], atol=1e-6)
        assert not torch.allclose(out[:, k + 1 :], ref[:, k + 1 :])
        rev = m(stim.flip(2), eyepos.flip(1), 0).log_rate
        assert not torch.allclose(rev, ref, atol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_window_mode_equals_clip_mode(name):
    m = model(name).eval()
    stim, eyepos = batch(S=W + 6)
    with torch.no_grad():
        clip = m(stim, eyepos, 0).log_rate  # [B, L, N]
        last = m(stim, eyepos, 0, last_only=True).log_rate  # window mode on the same frames
        first = m(stim[:, :, :W], eyepos[:, :W], 0).log_rate
    assert last.shape[1] == 1 and clip.shape[1] == 7
    assert torch.allclose(last[:, 0], clip[:, -1], atol=1e-5)
    assert torch.allclose(first[:, 0], clip[:, 0], atol=1e-5)


def _grating(k, shift, size=41, psi=0.3):
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    return torch.cos(2 * math.pi * (k[0] * (x - shift[0]) + k[1] * (y - shift[1])) + psi)


@pytest.mark.parametrize("perturb", [False, True])
def test_phase_rotation_equals_fourier_shift(perturb):
    torch.manual_seed(1)
    bank = QuadratureFilterBank(8, 9)
    if perturb:  # any learned state of the bank, not only the initial one
        with torch.no_grad():
            for p in bank.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    k = bank.k().detach().double()
    shift = (0.37, -0.21)  # pixels, x right / y down
    for m in range(8):
        imgs = torch.stack([_grating(k[m], (0, 0)), _grating(k[m], shift)])[:, None].float()
        even, odd = bank(imgs)
        amp, c, s = polar_decompose(even[:, m, 20, 20].detach(), odd[:, m, 20, 20].detach())
        dphi = math.atan2(float(s[1] * c[0] - c[1] * s[0]), float(c[1] * c[0] + s[1] * s[0]))
        want = 2 * math.pi * float(k[m, 0] * shift[0] + k[m, 1] * shift[1])
        assert abs(dphi - want) < 0.02, (m, dphi, want)


def test_dynamics_predict_the_phase_of_a_moving_image():
    """Eye velocity that matches the image motion -> no phase prediction error; wrong -> error."""
    torch.manual_seed(0)
    bank = QuadratureFilterBank(4, 9)
    k = bank.k().detach()
    dt, v = 1 / 120, torch.tensor([6.0, -3.0])  # retinal motion, pixels/s (x, y down)
    T = 8
    frames = torch.stack([_grating(k[0].double(), (v[0] * dt * t, v[1] * dt * t)) for t in
                          range(T)])[:, None].float()
    even, odd = bank(frames)
    even, odd = even[:, None, :1, 18:23, 18:23], odd[:, None, :1, 18:23, 18:23]  # [T, 1, ...]
    amp = polar_decompose(even, odd)[0]
    y = torch.cat([even, odd], 2)  # [T, B = 1, 2M = 2, 5, 5]
    dyn = PolarDynamics(dt, 10.0, 40.0)
    ones, zeros = torch.ones(1, T, 1), torch.zeros(1, T, 1)
    pixels = torch.eye(25)  # "pooled" by one mask per pixel: full-resolution maps
    right = dyn(y, pixels, 0, False, k[:1], zeros, v.expand(1, T, 2), ones, zeros)[6]
    wrong = dyn(y, pixels, 0, False, k[:1], zeros, torch.zeros(1, T, 2), ones, zeros)[6]
    e_right = right[1:].mean() / amp.mean()
    e_wrong = wrong[1:].mean() / amp.mean()
    assert e_right < 1e-3 and e_wrong > 20 * e_right


def test_phase_state_gradient_stays_finite_when_blends_cancel():
    """Observed phase flipping by pi every step with r = 1/2: every other blend of predicted
    and observed phase is exactly zero. Renormalising it to unit length (the old 1e-8 floor)
    multiplied the gradient by 1e4 per step and overflowed to inf within 47 steps (demo seed
    1 at step 116); with the floor the gradient stays finite and the outputs too."""
    T = 47
    dyn = PolarDynamics(1 / 120, 120 * math.log(2), 120 * math.log(2))  # r = 1/2 each step
    sign = torch.tensor([(-1.0) ** t for t in range(T)]).view(T, 1, 1, 1, 1)
    even, odd = sign * torch.ones(T, 1, 2, 3, 3), torch.zeros(T, 1, 2, 3, 3)
    y = torch.cat([even, odd], 2).requires_grad_()
    A, Ac, As, E = dyn(y, torch.eye(9))[3:7]
    loss = Ac.sum() + As.sum() + E.sum()
    g_y, glam = torch.autograd.grad(loss, [y, dyn._lam])
    assert all(torch.isfinite(g).all() for g in (g_y, glam))
    assert (torch.stack([Ac, As]).abs() <= A + 1e-6).all()  # |phase| <= 1


def test_summaries_pooled_before_the_emas_equal_pooled_full_resolution_features():
    """The summarizer gets the observed responses already pooled and runs the EMAs (one
    matmul each) and the amplitude change on them: the same numbers as computing all nine
    features step by step at full resolution (the old order) and pooling each by the
    masks. Feature k of pair m is channel k M + m (the readout's ``mix`` and the README's
    list depend on it); steps before ``first`` are left out, or summarised by their spatial
    means when asked."""
    torch.manual_seed(0)
    B, T, M, H, W, first, K = 2, 6, 3, 4, 5, 2, 4
    amp, even, odd = (torch.rand(T, B, M, H, W) for _ in range(3))
    A, c, s, e = (torch.rand(T, B, M, H, W) for _ in range(4))
    weights = torch.softmax(torch.randn(H * W, K), 0)
    weights[:, -1] = 1 / (H * W)  # the last mask: the spatial mean
    state = [pool(x, weights)[first:] for x in (A, A * c, A * s, e)]
    early = [x[:first].mean((-2, -1)) for x in (A, A * c, A * s, e)]
    summ = TemporalSummarizer()
    args = pool(amp, weights), pool(even, weights), pool(odd, weights), state
    f, none = summ(*args, [x[:0] for x in early])
    f_with, means = summ(*args, early)
    assert f.shape == (B, T - first, 9 * M, K) and none is None
    assert means.shape == (B, first, 9 * M)
    torch.testing.assert_close(f_with, f)
    fast, slow = torch.sigmoid(summ._alpha)
    f_amp, s_amp, f_even, f_odd = amp[0], amp[0], even[0], odd[0]
    for t in range(T):
        if t:
            f_amp = fast * f_amp + (1 - fast) * amp[t]
            s_amp = slow * s_amp + (1 - slow) * amp[t]
            f_even = fast * f_even + (1 - fast) * even[t]
            f_odd = fast * f_odd + (1 - fast) * odd[t]
        change = amp[t] - amp[max(t - 1, 0)]
        want = (A[t], A[t] * c[t], A[t] * s[t], f_amp, s_amp, f_even, f_odd, change, e[t])
        for k, full_res in enumerate(want):
            if t < first:
                torch.testing.assert_close(means[:, t].view(B, 9, M)[:, k],
                                           full_res.mean((-2, -1)))
            else:
                torch.testing.assert_close(f[:, t - first].view(B, 9, M, K)[:, k],
                                           pool(full_res, weights))


def test_written_out_backward_of_the_dynamics_equals_autograd():
    """:class:`PolarLevel` (the dynamics with a hand-written backward) against the
    step-by-step autograd reference in float64: the same nine outputs and the same
    gradient for every input (responses, decay, phase advance, masks), with and without
    behaviour (the rotation), with and without JEPA's early means, and with renormalisation
    clamped at some pixels (cancelling blends). gradcheck then checks the backward against
    finite differences."""
    torch.manual_seed(0)
    T, B, M, H, W, K = 6, 2, 3, 4, 5, 4
    f64 = torch.float64
    for rot, first, means in [(True, 2, True), (True, 2, False), (True, 0, False),
                              (False, 5, True), (False, 3, True), (True, 5, False)]:
        y = torch.randn(T, B, 2 * M, H, W, dtype=f64)
        y[1::2, 0] = -y[0::2, 0]  # responses flipping sign in sample 0 ...
        decay = torch.rand(T, B, dtype=f64) * 0.9 + 0.05
        decay[:, 0] = 0.5  # ... and r = 1/2: blends that cancel, clamped renormalisation
        phase = torch.randn(T, B, M, dtype=f64)
        cd, sd = (phase.cos(), phase.sin()) if rot else (None, None)
        weights = torch.softmax(torch.randn(H * W, K, dtype=f64), 0)
        inputs = [x.requires_grad_() for x in (y, decay, cd, sd, weights) if x is not None]
        args = (y, decay, cd, sd, weights, first, means)
        got, want = PolarLevel.apply(*args), polar_level_autograd(*args)
        assert [x.shape for x in got] == [x.shape for x in want]
        for x, z in zip(got, want):
            torch.testing.assert_close(x, z)
        g_out = [torch.randn_like(x) for x in got]
        for x, z in zip(torch.autograd.grad(got, inputs, g_out),
                        torch.autograd.grad(want, inputs, g_out)):
            torch.testing.assert_close(x, z)
    small = y.detach()[:4, :1, :4, :3, :3].clone().requires_grad_()
    w = torch.softmax(torch.randn(9, 2, dtype=f64), 0).requires_grad_()
    d = (torch.rand(4, 1, dtype=f64) * 0.9 + 0.05).requires_grad_()
    ph = torch.randn(4, 1, 2, dtype=f64)
    cs = [ph.cos().requires_grad_(), ph.sin().requires_grad_()]
    assert torch.autograd.gradcheck(lambda *a: PolarLevel.apply(*a, 1, True),
                                    (small, d, *cs, w))


def test_jepa_means_of_early_steps_equal_pooling_every_step():
    """With JEPA, the steps before ``first`` are summarised by their spatial means alone (no
    per-unit pooling): the same means, and the same per-unit features after ``first``, as
    pooling every step with every mask (``first = 0``)."""
    m = model("full").train()
    stim, eyepos = batch()
    beh_code = m.behavior(*m.gaze(eyepos, 0))
    w = m.pooling_weights(0, pool=True)
    feats, means = m.level_features(stim, beh_code, w, first=W - 1, pool=True)
    every, every_means = m.level_features(stim, beh_code, w, first=0, pool=True)
    for level in range(len(feats)):
        assert means[level].shape == every_means[level].shape == (2, stim.shape[2], 72)
        torch.testing.assert_close(means[level], every_means[level], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(feats[level], every[level][:, W - 1:])


def test_model_pools_each_feature_map_by_the_readout_masks():
    """The model's readout input equals the readout's own pooling of full-resolution
    features: a static model's amplitude/even/odd maps pooled by ``readout.pool``."""
    torch.manual_seed(0)
    m = model("static").eval()
    stim, eyepos = batch()
    w = m.pooling_weights(0, pool=False)
    feats, _ = m.level_features(stim, None, w, first=W - 1)
    B, S = stim.shape[0], stim.shape[2]
    bands = m.pyramid(stim[:, 0].reshape(B * S, 1, *stim.shape[-2:]).float())
    for level, (band, bank) in enumerate(zip(bands, m.filters)):
        even, odd = bank(band)
        even, odd = (x.view(B, S, -1, *x.shape[-2:]) for x in (even, odd))
        amp = torch.sqrt(even**2 + odd**2 + 1e-8)
        full = torch.cat([amp, even, odd], 2)[:, W - 1:]
        torch.testing.assert_close(feats[level].transpose(-1, -2),
                                   m.readouts[0].pool(level, full), rtol=1e-4, atol=1e-5)


def test_saccade_gate_opens_only_for_saccades():
    enc = GazeEncoder(16, 1 / 120, 2, threshold=100.0, slope=0.05, detector="fixed")
    t = torch.arange(40, dtype=torch.float32) / 120
    fix = torch.stack([0.5 * t, 0.2 * t], -1)[None]  # drift, < 1 deg/s
    sac = fix.clone()
    sac[0, 20:25, 0] += torch.linspace(1.6, 8, 5)  # ~400 deg/s for 5 bins
    sac[0, 25:, 0] += 8.0
    _, q_fix, _ = enc(fix)
    _, q_sac, _ = enc(sac)
    assert q_fix.max() < 0.05
    assert q_sac[0, 21:25].min() > 0.95 and q_sac[0, 30:].max() < 0.05


def test_jepa_loss_bounded_reaches_gradient_and_teacher_moves_only_on_update():
    m = model("full").train()
    stim, eyepos = batch()
    teacher = [p.clone() for p in m.jepa.teacher.parameters()]
    out = m(stim, eyepos, 0)
    assert 0.0 <= float(out.jepa_loss.detach()) <= 2.0
    out.jepa_loss.backward()
    assert m.filters[0].theta.grad.abs().max() > 0  # JEPA alone trains the trunk
    assert all(torch.equal(a, b) for a, b in zip(teacher, m.jepa.teacher.parameters()))
    with torch.no_grad():
        for p in m.jepa.projector.parameters():
            p.add_(0.1)
    m.update_teacher()
    assert not all(torch.equal(a, b) for a, b in zip(teacher, m.jepa.teacher.parameters()))
    m.eval()
    assert m(stim, eyepos, 0).jepa_loss is None


def test_jepa_guard_names_both_numbers():
    cfg = load_model_config(ROOT / "configs/model/full.yaml")
    assert required_window_len(cfg) == 12
    with pytest.raises(ValueError, match=r"window_len = 10, but 'full' needs window_len >= 12 "
                                         r"\(jepa_delta \+ min_context\)"):
        build_model(cfg, spec(window=10))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="n_pair: unknown key"):
        config_from_dict({"kind": "polar", "n_pair": 3})
    with pytest.raises(ConfigError, match="kind"):
        config_from_dict({"kind": "transformer"})
    with pytest.raises(ConfigError, match="temporal"):
        config_from_dict({"kind": "polar", "temporal": "sometimes"})


def _fit_weights(sg, log_gain):
    """Least-squares basis weights for a log-gain curve [K] (every unit)."""
    w = torch.linalg.lstsq(sg.basis, torch.as_tensor(log_gain, dtype=torch.float32)[:, None])
    with torch.no_grad():
        sg.weight.copy_(w.solution.t().expand_as(sg.weight))


def test_saccade_gain_is_the_kernel_after_each_onset_and_causal():
    """A gate that steps 0 -> 1 at bin o gives log gain kernel[t - o] for t >= o, 0 before;
    the smooth basis holds the demo's ground-truth dip and rebound."""
    K, T, o = 30, 60, 20
    truth = np.log(saccade_gain_curve(K, 120.0, 0.6, 0.5))
    sg = SaccadeGain(2, K, spacing=2)
    _fit_weights(sg, truth)
    with torch.no_grad():
        sg.weight[1].neg_()
    kernel = sg.kernel.detach().numpy()
    assert np.abs(kernel[0] - truth).max() < 0.08
    q = torch.zeros(1, T, 1)
    q[:, o:] = 1.0
    g = sg(q)[0].detach().numpy()  # [T, 2]
    assert g.shape == (T, 2)
    assert np.abs(g[:o]).max() == 0.0
    assert np.allclose(g[o : o + K].T, kernel, atol=1e-6)
    assert np.abs(g[o + K :]).max() < 1e-6  # back to gain 1 after the kernel's span


def test_saccade_gain_recovers_suppression_and_enhancement_from_spikes():
    """Poisson spikes at rate r x gain(time since onset), the demo's ground-truth curve:
    fitting the kernel by maximum likelihood finds the dip and the rebound."""
    rng = np.random.default_rng(0)
    K, T, B = 40, 600, 16
    truth = np.log(saccade_gain_curve(K, 120.0, 0.6, 0.5))
    q = np.zeros((B, T, 1), np.float32)
    for b in range(B):  # a saccade every 300-600 ms, 2 bins of rising gate
        t = int(rng.integers(5, 30))
        while t < T - 2:
            q[b, t, 0], q[b, t + 1 :, 0] = 0.5, 1.0
            q[b, t + 3 :, 0] = 0.0
            t += int(rng.integers(36, 72))
    truth_sg = SaccadeGain(1, K, spacing=2)
    _fit_weights(truth_sg, truth)
    with torch.no_grad():
        rate = 0.3 * torch.exp(truth_sg(torch.from_numpy(q)))
    y = torch.poisson(rate, generator=torch.Generator().manual_seed(0))
    sg = SaccadeGain(1, K, spacing=2)
    opt = torch.optim.Adam(sg.parameters(), lr=0.05)
    q, ones = torch.from_numpy(q), torch.ones_like(y)
    for _ in range(300):
        opt.zero_grad()
        masked_poisson_nll(math.log(0.3) + sg(q), y, ones).backward()
        opt.step()
    k = sg.kernel.detach()[0].numpy()
    dip, peak = int(np.argmin(truth)), int(np.argmax(truth))
    assert abs(int(np.argmin(k)) - dip) <= 2 and abs(int(np.argmax(k)) - peak) <= 4
    assert np.exp(k[dip]) < 0.6 and np.exp(k[peak]) > 1.3  # truth: 0.4 and 1.5
    assert np.abs(k - truth).mean() < 0.1


def test_mix_after_pooling_equals_a_1x1_conv_before_it():
    """The readout pools each level with masks summing to one, then applies the shared
    channel map: the same rates as mixing every pixel with a 1x1 conv first (the old order)."""
    torch.manual_seed(0)
    readout = MultiLevelGaussianReadout(5, 2, 4, torch.rand(5) + 0.1, 0.3, link="softplus")
    mix = [torch.nn.Linear(6, 4) for _ in range(2)]
    feats = [torch.randn(2, 3, 6, 9, 9), torch.randn(2, 3, 6, 5, 5)]
    conv_first = []
    for f, m in zip(feats, mix):
        y = torch.nn.functional.conv2d(f.flatten(0, 1), m.weight[..., None, None], m.bias)
        conv_first.append(y.view(2, 3, 4, *f.shape[-2:]))
    torch.testing.assert_close(readout(feats, mix), readout(conv_first), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["minimal", "full"])
def test_written_out_dynamics_give_the_autograd_loss_and_gradients_in_less_memory(name):
    """The model with the dynamics' written-out backward (the default) and with the
    step-by-step autograd reference (``autograd_dynamics: true``): the same loss and the
    same gradient for every parameter, and less than half the bytes kept for backward."""
    stim, eyepos = batch(S=W + 6)
    grads = []
    for reference in (False, True):
        m = model(name, {"autograd_dynamics": reference}).train()
        torch.manual_seed(1)  # JEPA's context draw
        saved = []  # bytes autograd keeps for backward

        def pack(t, saved=saved):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = m(stim, eyepos, 0)
        y = torch.poisson(torch.full_like(out.log_rate, 0.5),
                          generator=torch.Generator().manual_seed(2))
        loss = masked_poisson_nll(out.log_rate, y, torch.ones_like(y))
        if out.jepa_loss is not None:
            loss = loss + 0.5 * out.jepa_loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                                      if p.grad is not None}, sum(saved)))
    (l0, g0, kept0), (l1, g1, kept1) = grads
    assert kept0 < 0.5 * kept1, (kept0, kept1)
    torch.testing.assert_close(l0, l1)
    assert g0.keys() == g1.keys() and any(k.startswith("dynamics.") for k in g0)
    for k in g0:
        torch.testing.assert_close(g0[k], g1[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", ["full", "baseline"])
def test_bf16_autocast_keeps_gaze_in_float32(name):
    """Mixed precision (``precision: bf16-mixed``) runs the image path in bfloat16 but the
    gaze path in float32: its outputs are bit-identical to a float32 run, and the rates
    stay close to it (CPU autocast here; CUDA's follows the same rule)."""
    m = model(name).eval()
    gaze_module = m.gaze if name == "full" else m.modulator
    seen = []
    gaze_module.register_forward_hook(lambda mod, args, out: seen.append(out))
    stim, eyepos = batch()
    with torch.no_grad():
        ref = m(stim, eyepos, 0).log_rate
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = m(stim, eyepos, 0).log_rate
    flat = [torch.utils._pytree.tree_leaves(o) for o in seen]
    assert all(t.dtype == torch.float32 for t in flat[1])
    for a, b in zip(flat[0], flat[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), ref, rtol=0.05, atol=0.05)


def test_static_differs_from_minimal():
    a, b = model("static"), model("minimal")
    assert not hasattr(a, "dynamics") and hasattr(b, "dynamics")
    assert a.mix[0].in_features != b.mix[0].in_features


def _documented_params():
    """The configs table of docs/model.md: config name -> documented trainable parameters
    (rows ``| `name` | ... | 14,020 |``)."""
    text = (ROOT / "docs" / "model.md").read_text()
    return {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^\| `(\w+)` \|.*\| ([\d,]+) \|$", text, re.M)}


def test_parameter_counts_match_readme(capsys):
    counts = {}
    for name in CONFIGS:
        m = build_model(load_model_config(ROOT / f"configs/model/{name}.yaml"),
                        spec(window=16, hw=(51, 51), n_units=(32,)))
        counts[name] = sum(p.numel() for p in m.parameters() if p.requires_grad)
    with capsys.disabled():
        print("\ntrainable parameters (51x51, one session of 32 units):", counts)
    documented = _documented_params()
    assert set(documented) == set(CONFIGS)
    assert documented == counts
    assert counts["full"] <= 0.75 * counts["baseline"]


def test_bits_per_spike_matches_formula_and_oracle():
    rng = np.random.default_rng(0)
    true = rng.uniform(0.05, 0.5, size=(5000, 4))
    y = rng.poisson(true)
    d = np.ones_like(y, dtype=float)
    d[:100, 0] = 0
    bps = bits_per_spike(true, y, d)
    i = 1
    rbar = y[:, i].mean()
    manual = ((y[:, i] * np.log(true[:, i]) - true[:, i]).sum()
              - (y[:, i] * np.log(rbar) - rbar).sum()) / (y[:, i].sum() * np.log(2))
    assert abs(bps[i] - manual) < 1e-9
    assert (oracle_bps(true, y, d) > 0).all()
    flat = bits_per_spike(np.full_like(true, y.mean(0)), y, np.ones_like(d))
    assert np.allclose(flat, 0, atol=1e-9)  # the null model itself scores 0
    acc = BPSAccumulator(4)
    for a in range(0, 5000, 1000):
        acc.update(torch.tensor(true[a : a + 1000]), torch.tensor(y[a : a + 1000]),
                   torch.tensor(d[a : a + 1000]))
    assert np.allclose(acc.bps().numpy(), bps)
    s = summarize_bps([0.2, -0.1, np.nan])
    assert s["n_units"] == 2 and abs(s["mean_unclamped"] - 0.05) < 1e-12
    assert abs(s["mean_clamped"] - 0.1) < 1e-12


def _bps_before_issue_15(rate_hat, robs, dfs):
    """The numpy definition evaluation used before the per-unit sums became the only one."""
    r, y, d = (np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1]) for x in
               (rate_hat, robs, dfs))
    n_spk = (d * y).sum(0)
    rbar = (d * y).sum(0) / np.maximum(d.sum(0), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll_model = (d * (np.where(y > 0, y * np.log(np.maximum(r, 1e-30)), 0.0) - r)).sum(0)
        ll_null = (d * (np.where(y > 0, y * np.log(np.maximum(rbar, 1e-30)), 0.0) - rbar)).sum(0)
        bps = (ll_model - ll_null) / (n_spk * np.log(2))
    return np.where(n_spk > 0, bps, np.nan)


def test_one_bps_definition_gives_the_old_values_on_masks_and_silent_units():
    rng = np.random.default_rng(1)
    rate = rng.uniform(0.01, 0.8, size=(3, 700, 6)).astype(np.float32)
    y = rng.poisson(rate * rng.uniform(0.5, 1.5, size=6)).astype(np.float32)
    d = (rng.uniform(size=y.shape) > 0.2).astype(np.float32)
    y[..., 5] = 0  # a silent unit: NaN
    old = _bps_before_issue_15(rate, y, d)
    new = bits_per_spike(rate, y, d)
    np.testing.assert_allclose(new, old, rtol=1e-12, atol=1e-14, equal_nan=True)
    assert np.isnan(new[5]) and np.isfinite(new[:5]).all()
    acc = BPSAccumulator(6)  # the trainer's sums over batches: the same numbers
    for k in range(3):
        acc.update(torch.from_numpy(rate[k]), torch.from_numpy(y[k]), torch.from_numpy(d[k]))
    np.testing.assert_allclose(acc.bps().numpy(), old, rtol=1e-12, atol=1e-14, equal_nan=True)
