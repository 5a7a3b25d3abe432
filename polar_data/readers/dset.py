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
import yaml

from ..checksum import sha256_file
from ..filters import segments
from ..session import Provenance, Session, SessionError

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


def read_dset(
    path: str | Path, trust_pickle: bool = False, session_yaml: str | Path | None = None
) -> Session:
    """Read one ``.dset`` file (and its optional per-session YAML) into a validated Session."""
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
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, OSError) as e:
        raise SessionError(f"{path}: corrupt or unreadable .dset file ({e})") from e
    if not isinstance(blob, dict) or "covariates" not in blob:
        raise SessionError(
            f"{path}: not a .dset (expected a dict with 'covariates' and 'metadata')"
        )
    cov = blob["covariates"]
    meta = dict(blob.get("metadata") or {})
    where = f"{path}"
    missing = [k for k in REQUIRED if k not in cov]
    if missing:
        raise SessionError(f"{where}: missing covariate key(s) {missing} (have {sorted(cov)})")
    if "ppd" not in meta:
        raise SessionError(f"{where}: metadata key 'ppd' (crop pixels per degree) is missing")
    lengths = {k: int(_np(cov[k]).shape[0]) for k in REQUIRED}
    if len(set(lengths.values())) != 1:
        raise SessionError(f"{where}: covariates disagree on the number of bins T: {lengths}")

    stim = _np(cov["stim"])
    if stim.dtype != np.uint8:
        if stim.dtype.kind in "iuf" and stim.size and np.isfinite(stim).all():
            if stim.min() >= 0 and stim.max() <= 255 and (np.rint(stim) == stim).all():
                stim = stim.astype(np.uint8)
        if stim.dtype != np.uint8:
            raise SessionError(f"{where}: stim: expected uint8 frames 0..255, got {stim.dtype}")
    trial = _as_int(_np(cov["trial_inds"]), "trial_inds", where)
    t = _np(cov["t_bins"]).astype(np.float64)
    robs_all = _as_int(_np(cov["robs"]), "robs", where)
    if robs_all.ndim != 2:
        raise SessionError(f"{where}: robs: expected [T, N], got shape {robs_all.shape}")
    true_all = _np(cov["true_rate"]).astype(np.float32) if "true_rate" in cov else None
    uv_all = _np(cov["unit_valid"]).astype(bool) if "unit_valid" in cov else None
    rate = float(meta["rate_hz"]) if "rate_hz" in meta else median_rate(t, trial)

    cids = np.arange(robs_all.shape[1])
    qcmissing = {}
    if session_yaml is not None:
        session_yaml = Path(session_yaml)
        info = yaml.safe_load(session_yaml.read_text()) or {}
        if "cids" in info:
            cids = np.asarray(info["cids"], dtype=np.int64)
            bad = cids[(cids < 0) | (cids >= robs_all.shape[1])]
            if bad.size:
                raise SessionError(
                    f"{session_yaml}: cids {bad.tolist()} are not columns of robs "
                    f"(0..{robs_all.shape[1] - 1})"
                )
        qcmissing = {int(k): v for k, v in (info.get("qcmissing") or {}).items()}

    unit_valid = None if uv_all is None else uv_all[:, cids]
    if qcmissing:
        if unit_valid is None:
            unit_valid = np.ones((len(t), len(cids)), dtype=bool)
        for j, cid in enumerate(cids):
            if int(cid) in qcmissing:
                unit_valid[:, j] &= ~bins_in_intervals(t, 1.0 / rate, qcmissing[int(cid)])

    robs = robs_all[:, cids]
    session = Session(
        name=str(meta.get("name", path.parent.parent.name if path.parent.name == "datasets"
                          else path.stem)),
        rate_hz=rate,
        ppd=float(meta["ppd"]),
        stim=stim,
        eyepos=_np(cov["eyepos"]).astype(np.float32),
        eye_valid=_np(cov["dpi_valid"]).astype(bool),
        trial=trial,
        t=t,
        robs=robs.astype(np.int32),
        unit_ids=cids.astype(np.int64),
        stim_type=str(meta.get("stim_type", path.stem)),
        unit_valid=unit_valid,
        true_rate=None if true_all is None else true_all[:, cids],
        provenance=Provenance(source=str(Path(path).resolve()), sha256=sha256_file(path),
                              reader="dset"),
    )
    return session.validate()


def write_dset(
    session: Session,
    path: str | Path,
    screen_center_px: tuple[float, float] = (960.0, 540.0),
    screen_ppd: float = 37.505,
    qcmissing: dict | None = None,
    cids: list[int] | None = None,
) -> Path:
    """Write ``session`` as a ``.dset`` (+ a per-session YAML beside it when ``cids`` or
    ``qcmissing`` are given). Writes ``roi``/``dpi_pix`` from gaze for compatibility."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cx, cy = screen_center_px
    gaze = np.nan_to_num(session.eyepos, nan=0.0)
    dpi_pix = np.stack([cx + gaze[:, 0] * screen_ppd, cy - gaze[:, 1] * screen_ppd], axis=1)
    half = session.stim.shape[1] / session.ppd * screen_ppd / 2.0
    roi = np.stack(
        [np.stack([dpi_pix[:, 1] - half, dpi_pix[:, 1] + half], 1),
         np.stack([dpi_pix[:, 0] - half, dpi_pix[:, 0] + half], 1)], axis=1
    )
    cov = {
        "stim": torch.from_numpy(np.ascontiguousarray(session.stim)),
        "robs": torch.from_numpy(session.robs.astype(np.float32)),
        "eyepos": torch.from_numpy(session.eyepos),
        "dpi_valid": torch.from_numpy(session.eye_valid.astype(np.float32)),
        "trial_inds": torch.from_numpy(session.trial.astype(np.int64)),
        "t_bins": torch.from_numpy(session.t),
        "roi": torch.from_numpy(roi.astype(np.float32)),
        "dpi_pix": torch.from_numpy(dpi_pix.astype(np.float32)),
    }
    if session.true_rate is not None:
        cov["true_rate"] = torch.from_numpy(session.true_rate)
    if session.unit_valid is not None and qcmissing is None:
        cov["unit_valid"] = torch.from_numpy(session.unit_valid)
    meta = {
        "ppd": session.ppd,
        "name": session.name,
        "rate_hz": session.rate_hz,
        "stim_type": session.stim_type,
        "roi_src": "gaze-contingent",
        "screen_ppd": screen_ppd,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"covariates": cov, "metadata": meta}, tmp)
    tmp.replace(path)
    if cids is not None or qcmissing is not None:
        info = {
            "session": session.name,
            "cids": [int(c) for c in (cids if cids is not None else range(session.n_units))],
            "visual": [int(c) for c in (cids if cids is not None else range(session.n_units))],
            "qcmissing": {int(k): [[float(a), float(b)] for a, b in v]
                          for k, v in (qcmissing or {}).items()},
            "qccontam": [],
        }
        path.with_suffix(".yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return path
