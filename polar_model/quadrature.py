"""Quadrature filter bank: learnable Gabor pairs, even/odd in quadrature by construction."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class QuadratureFilterBank(nn.Module):
    """M Gabor pairs on one pyramid level: ``[N, 1, H, W]`` -> complex response ``[N, M, H, W]``.

    Pair m has orientation theta_m, frequency f_m (cycles/pixel, kept in (0.04, 0.45)) and
    envelope width sigma_m (pixels, positive). Its kernels are ``env * cos(2 pi f u)`` (even)
    and ``env * sin(2 pi f u)`` (odd), ``u = x cos(theta) + y sin(theta)`` in pixel
    coordinates (x right, y down), each made zero-mean: the pair is in quadrature by
    construction and its frequency vector ``k = f (cos theta, sin theta)`` (cycles/pixel) is
    derived from the filter (:meth:`k`). For an image translated by ``d`` pixels the response
    phase advances by ``2 pi k . d`` (Fourier shift theorem; tested).

    Orientations start evenly spread over 180 deg (22.5 deg apart for 8 pairs), all at
    0.177 cycles/pixel (half an octave below Nyquist/2): the pyramid's levels already space
    frequency by octaves, so one frequency per level gives each level every orientation
    (two frequencies per level would halve the orientations of each and repeat the next
    level's band). Pairs differ from the start.
    """

    def __init__(self, n_pairs: int, size: int):
        super().__init__()
        self.size = size
        m = torch.arange(n_pairs, dtype=torch.float32)
        self.theta = nn.Parameter(m * math.pi / n_pairs)
        freq0 = torch.full_like(m, 0.177)  # cycles/pixel; levels space the octaves
        self._freq = nn.Parameter(torch.logit((freq0 - 0.04) / 0.41))
        self._sigma = nn.Parameter(torch.log(torch.expm1(0.6 / freq0)))  # ~0.6 cycles
        r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        yy, xx = torch.meshgrid(r, r, indexing="ij")
        # meshgrid returns expanded views: own memory, or DDP cannot broadcast the buffers
        self.register_buffer("xx", xx.contiguous().clone(), persistent=False)
        self.register_buffer("yy", yy.contiguous().clone(), persistent=False)

    @property
    def freq(self) -> torch.Tensor:
        """cycles/pixel [M]."""
        return 0.04 + 0.41 * torch.sigmoid(self._freq)

    @property
    def sigma(self) -> torch.Tensor:
        """envelope std, pixels [M] (at most the kernel's half-width)."""
        return (F.softplus(self._sigma) + 0.5).clamp(max=self.size / 2)

    def k(self) -> torch.Tensor:
        """Frequency vectors [M, 2] (x, y) in cycles/pixel (y down)."""
        return self.freq[:, None] * torch.stack([torch.cos(self.theta), torch.sin(self.theta)], 1)

    def kernels(self) -> torch.Tensor:
        """[2M, 1, k, k]: even kernels then odd kernels.

        Even kernels are symmetric and odd ones antisymmetric about the centre, so at every
        frequency their responses are 90 degrees apart; each is then scaled to unit gain at
        the pair's own frequency k, so the pair is an exact quadrature pair there even when
        the kernel truncates the envelope. Zero mean (no response to uniform light).
        """
        th, f, s = self.theta[:, None, None], self.freq[:, None, None], self.sigma[:, None, None]
        u = self.xx * torch.cos(th) + self.yy * torch.sin(th)
        env = torch.exp(-(self.xx**2 + self.yy**2) / (2 * s**2))
        carrier = 2 * math.pi * f * u
        even = env * torch.cos(carrier)
        odd = env * torch.sin(carrier)
        even = even - even.mean(dim=(-2, -1), keepdim=True)
        gain_e = (even * torch.cos(carrier)).sum(dim=(-2, -1), keepdim=True)
        gain_o = (odd * torch.sin(carrier)).sum(dim=(-2, -1), keepdim=True)
        even, odd = even / gain_e.clamp_min(1e-6), odd / gain_o.clamp_min(1e-6)
        scale = torch.sqrt(0.5 * (even.pow(2).sum(dim=(-2, -1)) + odd.pow(2).sum(dim=(-2, -1))))
        return (torch.cat([even, odd]) / torch.cat([scale, scale])[:, None, None])[:, None]

    def responses(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Even then odd responses in one tensor ``[N, 2M, H, W]`` ('same' size, zero
        padding: inputs are pixel-normalised, so zero is the mean grey); ``stride`` s: every
        s-th pixel of those (the same values, at 1/s^2 of the cost)."""
        return F.conv2d(x, self.kernels(), padding=self.size // 2, stride=stride)

    def forward(self, x: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(even, odd) responses, each ``[N, M, H, W]`` (:meth:`responses`, split)."""
        y = self.responses(x, stride)
        even, odd = y.split(y.shape[1] // 2, dim=1)  # backward: one cat, no zero-filled copies
        return even, odd
