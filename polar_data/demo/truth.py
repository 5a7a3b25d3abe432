"""Read a demo session's ground truth back from its NWB file (for scoring, never for fitting).

The demo writes (:mod:`polar_data.demo.nwb_writer`): the recorded gaze in the ``EyeTracking``
series (what every reader reads), and beside it, in the ``misc`` processing module, the eye's
true gaze (``true_eyepos``, with the calibration error's parameters as JSON in its
``comments``) and the true expected counts (``expected_counts``); the unit families and
modifiers are columns of the units table. Nothing here is read by a reader or a build: the
true gaze never reaches a store or a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polar_data.demo.calibration import CalibrationError


@dataclass
class DemoTruth:
    """One demo session's ground truth (``T`` bins at the source rate, oldest first; ``N``
    units in the units table's order).

    t                float64 [T]     bin start times, s
    true_eyepos      float32 [T, 2]  the eye's true gaze, deg (x right, y up); NaN = invalid
    recorded_eyepos  float32 [T, 2]  the tracker's gaze (the file's EyeTracking series)
    expected_counts  float32 [T, N]  true expected counts per bin (conditional intensity)
    unit_ids         int64   [N]
    kind             str     [N]     family names (:data:`polar_data.demo.families.FAMILIES`)
    adapting, gain_field  bool [N]   the modifiers
    calibration      CalibrationError  the injected error (``field``: offset at a gaze)
    """

    t: np.ndarray
    true_eyepos: np.ndarray
    recorded_eyepos: np.ndarray
    expected_counts: np.ndarray
    unit_ids: np.ndarray
    kind: np.ndarray
    adapting: np.ndarray
    gain_field: np.ndarray
    calibration: CalibrationError


def read_truth(path: str | Path) -> DemoTruth:
    """The ground truth of the demo NWB file ``path``; ValueError naming what is missing when
    the file is not a demo file with ground truth."""
    from pynwb import NWBHDF5IO
    from pynwb.behavior import EyeTracking

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        if "misc" not in nwb.processing:
            raise ValueError(f"{path}: no 'misc' processing module (not a demo file with "
                             "ground truth)")
        misc = nwb.processing["misc"]
        for name in ("true_eyepos", "expected_counts"):
            if name not in misc.data_interfaces:
                raise ValueError(f"{path}: misc has no {name!r}")
        true = misc["true_eyepos"]
        gaze = next(s for m in nwb.processing.values() for i in m.data_interfaces.values()
                    if isinstance(i, EyeTracking) for s in i.spatial_series.values())
        units = nwb.units
        cols = set(units.colnames)
        for name in ("kind", "adapting", "gain_field"):
            if name not in cols:
                raise ValueError(f"{path}: the units table has no {name!r} column")
        return DemoTruth(
            t=np.asarray(gaze.timestamps[:], dtype=np.float64),
            true_eyepos=np.asarray(true.data[:], dtype=np.float32),
            recorded_eyepos=np.asarray(gaze.data[:], dtype=np.float32),
            expected_counts=np.asarray(misc["expected_counts"].data[:], dtype=np.float32),
            unit_ids=np.asarray(units.id[:], dtype=np.int64),
            kind=np.asarray(units["kind"][:], dtype=str),
            adapting=np.asarray(units["adapting"][:], dtype=bool),
            gain_field=np.asarray(units["gain_field"][:], dtype=bool),
            calibration=CalibrationError.from_json(true.comments),
        )


def injected_offset(source: str | Path | DemoTruth | CalibrationError,
                    gaze: np.ndarray) -> np.ndarray:
    """float64 [M, 2]: the calibration error's gaze-dependent offset field (recorded minus
    true gaze, deg, without the session's drift and noise) at gaze positions [M, 2] (deg);
    ``source``: a demo NWB file, its :class:`DemoTruth` or the error itself. A constant part
    of it shifts every receptive field alike, so a shifter learnt from spikes recovers the
    field only up to a constant: compare after removing the means."""
    if isinstance(source, str | Path):
        source = read_truth(source)
    err = source.calibration if isinstance(source, DemoTruth) else source
    return err.field(np.asarray(gaze, dtype=np.float64))
