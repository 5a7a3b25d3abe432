"""Downsample a session by an integer factor (e.g. 240 -> 120 Hz), within trials only.

Rules (each bin of the result is ``factor`` consecutive source bins of one trial):
* spike counts and ground-truth expected counts are summed;
* gaze is averaged; ``eye_valid`` (and per-unit validity) are True only if every source
  bin was valid;
* the stimulus is the **first** frame of the group (the frame on screen at the new bin's
  start, as the lab's loader decimated), and ``t`` is the first source bin's start time;
* a trial's trailing bins that do not fill a whole group are dropped, so no output bin ever
  pools across a trial edge (the old pipeline pooled validity and trial ids across edges).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from polar_data.sessions.session import Session, SessionError


def resample_firsts(trial: np.ndarray, factor: int) -> np.ndarray:
    """int64 [T']: the first source bin of every output bin: groups of ``factor`` bins
    tiled from each trial's start, a trial's incomplete trailing group dropped."""
    change = np.flatnonzero(np.diff(trial)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(trial)]])
    firsts = [np.arange(a, a + ((b - a) // factor) * factor, factor)
              for a, b in zip(starts, stops)]
    return np.concatenate(firsts).astype(np.int64) if firsts else np.zeros(0, np.int64)


def resample(session: Session, factor: int) -> Session:
    """Return ``session`` at ``session.rate_hz / factor`` (see module docstring for rules)."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"resample factor must be a positive integer, got {factor!r}")
    if factor == 1:
        return session
    first = resample_firsts(session.trial, factor)
    if first.size == 0:
        raise SessionError(
            f"session {session.name!r}: every trial is shorter than the resample factor {factor}"
        )
    groups = first[:, None] + np.arange(factor)[None, :]  # [T', factor]

    def total(a):
        return None if a is None else a[groups].sum(axis=1).astype(a.dtype)

    def every(a):
        return None if a is None else a[groups].all(axis=1)

    return replace(
        session,
        rate_hz=session.rate_hz / factor,
        stim=session.stim[first],
        eyepos=session.eyepos[groups].mean(axis=1).astype(np.float32),
        eye_valid=every(session.eye_valid),
        trial=session.trial[first],
        t=session.t[first],
        robs=total(session.robs),
        unit_valid=every(session.unit_valid),
        true_rate=total(session.true_rate),
    )
