"""Bits per spike, exactly as the lab computes it: the one definition, used by the trainer's
validation (:class:`BPSAccumulator`, summed over batches and DDP ranks) and by evaluation
(:func:`bits_per_spike` over a whole split); see the README.

Per unit i with mask d, predicted expected counts r_hat, observed counts y, and the null model
r_bar = the unit's masked mean count on the same data:

    BPS_i = sum_t d [(y ln r_hat - r_hat) - (y ln r_bar - r_bar)] / (N_i ln 2),  N_i = sum d y

computed from three per-unit sums (:func:`unit_sums`): ``A = sum d (y ln r_hat - r_hat)``,
``Y = sum d y``, ``D = sum d``, as ``BPS = (A - (Y ln r_bar - r_bar D)) / (Y ln 2)`` with
``r_bar = Y / D`` (:func:`bps_from_sums`). Units with no spike under the mask give NaN. The
oracle BPS is the same formula with the ground-truth expected counts. The lab clamped negative
units to 0 before averaging; we report both means.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _flat(x) -> torch.Tensor:
    """[..., N] (tensor or array) -> float64 tensor [M, N], on the tensor's device."""
    x = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x.double().reshape(-1, x.shape[-1])


def unit_sums(rate_hat, robs, dfs) -> torch.Tensor:
    """float64 [3, N]: per unit ``A = sum d (y ln r - r)``, ``Y = sum d y``, ``D = sum d`` of
    expected counts ``rate_hat``, counts ``robs`` and mask ``dfs`` (each ``[..., N]``)."""
    r, y, d = _flat(rate_hat), _flat(robs), _flat(dfs)
    ll = torch.where(y > 0, y * torch.log(r.clamp_min(1e-30)), 0.0) - r
    return torch.stack([(d * ll).sum(0), (d * y).sum(0), d.sum(0)])


def bps_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """Per-unit BPS [N] from :func:`unit_sums` (summed over any number of batches)."""
    A, Y, D = sums
    rbar = Y / D.clamp_min(1e-12)
    null = torch.where(Y > 0, Y * torch.log(rbar.clamp_min(1e-30)), 0.0) - rbar * D
    return torch.where(Y > 0, (A - null) / (Y.clamp_min(1e-30) * math.log(2)), math.nan)


def bits_per_spike(rate_hat, robs, dfs) -> np.ndarray:
    """Per-unit BPS [N] (float64 numpy) of expected counts ``rate_hat`` ([..., N]) against
    ``robs``."""
    return bps_from_sums(unit_sums(rate_hat, robs, dfs)).cpu().numpy()


def oracle_bps(true_rate, robs, dfs) -> np.ndarray:
    """BPS of the ground-truth expected counts (the ceiling a model can reach on this data)."""
    return bits_per_spike(true_rate, robs, dfs)


class BPSAccumulator:
    """:func:`unit_sums` of one session's units, summed over batches (and, by the trainer,
    over DDP ranks: ``stats`` is what is gathered); :meth:`bps` is :func:`bps_from_sums`."""

    def __init__(self, n_units: int, device=None):
        self.stats = torch.zeros(3, n_units, dtype=torch.float64, device=device)

    def update(self, rate: torch.Tensor, robs: torch.Tensor, dfs: torch.Tensor) -> None:
        """rate, robs, dfs: [..., N] (expected counts per bin, counts, mask)."""
        self.stats += unit_sums(rate, robs, dfs)

    def bps(self) -> torch.Tensor:
        return bps_from_sums(self.stats)


def summarize_bps(bps) -> dict:
    """Unclamped and clamped (negatives -> 0) means over units with spikes."""
    b = np.asarray(bps, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return {"mean_unclamped": float("nan"), "mean_clamped": float("nan"), "n_units": 0}
    return {"mean_unclamped": float(b.mean()), "mean_clamped": float(np.maximum(b, 0).mean()),
            "n_units": int(b.size)}
