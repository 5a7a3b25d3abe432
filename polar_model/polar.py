"""Polar decomposition of quadrature responses (float32)."""

from __future__ import annotations

import torch

POLAR_EPS = 1e-4  # amplitude smoothing: A = sqrt(even^2 + odd^2 + eps^2)


def polar_decompose(even: torch.Tensor, odd: torch.Tensor, eps: float = POLAR_EPS
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w = even + i odd -> amplitude A = |w| (eps-smoothed) and unit phase (cos, sin).

    Inputs any shape (computed in float32, or float64 if given); returns A, cos(phi),
    sin(phi) of that shape.
    """
    dtype = torch.promote_types(even.dtype, torch.float32)
    even, odd = even.to(dtype), odd.to(dtype)
    inv = torch.rsqrt(even * even + odd * odd + eps * eps)
    return 1.0 / inv, even * inv, odd * inv
