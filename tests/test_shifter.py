"""The learned shifter (polar_model.shifter): the frame shift's sign and size, the sign
convention against a crop rendered at a mis-calibrated gaze, causality, the drift, the penalty
reaching the training loss, recovery of an injected calibration error field, and checkpoints
with the shifter on and off."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import data_config, train_config
from scipy.ndimage import gaussian_filter
from skimage import data as skdata

import polar_model
from polar_data.loaders.batches import DFS, END, EYEPOS, ROBS, SESSION, STIM
from polar_model.config import BaselineConfig, PolarConfig
from polar_model.losses import masked_poisson_nll
from polar_model.models import build_model
from polar_model.shifter import Shifter, shift_frames
from polar_model.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]

# the synthetic problem: a natural image on a screen, crops rendered at the recorded gaze
SCREEN_PPD, CROP_PX, CROP_PPD, GAZE_RANGE, RATE_SCALE = 25.0, 21, 7.0, 4.0, 5.0


def offset_field(g: torch.Tensor) -> torch.Tensor:
    """The injected calibration error ``recorded - true`` (deg) at gaze ``g [..., 2]``: smooth,
    0 to 0.42 deg over the +-4 deg gaze range, 9 arcmin RMS once its mean is removed."""
    x, y = g[..., 0] / GAZE_RANGE, g[..., 1] / GAZE_RANGE
    ex = 0.10 + 0.18 * torch.sin(1.6 * x + 0.4) + 0.08 * y
    ey = -0.06 + 0.18 * torch.cos(2.0 * y) - 0.10 * x * y
    return torch.stack([ex, ey], -1)


def screen() -> torch.Tensor:
    """skimage's camera photograph, blurred to the crops' resolution, zero mean, unit std."""
    img = gaussian_filter(skdata.camera().astype(np.float32), 2.0)
    img = torch.from_numpy(img)
    return (img - img.mean()) / img.std()


def render(img: torch.Tensor, gaze: torch.Tensor, px=CROP_PX, ppd=CROP_PPD) -> torch.Tensor:
    """Gaze-contingent crops ``[K, px, px]`` of the screen image centred on ``gaze [K, 2]``
    (deg, x right / y up; row 0 the top), bilinear."""
    Hs, Ws = img.shape
    r = (torch.arange(px) - (px - 1) / 2) / ppd
    X = (gaze[:, 0, None, None] + r[None, None, :]).expand(-1, px, px)
    Y = (gaze[:, 1, None, None] - r[None, :, None]).expand(-1, px, px)
    col = (Ws - 1) / 2 + X * SCREEN_PPD
    row = (Hs - 1) / 2 - Y * SCREEN_PPD
    grid = torch.stack([col / (Ws - 1) * 2 - 1, row / (Hs - 1) * 2 - 1], -1)
    return F.grid_sample(img.expand(len(gaze), 1, Hs, Ws), grid, align_corners=True)[:, 0]


def receptive_fields(n=8, seed=0) -> torch.Tensor:
    """``[n, px, px]`` unit-norm linear RFs on the true crop: Gabors (0.8-1.8 cycles/deg)
    and centre-surround units, 0.2-0.3 deg wide, within +-0.7 deg of the crop centre."""
    g = torch.Generator().manual_seed(seed)
    r = (torch.arange(CROP_PX) - (CROP_PX - 1) / 2) / CROP_PPD
    y, x = torch.meshgrid(-r, r, indexing="ij")
    ks = []
    for i in range(n):
        cx, cy = ((torch.rand(2, generator=g) - 0.5) * 1.4).tolist()
        sig = 0.2 + 0.1 * float(torch.rand(1, generator=g))
        th, f, ph = (torch.rand(3, generator=g) * torch.tensor([math.pi, 1.0, 2 * math.pi])
                     ).tolist()
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        env = torch.exp(-d2 / (2 * sig**2))
        if i % 2 == 0:
            u = (x - cx) * math.cos(th) + (y - cy) * math.sin(th)
            k = env * torch.cos(2 * math.pi * (0.8 + f) * u + ph)
        else:
            k = env - 0.5 * torch.exp(-d2 / (2 * (2 * sig) ** 2))
        ks.append(k / k.norm())
    return torch.stack(ks)


def calibration_problem(n=4000, seed=0, error=True) -> dict:
    """Fixations at uniform gaze in +-4 deg; the neurons (linear RFs, softplus, Poisson) see
    the crop at the true gaze; the model gets the crop rendered at the recorded gaze
    ``true + offset_field(true)`` (or the true one with ``error=False``) and the recorded
    gaze."""
    g = torch.Generator().manual_seed(seed)
    true = (torch.rand(n, 2, generator=g) * 2 - 1) * GAZE_RANGE
    rec = true + offset_field(true) if error else true
    img = screen()
    drive = torch.einsum("khw,nhw->nk", receptive_fields(), render(img, true))
    rate = RATE_SCALE * F.softplus(2.0 * drive / drive.std(0) - 0.5)
    return {"true": true, "rec": rec, "x": render(img, rec), "rate": rate,
            "counts": torch.poisson(rate, generator=g)}


class LinearUnits(torch.nn.Module):
    """A minimal model: (shifter ->) a learned linear RF per unit -> softplus x gain."""

    def __init__(self, n_units: int, shifter: bool):
        super().__init__()
        self.k = torch.nn.Parameter(torch.zeros(n_units, CROP_PX, CROP_PX))
        self.b = torch.nn.Parameter(torch.zeros(n_units))
        self.a = torch.nn.Parameter(torch.ones(n_units))
        self.shifter = Shifter(1) if shifter else None

    def forward(self, x, gaze):  # x [K, H, W], gaze [K, 2] -> rates [K, N]
        if self.shifter is not None:
            shift = self.shifter(gaze[:, None], 0)
            x = shift_frames(x[:, None, None], shift, CROP_PPD)[:, 0, 0]
        return F.softplus(torch.einsum("khw,nhw->nk", self.k, x) + self.b) * self.a.abs()


def fev(pred: torch.Tensor, rate: torch.Tensor) -> float:
    """Mean over units of the squared correlation with the true rate (held-out fixations)."""
    return float(np.mean([np.corrcoef(pred[:, i], rate[:, i])[0, 1] ** 2
                          for i in range(rate.shape[1])]))


def field_error_arcmin(shifter: Shifter, d: dict, rows) -> tuple[float, float]:
    """RMS (arcmin) over held-out fixations of the learned shift minus the injected error,
    both with their mean removed (a constant trades off against the RF positions), and the
    RMS of the injected field itself (mean removed)."""
    with torch.no_grad():
        s = shifter(d["rec"][rows, None], 0)[:, 0]
    e = d["rec"][rows] - d["true"][rows]
    dev = (s - s.mean(0)) - (e - e.mean(0))
    rms = (e - e.mean(0)).pow(2).sum(-1).mean().sqrt()
    return 60 * float(dev.pow(2).sum(-1).mean().sqrt()), 60 * float(rms)


def fit_linear(d: dict, shifter: bool, steps=600, n_train=3000):
    torch.manual_seed(0)
    m = LinearUnits(d["counts"].shape[1], shifter)
    opt = torch.optim.Adam(m.parameters(), lr=3e-2)
    x, gaze, y = d["x"][:n_train], d["rec"][:n_train], d["counts"][:n_train]
    zero = torch.zeros(1, 1, 2)
    for _ in range(steps):
        r = m(x, gaze)
        loss = (r - y * torch.log(r + 1e-8)).mean()
        if shifter:
            loss = loss + m.shifter.penalty(zero, 0, 0.0, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = fev(m(d["x"][n_train:], d["rec"][n_train:]), d["rate"][n_train:])
    return m, score


def dot_frame(H=31, W=31, row=15, col=15) -> torch.Tensor:
    x = torch.zeros(1, 1, 1, H, W)
    x[..., row, col] = 1.0
    return x


def centroid(frame: torch.Tensor) -> tuple[float, float]:
    f = frame.reshape(frame.shape[-2:]).clamp_min(0)
    rows = torch.arange(f.shape[0], dtype=f.dtype)
    cols = torch.arange(f.shape[1], dtype=f.dtype)
    return float((f.sum(1) * rows).sum() / f.sum()), float((f.sum(0) * cols).sum() / f.sum())


@pytest.mark.parametrize("shift,ppd,moved", [((0.5, 0.0), 8.0, (0, 4)),    # right
                                             ((0.0, 0.25), 8.0, (-2, 0)),   # up: rows go down
                                             ((-0.3, -0.2), 10.0, (2, -3)),
                                             ((0.125, 0.0625), 12.0, (-0.75, 1.5))])
def test_shift_frames_moves_a_dot_by_shift_times_ppd_x_right_y_up(shift, ppd, moved):
    frames = dot_frame()
    out = shift_frames(frames, torch.tensor([[shift]]), ppd)
    r, c = centroid(out)
    assert r == pytest.approx(15 + moved[0], abs=1e-4)
    assert c == pytest.approx(15 + moved[1], abs=1e-4)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)  # moved, not lost
    # zero shift gives the frames back; each (B, S) frame gets its own shift
    assert torch.allclose(shift_frames(frames, torch.zeros(1, 1, 2), ppd), frames, atol=1e-6)
    two = torch.cat([frames, frames], 2)  # [1, 1, 2, H, W]
    out2 = shift_frames(two, torch.tensor([[shift, (0.0, 0.0)]]), ppd)
    assert torch.allclose(out2[:, :, 0], out[:, :, 0], atol=1e-6)
    assert torch.allclose(out2[:, :, 1], frames[:, :, 0], atol=1e-6)


def test_the_crop_at_the_true_gaze_is_the_recorded_crop_shifted_by_the_error():
    """recorded = true + e: the shift that makes the recorded crop the true one is +e (the
    sign the shifter learns), and -e makes it worse than no shift."""
    img = screen()
    true = torch.tensor([[1.0, -0.5], [-2.0, 1.5]])
    e = torch.tensor([[0.3, -0.2], [-0.25, 0.35]])
    crop_true, crop_rec = render(img, true), render(img, true + e)
    inner = (slice(None), slice(5, -5), slice(5, -5))  # away from the border padding

    def err(shift):
        moved = shift_frames(crop_rec[:, None, None], shift[:, None], CROP_PPD)[:, 0, 0]
        return float((moved - crop_true)[inner].abs().mean())

    none, plus, minus = err(torch.zeros(2, 2)), err(e), err(-e)
    assert plus < 0.15 * none and minus > none


def _tiny_spec(ppd=7.0, window=6):
    return DataSpec(window_len=window, rate_hz=120.0, frame_hw=(21, 21), ppd=ppd, n_units=(5,),
                    mean_rates=((0.1,) * 5,), session_names=("s0",))


def _configs(**kw):
    return [PolarConfig(use_jepa=False, n_levels=2, n_pairs=4, **kw),
            BaselineConfig(res_channels=(8, 8), gru_hidden=8, front_channels=4, **kw)]


def _trained_shifter(model):
    """Give the shifter a clearly non-zero, gaze-dependent output (as after training)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.shifter.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("cfg", _configs(shifter=True, shifter_drift=True),
                         ids=["polar", "baseline"])
def test_the_shifter_never_sees_future_bins(cfg):
    m = _trained_shifter(build_model(cfg, _tiny_spec())).eval()
    g = torch.Generator().manual_seed(0)
    S, cut = 12, 8
    stim = torch.randn(2, 1, S, 21, 21, generator=g)
    eyepos = torch.randn(2, S, 2, generator=g)
    end = torch.tensor([500, 9000])
    with torch.no_grad():
        ref = m(stim, eyepos, 0, end=end).log_rate
        g2 = eyepos.clone()
        g2[:, cut + 1:] += 2.0  # gaze only: the frames stay
        out = m(stim, g2, 0, end=end).log_rate
    k = cut - (m.window_len - 1)  # output index of bin `cut`
    assert torch.allclose(out[:, : k + 1], ref[:, : k + 1], atol=1e-6)
    assert not torch.allclose(out[:, k + 1:], ref[:, k + 1:], atol=1e-4)  # the gaze acts
    # the shifter's own output at step t is a function of eyepos[t] (and t) alone
    sh = m.shifter
    with torch.no_grad():
        a, b = sh(eyepos, 0, end), sh(g2, 0, end)
    assert torch.equal(a[:, : cut + 1], b[:, : cut + 1]) and not torch.equal(a, b)


def test_the_drift_reads_each_steps_session_bin_and_needs_it():
    sh = Shifter(2, drift=True, rate_hz=120.0)
    with torch.no_grad():
        sh.drift.normal_(0, 0.3)
    eyepos = torch.zeros(2, 5, 2)
    with pytest.raises(ValueError, match="end bin"):
        sh(eyepos, 0)
    end = torch.tensor([4, 120 * 400])
    out = sh(eyepos, 0, end)
    # step s of a sample is bin end - (S - 1 - s): sample 0's steps are bins 0..4
    want = sh.gaze_shift(eyepos, 0) + sh.drift_shift(torch.arange(5)[None], 0)
    assert torch.allclose(out[0], want[0], atol=1e-6)
    assert (out[1] - out[0]).abs().max() > 0.01  # 400 s later: another drift
    assert not torch.allclose(sh(eyepos, 1, end), out)  # per session
    # without the drift key, the shifter has no drift parameters and ignores time
    plain = Shifter(1)
    assert plain.drift is None and torch.equal(plain(eyepos, 0), plain(eyepos, 0, end))


def test_the_shifter_penalty_reaches_the_training_loss():
    from polar_model.training.lit_module import EncodingModule
    from polar_model.training.run_config import TrainConfig

    cfg = PolarConfig(use_jepa=False, n_levels=2, n_pairs=4, shifter=True,
                      shifter_penalty=2.0, shifter_centre_penalty=3.0)
    module = EncodingModule.create(cfg, _tiny_spec(), TrainConfig())
    _trained_shifter(module.model)
    g = torch.Generator().manual_seed(0)
    batch = {STIM: torch.randn(2, 1, 8, 21, 21, generator=g),
             EYEPOS: torch.randn(2, 8, 2, generator=g), ROBS: torch.ones(2, 3, 5),
             DFS: torch.ones(2, 3, 5), SESSION: torch.zeros(2, dtype=torch.int64),
             END: torch.tensor([100, 200])}
    out, nll, loss = module._loss(batch, "train")
    shift = module.model.shifter(batch[EYEPOS], 0)
    centre = module.model.shifter.gaze_shift(torch.zeros(2), 0)
    want = 2.0 * shift.pow(2).sum(-1).mean() + 3.0 * centre.pow(2).sum()
    assert float(out.penalty.detach()) > 0.01
    assert torch.allclose(out.penalty, want, rtol=1e-5)
    assert torch.allclose(loss, nll + want, rtol=1e-5)
    # with both weights 0 the shifter still acts but costs nothing; off, there is none
    for kw, none in [({"shifter_penalty": 0.0, "shifter_centre_penalty": 0.0}, False),
                     ({"shifter": False}, True)]:
        m = build_model(PolarConfig(use_jepa=False, n_levels=2, n_pairs=4, **kw), _tiny_spec())
        p = m(batch[STIM], batch[EYEPOS], 0).penalty
        assert (p is None) if none else float(p.detach()) == 0.0


def test_the_shifter_recovers_an_injected_calibration_field_and_the_fit():
    """Crops rendered at recorded = true + a smooth field (0-0.42 deg, 9 arcmin RMS without
    its mean): the learned shift matches the field (mean removed) to <= 2 arcmin RMS over the
    gaze range, and the fit reaches >= 90% of the fit on the same neurons with exact gaze;
    without the shifter the fit is clearly lower."""
    d, exact = calibration_problem(), calibration_problem(error=False)
    held = slice(3000, None)
    m, with_shifter = fit_linear(d, shifter=True)
    err, field_rms = field_error_arcmin(m.shifter, d, held)
    _, reference = fit_linear(exact, shifter=False)
    _, without = fit_linear(d, shifter=False)
    print(f"\nfield {field_rms:.1f} arcmin RMS (mean removed), recovered to {err:.2f} arcmin; "
          f"fit (FEV) exact gaze {reference:.3f}, with the error: shifter {with_shifter:.3f} "
          f"({with_shifter / reference:.3f} of exact), none {without:.3f} "
          f"({without / reference:.3f})")
    assert field_rms > 6.0
    assert err <= 2.0
    assert with_shifter >= 0.9 * reference
    assert without < with_shifter - 0.05  # the error matters: the test can fail


@pytest.mark.slow
def test_polar_v1_with_the_shifter_recovers_the_field_and_the_fit():
    """The same problem through Polar-V1 itself (static, one bin per fixation, the shifter of
    the config): <= 2 arcmin RMS and >= 90% of the exact-gaze fit."""
    d, exact = calibration_problem(), calibration_problem(error=False)
    n_train, held = 3000, slice(3000, None)

    def fit(data, shifter):
        torch.manual_seed(0)
        n = data["counts"].shape[1]
        rates = tuple(data["counts"][:n_train].mean(0).tolist())
        spec = DataSpec(1, 120.0, (CROP_PX, CROP_PX), CROP_PPD, (n,), (rates,), ("s",))
        cfg = PolarConfig(temporal="static", use_behavior=False, use_jepa=False, n_levels=3,
                          n_pairs=8, shifter=shifter, readout_placement="centre")
        m = build_model(cfg, spec)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        x, g, y = data["x"][:, None, None], data["rec"][:, None], data["counts"][:, None]
        gen = torch.Generator().manual_seed(0)
        for _ in range(400):
            i = torch.randint(0, n_train, (500,), generator=gen)
            out = m(x[i], g[i], 0)
            loss = masked_poisson_nll(out.log_rate, y[i], torch.ones_like(y[i]))
            if out.penalty is not None:
                loss = loss + out.penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            pred = m(x[held], g[held], 0).log_rate[:, 0].exp()
        return m, fev(pred, data["rate"][held])

    m, with_shifter = fit(d, True)
    err, field_rms = field_error_arcmin(m.shifter, d, held)
    _, reference = fit(exact, False)
    print(f"\nPolar-V1: field {field_rms:.1f} arcmin RMS, recovered to {err:.2f} arcmin; FEV "
          f"exact {reference:.3f}, shifter {with_shifter:.3f} "
          f"({with_shifter / reference:.3f})")
    assert err <= 2.0
    assert with_shifter >= 0.9 * reference


@pytest.fixture(scope="module", params=["off", "on", "drift"])
def shifter_run(request, tmp_path_factory, tiny_store):
    from polar_model.training import trainer as train

    tmp = tmp_path_factory.mktemp(f"shifter_{request.param}")
    model = tmp / "model.yaml"
    model.write_text("kind: polar\nname: s\nuse_jepa: false\nn_levels: 2\nn_pairs: 4\n"
                     f"shifter: {str(request.param != 'off').lower()}\n"
                     f"shifter_drift: {str(request.param == 'drift').lower()}\n")
    run = tmp / "run"
    assert train.main(["--data", str(data_config(tmp, tiny_store)), "--model", str(model),
                       "--train", str(train_config(tmp, max_steps=3)), "--out", str(run),
                       "--no-progress"]) == 0
    return request.param, run / "checkpoints" / "last.ckpt"


def test_checkpoints_with_the_shifter_off_and_on_load_and_predict(shifter_run, tiny_sources):
    from polar_data.readers import read_session
    from polar_model.training.checkpoints import read_checkpoint

    kind, ckpt = shifter_run
    saved = read_checkpoint(ckpt)["state_dict"]
    assert any(".shifter." in k for k in saved) == (kind != "off")
    model = polar_model.load(ckpt)
    net = model.module.model
    assert (net.shifter is not None) == (kind != "off")
    for k, v in net.state_dict().items():  # every weight as trained
        assert torch.equal(saved[f"model.{k}"], v), k
    session = read_session(tiny_sources[1], target_rate_hz=model.rate_hz)
    if kind == "drift":
        assert net.shifter.drift.abs().sum() > 0  # trained (it started at zero) and saved
    rates = model.predict(session.stim, session.eyepos, session="s1")
    ok = np.isfinite(rates)
    assert ok[model.window_len:].any()
    if kind != "off":  # the loaded shifter (gaze part, or drift in the session's clock) acts
        with torch.no_grad():
            if kind == "on":
                net.shifter.mlps[1][2].bias.add_(torch.tensor([0.3, -0.2]))
            else:
                net.shifter.drift[1].add_(0.3)
        moved = model.predict(session.stim, session.eyepos, session="s1")
        assert not np.allclose(moved[ok], rates[ok], rtol=1e-4)
