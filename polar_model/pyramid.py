"""Laplacian pyramid, per frame, with a fixed 5-tap binomial filter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LaplacianPyramid(nn.Module):
    """``[N, 1, H, W]`` -> list of ``n_levels`` tensors ``[N, 1, H_l, W_l]``.

    Level l < L-1 is the band ``x_l - up(down(x_l))``; the last level is the low-pass
    residual. ``down`` blurs with [1, 4, 6, 4, 1] / 16 (reflect padding) and keeps every second
    pixel (51 -> 26 -> 13 -> 7); ``up`` is bilinear interpolation back to the finer size.
    """

    def __init__(self, n_levels: int):
        super().__init__()
        self.n_levels = n_levels
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
        self.register_buffer("kernel", (k[:, None] * k[None, :])[None, None], persistent=False)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.kernel, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = []
        for _ in range(self.n_levels - 1):
            small = self.down(x)
            up = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
            levels.append(x - up)
            x = small
        levels.append(x)
        return levels

    @staticmethod
    def sizes(hw: tuple[int, int], n_levels: int) -> list[tuple[int, int]]:
        out, (h, w) = [], hw
        for _ in range(n_levels):
            out.append((h, w))
            h, w = (h + 1) // 2, (w + 1) // 2
        return out
