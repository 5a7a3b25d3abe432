"""A session read piece by piece: what a reader knows up front, and its frames on demand.

A :class:`SessionSource` holds a session's small per-bin arrays (``t``, ``trial``: a few
bytes per bin) and reads everything else (frames, gaze, counts, validity, true rates) for a
range of bins on demand, so a session of any length flows through ingestion in bounded
memory (:func:`session_chunks`). :func:`polar_data.readers.read_session` is the same path with
one chunk.

Checks that span the whole session run on ``t`` and ``trial`` up front (time strictly
increasing, naming the bin; trials contiguous); every other check runs on every chunk
(:meth:`Session.validate`).

A reader that knows what its chunks will allocate (from the file's declared shapes) gives a
:class:`ChunkBudget`; :func:`session_chunks` refuses, before reading anything, a chunk length
whose estimate passes the budget's limit, naming the dataset behind most of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from polar_data.sessions.resample import resample, resample_firsts
from polar_data.sessions.session import Provenance, Session, SessionError, check_bin_grid

DEFAULT_CHUNK_BINS = 4096  # source bins per chunk (whole trials; a longer trial is one chunk)


@dataclass(frozen=True)
class ChunkBudget:
    """What reading a session allocates, estimated from declared shapes before any data is
    read: ``items`` = (dataset and its declared shape, bytes held while chunks are read,
    bytes each source bin of a chunk adds); ``limit`` the most allowed (bytes); ``where`` the
    source; ``option`` the setting that raises ``limit``."""

    items: tuple[tuple[str, int, int], ...]
    limit: int
    where: str
    option: str

    def need(self, n_bins: int) -> int:
        """Bytes allocated when ``n_bins`` bins are read at a time."""
        return sum(held + per_bin * n_bins for _, held, per_bin in self.items)

    def check(self, n_bins: int, hint: str = "") -> None:
        """Raise :class:`SessionError` naming the largest item when ``n_bins`` bins at a time
        pass the limit."""
        need = self.need(n_bins)
        if need <= self.limit:
            return
        label, held, per_bin = max(self.items, key=lambda it: it[1] + it[2] * n_bins)
        raise SessionError(
            f"{self.where}: {label} would need about {(held + per_bin * n_bins) / 1e9:.3g} GB "
            f"of memory (the session about {need / 1e9:.3g} GB, read {n_bins} bin(s) at a time), "
            f"over {self.option} = {self.limit / 1e9:g} GB; raise {self.option}{hint} if the "
            "machine has the memory")


@dataclass
class SessionSource:
    """A session's metadata and bin grid, with ``read(a, b)`` giving bins ``a .. b-1`` (whole
    trials) as a validated :class:`Session` at the source rate.

    ``t`` float64 [T] bin starts (s), ``trial`` int64 [T]; ``close`` releases the file.
    ``budget``: what a chunk allocates (None: not estimated); ``notes``: counts of what the
    reader changed or dropped to make the session valid (e.g. ``{"trials_trimmed": 2}``),
    for the build's summary.
    """

    name: str
    rate_hz: float
    t: np.ndarray
    trial: np.ndarray
    read: Callable[[int, int], Session]
    provenance: Provenance | None = None
    close: Callable[[], None] = field(default=lambda: None)
    budget: ChunkBudget | None = None
    notes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        check_bin_grid(self.name, self.t, self.trial)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def n_bins(self) -> int:
        return len(self.t)


def chunk_bounds(trial: np.ndarray, max_bins: int) -> list[tuple[int, int]]:
    """Bin ranges ``(a, b)`` of whole trials, each at most ``max_bins`` long unless one trial
    is longer (then that trial alone)."""
    change = np.flatnonzero(np.diff(trial)) + 1
    starts = np.concatenate([[0], change]).tolist()
    stops = np.concatenate([change, [len(trial)]]).tolist()
    out: list[tuple[int, int]] = []
    a = 0
    for s, e in zip(starts, stops):
        if e - a > max_bins and s > a:
            out.append((a, s))
            a = s
    out.append((a, len(trial)))
    return out


def resample_factor(rate_hz: float, target_rate_hz: float | None, where: str) -> int:
    if target_rate_hz is None:
        return 1
    factor = rate_hz / target_rate_hz
    if abs(factor - round(factor)) > 1e-6 or round(factor) < 1:
        raise ValueError(f"{where}: cannot resample {rate_hz:g} Hz to {target_rate_hz:g} Hz "
                         "(the ratio must be a whole number)")
    return int(round(factor))


def resampled_trials(source: SessionSource, factor: int) -> np.ndarray:
    """int64 [T']: the trial id of every bin after resampling (cheap: no frames read)."""
    firsts = resample_firsts(source.trial, factor)
    if firsts.size == 0:
        raise SessionError(f"session {source.name!r}: every trial is shorter than the "
                           f"resample factor {factor}")
    return source.trial[firsts]


def session_chunks(source: SessionSource, factor: int = 1,
                   max_bins: int = DEFAULT_CHUNK_BINS) -> Iterator[Session]:
    """The session as validated chunks of whole trials, resampled by ``factor`` within
    trials. At most about ``max_bins`` source bins are held at a time."""
    if factor > 1:
        resampled_trials(source, factor)  # refuses a session with nothing left
    bounds = chunk_bounds(source.trial, max_bins)
    if source.budget is not None:  # before anything is read
        longest = max(b - a for a, b in bounds)
        one_trial = max(b - a for a, b in chunk_bounds(source.trial, 1))
        source.budget.check(longest, " or lower store.ingest_chunk_bins"
                            if longest > one_trial else "")
    for a, b in bounds:
        chunk = source.read(a, b)  # validated by the reader
        if factor > 1:
            if resample_firsts(chunk.trial, factor).size == 0:
                continue  # every trial of this chunk is shorter than the factor
            chunk = resample(chunk, factor).validate()
        yield chunk


def concat(chunks: list[Session]) -> Session:
    """One Session from consecutive chunks of the same session."""
    first = chunks[0]
    if len(chunks) == 1:
        return first

    def cat(key):
        parts = [getattr(c, key) for c in chunks]
        return None if parts[0] is None else np.concatenate(parts)

    return Session(
        name=first.name, rate_hz=first.rate_hz, ppd=first.ppd, stim=cat("stim"),
        eyepos=cat("eyepos"), eye_valid=cat("eye_valid"), trial=cat("trial"), t=cat("t"),
        robs=cat("robs"), unit_ids=first.unit_ids, stim_type=first.stim_type,
        unit_valid=cat("unit_valid"), true_rate=cat("true_rate"),
        provenance=first.provenance, extra=dict(first.extra))
