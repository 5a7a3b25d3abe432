"""Temporal summaries of the polar features, per step (causal), pooled by the readout."""

from __future__ import annotations

import torch
from torch import nn

from .dynamics import _steps
from .readout import pool


class TemporalSummarizer(nn.Module):
    """Per level: 9 features per pair at every step (oldest first, causal), each pooled by
    every readout mask (and, for JEPA, by a uniform mask: the spatial mean).

    state amplitude A, simple-cell-like state features A cos(phi) and A sin(phi), fast and
    slow EMAs of the observed amplitude, fast EMAs of the even and odd responses
    (phase-sensitive, temporally filtered), the last amplitude change, and the phase
    prediction-error energy. EMA factors are learned (initially 0.74 and 0.95 per step).

    Pooling is linear and so are the EMAs and the change: they are computed on the pooled
    observed responses, which is exactly the pooled full-resolution EMA (tested), so only the
    four state features are pooled from full-resolution maps, and no full-resolution feature
    map is ever stacked or kept for the readout (that copy was a third of a CPU step).
    """

    n_features = 9

    def __init__(self):
        super().__init__()
        self._alpha = nn.Parameter(torch.logit(torch.tensor([0.74, 0.95])))

    def forward(self, amp, even, odd, state_amp, state_cos, state_sin, phase_error,
                weights, first: int = 0, state=None, means: bool = False):
        """amp, even, odd: the observed responses already pooled, ``[B, T, M, K]`` or
        sequences of T steps ``[B, M, K]``; state_amp, state_cos, state_sin (the dynamics'
        amplitude and unit phase), phase_error: sequences of T full-resolution steps
        ``[B, M, H, W]`` (:class:`~polar_model.dynamics.PolarDynamics`' outputs), pooled
        here by ``weights`` (:func:`~polar_model.readout.pool`'s). ``state``: what the step
        before the first left (pooled EMAs and amplitude), to continue a sequence run in
        chunks (None: start here). ``means``: the last of the K outputs is the spatial mean
        (JEPA's); the steps before ``first`` are then summarised by that mean alone.

        Returns (features of steps ``first ..`` ``[B, T - first, 9M, K]``, feature k of pair
        m in channel k M + m, or None if there are none; with ``means``, the spatial means of
        the features of steps before ``first`` ``[B, first, 9M]``, else (or if there are none)
        None; the state after the last step)."""
        fast, slow = torch.sigmoid(self._alpha)
        amp, even, odd = _steps(amp), _steps(even), _steps(odd)
        if state is None:
            f_amp, s_amp, f_even, f_odd, prev = amp[0], amp[0], even[0], odd[0], amp[0]
        else:
            f_amp, s_amp, f_even, f_odd, prev = state
        outs, early = [], []
        for t in range(len(amp)):
            if t or state is not None:
                f_amp = fast * f_amp + (1 - fast) * amp[t]
                s_amp = slow * s_amp + (1 - slow) * amp[t]
                f_even = fast * f_even + (1 - fast) * even[t]
                f_odd = fast * f_odd + (1 - fast) * odd[t]
            change, prev = amp[t] - prev, amp[t]
            if t >= first:  # every mask
                full, last = (lambda x: pool(x, weights)), (lambda x: x)
            elif means:  # JEPA's spatial means only: no per-unit pooling of these steps
                full, last = (lambda x: x.mean((-2, -1))), (lambda x: x[..., -1])
            else:
                continue
            a = state_amp[t]
            row = [full(a), full(a * state_cos[t]), full(a * state_sin[t]),
                   *map(last, (f_amp, s_amp, f_even, f_odd, change)), full(phase_error[t])]
            if t >= first:
                outs += row
            else:
                early.append(torch.stack(row, 1).flatten(1))
        # [B, L * 9, M, K] viewed as [B, L, 9M, K]: one small copy
        feats = (torch.stack(outs, 1).unflatten(1, (-1, self.n_features)).flatten(2, 3)
                 if outs else None)
        return (feats, torch.stack(early, 1) if early else None,
                (f_amp, s_amp, f_even, f_odd, prev))


def static_features(amp, even, odd, weights: torch.Tensor) -> torch.Tensor:
    """The Static configurations: the current frame only (amplitude, even, odd ``[B, T, M,
    H, W]``), no temporal processing at all, pooled by ``weights [H * W, K]``:
    ``[B, T, 3M, K]``."""
    return torch.cat([pool(amp, weights), pool(even, weights), pool(odd, weights)], dim=2)
