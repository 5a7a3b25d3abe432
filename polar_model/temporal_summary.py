"""Temporal summaries of the polar features, per step (causal), on pooled responses."""

from __future__ import annotations

import torch
from torch import nn

from polar_model.ema import ema
from polar_model.polar_decomposition import polar_decompose
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
        each ``[L, B, M, K]``; ``early``: the spatial means of those four at the ``n_early``
        steps before them, each ``[n_early, B, M]`` (0 steps: none; else the last of the K
        columns is the spatial mean, JEPA's).

        Returns (features of the last L steps ``[B, L, 9M, K]``, feature k of pair m in
        channel k M + m; the spatial means of the features of the ``n_early`` early steps
        ``[B, n_early, 9M]``, or None if there are none). Computed in float32."""
        with torch.autocast(amp.device.type, enabled=False):
            fast, slow = torch.sigmoid(self._alpha)
            amp, even, odd = amp.float(), even.float(), odd.float()
            f_amp, f_even, f_odd = ema(torch.stack([amp, even, odd], 1), fast).unbind(1)
            change = torch.cat([torch.zeros_like(amp[:1]), amp.diff(dim=0)])
            observed = (f_amp, ema(amp, slow), f_even, f_odd, change)
            A, Ac, As, E = (x.float() for x in state)
            T, L, n_early = amp.shape[0], A.shape[0], early[0].shape[0]
            rows = [A, Ac, As, *(x[T - L:] for x in observed), E]
            feats = torch.stack(rows, 2).flatten(2, 3).transpose(0, 1)
            if not n_early:
                return feats, None
            eA, eAc, eAs, eE = (x.float() for x in early)
            rows = [eA, eAc, eAs, *(x[:n_early, ..., -1] for x in observed), eE]
            return feats, torch.stack(rows, 2).flatten(2).transpose(0, 1)


def static_features(y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The Static configurations: the current frame only, no temporal processing at all.
    ``y``: quadrature responses ``[..., 2M, H, W]`` (M even then M odd) -> their amplitude,
    even and odd responses pooled by ``weights [H * W, K]``: ``[..., 3M, K]``."""
    even, odd = y.chunk(2, dim=-3)
    return torch.cat([pool(polar_decompose(even, odd)[0], weights), pool(y, weights)], dim=-2)
