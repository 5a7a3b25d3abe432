"""``torch.compile`` for the recurrent path's per-step functions, with an eager fallback.

Each time step of the dynamics runs a few dozen elementwise operations on ``[B, M, H, W]``
maps, forward and backward; compiled, each step's run is a few fused kernels (CPU: C++ with
OpenMP, needs a C++ compiler; GPU: Triton). Compiled once per process for every shape
(``dynamic=True``), ~1 minute on a CPU the first time, then cached on disk by PyTorch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

_CACHE: dict[Callable, Callable] = {}


def _keep_buffers() -> None:
    """Compiled backward functions may free ("donate") their saved buffers, which breaks a
    second backward through the same graph; the trainer takes two (the JEPA balance measures
    the NLL's and JEPA's gradients separately, ``retain_graph=True``). Turned off for the
    process (a private switch of PyTorch's, where it exists)."""
    cfg = getattr(getattr(torch, "_functorch", None), "config", None)
    if cfg is not None and hasattr(cfg, "donated_buffer"):
        cfg.donated_buffer = False


def compiled(fn: Callable) -> Callable:
    """``fn`` through ``torch.compile``; if compiling fails at the first call (no C++
    compiler, an unsupported platform), warns once and runs ``fn`` eagerly from then on.
    Errors of ``fn`` itself are raised by the eager run."""
    if fn not in _CACHE:
        _keep_buffers()
        fast = torch.compile(fn, dynamic=True)
        ok = [True]

        def call(*args):
            if ok[0]:
                try:
                    return fast(*args)
                except Exception as e:  # the backend failed, not the math
                    warnings.warn(f"torch.compile of {fn.__qualname__} failed "
                                  f"({type(e).__name__}: {str(e)[:200]}); running it eagerly",
                                  stacklevel=2)
                    ok[0] = False
            return fn(*args)

        _CACHE[fn] = call
    return _CACHE[fn]
