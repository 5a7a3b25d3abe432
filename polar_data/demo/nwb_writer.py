"""The demo's NWB writer: a :class:`~polar_data.sessions.session.Session` as a DANDI-clean NWB
file in either layout :mod:`polar_data.readers.nwb` reads (gaze-contingent crops, or screen
images with their presentation times)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from polar_data.readers.binning import mask_to_intervals
from polar_data.readers.nwb import CROPS_NAME, PRESENTATION_NAME
from polar_data.sessions.session import Session


def write_nwb(
    session: Session,
    path: str | Path,
    spike_times: list[np.ndarray],
    layout: str = "crops",
    screen_images: list[np.ndarray] | None = None,
    presentation: tuple[np.ndarray, np.ndarray] | None = None,
    screen_ppd: float | None = None,
    fill: int = 127,
    true_eyepos: np.ndarray | None = None,
    unit_columns: dict[str, tuple[np.ndarray, str]] | None = None,
    truth_comments: str | None = None,
) -> Path:
    """Write ``session`` as a DANDI-clean NWB file in layout ``crops`` or ``screen`` (module
    docstring); ``nwbinspector --config dandi`` finds no critical issue and no best-practice
    violation in it.

    ``spike_times``: per unit, float64 seconds (spikes outside a unit's valid periods are
    dropped: NWB's ``obs_intervals`` say the unit was not observed then). For ``screen``:
    ``screen_images`` (uint8 [Hs, Ws] each), ``presentation`` = (onset times [P], image index
    [P]) and ``screen_ppd``.

    Ground truth (the demo's; kept out of everything a reader reads as data):
    ``session.true_rate`` -> ``processing['misc']['expected_counts']``; ``true_eyepos``
    (float32 [T, 2] deg, the eye's true gaze, NaN where invalid) ->
    ``processing['misc']['true_eyepos']`` (a plain ``TimeSeries``, not the gaze series;
    ``truth_comments``, e.g. the calibration error's JSON, in its ``comments``);
    ``unit_columns`` (name -> (values [N], description), e.g. ``kind``) -> columns of the
    units table.
    """
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.base import Images
    from pynwb.behavior import EyeTracking, SpatialSeries
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage, ImageSeries, IndexSeries
    from pynwb.misc import Units

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nwb = NWBFile(
        session_description=f"Polar-V1 demo free-viewing session {session.name}: a simulated "
        "marmoset views natural images while V1 units respond (generated, not recorded)",
        identifier=session.name,
        session_id=session.name,
        session_start_time=datetime(2026, 1, 1, tzinfo=UTC),
        stimulus_notes=session.stim_type,
        experimenter=["Generator, Polar-V1 Demo"],
        lab="Polar-V1",
        institution="Polar-V1 open-source project",
        experiment_description="Free viewing of natural images with eye tracking; V1 "
        "spikes simulated from a mixed population of model units with a saccade-locked gain.",
        keywords=["V1", "marmoset", "free viewing", "eye tracking", "simulated"],
    )
    nwb.subject = Subject(subject_id=f"sim-{session.name}", species="Callithrix jacchus",
                          sex="U", age="P3Y", description="simulated marmoset")
    ids, starts, stops = session.trial_bounds()
    dt = 1.0 / session.rate_hz
    for a, b in zip(starts, stops):
        nwb.add_trial(start_time=float(session.t[a]), stop_time=float(session.t[b - 1] + dt))
    eye = SpatialSeries(
        name="gaze",
        data=np.where(session.eye_valid[:, None], session.eyepos, np.nan).astype(np.float32),
        timestamps=session.t,
        reference_frame="screen centre = (0, 0); x right, y up",
        unit="degrees",
        description="gaze position in degrees of visual angle (x right, y up); NaN where the "
        "tracker lost the eye",
    )
    beh = nwb.create_processing_module("behavior", "eye tracking")
    beh.add(EyeTracking(spatial_series=eye))
    nwb.units = Units(name="units", description="simulated V1 units (spike times in seconds)",
                      resolution=dt)
    columns = unit_columns or {}
    for name, (_, text) in columns.items():
        nwb.units.add_column(name=name, description=text)
    for j in range(session.n_units):
        kw = {name: _plain(values[j]) for name, (values, _) in columns.items()}
        st = np.asarray(spike_times[j], dtype=np.float64)
        if session.unit_valid is not None:
            obs = mask_to_intervals(session.t, dt, session.unit_valid[:, j])
            kw["obs_intervals"] = obs
            ok = np.zeros(len(st), dtype=bool)
            for a, b in obs:
                ok |= (st >= a) & (st < b)
            st = st[ok]
        nwb.add_unit(id=int(session.unit_ids[j]), spike_times=st, **kw)
    if layout == "crops":
        from hdmf.data_utils import DataChunkIterator

        frames = DataChunkIterator(data=session.stim, buffer_size=1024)  # never whole
        nwb.add_stimulus(ImageSeries(
            name=CROPS_NAME, data=frames, unit="luminance (uint8)",
            timestamps=session.t, comments=json.dumps({"ppd": session.ppd}),
            description="gaze-contingent crops, retinal coordinates, row 0 = top",
        ))
    elif layout == "screen":
        if screen_images is None or presentation is None or screen_ppd is None:
            raise ValueError("layout='screen' needs screen_images, presentation and screen_ppd")
        imgs = [GrayscaleImage(name=f"image_{i:03d}", data=im,
                               description=f"natural image {i}, full screen, grayscale")
                for i, im in enumerate(screen_images)]
        images = Images(name="natural_images", images=imgs, description="full-screen images")
        nwb.add_stimulus_template(images)
        onsets, index = presentation
        nwb.add_stimulus(IndexSeries(
            name=PRESENTATION_NAME, data=np.asarray(index, dtype=np.uint32),
            indexed_images=images, unit="N/A", timestamps=np.asarray(onsets, dtype=np.float64),
            description="which natural image is on the screen from each onset",
            comments=json.dumps({"screen_ppd": screen_ppd, "crop_px": session.frame_hw[0],
                                 "crop_ppd": session.ppd, "fill": fill}),
        ))
    else:
        raise ValueError(f"layout must be 'crops' or 'screen', got {layout!r}")
    gt = None
    if session.true_rate is not None or true_eyepos is not None:
        gt = nwb.create_processing_module("misc", "the demo generator's ground truth")
    if session.true_rate is not None:
        gt.add(TimeSeries(name="expected_counts", data=session.true_rate,
                          unit="spikes per bin", timestamps=session.t,
                          description="true expected spike counts per bin of every unit"))
    if true_eyepos is not None:
        true_eyepos = np.asarray(true_eyepos, dtype=np.float32)
        if true_eyepos.shape != (session.n_bins, 2):
            raise ValueError(f"true_eyepos must be [{session.n_bins}, 2], got "
                             f"{true_eyepos.shape}")
        gt.add(TimeSeries(name="true_eyepos", data=true_eyepos, unit="degrees",
                          timestamps=eye, comments=truth_comments or "no comments",
                          description="the eye's true gaze in degrees of visual angle (x right, "
                          "y up), before the tracker's calibration error; NaN where the "
                          "tracker lost the eye. Ground truth only: the recorded gaze is the "
                          "EyeTracking series"))
    tmp = path.with_name(path.stem + ".partial.nwb")
    with NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)
    tmp.replace(path)
    return path


def _plain(v):
    """A numpy scalar as the Python value pynwb stores (str, bool, int, float)."""
    return v.item() if isinstance(v, np.generic) else v
