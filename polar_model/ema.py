"""The causal exponential moving average along time, the one definition the model uses (the
gaze encoder's gate EMAs, the temporal summaries' amplitude and response EMAs)."""

from __future__ import annotations

import torch


def ema(x: torch.Tensor, a: torch.Tensor | float, dim: int = 0) -> torch.Tensor:
    """Exponential moving average of ``x`` along ``dim`` (time, oldest first) with factor
    ``a`` (a scalar in (0, 1)): ``f_0 = x_0``, ``f_t = a f_{t-1} + (1 - a) x_t``.

    Computed as one matmul with the recursion's ``[T, T]`` lower-triangular weights
    (``f_t = a^t x_0 + sum_{s=1..t} (1 - a) a^(t-s) x_s``): the recursion's result,
    differentiable in ``a``, without a step-by-step loop over T. Same shape and dtype as ``x``.
    """
    T = x.shape[dim]
    t = torch.arange(T, device=x.device, dtype=x.dtype)
    lag = t[:, None] - t[None, :]
    w = torch.where(lag >= 0, (1 - a) * a ** lag.clamp_min(0), 0.0)
    w = torch.cat([(a ** t)[:, None], w[:, 1:]], 1)
    xt = x.movedim(dim, 0)
    return (w @ xt.reshape(T, -1)).view(xt.shape).movedim(0, dim)
