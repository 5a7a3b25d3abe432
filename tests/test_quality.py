"""Model quality (issue 14): evaluation on the right bins, an independent oracle, the output
link, the readout init, JEPA's share of the shared gradient, and learning itself."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from polar_data.loaders.store_info import StoreInfo
from polar_model.config import load_model_config
from polar_model.losses import masked_poisson_nll
from polar_model.models import build_model
from polar_model.readout import MultiLevelGaussianReadout, apply_link, log_softplus
from polar_model.spec import DataSpec
from polar_model.training.evaluation import predict_split, score
from polar_model.training.lit_module import EncodingModule
from polar_model.training.run_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
VAL = 1  # split code in the store


def _zarr(store, mode="r"):
    import zarr

    return zarr.open_group(store=str(Path(store) / "zarr"), mode=mode, zarr_format=3)


def _independent_bps(rate, robs, dfs):
    """Per-unit bits per spike written out again (not polar_model.metrics): Poisson
    log-likelihood of ``rate`` minus that of the unit's own masked mean, per spike, in bits."""
    out = []
    for n in range(robs.shape[1]):
        m = dfs[:, n] > 0
        y, r = robs[m, n].astype(np.float64), rate[m, n].astype(np.float64)
        if y.sum() == 0:
            out.append(np.nan)
            continue
        rbar = y.mean()
        ll = np.sum(y * np.log(r) - r)
        ll0 = np.sum(y * np.log(rbar) - rbar)
        out.append((ll - ll0) / (y.sum() * math.log(2)))
    return np.array(out)


def test_oracle_bps_recomputed_independently_of_the_evaluation_code(small_demo_store):
    """The oracle from the store's own arrays (bins of windows/val, true rates, counts, masks)
    equals what predict_split + score report; and it is well above zero."""
    info = StoreInfo.load(str(small_demo_store))
    root = _zarr(small_demo_store)
    mine = []
    for name in info.sessions:
        g = root[name]
        bins = g["windows/val"][...]
        assert (g["split"][...][bins] == VAL).all()
        mine.append(_independent_bps(g["true_rate"][...][bins], g["robs"][...][bins],
                                     g["dfs"][...][bins]))
    mine = np.concatenate(mine)
    theirs = score(predict_split(lambda b: b["true_rate"].clamp_min(1e-12).log(), info,
                                 "val"))
    np.testing.assert_allclose(theirs["oracle_units"], mine, rtol=1e-4, atol=1e-6,
                               equal_nan=True)
    assert np.nanmean(mine) > 0.05


def test_clip_with_masked_trailing_targets_is_scored_on_its_own_bins(monkeypatch,
                                                                     small_demo_store):
    """Every unit masked on the last 5 targets of a val clip (the loader's batch is edited, the
    store is not): each prediction must still land on its own bin. The prediction is the
    true rate of the bin the model was asked about; it is compared with the store's true rate
    read straight from Zarr at the bins where it was placed."""
    from polar_data.loaders.zarr_windows import ZarrWindows

    info = StoreInfo.load(str(small_demo_store))
    name = info.sessions[0]
    root = _zarr(small_demo_store)
    clips = root[name]["clips/val"][...]
    start, n = (int(x) for x in clips[np.argmax(clips[:, 1])])
    assert n > 8
    original = ZarrWindows.__getitems__

    def masked(self, indices):
        batch = original(self, indices)
        for b, i in enumerate(indices):
            if (self.index[i, 0], self.index[i, 1]) == (0, start):
                batch["dfs"][b, n - 5 : n] = 0.0
        return batch

    monkeypatch.setattr(ZarrWindows, "__getitems__", masked)
    sp = predict_split(lambda b: b["true_rate"].clamp_min(1e-12).log(), info, "val")[0]
    truth = root[name]["true_rate"][...]
    placed = np.flatnonzero(~np.isnan(sp.rate[:, 0]))
    np.testing.assert_allclose(sp.rate[placed], truth[placed], rtol=1e-5, atol=1e-9)
    assert set(range(start, start + n)) <= set(placed.tolist())
    assert not sp.dfs[start + n - 5 : start + n].any() and sp.dfs[start : start + n - 5].any()


def test_log_softplus_is_finite_with_finite_gradients():
    x = torch.tensor([-200.0, -30.0, -15.0, -1.0, 0.0, 3.0, 60.0], requires_grad=True)
    y = log_softplus(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    ref = torch.log(torch.log1p(torch.exp(x.detach().double())))
    assert torch.allclose(y.double()[1:], ref[1:], atol=1e-5)


@pytest.mark.parametrize("link", ["exp", "softplus", "learned"])
def test_every_link_starts_at_the_mean_rate(link):
    rates = [0.02, 0.1, 0.3]
    r = MultiLevelGaussianReadout(3, 2, 4, rates, 0.25, link=link, weight_std=0.0)
    feats = [torch.randn(2, 5, 4, 7, 7), torch.randn(2, 5, 4, 4, 4)]
    out = r(feats).exp()
    assert torch.allclose(out, torch.tensor(rates).expand_as(out), rtol=1e-5)


def test_softplus_link_fits_a_rectified_population_better_than_exp():
    """The measured cause: a unit whose rate is softplus(3 drive + offset) (the demo's
    form) is fitted by a one-feature readout through each link (full-batch Adam); the exp
    link's best fit is clearly worse, the softplus link's is near the truth's."""
    g = torch.Generator().manual_seed(0)
    drive = torch.randn(20000, 1, generator=g)
    rate = torch.nn.functional.softplus(3 * drive - 1.0) * 0.05 + 0.002
    y = torch.poisson(rate, generator=g)
    nll_true = masked_poisson_nll(rate.log(), y, torch.ones_like(y)).item()
    fits = {}
    for link in ("exp", "softplus"):
        w = torch.zeros(1, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.05)
        for _ in range(600):
            opt.zero_grad()
            lr = apply_link(w * drive + b, link, torch.tensor(math.log(0.05)))
            loss = masked_poisson_nll(lr, y, torch.ones_like(y))
            loss.backward()
            opt.step()
        fits[link] = loss.item() - nll_true
    assert fits["softplus"] < 2e-4
    assert fits["exp"] > 3 * fits["softplus"] + 1e-3


def _spec(n_units=(6,), window=12, hw=(27, 27)):
    return DataSpec(window_len=window, rate_hz=120.0, frame_hw=hw, ppd=7.0, n_units=n_units,
                    mean_rates=tuple(tuple([0.05] * n) for n in n_units),
                    session_names=tuple(f"s{i}" for i in range(len(n_units))))


def _batch(B=2, S=20, hw=27, seed=0):
    g = torch.Generator().manual_seed(seed)
    stim = torch.randn(B, 1, S, hw, hw, generator=g)
    gaze = torch.cumsum(torch.randn(B, S, 2, generator=g) * 0.02, 1)
    gaze[:, S // 2 :] += torch.tensor([3.0, -1.0])
    y = torch.poisson(torch.full((B, S - 11, 6), 0.3), generator=g)
    return stim, gaze, y


def _grad_norm(params):
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))


def test_readout_init_gives_the_front_end_gradient_from_step_one():
    """With the old 0.01 feature weights the front end's gradient is tiny; with the default
    init it is of the order of the readout's own."""
    ratios = {}
    for std in (0.01, None):
        cfg = load_model_config(ROOT / "configs/model/minimal.yaml")
        cfg.readout_weight_std = std
        torch.manual_seed(0)
        m = build_model(cfg, _spec()).train()
        stim, gaze, y = _batch()
        out = m(stim, gaze, 0)
        masked_poisson_nll(out.log_rate, y, torch.ones_like(y)).backward()
        front = _grad_norm(m.shared_parameters())
        readout = _grad_norm(m.readouts.parameters())
        ratios[std] = front / readout
    assert ratios[None] > 5 * ratios[0.01]
    assert ratios[None] > 0.05


def _jepa_module(ratio):
    cfg = load_model_config(ROOT / "configs/model/full.yaml")
    cfg.jepa_max_grad_ratio = ratio
    cfg.jepa_warmup_steps = 0
    cfg.lambda_jepa = 20.0  # a weight at which JEPA would dominate
    torch.manual_seed(0)
    return EncodingModule.create(cfg, _spec(), TrainConfig())


@pytest.mark.parametrize("ratio", [None, 0.1])
def test_jepa_share_of_the_shared_gradient_is_bounded(ratio):
    """On the shared front end: |grad(w JEPA)| <= ratio x |grad NLL| when balanced; without
    the cap (lambda_jepa = 20 as given) JEPA's gradient dominates, so the bound is real."""
    mod = _jepa_module(ratio).train()
    m = mod.model
    stim, gaze, y = _batch()
    out = m(stim, gaze, 0)
    nll = masked_poisson_nll(out.log_rate, y, torch.ones_like(y))
    w = mod.jepa_weight(nll, out.jepa_loss)
    shared = m.shared_parameters()
    g_nll = torch.autograd.grad(nll, shared, retain_graph=True, allow_unused=True)
    g_j = torch.autograd.grad(w * out.jepa_loss, shared, allow_unused=True)
    n_nll = math.sqrt(sum(float(g.pow(2).sum()) for g in g_nll if g is not None))
    n_j = math.sqrt(sum(float(g.pow(2).sum()) for g in g_j if g is not None))
    if ratio is None:
        assert n_j > n_nll
    else:
        assert n_j <= ratio * n_nll * 1.001
        assert n_j > 0  # still there, only bounded


def _train_small(tmp_path, store, model="behavior", epochs=4, **model_over):
    import yaml
    from conftest import data_config, train_config

    from polar_model.training.trainer import main as train_main

    cfg = yaml.safe_load((ROOT / f"configs/model/{model}.yaml").read_text())
    cfg.update(model_over)
    m = tmp_path / "model.yaml"
    m.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    data = data_config(tmp_path, store, batch_size=8)
    tc = train_config(tmp_path, max_epochs=epochs, lr=1e-2, warmup_steps=5)
    assert train_main(["--data", str(data), "--model", str(m), "--train",
                                        str(tc), "--out", str(run), "--no-progress"]) == 0
    mod = EncodingModule.load_from_checkpoint(str(run / "checkpoints/last.ckpt"),
                                              map_location="cpu").eval()
    return mod


@pytest.mark.slow  # about 2-4 CPU minutes
def test_training_learns_what_the_data_hold(tmp_path, small_demo_store):
    """After a short training run on a small demo store: validation BPS beats a bias-only
    model (each unit's training mean rate) by a margin, and the predicted rates correlate
    with the demo's true rates on the held-out bins."""
    info = StoreInfo.load(str(small_demo_store))
    mod = _train_small(tmp_path, small_demo_store)
    preds = predict_split(lambda b: mod(b).log_rate, info, "val")
    trained = score(preds)
    means = [torch.tensor(r).clamp_min(1e-6).log() for r in info.mean_rates]
    bias_only = score(predict_split(
        lambda b: means[int(b["session"][0])].expand(*b["robs"].shape), info, "val"))
    corr = []
    for p in preds:
        m = p.dfs.any(1)
        for n in range(p.rate.shape[1]):
            k = p.dfs[:, n] & m
            if k.sum() > 50:
                corr.append(np.corrcoef(p.rate[k, n], p.true_rate[k, n])[0, 1])
    print(f"val BPS trained {trained['bps']['mean_unclamped']:.4f}, bias-only "
          f"{bias_only['bps']['mean_unclamped']:.4f}, oracle "
          f"{trained['oracle']['mean_unclamped']:.4f}; mean r(pred, true) "
          f"{np.mean(corr):.3f}")
    assert trained["bps"]["mean_unclamped"] > bias_only["bps"]["mean_unclamped"] + 0.02
    assert np.mean(corr) > 0.3


def test_a_non_finite_gradient_stops_training_naming_the_parameters():
    cfg = load_model_config(ROOT / "configs/model/minimal.yaml")
    mod = EncodingModule.create(cfg, _spec(), TrainConfig())
    for p in mod.model.parameters():
        p.grad = torch.zeros_like(p)
    mod.on_before_optimizer_step(None)  # finite: nothing happens
    mod.model.dynamics._lam.grad[0] = math.inf
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 0 .*dynamics\._lam"):
        mod.on_before_optimizer_step(None)


def test_heads_train_at_their_own_learning_rate():
    """head_lr_mult: readouts and saccade gains at lr x mult, everything else at lr; every
    trainable parameter in exactly one group. Weight decay reaches weight matrices and the
    readouts' feature weights, never positions, mask widths or biases."""
    cfg = load_model_config(ROOT / "configs/model/behavior.yaml")
    mod = EncodingModule.create(cfg, _spec(), TrainConfig(lr=1e-3, head_lr_mult=30.0,
                                                          weight_decay=0.1))
    opt = mod.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    readout = mod.model.readouts[0]
    assert decay_of[id(readout.weight)] == 0.1 and decay_of[id(mod.model.mix[0].weight)] == 0.1
    for p in (readout._mu, readout.log_sigma, readout._corr, readout.bias,
              mod.model.gaze.pos_freqs):
        assert decay_of[id(p)] == 0.0
    named = [(n, p) for n, p in mod.model.named_parameters() if p.requires_grad]
    assert len(lr_of) == len(named) == sum(len(g["params"]) for g in opt.param_groups)
    for n, p in named:
        head = n.startswith(("readouts.", "saccade_gain."))
        assert lr_of[id(p)] == pytest.approx(3e-2 if head else 1e-3), n
