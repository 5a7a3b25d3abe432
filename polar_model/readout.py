"""Gaussian readouts, one per session (unit counts differ between sessions)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LINKS = ("exp", "softplus", "learned")
_SOFTPLUS_ONE = math.log(math.expm1(1.0))  # softplus(x) = 1


def log_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(softplus(x)), finite with finite gradients everywhere (= x below -15)."""
    xc = x.clamp_min(-15.0)
    return torch.where(x < -15.0, x, torch.log(F.softplus(xc)))


def apply_link(x: torch.Tensor, link: str, log_scale: torch.Tensor,
               log_beta: torch.Tensor | None = None) -> torch.Tensor:
    """Linear predictor ``x`` [..., N] -> log expected counts.

    exp:      rate = exp(x)                              (log_scale unused)
    softplus: rate = r_n softplus(x)                     (r_n = exp(log_scale), mean rate)
    learned:  rate = r_n softplus(beta_n x) / beta_n     (beta_n = exp(log_beta) > 0: smooth
              near 0 at small beta, rectified-linear at large beta)
    """
    if link == "exp":
        return x
    if link == "softplus":
        return log_scale + log_softplus(x)
    if link == "learned":
        return log_scale + log_softplus(log_beta.exp() * x) - log_beta
    raise ValueError(f"output_link must be one of {LINKS}, got {link!r}")


def pool(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``x [..., H, W]`` pooled by ``weights [H * W, K]`` (one column per mask) ->
    ``[..., K]``."""
    return x.flatten(-2) @ weights


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
    set so that the initial prediction is the (training) mean rate, then the output link
    (:func:`apply_link`), giving log expected counts per bin.

    Feature weights start at ``weight_std * randn`` (default ``1 / sqrt(levels x dim)``, so
    the front end gets a gradient of the same order as the readout's from the first step).

    With ``sample_positions`` (Lurz et al. 2021), each training forward pass reads every unit
    at a position drawn from ``N(mu, sigma_pos^2)`` (:meth:`positions`; ``sigma_pos`` learned
    per unit, isotropic, starting at the first level's mask std), evaluation at ``mu``.

    features: list over levels of ``[B, L, D, H_l, W_l]`` -> ``[B, L, N]``.
    """

    def __init__(self, n_units: int, n_levels: int, dim: int, mean_rates,
                 sigma: float | list[float],
                 link: str = "exp", weight_std: float | None = None,
                 sample_positions: bool = False):
        super().__init__()
        if link not in LINKS:
            raise ValueError(f"output_link must be one of {LINKS}, got {link!r}")
        self.link = link
        std = weight_std if weight_std is not None else 1.0 / math.sqrt(n_levels * dim)
        self._mu = nn.Parameter(torch.randn(n_units, 2) * 0.1)
        sig = torch.as_tensor(sigma, dtype=torch.float32).expand(n_levels)
        self.log_sigma = nn.Parameter(sig.log()[None, :, None].repeat(n_units, 1, 2))
        self._corr = nn.Parameter(torch.zeros(n_units, n_levels))
        self.weight = nn.Parameter(torch.randn(n_units, n_levels, dim) * std)
        rates = torch.as_tensor(mean_rates, dtype=torch.float32).clamp_min(1e-4)
        if link == "exp":
            self.bias = nn.Parameter(rates.log())
        else:  # softplus(bias) = 1: rate = mean rate at zero drive
            self.bias = nn.Parameter(torch.full((n_units,), _SOFTPLUS_ONE))
        self.register_buffer("log_scale", rates.log())
        self.log_beta = nn.Parameter(torch.zeros(n_units)) if link == "learned" else None
        # position sampling (Lurz et al. 2021): a learned isotropic std per unit in [-1, 1]
        # units, starting at the first level's mask std
        self.log_sigma_pos = (nn.Parameter(sig[0].log().repeat(n_units))
                              if sample_positions else None)

    @property
    def mu(self) -> torch.Tensor:
        """Unit positions [N, 2] (x right, y down on the crop) in [-1, 1]."""
        return torch.tanh(self._mu)

    @torch.no_grad()
    def place(self, mu: torch.Tensor) -> None:
        """Set the unit positions ``[N, 2]`` (x right, y down, in [-1, 1]); kept within
        +-0.95 so that they can still move."""
        if mu.shape != self._mu.shape:
            raise ValueError(f"positions must be {tuple(self._mu.shape)}, got {tuple(mu.shape)}")
        self._mu.copy_(torch.atanh(mu.to(self._mu).clamp(-0.95, 0.95)))

    def positions(self) -> torch.Tensor:
        """The positions ``[N, 2]`` (x right, y down, [-1, 1]) one forward pass reads at: with
        position sampling, in training, a draw from ``N(mu, sigma_pos^2)`` per unit (one per
        call: call once per batch and pass it to every level), else :attr:`mu`."""
        mu = self.mu
        if self.log_sigma_pos is None or not self.training:
            return mu
        noise = torch.randn_like(mu) * self.log_sigma_pos.clamp(-8, 1).exp()[:, None]
        return (mu + noise).clamp(-1.0, 1.0)

    def masks(self, level: int, hw: tuple[int, int], mu: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Masks ``[N, H, W]`` of one level at positions ``mu [N, 2]`` (default :attr:`mu`)."""
        return gaussian_masks(self.mu if mu is None else mu,
                              self.log_sigma[:, level].clamp(-4, 1),
                              0.9 * torch.tanh(self._corr[:, level]), hw)

    def weights(self, level: int, hw: tuple[int, int], mu: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The masks of one level as pooling weights ``[H * W, N]`` (for :func:`pool`), at
        positions ``mu`` (default :attr:`mu`; :meth:`positions` in a forward pass)."""
        return self.masks(level, hw, mu).flatten(1).t()

    def pool(self, level: int, f: torch.Tensor, mu: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Features ``[..., D, H, W]`` of one level pooled by each unit's mask: ``[..., N, D]``."""
        return pool(f, self.weights(level, tuple(f.shape[-2:]), mu)).transpose(-1, -2)

    def head(self, pooled: list[torch.Tensor], mix: list[nn.Module] | None = None
             ) -> torch.Tensor:
        """Pooled features per level ``[B, L, N, D]`` -> log expected counts ``[B, L, N]``.
        ``mix``: optional per-level maps ``[..., D] -> [..., dim]`` shared by all units (masks
        sum to one, so pooling then mixing equals mixing each pixel then pooling)."""
        out = self.bias
        for level, p in enumerate(pooled):
            if mix is not None:
                p = mix[level](p)
            out = out + (p * self.weight[:, level]).sum(-1)
        return apply_link(out, self.link, self.log_scale, self.log_beta)

    def forward(self, features: list[torch.Tensor], mix: list[nn.Module] | None = None
                ) -> torch.Tensor:
        """Features per level ``[B, L, D, H_l, W_l]`` -> ``[B, L, N]``: :meth:`pool` at one
        :meth:`positions` draw for all levels, then :meth:`head`."""
        mu = self.positions()
        return self.head([self.pool(level, f, mu) for level, f in enumerate(features)], mix)
