"""Polar decomposition of quadrature responses (float32)."""

from __future__ import annotations

import torch

POLAR_EPS = 1e-4  # amplitude smoothing: A = sqrt(even^2 + odd^2 + eps^2)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or kept in float64 (half and bfloat16 inputs are promoted)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def polar_decompose(even: torch.Tensor, odd: torch.Tensor, eps: float = POLAR_EPS
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w = even + i odd -> amplitude A = |w| (eps-smoothed) and unit phase (cos, sin).

    Inputs any shape (computed in float32, or float64 if given); returns A, cos(phi),
    sin(phi) of that shape.
    """
    even, odd = at_least_float32(even), at_least_float32(odd)
    inv = torch.rsqrt(even * even + odd * odd + eps * eps)
    return 1.0 / inv, even * inv, odd * inv
