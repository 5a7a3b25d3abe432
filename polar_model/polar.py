"""Polar decomposition of quadrature responses (float32)."""

from __future__ import annotations

import torch


def polar_decompose(even: torch.Tensor, odd: torch.Tensor, eps: float = 1e-4
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w = even + i odd -> amplitude A = |w| (eps-smoothed) and unit phase (cos, sin).

    Inputs any shape (computed in float32); returns A, cos(phi), sin(phi) of that shape.
    """
    even, odd = even.float(), odd.float()
    inv = torch.rsqrt(even * even + odd * odd + eps * eps)
    return 1.0 / inv, even * inv, odd * inv
