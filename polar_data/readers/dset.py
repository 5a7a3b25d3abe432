"""The lab's ``.dset`` session format (one file per stimulus type).

A ``.dset`` is ``torch.save({"covariates": {key: tensor[T, ...]}, "metadata": {...}})``: a
**pickle**. Unpickling runs code chosen by whoever wrote the file, so :func:`read_dset`
refuses unless the caller passes ``trust_pickle=True`` (CLI: ``--trust-pickle``).

Covariates read (all share the time axis T):
    stim uint8 [T, H, W], robs [T, N_all], eyepos [T, 2] (deg, x right, y up),
    dpi_valid [T], trial_inds [T], t_bins [T] (s).
    Optional extensions written by our demo generator: ``true_rate`` [T, N_all] float32
    (ground-truth expected counts) and ``unit_valid`` [T, N_all] bool.
    ``roi`` and ``dpi_pix`` are written for compatibility and ignored on reading.
Metadata read: ``ppd`` (crop px/deg), ``name``; optional ``rate_hz`` (else the median
within-trial bin step), ``stim_type`` (else the file stem, e.g. ``backimage``).

The optional per-session YAML (``<name>.yaml``) holds ``session``, ``cids`` (the columns of
``robs`` to keep; they become the unit ids), ``visual``, ``qccontam`` and ``qcmissing``.
We read ``qcmissing`` as ``{cid: [[t0, t1], ...]}``: seconds during which that unit is
missing; a bin whose midpoint lies in ``[t0, t1)`` is invalid for the unit.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from polar_data.config.typed_yaml import read_mapping
from polar_data.readers.binning import bins_in_intervals, median_rate
from polar_data.sessions.session import Provenance, Session, SessionError
from polar_data.sessions.session_source import SessionSource
from polar_data.store.checksum import sha256_file

REQUIRED = ("stim", "robs", "eyepos", "dpi_valid", "trial_inds", "t_bins")


class UntrustedPickleError(PermissionError):
    """A pickle-based file was opened without an explicit trust flag."""


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _as_int(a: np.ndarray, key: str, where: str) -> np.ndarray:
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or (np.rint(a) != a).any():
            raise SessionError(f"{where}: {key}: holds non-integer values (dtype {a.dtype})")
    return a.astype(np.int64)


MMAP_FALLBACK_BYTES = 1 << 30  # a .dset that cannot be memory-mapped loads whole up to this


def open_dset(path: str | Path, trust_pickle: bool = False,
              session_yaml: str | Path | None = None, sha256: str | None = None
              ) -> SessionSource:
    """Open one ``.dset`` file (and its optional per-session YAML) as a
    :class:`SessionSource`. The file is memory-mapped (``torch.load(mmap=True)``): frames and
    counts are read chunk by chunk. A file in torch's legacy (non-zip) format cannot be
    mapped: up to 1 GB it is loaded whole, larger ones are refused with the memory needed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .dset file")
    if not trust_pickle:
        raise UntrustedPickleError(
            f"{path}: .dset files are Python pickles (torch.save) and loading one can run "
            "arbitrary code. Pass trust_pickle=True (command line: --trust-pickle) only for "
            "files you made or trust."
        )
    import torch

    try:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e).lower():
                raise
            size = path.stat().st_size
            if size > MMAP_FALLBACK_BYTES:
                raise SessionError(
                    f"{path}: in torch's legacy format, which cannot be read piece by piece; "
                    f"loading it whole needs about {2 * size / 1e9:.1f} GB of memory. Re-save "
                    "it with a current torch.save (zip format) to stream it.") from e
            blob = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, OSError) as e:
        raise SessionError(f"{path}: corrupt or unreadable .dset file ({e})") from e
    if not isinstance(blob, dict) or "covariates" not in blob:
        raise SessionError(
            f"{path}: not a .dset (expected a dict with 'covariates' and 'metadata')"
        )
    cov = blob["covariates"]
    if not isinstance(cov, dict):
        raise SessionError(f"{path}: covariates must be a dict of arrays, got "
                           f"{type(cov).__name__}")
    meta = blob.get("metadata") or {}
    if not isinstance(meta, dict):
        raise SessionError(f"{path}: metadata must be a dict, got {type(meta).__name__}")
    where = f"{path}"
    missing = [k for k in REQUIRED if k not in cov]
    if missing:
        raise SessionError(f"{where}: missing covariate key(s) {missing} (have {sorted(cov)})")
    if "ppd" not in meta:
        raise SessionError(f"{where}: metadata key 'ppd' (crop pixels per degree) is missing")
    arrays = {k: _np(v) for k, v in cov.items() if k in (*REQUIRED, "true_rate", "unit_valid")}
    lengths = {k: int(arrays[k].shape[0]) for k in REQUIRED}
    if len(set(lengths.values())) != 1:
        raise SessionError(f"{where}: covariates disagree on the number of bins T: {lengths}")

    stim_all = arrays["stim"]
    if stim_all.dtype != np.uint8 and stim_all.dtype.kind not in "iuf":
        raise SessionError(f"{where}: stim: expected uint8 frames 0..255, got {stim_all.dtype}")
    trial = _as_int(arrays["trial_inds"], "trial_inds", where)
    t = arrays["t_bins"].astype(np.float64)
    robs_all = arrays["robs"]
    if robs_all.ndim != 2:
        raise SessionError(f"{where}: robs: expected [T, N], got shape {robs_all.shape}")
    true_all = arrays.get("true_rate")
    uv_all = arrays.get("unit_valid")
    name = str(meta.get("name", path.parent.parent.name if path.parent.name == "datasets"
                        else path.stem))
    try:
        rate = float(meta["rate_hz"]) if "rate_hz" in meta else median_rate(t, trial)
    except ValueError as e:
        raise SessionError(f"{where}: {e}") from e

    cids = np.arange(robs_all.shape[1])
    qcmissing = {}
    if session_yaml is not None:
        session_yaml = Path(session_yaml)
        info = read_mapping(session_yaml, "session file")
        if "cids" in info:
            cids = np.asarray(info["cids"], dtype=np.int64)
            bad = cids[(cids < 0) | (cids >= robs_all.shape[1])]
            if bad.size:
                raise SessionError(
                    f"{session_yaml}: cids {bad.tolist()} are not columns of robs "
                    f"(0..{robs_all.shape[1] - 1})"
                )
        qcmissing = {int(k): v for k, v in (info.get("qcmissing") or {}).items()}
    ppd = float(meta["ppd"])
    stim_type = str(meta.get("stim_type", path.stem))
    dt = 1.0 / rate

    def read(a: int, b: int) -> Session:
        stim = np.asarray(stim_all[a:b])
        if stim.dtype != np.uint8:
            ok = stim.size == 0 or (np.isfinite(stim).all() and stim.min() >= 0
                                    and stim.max() <= 255 and (np.rint(stim) == stim).all())
            if not ok:
                raise SessionError(f"{where}: stim: expected uint8 frames 0..255, got "
                                   f"{stim.dtype} values in bins {a}..{b - 1}")
            stim = stim.astype(np.uint8)
        tb = t[a:b]
        unit_valid = None if uv_all is None else np.asarray(uv_all[a:b][:, cids], dtype=bool)
        if qcmissing:
            if unit_valid is None:
                unit_valid = np.ones((b - a, len(cids)), dtype=bool)
            for j, cid in enumerate(cids):
                if int(cid) in qcmissing:
                    unit_valid[:, j] &= ~bins_in_intervals(tb, dt, qcmissing[int(cid)])
        robs = _as_int(np.asarray(robs_all[a:b])[:, cids], "robs", where)
        session = Session(
            name=name, rate_hz=rate, ppd=ppd, stim=stim,
            eyepos=np.asarray(arrays["eyepos"][a:b], dtype=np.float32),
            eye_valid=np.asarray(arrays["dpi_valid"][a:b]).astype(bool),
            trial=trial[a:b], t=tb, robs=robs.astype(np.int32),
            unit_ids=cids.astype(np.int64), stim_type=stim_type, unit_valid=unit_valid,
            true_rate=None if true_all is None else
            np.asarray(true_all[a:b][:, cids], dtype=np.float32),
            provenance=source.provenance)
        return session.validate()

    source = SessionSource(name=name, rate_hz=rate, t=t, trial=trial, read=read,
                           provenance=Provenance(source=str(path.resolve()),
                                                 sha256=sha256 or sha256_file(path),
                                                 reader="dset"))
    return source


def read_dset(
    path: str | Path, trust_pickle: bool = False, session_yaml: str | Path | None = None
) -> Session:
    """Read one ``.dset`` file (and its optional per-session YAML) whole into a validated
    Session."""
    with open_dset(path, trust_pickle, session_yaml) as source:
        return source.read(0, source.n_bins)
