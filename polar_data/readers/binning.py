"""Helpers shared by the readers for a session's bin grid: which bins lie in time intervals,
the intervals a bin mask covers, and the bin rate from the times."""

from __future__ import annotations

import numpy as np

from polar_data.sessions.validity import segments


def bins_in_intervals(t: np.ndarray, dt: float, intervals) -> np.ndarray:
    """bool [T]: bins whose midpoint ``t + dt / 2`` lies in any ``[t0, t1)`` of ``intervals``."""
    mid = t + dt / 2.0
    out = np.zeros(len(t), dtype=bool)
    for t0, t1 in intervals:
        out |= (mid >= t0) & (mid < t1)
    return out


def mask_to_intervals(t: np.ndarray, dt: float, mask: np.ndarray) -> list[list[float]]:
    """Runs of True in ``mask`` [T] as ``[t_first, t_last + dt]`` intervals (seconds); the
    inverse of :func:`bins_in_intervals` on the same bin grid."""
    return [[float(t[i]), float(t[j - 1] + dt)] for i, j in segments(mask)]


def median_rate(t: np.ndarray, trial: np.ndarray) -> float:
    """Bins per second from the median time step inside trials."""
    steps = np.diff(t)[np.diff(trial) == 0]
    if steps.size == 0:
        raise ValueError("cannot infer the sampling rate: no two bins share a trial")
    rate = float(1.0 / np.median(steps))
    # timestamps written as start + i / rate carry float noise: snap to a whole rate
    return float(round(rate)) if abs(rate - round(rate)) < 1e-6 * rate else rate
