"""A learned shifter: the eye tracker's calibration error as a function of gaze (and time).

An eye tracker reports ``recorded = true + e``, with ``e`` a smooth function of where the eye
looks (the calibration's error field, a few arcminutes to a few tenths of a degree) that may
drift slowly within a session. Crops are rendered at the recorded gaze, so the crop's pixel
at retinal offset ``r`` shows the screen at ``true + e + r``: the crop at the true gaze is the
recorded crop with its content moved by ``+e``. The :class:`Shifter` learns ``shift = e``
(degrees, x right / y up) from the recorded gaze alone and :func:`shift_frames` moves each
frame's content by it, so the front end sees the crop at the (estimated) true gaze, which is
``eyepos - shift``.

Why the crop and not the readout positions: the error is a property of the eye tracker, the
same for every unit of a session, so moving the crop is the same as moving every readout,
and it keeps Polar-V1's pooling weights constant over time (the dynamics' written-out
backward takes one ``[H*W, K]`` matrix per level). Why per session: each session has its own
calibration.

Causality: the shift at step ``t`` is a function of ``eyepos[t]`` (and of the bin's time for
the drift) only, never of other steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GAZE_SCALE = 5.0  # deg: gaze enters the MLP as eyepos / GAZE_SCALE
DRIFT_PERIODS_S = (2400.0, 1200.0, 600.0, 300.0, 150.0)  # drift basis: cos, sin of each


class Shifter(nn.Module):
    """Per session, recorded gaze ``eyepos [B, S, 2]`` (deg, x right / y up) -> the tracker's
    error ``shift [B, S, 2]`` (deg, x right / y up; recorded = true + shift).

    Per session an MLP ``2 -> hidden (softplus) -> 2`` of ``eyepos / GAZE_SCALE`` (its last
    layer starts near zero, weights of std 1e-3 and no bias: under a hundredth of a degree of
    shift at initialisation, so a model starts as without it, while every weight gets a
    gradient), and
    with ``drift`` a slow term in the session's clock: per session, learned coefficients of
    ``cos`` and ``sin`` at the periods ``DRIFT_PERIODS_S`` of each step's time in seconds
    (bin index / ``rate_hz``), also starting at zero. Non-finite gaze gives the shift of gaze
    (0, 0).
    """

    def __init__(self, n_sessions: int, hidden: int = 20, drift: bool = False,
                 rate_hz: float = 120.0):
        super().__init__()
        self.rate_hz = float(rate_hz)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(2, hidden), nn.Softplus(), nn.Linear(hidden, 2))
            for _ in range(n_sessions))
        for mlp in self.mlps:  # near-zero shift, yet a gradient for the first layer
            nn.init.normal_(mlp[2].weight, std=1e-3)
            nn.init.zeros_(mlp[2].bias)
        self.drift = (nn.Parameter(torch.zeros(n_sessions, 2 * len(DRIFT_PERIODS_S), 2))
                      if drift else None)
        self.register_buffer("omega", torch.tensor([2 * math.pi / p for p in DRIFT_PERIODS_S]),
                             persistent=False)

    def gaze_shift(self, eyepos: torch.Tensor, session: int) -> torch.Tensor:
        """The gaze-dependent part ``[..., 2]`` (deg) at gaze ``eyepos [..., 2]`` (deg)."""
        g = torch.nan_to_num(eyepos.float(), nan=0.0, posinf=0.0, neginf=0.0)
        return self.mlps[session](g / GAZE_SCALE)

    def drift_shift(self, bins: torch.Tensor, session: int) -> torch.Tensor:
        """The drift ``[B, S, 2]`` (deg) at session bins ``bins [B, S]`` (zero without drift)."""
        if self.drift is None:
            return bins.new_zeros((*bins.shape, 2), dtype=torch.float32)
        phase = (bins.float() / self.rate_hz)[..., None] * self.omega  # [B, S, P]
        basis = torch.cat([phase.cos(), phase.sin()], -1)             # [B, S, 2P]
        return basis @ self.drift[session]

    def forward(self, eyepos: torch.Tensor, session: int,
                end: torch.Tensor | None = None) -> torch.Tensor:
        """``eyepos [B, S, 2]`` (deg) -> ``shift [B, S, 2]`` (deg). ``end [B]``: the session
        bin of each sample's last step (the batch's ``end``), needed with the drift: step
        ``s`` is bin ``end - (S - 1 - s)`` (a clip padded at its end counts its padding as
        bins: its times are early by under one sample's length, nothing against the drift's
        periods)."""
        shift = self.gaze_shift(eyepos, session)
        if self.drift is not None:
            if end is None:
                raise ValueError("shifter_drift needs each sample's end bin (the batch's "
                                 "'end'): pass end=batch['end'] to the model")
            S = eyepos.shape[1]
            steps = torch.arange(S - 1, -1, -1, device=eyepos.device)
            bins = end.to(eyepos.device)[:, None] - steps
            shift = shift + self.drift_shift(bins, session)
        return shift

    def penalty(self, shift: torch.Tensor, session: int, mean_weight: float,
                centre_weight: float) -> torch.Tensor:
        """``mean_weight`` x the mean squared shift over the batch's steps (deg^2) +
        ``centre_weight`` x the squared shift at gaze (0, 0) (deg^2; with the drift, plus
        the drift coefficients' mean square). A constant shift trades off against the
        readout positions, so the centre term pins it without shrinking the field's shape."""
        out = shift.new_zeros(())
        if mean_weight:
            out = out + mean_weight * shift.pow(2).sum(-1).mean()
        if centre_weight:
            centre = self.gaze_shift(shift.new_zeros(2), session)
            out = out + centre_weight * centre.pow(2).sum()
            if self.drift is not None:
                out = out + centre_weight * self.drift[session].pow(2).mean()
        return out


def shift_frames(frames: torch.Tensor, shift: torch.Tensor, ppd: float) -> torch.Tensor:
    """Frames ``[B, 1, S, H, W]`` with each frame's content moved by ``shift [B, S, 2]``
    (degrees, x right / y up; ``ppd`` crop pixels per degree): a bright dot at column ``c``,
    row ``r`` moves to column ``c + dx ppd``, row ``r - dy ppd`` (rows go down). Bilinear
    (``grid_sample``), edges by border padding; zero shift returns the frames exactly."""
    B, _, S, H, W = frames.shape
    theta = translation(shift.reshape(B * S, 2), ppd, (H, W)).to(frames.dtype)
    x = frames[:, 0].reshape(B * S, 1, H, W)
    grid = F.affine_grid(theta, (B * S, 1, H, W), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(B, S, H, W)[:, None]


def translation(shift: torch.Tensor, ppd: float, hw: tuple[int, int]) -> torch.Tensor:
    """Affine ``[K, 2, 3]`` sampling matrices (``affine_grid``, ``align_corners=False``) that
    move content by ``shift [K, 2]`` degrees (x right / y up): the output at ``r`` samples the
    input at ``r - shift``, in grid units (2 / W per pixel in x; rows go down, so + in y)."""
    H, W = hw
    K = shift.shape[0]
    theta = torch.zeros(K, 2, 3, device=shift.device, dtype=shift.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -shift[:, 0] * ppd * 2.0 / W
    theta[:, 1, 2] = shift[:, 1] * ppd * 2.0 / H
    return theta
