"""Temporal summaries of the polar features, per step (causal), on pooled responses."""

from __future__ import annotations

import torch
from torch import nn

from polar_model.polar import polar_decompose
from polar_model.readout import pool


class TemporalSummarizer(nn.Module):
    """Per level: 9 features per pair at every step (oldest first, causal), each pooled by
    every readout mask (and, for JEPA, by a uniform mask: the spatial mean).

    state amplitude A, simple-cell-like state features A cos(phi) and A sin(phi), fast and
    slow EMAs of the observed amplitude, fast EMAs of the even and odd responses
    (phase-sensitive, temporally filtered), the last amplitude change, and the phase
    prediction-error energy. EMA factors are learned (initially 0.74 and 0.95 per step).

    Pooling is linear and so are the EMAs and the change: they are computed on the pooled
    observed responses, which is exactly the pooled full-resolution EMA (tested). The four
    state features come pooled from :class:`~polar_model.dynamics.PolarDynamics`; no
    full-resolution feature map is ever made.
    """

    n_features = 9

    def __init__(self):
        super().__init__()
        self._alpha = nn.Parameter(torch.logit(torch.tensor([0.74, 0.95])))

    def forward(self, amp, even, odd, state, early):
        """amp, even, odd: the observed responses pooled, time first ``[T, B, M, K]``;
        ``state``: the dynamics' A, A cos phi, A sin phi and E pooled at the last L steps,
        each ``[L, B, M, K]``; ``early``: the spatial means of those four at the E steps
        before them, each ``[E, B, M]`` (E = 0: none; else the last of the K columns is the
        spatial mean, JEPA's).

        Returns (features of the last L steps ``[B, L, 9M, K]``, feature k of pair m in
        channel k M + m; the spatial means of the features of the E early steps
        ``[B, E, 9M]``, or None if E = 0). Computed in float32."""
        with torch.autocast(amp.device.type, enabled=False):
            fast, slow = torch.sigmoid(self._alpha)
            amp, even, odd = amp.float(), even.float(), odd.float()
            f_amp, f_even, f_odd = ema(fast, torch.stack([amp, even, odd], 1)).unbind(1)
            change = torch.cat([torch.zeros_like(amp[:1]), amp.diff(dim=0)])
            observed = (f_amp, ema(slow, amp), f_even, f_odd, change)
            A, Ac, As, E = (x.float() for x in state)
            T, L, n_early = amp.shape[0], A.shape[0], early[0].shape[0]
            rows = [A, Ac, As, *(x[T - L:] for x in observed), E]
            feats = torch.stack(rows, 2).flatten(2, 3).transpose(0, 1)
            if not n_early:
                return feats, None
            eA, eAc, eAs, eE = (x.float() for x in early)
            rows = [eA, eAc, eAs, *(x[:n_early, ..., -1] for x in observed), eE]
            return feats, torch.stack(rows, 2).flatten(2).transpose(0, 1)


def ema(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exponential moving average along time of ``x`` ``[T, ...]`` with factor ``a``:
    ``f_0 = x_0``, ``f_t = a f_{t-1} + (1 - a) x_t``, as one matmul with its ``[T, T]``
    lower-triangular weights (the recursion's result, differentiable in ``a``)."""
    T = x.shape[0]
    t = torch.arange(T, device=x.device, dtype=x.dtype)
    lag = t[:, None] - t[None, :]
    w = torch.where(lag >= 0, (1 - a) * a ** lag.clamp_min(0), 0.0)
    w = torch.cat([(a ** t)[:, None], w[:, 1:]], 1)
    return (w @ x.flatten(1)).view_as(x)


def static_features(y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The Static configurations: the current frame only, no temporal processing at all.
    ``y``: quadrature responses ``[..., 2M, H, W]`` (M even then M odd) -> their amplitude,
    even and odd responses pooled by ``weights [H * W, K]``: ``[..., 3M, K]``."""
    even, odd = y.chunk(2, dim=-3)
    return torch.cat([pool(polar_decompose(even, odd)[0], weights), pool(y, weights)], dim=-2)
