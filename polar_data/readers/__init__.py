"""Readers: files on disk -> validated canonical :class:`~polar_data.session.Session`."""

from __future__ import annotations

from pathlib import Path

from ..resample import resample
from ..session import Session
from .dset import UntrustedPickleError, read_dset, write_dset
from .nwb import NwbOptions, read_nwb, source_sha256, write_nwb

__all__ = [
    "NwbOptions", "UntrustedPickleError", "read_dset", "read_nwb", "read_session",
    "source_sha256", "write_dset", "write_nwb",
]


def read_session(
    path: str | Path, trust_pickle: bool = False, target_rate_hz: float | None = None,
    nwb: NwbOptions | None = None,
) -> Session:
    """Read a ``.dset`` (with ``<stem>.yaml`` beside it, if present) or ``.nwb`` file (a local
    path, or for NWB also an fsspec URL such as ``s3://bucket/x.nwb``).

    ``target_rate_hz``: if given, downsample within trials to this rate (must divide the
    session's rate by an integer; see :func:`polar_data.resample.resample`). ``nwb``: choices
    and geometry for NWB files that do not record them (:class:`NwbOptions`).
    """
    if str(path).endswith(".nwb"):
        session = read_nwb(str(path), nwb)
        return _resampled(session, path, target_rate_hz)
    path = Path(path)
    if path.suffix == ".dset":
        yml = path.with_suffix(".yaml")
        session = read_dset(path, trust_pickle=trust_pickle,
                            session_yaml=yml if yml.is_file() else None)
    else:
        raise ValueError(f"{path}: unknown session format {path.suffix!r} (.dset or .nwb)")
    return _resampled(session, path, target_rate_hz)


def _resampled(session: Session, path, target_rate_hz: float | None) -> Session:
    if target_rate_hz is not None:
        factor = session.rate_hz / target_rate_hz
        if abs(factor - round(factor)) > 1e-6 or round(factor) < 1:
            raise ValueError(
                f"{path}: cannot resample {session.rate_hz:g} Hz to {target_rate_hz:g} Hz "
                "(the ratio must be a whole number)"
            )
        session = resample(session, int(round(factor))).validate()
    return session
