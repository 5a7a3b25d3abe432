"""Readers: files on disk -> validated canonical
:class:`~polar_data.sessions.session.Session`, whole (:func:`read_session`) or chunk by chunk
(:func:`open_session` + ``session_chunks``)."""

from __future__ import annotations

from pathlib import Path

from polar_data.readers.dset import UntrustedPickleError, open_dset, read_dset
from polar_data.readers.nwb import NwbOptions, open_nwb, read_nwb, source_sha256
from polar_data.sessions.session import Session
from polar_data.sessions.session_source import (
    SessionSource,
    concat,
    resample_factor,
    session_chunks,
)

__all__ = [
    "NwbOptions", "UntrustedPickleError", "open_session", "read_dset", "read_nwb",
    "read_session", "source_sha256",
]


def open_session(path: str | Path, trust_pickle: bool = False, nwb: NwbOptions | None = None,
                 sha256: str | None = None) -> SessionSource:
    """Open a ``.dset`` (with ``<stem>.yaml`` beside it, if present) or ``.nwb`` file (a local
    path, or for NWB also an fsspec URL such as ``s3://bucket/x.nwb``) as a
    :class:`~polar_data.sessions.session_source.SessionSource`. ``nwb``: choices and
    geometry for NWB files that do not record them (:class:`NwbOptions`)."""
    if str(path).endswith(".nwb"):
        return open_nwb(str(path), nwb, sha256=sha256)
    path = Path(path)
    if path.suffix == ".dset":
        yml = path.with_suffix(".yaml")
        return open_dset(path, trust_pickle=trust_pickle,
                         session_yaml=yml if yml.is_file() else None, sha256=sha256)
    raise ValueError(f"{path}: unknown session format {path.suffix!r} (.dset or .nwb)")


def read_session(
    path: str | Path, trust_pickle: bool = False, target_rate_hz: float | None = None,
    nwb: NwbOptions | None = None,
) -> Session:
    """Read a whole session (see :func:`open_session`) into memory.

    ``target_rate_hz``: if given, downsample within trials to this rate (must divide the
    session's rate by an integer; see :func:`polar_data.sessions.resample.resample`).
    """
    with open_session(path, trust_pickle, nwb) as source:
        factor = resample_factor(source.rate_hz, target_rate_hz, str(path))
        return concat(list(session_chunks(source, factor, max_bins=source.n_bins)))
