"""From raw gaze to a behaviour code and the dynamics' per-step parameters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from polar_model.config import PolarConfig
from polar_model.ema import ema

V_SCALE = 100.0    # deg/s: kinematics are fed as v / V_SCALE
A_SCALE = 1.0e4    # deg/s^2


def kinematics(eyepos: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal velocity and acceleration of gaze ``eyepos [B, T, 2]`` (deg) by backward
    differences (deg/s, deg/s^2); the first step(s) are 0."""
    v = torch.zeros_like(eyepos)
    v[:, 1:] = (eyepos[:, 1:] - eyepos[:, :-1]) / dt
    a = torch.zeros_like(eyepos)
    a[:, 1:] = (v[:, 1:] - v[:, :-1]) / dt
    return v, a


def median_spread(v: torch.Tensor) -> torch.Tensor:
    """Engbert & Kliegl's robust velocity spread per component, ``sqrt(med(v^2) - med(v)^2)``
    over every bin of ``v [..., 2]`` (deg/s) -> ``[2]``."""
    flat = v.reshape(-1, 2)
    return (flat.pow(2).median(0).values - flat.median(0).values.pow(2)).clamp_min(0).sqrt()


class GazeEncoder(nn.Module):
    """Raw gaze ``eyepos [B, T, 2]`` (deg, x right / y up) -> (behaviour code ``[B, T, D]``,
    gate ``[B, T, 1]``, velocity ``[B, T, 2]`` deg/s).

    Features per step: velocity / 100 deg/s, log-compressed acceleration, speed, direction
    (cos, sin), acceleration parallel / perpendicular to the motion, the saccade gate, fast
    and slow causal EMAs of the gate, and learnable Fourier features of position; an MLP maps
    them to D.

    Saccade gate (``detector``):

    * ``adaptive`` (default): Engbert & Kliegl (2003). Per session, the velocity noise
      ``sigma = sqrt(med(v^2) - med(v)^2)`` per component (deg/s, backward differences) is a
      running estimate kept in a buffer (set from the first training batch of the session,
      then an EMA with momentum 0.1; used as is in evaluation, so the gate is causal); the
      gate is ``sigmoid(k (u - lambda))`` with ``u = |v / sigma|`` the elliptic normalised
      speed, ``lambda`` (init ``lam``, learned, positive) and slope ``k`` (init 2, learned).
      On the demo this finds microsaccades of 0.1 deg as well as 12 deg saccades.
    * ``fixed``: ``sigmoid(beta (|v| - theta))`` (theta, beta learned and positive; theta
      initialised at ``threshold`` deg/s). At 100 deg/s it misses nearly all microsaccades.

    A saccade's onset is the bin where the gate opens (crosses 0.5, i.e. ``u > lambda`` or
    ``|v| > theta``): :meth:`saccade_onsets`, the one detector the report uses too.
    """

    SIGMA_MIN = 0.05  # deg/s: floor of the noise estimate (noise-free synthetic gaze)

    def __init__(self, dim: int, dt: float, n_pos_freqs: int, threshold: float, slope: float,
                 detector: str = "adaptive", n_sessions: int = 1, lam: float = 6.0):
        super().__init__()
        if detector not in ("adaptive", "fixed"):
            raise ValueError(f"saccade_detector must be adaptive or fixed, got {detector!r}")
        self.dt = dt
        self.detector = detector
        if detector == "fixed":
            self._theta = nn.Parameter(torch.tensor(math.log(math.expm1(threshold / V_SCALE))))
            self._beta = nn.Parameter(torch.tensor(math.log(math.expm1(slope * V_SCALE))))
        else:
            self._lam = nn.Parameter(torch.tensor(math.log(math.expm1(lam))))
            self._k = nn.Parameter(torch.tensor(math.log(math.expm1(2.0))))
            self.register_buffer("noise", torch.ones(n_sessions, 2))     # deg/s
            self.register_buffer("noise_seen", torch.zeros(n_sessions))  # 0: prior only
        self._ema = nn.Parameter(torch.tensor([1.0, 3.0]))  # sigmoid -> ~0.73, ~0.95
        self.pos_freqs = nn.Parameter(torch.randn(n_pos_freqs, 2) * 0.2)
        n_in = 2 + 2 + 1 + 2 + 2 + 3 + 2 * n_pos_freqs
        self.mlp = nn.Sequential(nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim))

    @classmethod
    def from_config(cls, cfg: PolarConfig, dt: float, n_sessions: int) -> GazeEncoder:
        """The encoder of a Polar-V1 model of config ``cfg`` (bins of ``dt`` s)."""
        return cls(cfg.beh_dim, dt, cfg.n_pos_freqs, cfg.saccade_threshold_deg_s,
                   cfg.saccade_slope_s_deg, detector=cfg.saccade_detector,
                   n_sessions=n_sessions, lam=cfg.saccade_lambda)

    @property
    def threshold(self) -> torch.Tensor:
        """fixed: saccade speed threshold, deg/s; adaptive: lambda (units of the noise)."""
        if self.detector == "adaptive":
            return F.softplus(self._lam)
        return F.softplus(self._theta) * V_SCALE

    def noise_of(self, v: torch.Tensor, session: int) -> torch.Tensor:
        """The session's velocity noise [2] (deg/s), updated from ``v`` in training mode."""
        if self.training:
            with torch.no_grad():
                est = median_spread(v[:, 1:]).clamp_min(self.SIGMA_MIN)
                if self.noise_seen[session] > 0:
                    est = 0.9 * self.noise[session] + 0.1 * est
                self.noise[session] = est
                self.noise_seen[session] = 1.0
        return self.noise[session]

    def gate(self, speed: torch.Tensor, v: torch.Tensor | None = None,
             session: int = 0) -> torch.Tensor:
        if self.detector == "adaptive":
            u = (v / self.noise_of(v, session)).norm(dim=-1, keepdim=True)
            return torch.sigmoid(F.softplus(self._k) * (u - self.threshold))
        beta = F.softplus(self._beta) / V_SCALE
        return torch.sigmoid(beta * (speed - self.threshold))

    @torch.no_grad()
    def saccade_onsets(self, eyepos: torch.Tensor, session: int = 0) -> torch.Tensor:
        """Onset bins (int64 ``[n]``) of the saccades this gate detects in one stretch of gaze
        ``eyepos [T, 2]`` (deg): the bins where the gate opens (crosses 0.5; bins of
        non-finite velocity stay closed), with this encoder's own threshold and the
        session's noise estimate as they stand (the estimate is not updated here)."""
        v, _ = kinematics(eyepos[None].to(self.pos_freqs), self.dt)  # its device, float32
        was_training = self.training
        self.train(False)
        try:
            is_open = self.gate(v.norm(dim=-1, keepdim=True), v, session)[0, :, 0] > 0.5
        finally:
            self.train(was_training)
        opened = is_open & ~torch.cat([is_open.new_zeros(1), is_open[:-1]])
        return torch.nonzero(opened).flatten()

    def forward(self, eyepos: torch.Tensor, session: int = 0):
        v, a = kinematics(eyepos, self.dt)
        speed = v.norm(dim=-1, keepdim=True)
        direction = v / speed.clamp_min(1.0)
        a_par = (a * direction).sum(-1, keepdim=True)
        a_perp = direction[..., 0:1] * a[..., 1:2] - direction[..., 1:2] * a[..., 0:1]
        q = self.gate(speed, v, session)
        emas = torch.cat([ema(q, alpha, dim=1) for alpha in torch.sigmoid(self._ema)], -1)
        phase = 2 * math.pi * eyepos @ self.pos_freqs.t()
        feats = torch.cat([
            v / V_SCALE, torch.sign(a) * torch.log1p(a.abs() / A_SCALE), speed / V_SCALE,
            direction, torch.sign(a_par) * torch.log1p(a_par.abs() / A_SCALE),
            torch.sign(a_perp) * torch.log1p(a_perp.abs() / A_SCALE), q, emas,
            torch.sin(phase), torch.cos(phase)], dim=-1)
        return self.mlp(feats), q, v


class BehaviorEncoder(nn.Module):
    """Behaviour code -> per-step dynamics parameters.

    q      [B, T, 1]            saccade gate: the kinematic gate, adjusted by the code
    v_eff  [B, T, 2]            effective retinal velocity, deg/s (x right, y up): starts as
                                the image motion an eye movement causes (-v), adjusted by
                                the code
    gamma  [B, T, n_levels*M]   phase-advance gain per level and pair (M pairs), >= 1
    rho    [B, T, n_levels*M]   small phase offset, |rho| < 0.1 rad
    The adjusting heads start at zero, so at initialisation the dynamics are the physics.
    """

    def __init__(self, dim: int, n_levels: int, n_pairs: int):
        super().__init__()
        self.q_head = nn.Linear(dim, 1)
        self.v_head = nn.Linear(dim, 2)
        self.g_head = nn.Linear(dim, n_levels * n_pairs)
        self.r_head = nn.Linear(dim, n_levels * n_pairs)
        for head in (self.q_head, self.v_head, self.g_head, self.r_head):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        nn.init.constant_(self.g_head.bias, -4.0)  # softplus(-4) ~ 0.02: gamma ~ 1

    def forward(self, code: torch.Tensor, gate: torch.Tensor, velocity: torch.Tensor):
        logit = torch.logit(gate.clamp(1e-4, 1 - 1e-4))
        q = torch.sigmoid(logit + self.q_head(code))
        v_eff = -velocity + V_SCALE * self.v_head(code)
        gamma = 1.0 + F.softplus(self.g_head(code))
        rho = 0.1 * torch.tanh(self.r_head(code))
        return q, v_eff, gamma, rho


def raised_cosines(n_bins: int, spacing: int) -> torch.Tensor:
    """Raised-cosine bumps ``[n_bins, J]`` centred every ``spacing`` bins from 0, each
    ``spacing`` bins half-wide: smooth, and summing to 1 between the first and last centre."""
    k = torch.arange(n_bins, dtype=torch.float32)[:, None]
    centres = torch.arange(0, n_bins - 1 + spacing, spacing, dtype=torch.float32)[None]
    x = ((k - centres) * math.pi / spacing).clamp(-math.pi, math.pi)
    return 0.5 * (1 + torch.cos(x))


class SaccadeGain(nn.Module):
    """Saccade-locked gain of each unit's rate: saccadic suppression and post-saccadic
    enhancement, as a causal kernel over time since saccade onset.

    Onset evidence is the rising edge of the saccade gate, ``o_t = max(q_t - q_{t-1}, 0)``
    (``o_0 = 0``); unit n's log gain is ``sum_k kernel[n, k] o_{t-k}`` for k = 0 .. K-1 bins
    after onset. Each kernel is a weighted sum of raised cosines ``spacing`` bins apart
    (smooth: a gate rising over two bins cannot tell a kernel from one that alternates bin by
    bin), weights starting at zero (gain 1). The output ``[B, T, N]`` is added to the log
    expected counts; onsets before the window are not seen.
    """

    def __init__(self, n_units: int, n_bins: int, spacing: int):
        super().__init__()
        self.register_buffer("basis", raised_cosines(n_bins, max(1, spacing)), persistent=False)
        self.weight = nn.Parameter(torch.zeros(n_units, self.basis.shape[1]))

    @property
    def kernel(self) -> torch.Tensor:
        """Log gain ``[N, K]`` at k = 0 .. K-1 bins after an onset."""
        return self.weight @ self.basis.t()

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """q ``[B, T, 1]`` saccade gate in [0, 1] -> log gain ``[B, T, N]``."""
        onset = F.pad((q[:, 1:, 0] - q[:, :-1, 0]).clamp_min(0), (1, 0))  # [B, T]
        K = self.basis.shape[0]
        x = F.pad(onset[:, None], (K - 1, 0))                                # past side only
        return F.conv1d(x, self.kernel.flip(1)[:, None]).transpose(1, 2)
