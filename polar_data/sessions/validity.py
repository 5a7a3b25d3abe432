"""Validity filters: which lag windows are usable and which units count at each bin."""

from __future__ import annotations

import numpy as np

from polar_data.sessions.session import Session


def window_valid(session: Session, window_len: int) -> np.ndarray:
    """bool [T]: True at bin t when the window t-window_len+1 .. t lies in one trial and
    every bin in it has valid gaze (oldest-first windows; the first window_len-1 bins of each
    trial are never valid)."""
    ok = session.eye_valid & np.isfinite(session.eyepos).all(axis=1)
    return valid_window_ends(ok, session.trial, window_len)


def valid_window_ends(eye_ok: np.ndarray, trial: np.ndarray, window_len: int) -> np.ndarray:
    """bool [T]: the rule of :func:`window_valid` on plain arrays (``eye_ok`` bool [T]: gaze
    valid and finite; ``trial`` [T] trial ids), so a store can be re-checked from its data."""
    if window_len < 1:
        raise ValueError(f"window_len must be >= 1, got {window_len}")
    T = len(eye_ok)
    idx = np.arange(T)
    new_trial = np.ones(T, dtype=bool)
    new_trial[1:] = trial[1:] != trial[:-1]
    # a run of usable bins starts after the last unusable bin or at the trial's first bin
    last_bad = np.maximum.accumulate(np.where(~eye_ok, idx, -1))
    trial_start = np.maximum.accumulate(np.where(new_trial, idx, 0))
    run = np.where(eye_ok, idx - np.maximum(last_bad + 1, trial_start) + 1, 0)
    return run >= window_len


def unit_filter(session: Session, valid_windows: np.ndarray) -> np.ndarray:
    """bool [T, N] ``dfs``: unit n counts at bin t when the window ending at t is valid and the
    unit is valid at t."""
    return valid_windows[:, None] & session.unit_mask()


def segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in ``mask`` as ``(start, stop)`` bin ranges (stop exclusive)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
