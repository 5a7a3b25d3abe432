"""Gaussian readouts, one per session (unit counts differ between sessions)."""

from __future__ import annotations

import math

import torch
from torch import nn


def gaussian_masks(mu, log_sigma, corr, hw: tuple[int, int]) -> torch.Tensor:
    """Normalised 2-D Gaussian masks ``[N, H, W]`` (each sums to 1) on a [-1, 1]^2 grid.

    mu [N, 2] (x, y) in [-1, 1], log_sigma [N, 2], corr [N] in (-1, 1).
    """
    H, W = hw
    ys = torch.linspace(-1, 1, H, device=mu.device)
    xs = torch.linspace(-1, 1, W, device=mu.device)
    dy = ys[None, :, None] - mu[:, 1, None, None]
    dx = xs[None, None, :] - mu[:, 0, None, None]
    sx, sy = log_sigma.exp().unbind(-1)
    sx, sy, r = sx[:, None, None], sy[:, None, None], corr[:, None, None]
    z = (dx / sx) ** 2 + (dy / sy) ** 2 - 2 * r * dx * dy / (sx * sy)
    logits = -z / (2 * (1 - r * r))
    return torch.softmax(logits.flatten(1), dim=1).view(-1, H, W)


class MultiLevelGaussianReadout(nn.Module):
    """Per unit: one position shared by all levels, a Gaussian mask per level (std and
    correlation learned), 1x1 feature weights per level; summed over levels plus a bias
    initialised to the log mean rate, giving log expected counts per bin.

    features: list over levels of ``[B, L, D, H_l, W_l]`` -> ``[B, L, N]``.
    """

    def __init__(self, n_units: int, n_levels: int, dim: int, mean_rates, sigma: float):
        super().__init__()
        self._mu = nn.Parameter(torch.randn(n_units, 2) * 0.1)
        self.log_sigma = nn.Parameter(torch.full((n_units, n_levels, 2), math.log(sigma)))
        self._corr = nn.Parameter(torch.zeros(n_units, n_levels))
        self.weight = nn.Parameter(torch.randn(n_units, n_levels, dim) * 0.01)
        rates = torch.as_tensor(mean_rates, dtype=torch.float32).clamp_min(1e-4)
        self.bias = nn.Parameter(rates.log())

    @property
    def mu(self) -> torch.Tensor:
        """Unit positions [N, 2] (x right, y down on the crop) in [-1, 1]."""
        return torch.tanh(self._mu)

    def masks(self, level: int, hw: tuple[int, int]) -> torch.Tensor:
        return gaussian_masks(self.mu, self.log_sigma[:, level].clamp(-4, 1),
                              0.9 * torch.tanh(self._corr[:, level]), hw)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.bias
        for level, f in enumerate(features):
            mask = self.masks(level, tuple(f.shape[-2:]))
            pooled = torch.einsum("bldhw,nhw->blnd", f, mask)
            out = out + (pooled * self.weight[:, level]).sum(-1)
        return out
