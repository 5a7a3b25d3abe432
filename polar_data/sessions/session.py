"""The canonical in-memory session that every reader returns and every later stage consumes.

Conventions (checked by :meth:`Session.validate`, written into every store's schema):

* **Time** is chronological, oldest first, on every axis called ``T``; ``t`` is strictly
  increasing within the session (gaps between trials are allowed).
* **Gaze** ``eyepos[:, 0]`` is x (positive = right), ``eyepos[:, 1]`` is y (positive = up),
  in degrees of visual angle, float32. Gaze may be NaN only where ``eye_valid`` is False.
* **Stimulus** ``stim[t]`` is the gaze-contingent crop shown in bin ``t`` (retinal
  coordinates): row 0 is the top of the crop, column 0 its left edge, uint8 luminance.
* **Spikes** ``robs[t, n]`` counts the spikes of unit ``n`` in bin ``t`` (non-negative ints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class SessionError(ValueError):
    """A session breaks one of the canonical conventions; the message names session and key."""


@dataclass(frozen=True)
class Provenance:
    """Where a session came from: the source file and its sha256 (hex)."""

    source: str
    sha256: str
    reader: str


@dataclass
class Session:
    """One recording session on a uniform bin grid.

    Arrays (``T`` bins, ``N`` units, crop ``H x W`` px):
        stim        uint8   [T, H, W]  gaze-contingent crops, oldest first
        eyepos      float32 [T, 2]     gaze, degrees, x right / y up (NaN allowed where invalid)
        eye_valid   bool    [T]        eye tracker valid
        trial       int64   [T]        trial id of each bin (bins of one trial are contiguous)
        t           float64 [T]        bin start time, seconds, strictly increasing
        robs        integer [T, N]     spike counts per bin
        unit_valid  bool    [T, N]     per-unit validity (None = every unit valid throughout)
        true_rate   float32 [T, N]     ground-truth expected counts per bin (demo sessions only)

    Metadata: ``name``, ``rate_hz`` (bins per second), ``ppd`` (crop pixels per degree),
    ``unit_ids`` (one id per column of ``robs``), ``stim_type`` (e.g. ``backimage``),
    ``provenance``.
    """

    name: str
    rate_hz: float
    ppd: float
    stim: np.ndarray
    eyepos: np.ndarray
    eye_valid: np.ndarray
    trial: np.ndarray
    t: np.ndarray
    robs: np.ndarray
    unit_ids: np.ndarray
    stim_type: str = "backimage"
    unit_valid: np.ndarray | None = None
    true_rate: np.ndarray | None = None
    provenance: Provenance | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_bins(self) -> int:
        return int(self.stim.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.robs.shape[1])

    @property
    def frame_hw(self) -> tuple[int, int]:
        return int(self.stim.shape[1]), int(self.stim.shape[2])

    def unit_mask(self) -> np.ndarray:
        """bool [T, N]: per-unit validity (all True when the session has none)."""
        if self.unit_valid is None:
            return np.ones(self.robs.shape, dtype=bool)
        return self.unit_valid

    def trial_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(trial ids, first bin, one-past-last bin) of every trial, in time order."""
        change = np.flatnonzero(np.diff(self.trial)) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [self.n_bins]])
        return self.trial[starts], starts, stops

    def validate(self) -> Session:
        """Check every convention; raise :class:`SessionError` naming session, key and problem.

        Returns ``self`` so readers can ``return session.validate()``.
        """
        name = self.name or "<unnamed>"

        def fail(key: str, msg: str):
            raise SessionError(f"session {name!r}: {key}: {msg}")

        def check(key, arr, dtype_kind, ndim, shape0=None):
            if not isinstance(arr, np.ndarray):
                fail(key, f"expected a numpy array, got {type(arr).__name__}")
            if arr.ndim != ndim:
                fail(key, f"expected rank {ndim}, got shape {arr.shape}")
            if arr.dtype.kind not in dtype_kind:
                fail(key, f"wrong dtype {arr.dtype} (expected kind {dtype_kind!r})")
            if shape0 is not None and arr.shape[0] != shape0:
                fail(key, f"length {arr.shape[0]} does not match stim's {shape0} bins")

        if not np.isfinite(self.rate_hz) or self.rate_hz <= 0:
            fail("rate_hz", f"must be a positive number, got {self.rate_hz}")
        if not np.isfinite(self.ppd) or self.ppd <= 0:
            fail("ppd", f"must be a positive number, got {self.ppd}")
        check("stim", self.stim, "u", 3)
        if self.stim.dtype != np.uint8:
            fail("stim", f"wrong dtype {self.stim.dtype} (expected uint8)")
        T = self.stim.shape[0]
        if T == 0:
            fail("stim", "session is empty (0 bins)")
        check("eyepos", self.eyepos, "f", 2, T)
        if self.eyepos.dtype != np.float32:
            fail("eyepos", f"wrong dtype {self.eyepos.dtype} (expected float32: never bf16/fp16)")
        if self.eyepos.shape[1] != 2:
            fail("eyepos", f"expected shape [T, 2] (x right, y up), got {self.eyepos.shape}")
        check("eye_valid", self.eye_valid, "b", 1, T)
        check("trial", self.trial, "iu", 1, T)
        check("t", self.t, "f", 1, T)
        if self.t.dtype != np.float64:
            fail("t", f"wrong dtype {self.t.dtype} (expected float64 seconds)")
        check("robs", self.robs, "iu", 2, T)
        N = self.robs.shape[1]
        if N == 0:
            fail("robs", "session has no units")
        if self.robs.dtype.kind == "i" and (self.robs < 0).any():
            i, n = np.argwhere(self.robs < 0)[0]
            fail("robs", f"negative spike count {self.robs[i, n]} at bin {i}, unit {n}")
        check("unit_ids", self.unit_ids, "iu", 1)
        if self.unit_ids.shape[0] != N:
            fail("unit_ids", f"{self.unit_ids.shape[0]} ids for {N} units in robs")
        if self.unit_valid is not None:
            check("unit_valid", self.unit_valid, "b", 2, T)
            if self.unit_valid.shape[1] != N:
                fail("unit_valid", f"shape {self.unit_valid.shape} does not match robs {(T, N)}")
        if self.true_rate is not None:
            check("true_rate", self.true_rate, "f", 2, T)
            if self.true_rate.shape[1] != N:
                fail("true_rate", f"shape {self.true_rate.shape} does not match robs {(T, N)}")
            if not np.isfinite(self.true_rate).all() or (self.true_rate < 0).any():
                fail("true_rate", "must be finite and non-negative")
        check_bin_grid(name, self.t, self.trial)
        bad = ~np.isfinite(self.eyepos).all(axis=1) & self.eye_valid
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            fail("eyepos", f"NaN/inf gaze at bin {i} where eye_valid is True ({bad.sum()} bins)")
        return self


def check_bin_grid(name: str, t: np.ndarray, trial: np.ndarray) -> None:
    """The bin grid's rules, also run on a whole session before it is read chunk by chunk:
    same lengths, finite and strictly increasing time (naming the first bad bin), contiguous
    trials. Raises :class:`SessionError` naming session and key."""
    if len(t) != len(trial):
        raise SessionError(f"session {name!r}: t has {len(t)} bins, trial {len(trial)}")
    if len(t) == 0:
        raise SessionError(f"session {name!r}: stim: session is empty (0 bins)")
    if not np.isfinite(t).all():
        raise SessionError(f"session {name!r}: t: contains NaN/inf at bin "
                           f"{int(np.flatnonzero(~np.isfinite(t))[0])}")
    steps = np.diff(t)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise SessionError(
            f"session {name!r}: t: time is not strictly increasing at bin {i + 1} "
            f"({t[i]:.6f} s -> {t[i + 1]:.6f} s): time must be chronological, oldest first")
    change = np.flatnonzero(np.diff(trial)) + 1
    ids = trial[np.concatenate([[0], change])]
    if len(np.unique(ids)) != len(ids):
        raise SessionError(f"session {name!r}: trial: a trial id appears in two separate runs "
                           "of bins (trials must be contiguous)")
