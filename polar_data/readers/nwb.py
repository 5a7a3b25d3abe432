"""NWB sessions via pynwb.

Supported layout (everything else raises an error saying what is missing):

* **Bin grid and gaze**: the first ``EyeTracking`` interface found in a processing module
  (``behavior`` first) or in ``acquisition``; its first ``SpatialSeries`` (unit ``degrees``,
  data ``[T, 2]``: x right, y up; NaN where the tracker lost the eye) with ``timestamps`` at
  the bin starts. Bins outside every trial are dropped. ``eye_valid`` = finite gaze.
* **Trials**: the ``trials`` table (``start_time``, ``stop_time``; ids = row ids). Without one
  the whole recording is one trial.
* **Spikes**: the ``Units`` table. Spike times are binned on the grid: bin i counts spikes in
  ``[t_i, t_i + 1 / rate)``. ``obs_intervals`` (if present) are the unit's valid periods: a bin
  is valid for the unit when its midpoint lies inside one.
* **Stimulus**, one of:
  A. ``crops``: an ``ImageSeries`` named ``gaze_contingent_stim`` in ``stimulus`` (or
     ``acquisition``), uint8 ``[T, H, W]`` on the same timestamps as the gaze, and JSON in its
     ``comments`` with ``ppd`` (crop pixels per degree).
  B. ``screen``: an ``IndexSeries`` named ``stimulus_presentation`` in ``stimulus`` whose
     ``indexed_images`` (in ``stimulus_template``) are full-screen grayscale images, with one
     timestamp per image onset, and JSON in ``comments`` with ``screen_ppd`` (image px/deg),
     ``crop_px``, ``crop_ppd`` and optional ``fill`` (grey, default 127). The reader renders a
     gaze-contingent crop at every bin (bilinear, sub-pixel; see :mod:`polar_data.render`),
     holding the last valid gaze through tracking loss; before the first onset it shows
     ``fill``.
* Optional ``processing['ground_truth']['expected_counts']`` (``TimeSeries [T, N]``): the
  demo generator's true expected counts per bin.
* Metadata: ``session_id`` (else ``identifier``) is the name; ``stimulus_notes`` the
  stimulus type (default ``backimage``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..checksum import sha256_file
from ..render import hold_last_valid, render_crops
from ..session import Provenance, Session, SessionError
from .dset import bins_in_intervals, mask_to_intervals, median_rate

CROPS_NAME = "gaze_contingent_stim"
PRESENTATION_NAME = "stimulus_presentation"


def _find_eye_series(nwb, where: str):
    from pynwb.behavior import EyeTracking

    containers = [nwb.processing[k] for k in sorted(nwb.processing, key=lambda k: k != "behavior")]
    for mod in containers:
        for iface in mod.data_interfaces.values():
            if isinstance(iface, EyeTracking):
                return next(iter(iface.spatial_series.values()))
    for obj in nwb.acquisition.values():
        if isinstance(obj, EyeTracking):
            return next(iter(obj.spatial_series.values()))
    raise SessionError(f"{where}: no EyeTracking SpatialSeries in processing or acquisition")


def _comments(series, where) -> dict:
    try:
        return json.loads(series.comments)
    except (TypeError, ValueError) as e:
        raise SessionError(
            f"{where}: {series.name}.comments must be JSON with the geometry keys ({e})"
        ) from e


def read_nwb(path: str | Path) -> Session:
    """Read one NWB file in the supported layout (module docstring) into a validated Session."""
    from pynwb import NWBHDF5IO

    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such NWB file")
    try:
        io = NWBHDF5IO(str(path), mode="r", load_namespaces=True)
        nwb = io.read()
    except Exception as e:  # h5py/hdmf raise many types for a damaged file
        raise SessionError(f"{where}: corrupt or unreadable NWB file ({e})") from e
    with io:
        eye = _find_eye_series(nwb, where)
        if eye.timestamps is None:
            raise SessionError(f"{where}: {eye.name} needs timestamps (the bin starts)")
        t_all = np.asarray(eye.timestamps[:], dtype=np.float64)
        gaze_all = np.asarray(eye.data[:], dtype=np.float32)
        if gaze_all.ndim != 2 or gaze_all.shape[1] != 2:
            raise SessionError(f"{where}: {eye.name}: expected [T, 2] gaze, got {gaze_all.shape}")
        if eye.unit not in ("degrees", "deg", "degree"):
            raise SessionError(f"{where}: {eye.name}: gaze unit must be degrees, got {eye.unit!r}")

        # trials -> bin trial ids; drop bins outside trials
        if nwb.trials is not None and len(nwb.trials) > 0:
            starts = np.asarray(nwb.trials["start_time"][:], dtype=np.float64)
            stops = np.asarray(nwb.trials["stop_time"][:], dtype=np.float64)
            ids = np.asarray(nwb.trials.id[:], dtype=np.int64)
            k = np.searchsorted(starts, t_all, side="right") - 1
            inside = (k >= 0) & (t_all < stops[np.clip(k, 0, None)])
            keep = np.flatnonzero(inside)
            trial = ids[k[keep]]
        else:
            keep = np.arange(len(t_all))
            trial = np.zeros(len(keep), dtype=np.int64)
        t = t_all[keep]
        gaze = gaze_all[keep]
        if len(t) == 0:
            raise SessionError(f"{where}: no gaze sample falls inside a trial")
        rate = median_rate(t, trial)
        dt = 1.0 / rate

        # spikes
        if nwb.units is None or len(nwb.units) == 0:
            raise SessionError(f"{where}: no Units table (spike times) in the file")
        units = nwb.units
        unit_ids = np.asarray(units.id[:], dtype=np.int64)
        has_obs = "obs_intervals" in units.colnames
        robs = np.zeros((len(t), len(unit_ids)), dtype=np.int32)
        unit_valid = np.ones((len(t), len(unit_ids)), dtype=bool) if has_obs else None
        for j in range(len(unit_ids)):
            st = np.sort(np.asarray(units.get_unit_spike_times(j), dtype=np.float64))
            robs[:, j] = np.searchsorted(st, t + dt, "left") - np.searchsorted(st, t, "left")
            if has_obs:
                unit_valid[:, j] = bins_in_intervals(t, dt, units.get_unit_obs_intervals(j))

        # stimulus
        if CROPS_NAME in nwb.stimulus or CROPS_NAME in nwb.acquisition:
            series = nwb.stimulus.get(CROPS_NAME) or nwb.acquisition[CROPS_NAME]
            info = _comments(series, where)
            if "ppd" not in info:
                raise SessionError(f"{where}: {CROPS_NAME}.comments lacks 'ppd'")
            ts = np.asarray(series.timestamps[:], dtype=np.float64)
            if len(ts) != len(t_all) or not np.allclose(ts, t_all):
                raise SessionError(f"{where}: {CROPS_NAME} timestamps differ from the gaze's")
            stim = np.asarray(series.data[:], dtype=np.uint8)[keep]
            ppd = float(info["ppd"])
        elif PRESENTATION_NAME in nwb.stimulus:
            pres = nwb.stimulus[PRESENTATION_NAME]
            info = _comments(pres, where)
            need = [k for k in ("screen_ppd", "crop_px", "crop_ppd") if k not in info]
            if need:
                raise SessionError(f"{where}: {PRESENTATION_NAME}.comments lacks {need}")
            images = pres.indexed_images
            order = list(images.images.values())
            if images.order_of_images is not None:
                order = list(images.order_of_images.data)
            onsets = np.asarray(pres.timestamps[:], dtype=np.float64)
            which = np.asarray(pres.data[:], dtype=np.int64)
            crop_px, crop_ppd = int(info["crop_px"]), float(info["crop_ppd"])
            fill = float(info.get("fill", 127))
            stim = np.full((len(t), crop_px, crop_px), int(round(fill)), dtype=np.uint8)
            k = np.searchsorted(onsets, t, side="right") - 1
            held = hold_last_valid(gaze, np.isfinite(gaze).all(axis=1))
            for p in np.unique(k[k >= 0]):
                sel = np.flatnonzero(k == p)
                img = np.asarray(order[which[p]].data[:], dtype=np.uint8)
                stim[sel] = render_crops(img, held[sel], float(info["screen_ppd"]), crop_px,
                                         crop_ppd, fill=fill)
            ppd = crop_ppd
        else:
            raise SessionError(
                f"{where}: no stimulus: expected an ImageSeries '{CROPS_NAME}' or an IndexSeries "
                f"'{PRESENTATION_NAME}' in nwb.stimulus (see polar_data.readers.nwb)"
            )

        true_rate = None
        if "ground_truth" in nwb.processing:
            gt = nwb.processing["ground_truth"]
            if "expected_counts" in gt.data_interfaces:
                true_rate = np.asarray(gt["expected_counts"].data[:], dtype=np.float32)[keep]

        session = Session(
            name=str(nwb.session_id or nwb.identifier),
            rate_hz=rate,
            ppd=ppd,
            stim=stim,
            eyepos=gaze,
            eye_valid=np.isfinite(gaze).all(axis=1),
            trial=trial,
            t=t,
            robs=robs,
            unit_ids=unit_ids,
            stim_type=str(nwb.stimulus_notes or "backimage"),
            unit_valid=unit_valid,
            true_rate=true_rate,
            provenance=Provenance(source=str(Path(path).resolve()), sha256=sha256_file(path),
                                  reader="nwb"),
        )
    return session.validate()


def write_nwb(
    session: Session,
    path: str | Path,
    spike_times: list[np.ndarray],
    layout: str = "crops",
    screen_images: list[np.ndarray] | None = None,
    presentation: tuple[np.ndarray, np.ndarray] | None = None,
    screen_ppd: float | None = None,
    fill: int = 127,
) -> Path:
    """Write ``session`` as NWB in layout ``crops`` or ``screen`` (module docstring).

    ``spike_times``: per unit, float64 seconds. For ``screen``: ``screen_images`` (uint8
    [Hs, Ws] each), ``presentation`` = (onset times [P], image index [P]) and ``screen_ppd``.
    """
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.base import Images
    from pynwb.behavior import EyeTracking, SpatialSeries
    from pynwb.image import GrayscaleImage, ImageSeries, IndexSeries

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nwb = NWBFile(
        session_description=f"Polar-V1 demo free-viewing session {session.name}",
        identifier=session.name,
        session_id=session.name,
        session_start_time=datetime(2026, 1, 1, tzinfo=UTC),
        stimulus_notes=session.stim_type,
    )
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
    )
    beh = nwb.create_processing_module("behavior", "eye tracking")
    beh.add(EyeTracking(spatial_series=eye))
    for j in range(session.n_units):
        kw = {}
        if session.unit_valid is not None:
            kw["obs_intervals"] = mask_to_intervals(session.t, dt, session.unit_valid[:, j])
        nwb.add_unit(id=int(session.unit_ids[j]), spike_times=spike_times[j], **kw)
    if layout == "crops":
        nwb.add_stimulus(ImageSeries(
            name=CROPS_NAME, data=session.stim, unit="luminance (uint8)",
            timestamps=session.t, comments=json.dumps({"ppd": session.ppd}),
            description="gaze-contingent crops, retinal coordinates, row 0 = top",
        ))
    elif layout == "screen":
        if screen_images is None or presentation is None or screen_ppd is None:
            raise ValueError("layout='screen' needs screen_images, presentation and screen_ppd")
        imgs = [GrayscaleImage(name=f"image_{i:03d}", data=im)
                for i, im in enumerate(screen_images)]
        images = Images(name="natural_images", images=imgs, description="full-screen images")
        nwb.add_stimulus_template(images)
        onsets, index = presentation
        nwb.add_stimulus(IndexSeries(
            name=PRESENTATION_NAME, data=np.asarray(index, dtype=np.uint32),
            indexed_images=images, unit="N/A", timestamps=np.asarray(onsets, dtype=np.float64),
            comments=json.dumps({"screen_ppd": screen_ppd, "crop_px": session.frame_hw[0],
                                 "crop_ppd": session.ppd, "fill": fill}),
        ))
    else:
        raise ValueError(f"layout must be 'crops' or 'screen', got {layout!r}")
    if session.true_rate is not None:
        gt = nwb.create_processing_module("ground_truth", "demo generator's true expected counts")
        gt.add(TimeSeries(name="expected_counts", data=session.true_rate,
                          unit="spikes per bin", timestamps=session.t))
    tmp = path.with_name(path.stem + ".partial.nwb")
    with NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)
    tmp.replace(path)
    return path
