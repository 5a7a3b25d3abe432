"""Masked Poisson negative log-likelihood (log link)."""

from __future__ import annotations

import torch


def masked_poisson_nll(log_rate: torch.Tensor, robs: torch.Tensor, dfs: torch.Tensor
                       ) -> torch.Tensor:
    """sum(l * dfs) / sum(dfs) with l = exp(x) - y x (x = log expected counts per bin).

    Shapes ``[B, N]`` or ``[B, L, N]`` (all three alike). Raises FloatingPointError when the
    result is not finite (callers add the session's name).
    """
    if not (log_rate.shape == robs.shape == dfs.shape):
        raise ValueError(f"shapes differ: log_rate {tuple(log_rate.shape)}, robs "
                         f"{tuple(robs.shape)}, dfs {tuple(dfs.shape)}")
    nll = torch.exp(log_rate) - robs * log_rate
    loss = (nll * dfs).sum() / dfs.sum().clamp_min(1.0)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite Poisson NLL ({loss.item()})")
    return loss
