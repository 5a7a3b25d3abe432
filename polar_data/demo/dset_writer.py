"""The demo's ``.dset`` writer: a :class:`~polar_data.sessions.session.Session` in the lab's
format (:mod:`polar_data.readers.dset` reads it), with the per-session YAML beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from polar_data.sessions.session import Session


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
