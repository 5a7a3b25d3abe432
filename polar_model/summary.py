"""Temporal summaries of the polar features, per step (causal), for the readout."""

from __future__ import annotations

import torch
from torch import nn

from .dynamics import _steps


class TemporalSummarizer(nn.Module):
    """Per level: 9 features per pair and pixel at every step (oldest first, causal).

    state amplitude A, simple-cell-like state features A cos(phi) and A sin(phi), fast and
    slow EMAs of the observed amplitude, fast EMAs of the even and odd responses
    (phase-sensitive, temporally filtered), the last amplitude change, and the phase
    prediction-error energy. EMA factors are learned (initially 0.74 and 0.95 per step).

    Returns the features of steps ``first .. T-1`` (``[B, T - first, 9M, H, W]``) and the
    spatial means of every step's features (``[B, T, 9M]``, for JEPA; None with
    ``pool=False``), so the full-resolution features of history steps are never kept.
    """

    n_features = 9

    def __init__(self):
        super().__init__()
        self._alpha = nn.Parameter(torch.logit(torch.tensor([0.74, 0.95])))

    def forward(self, amp, even, odd, state_amp, state_cos, state_sin, phase_error,
                first: int = 0, pool: bool = True, state=None):
        """amp, even, odd: observed responses ``[B, T, M, H, W]`` or sequences of T steps
        ``[B, M, H, W]``; state_amp, state_cos, state_sin (the dynamics' amplitude and unit
        phase), phase_error: sequences of T ``[B, M, H, W]``
        (:class:`~polar_model.dynamics.PolarDynamics`' outputs). ``pool=False`` skips the
        spatial means (None; only JEPA uses them). ``state``: what the step before the first
        left (EMAs and amplitude), to continue a sequence run in chunks (None: start here).
        Returns (features of steps ``first ..`` or None if there are none, means or None,
        the state after the last step)."""
        fast, slow = torch.sigmoid(self._alpha)
        amp, even, odd = _steps(amp), _steps(even), _steps(odd)
        if state is None:
            f_amp, s_amp, f_even, f_odd, prev = amp[0], amp[0], even[0], odd[0], amp[0]
        else:
            f_amp, s_amp, f_even, f_odd, prev = state
        outs, pooled = [], []
        for t in range(len(amp)):
            if t or state is not None:
                f_amp = fast * f_amp + (1 - fast) * amp[t]
                s_amp = slow * s_amp + (1 - slow) * amp[t]
                f_even = fast * f_even + (1 - fast) * even[t]
                f_odd = fast * f_odd + (1 - fast) * odd[t]
            change, prev = amp[t] - prev, amp[t]
            if t < first and not pool:
                continue
            a = state_amp[t]
            step = (a, a * state_cos[t], a * state_sin[t], f_amp, s_amp, f_even, f_odd, change,
                    phase_error[t])
            if pool:  # [B, 9M]; nine separate means raised bench_model's peak by 20%
                pooled.append(torch.cat(step, 1).mean(dim=(-2, -1)))
            if t >= first:
                outs.extend(step)
        # One copy of the features: [B, L * 9, M, H, W] viewed as [B, L, 9M, H, W] (feature
        # k of pair m is channel k M + m); a per-step cat then a stack copied them twice.
        feats = (torch.stack(outs, 1).unflatten(1, (-1, self.n_features)).flatten(2, 3)
                 if outs else None)
        return (feats, torch.stack(pooled, 1) if pool else None,
                (f_amp, s_amp, f_even, f_odd, prev))


def static_features(amp, even, odd, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The Static configurations: the current frame only (amplitude, even, odd), no temporal
    processing at all: (features of steps ``first ..`` ``[B, T - first, 3M, H, W]``, spatial
    means of every step ``[B, T, 3M]``)."""
    f = torch.cat([amp, even, odd], dim=2)
    return f[:, first:], f.mean(dim=(-2, -1))
