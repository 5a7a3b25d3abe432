"""NWB sessions via pynwb, found by neurodata type (not by object name), as other labs write them.

What is read, and from where (the README's "NWB" section says the same):

* **Gaze and the bin grid**: a ``SpatialSeries`` inside an ``EyeTracking`` interface, in
  ``acquisition`` or any processing module (nested containers included). Data ``[T, 2]``
  (x right, y up), times from ``timestamps`` or ``starting_time`` + ``rate``; these times are
  the bin grid. Units: ``degrees`` (also ``deg``/``degree``) as is; ``radians`` converted;
  ``pixels``/``px`` converted when the geometry is known (screen pixels per degree, and the
  screen size from the stimulus images: pixel (0, 0) is the top-left corner, rows grow down);
  anything else is refused naming the unit. ``conversion`` and ``offset`` are applied. NaN
  where the tracker lost the eye; ``eye_valid`` = finite gaze. More than one candidate: the
  error lists them and ``--nwb-gaze NAME`` (``nwb.gaze``) picks one.
* **Trials**: the ``trials`` table (``start_time``, ``stop_time``; ids = row ids); bins outside
  every trial are dropped. Without a table: one trial per stimulus presentation (screen
  images) or one trial for the whole recording (crops), said in a warning.
* **Spikes**: ``Units`` spike times, binned on the grid (bin i counts ``[t_i, t_i + dt)``);
  ``obs_intervals`` (if present) are each unit's valid periods (a bin is valid when its
  midpoint lies in one). Unit ids = the table's ids.
* **Stimulus**, one of (more than one candidate: ``--nwb-stimulus NAME`` / ``nwb.stimulus``):
  A. *crops*: an ``ImageSeries`` / ``OpticalSeries`` (in ``stimulus`` or ``acquisition``) of
     gaze-contingent frames ``[F, H, W]`` (or RGB ``[F, H, W, 3]``), sampled onto the gaze's
     bins (each bin shows the last frame at or before it);
  B. *screen images*: an ``IndexSeries`` showing ``Images`` from ``stimulus_template``
     (``GrayscaleImage`` / ``RGBImage`` / ``RGBAImage``, any sizes), one entry per onset, with
     ``timestamps`` or ``starting_time`` + ``rate``. The reader renders a gaze-contingent crop
     at every bin (bilinear, sub-pixel; :mod:`polar_data.render`), each image centred on the
     screen, holding the last valid gaze through tracking loss; before the first onset the
     screen shows ``fill`` (grey 127).
  RGB is turned into luminance (``skimage.color.rgb2gray``); float images in ``[0, 1]`` are
  scaled to ``0..255``; every frame is stored as uint8.
* **Geometry**: from the file where it records it (JSON in the stimulus series' ``comments``:
  ``ppd`` for crops; ``screen_ppd``, ``crop_px``, ``crop_ppd`` for screen images), else from
  the options :class:`NwbOptions` (command line ``--screen-ppd``, ``--crop-deg``,
  ``--crop-px``; config keys ``nwb.screen_ppd`` ...). Missing geometry is one error naming
  the options.
* Optional ``processing['misc' or 'ground_truth']['expected_counts']`` (``TimeSeries [T, N]``):
  the demo generator's true expected counts per bin.
* Metadata: ``session_id`` (else ``identifier``) is the name (made safe by the build);
  ``stimulus_notes`` the stimulus type (default ``backimage``).

Files may be local paths or fsspec URLs (``s3://bucket/file.nwb``, with ``storage_options``):
remote files are read through ``h5py`` on an fsspec file object, range by range, never
downloaded whole.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..checksum import sha256_file
from ..render import hold_last_valid, render_crops
from ..session import Provenance, Session, SessionError
from ..session_source import SessionSource
from .dset import bins_in_intervals, mask_to_intervals, median_rate

CROPS_NAME = "gaze_contingent_stim"
PRESENTATION_NAME = "stimulus_presentation"
_DEGREES = ("degrees", "degree", "deg")
_PIXELS = ("pixels", "pixel", "px")


@dataclass
class NwbOptions:
    """Choices and geometry for NWB files that do not record them (all optional).

    ``gaze`` / ``stimulus``: name (or path) of the object to use when a file has several
    candidates. ``screen_ppd``: screen image pixels per degree. ``crop_deg``: side of the
    gaze-contingent crop in degrees; ``crop_px``: its side in pixels (default: 51 when
    rendering from screen images; the frames' own size for crops). ``storage_options``:
    fsspec options (credentials, endpoint) for files given as URLs; never recorded.
    """

    gaze: str | None = None
    stimulus: str | None = None
    screen_ppd: float | None = None
    crop_deg: float | None = None
    crop_px: int | None = None
    storage_options: dict = field(default_factory=dict)  # fsspec options for s3:// etc.

    def __post_init__(self):
        for key in ("screen_ppd", "crop_deg"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ValueError(f"nwb.{key} must be > 0, got {v}")
        if self.crop_px is not None and self.crop_px < 1:
            raise ValueError(f"nwb.crop_px must be >= 1, got {self.crop_px}")


def _walk(container, path: str):
    """(path, object) of every neurodata object below ``container`` (depth first)."""
    children = getattr(container, "children", None) or []
    for child in children:
        p = f"{path}/{child.name}"
        yield p, child
        yield from _walk(child, p)


def _pick(candidates: list[tuple[str, object]], wanted: str | None, what: str, option: str,
          where: str):
    if wanted is not None:
        hits = [c for c in candidates if wanted in (c[0], c[1].name)]
        if len(hits) != 1:
            names = ", ".join(p for p, _ in candidates) or "none"
            raise SessionError(f"{where}: {option} {wanted!r} matches {len(hits)} of the "
                               f"{what} candidates ({names})")
        return hits[0]
    if not candidates:
        return None
    if len(candidates) > 1:
        names = ", ".join(p for p, _ in candidates)
        raise SessionError(f"{where}: {len(candidates)} {what} candidates ({names}); choose one "
                           f"with {option} NAME")
    return candidates[0]


def find_gaze(nwb, where: str, wanted: str | None = None):
    """(path, SpatialSeries) of the gaze: every SpatialSeries inside an EyeTracking."""
    from pynwb.behavior import EyeTracking, SpatialSeries

    cands = []
    for path, obj in _walk(nwb, ""):
        if isinstance(obj, SpatialSeries) and isinstance(obj.parent, EyeTracking):
            cands.append((path.lstrip("/"), obj))
    hit = _pick(cands, wanted, "gaze (EyeTracking SpatialSeries)", "--nwb-gaze", where)
    if hit is None:
        raise SessionError(f"{where}: no EyeTracking SpatialSeries in acquisition or processing")
    return hit


def find_stimulus(nwb, where: str, wanted: str | None = None):
    """(path, series) of the stimulus: an IndexSeries of Images, or an ImageSeries /
    OpticalSeries of frames that no IndexSeries indexes."""
    from pynwb.image import ImageSeries, IndexSeries

    cands, indexed = [], set()
    for path, obj in _walk(nwb, ""):
        if isinstance(obj, IndexSeries):
            if obj.indexed_images is not None:
                cands.append((path.lstrip("/"), obj))
            if getattr(obj, "indexed_timeseries", None) is not None:
                indexed.add(id(obj.indexed_timeseries))
    for path, obj in _walk(nwb, ""):
        if isinstance(obj, ImageSeries) and id(obj) not in indexed and obj.data is not None \
                and len(getattr(obj.data, "shape", ())) in (3, 4):
            cands.append((path.lstrip("/"), obj))
    hit = _pick(cands, wanted, "stimulus (IndexSeries of Images, ImageSeries)",
                "--nwb-stimulus", where)
    if hit is None:
        raise SessionError(f"{where}: no stimulus: expected an IndexSeries showing "
                           "stimulus_template Images, or an ImageSeries of gaze-contingent "
                           "frames (see polar_data.readers.nwb)")
    return hit


def _times(series, where: str) -> np.ndarray:
    if series.timestamps is not None:
        return np.asarray(series.timestamps[:], dtype=np.float64)
    if series.rate is None:
        raise SessionError(f"{where}: {series.name} has neither timestamps nor a rate")
    n = series.data.shape[0] if hasattr(series.data, "shape") else len(series.data)
    return float(series.starting_time or 0.0) + np.arange(n) / float(series.rate)


def to_uint8_luminance(img, where: str) -> np.ndarray:
    """uint8 [..., H, W] luminance of grayscale or RGB(A) [..., H, W, 3|4] data, uint8 or
    float (float in [0, 1] is scaled to 0..255)."""
    a = np.asarray(img)
    if a.ndim >= 3 and a.shape[-1] in (3, 4) and a.shape[-2] > 4:
        from skimage.color import rgb2gray

        rgb = a[..., :3]
        scale = 255.0 if np.issubdtype(rgb.dtype, np.integer) else (
            1.0 if np.nanmax(rgb, initial=0) <= 1.0 else 255.0)
        a = rgb2gray(rgb.astype(np.float64) / scale) * 255.0
    elif np.issubdtype(a.dtype, np.floating):
        if np.nanmax(a, initial=0) <= 1.0:
            a = a * 255.0
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.nan_to_num(a, nan=127.0)), 0, 255).astype(np.uint8)
    return a


def _gaze_degrees(series, where: str, screen_ppd: float | None,
                  screen_hw: tuple[int, int] | None) -> np.ndarray:
    data = np.asarray(series.data[:], dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 2:
        raise SessionError(f"{where}: {series.name}: expected [T, 2] gaze, got {data.shape}")
    data = data * float(series.conversion or 1.0) + float(getattr(series, "offset", 0.0) or 0.0)
    unit = str(series.unit or "").strip().lower()
    if unit in _DEGREES:
        return data.astype(np.float32)
    if unit in ("radians", "radian", "rad"):
        return np.degrees(data).astype(np.float32)
    if unit in _PIXELS:
        if screen_ppd is None or screen_hw is None:
            raise SessionError(
                f"{where}: {series.name}: gaze is in {series.unit!r}; converting it to degrees "
                "needs the screen's pixels per degree (--screen-ppd) and the screen size (from "
                "screen images in stimulus_template); give them or store gaze in degrees")
        h, w = screen_hw
        return np.stack([(data[:, 0] - (w - 1) / 2) / screen_ppd,
                         ((h - 1) / 2 - data[:, 1]) / screen_ppd], axis=1).astype(np.float32)
    raise SessionError(f"{where}: {series.name}: gaze unit {series.unit!r} is not degrees, "
                       "radians or pixels; convert it to degrees (x right, y up)")


def _comments(series) -> dict:
    try:
        info = json.loads(series.comments)
    except (TypeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _geometry_error(where: str, what: str) -> SessionError:
    return SessionError(f"{where}: the file does not record {what}; give it with "
                        "--screen-ppd and --crop-deg (config keys nwb.screen_ppd, "
                        "nwb.crop_deg)")


def _open(path: str, storage_options: dict | None):
    """An NWBHDF5IO on a local path or an fsspec URL (read range by range, never whole)."""
    from pynwb import NWBHDF5IO

    if "://" not in path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such NWB file")
        return NWBHDF5IO(path, mode="r", load_namespaces=True), None
    import fsspec
    import h5py

    f = fsspec.open(path, "rb", **(storage_options or {})).open()
    return NWBHDF5IO(file=h5py.File(f, "r"), mode="r", load_namespaces=True), f


def source_sha256(path: str, storage_options: dict | None = None) -> str:
    """sha256 of a local file or an fsspec URL (streamed)."""
    if "://" not in str(path):
        return sha256_file(path)
    import hashlib

    import fsspec

    h = hashlib.sha256()
    with fsspec.open(str(path), "rb", **(storage_options or {})) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def open_nwb(path: str | Path, options: NwbOptions | None = None,
             sha256: str | None = None) -> SessionSource:
    """Open one NWB file (local path or fsspec URL) as a :class:`SessionSource`: the bin grid
    is read now, frames and counts chunk by chunk (module docstring: what is read from
    where). ``sha256``: the file's hash if the caller has it (else computed)."""
    opt = options or NwbOptions()
    path = str(path)
    try:
        io, raw = _open(path, opt.storage_options)
        nwb = io.read()
    except FileNotFoundError:
        raise
    except Exception as e:  # h5py/hdmf raise many types for a damaged file
        raise SessionError(f"{path}: corrupt or unreadable NWB file ({e})") from e

    def close():
        io.close()
        if raw is not None:
            raw.close()

    try:
        source = _plan(nwb, path, opt)
        source.provenance = Provenance(
            source=str(Path(path).resolve()) if "://" not in path else path,
            sha256=sha256 or source_sha256(path, opt.storage_options), reader="nwb")
        source.close = close
        return source
    except BaseException:
        close()
        raise


def read_nwb(path: str | Path, options: NwbOptions | None = None) -> Session:
    """Read one NWB file (local path or fsspec URL) whole into a validated Session."""
    with open_nwb(path, options) as source:
        return source.read(0, source.n_bins)


def _plan(nwb, where: str, opt: NwbOptions) -> SessionSource:
    """The session's bin grid and everything small, and a reader of bins ``a .. b-1``."""
    from pynwb.image import IndexSeries

    gaze_path, eye = find_gaze(nwb, where, opt.gaze)
    stim_path, series = find_stimulus(nwb, where, opt.stimulus)
    info = _comments(series)
    screen = isinstance(series, IndexSeries)
    order = None
    screen_hw = None
    if screen:
        images = series.indexed_images
        order = list(images.images.values())
        if images.order_of_images is not None:
            order = list(images.order_of_images.data)
        screen_hw = max(tuple(im.data.shape[:2]) for im in order)
    screen_ppd = info.get("screen_ppd", opt.screen_ppd)
    t_all = _times(eye, f"{where}: {gaze_path}")
    gaze_all = _gaze_degrees(eye, where, screen_ppd, screen_hw)
    if len(t_all) != len(gaze_all):
        raise SessionError(f"{where}: {gaze_path}: {len(t_all)} times for {len(gaze_all)} "
                           "gaze samples")

    # trials -> bin trial ids; drop bins outside trials
    onsets = _times(series, f"{where}: {stim_path}") if screen else None
    if nwb.trials is not None and len(nwb.trials) > 0:
        starts = np.asarray(nwb.trials["start_time"][:], dtype=np.float64)
        stops = np.asarray(nwb.trials["stop_time"][:], dtype=np.float64)
        ids = np.asarray(nwb.trials.id[:], dtype=np.int64)
    elif screen:
        warnings.warn(f"{where}: no trials table: one trial per stimulus presentation",
                      stacklevel=3)
        starts = onsets
        stops = np.append(onsets[1:], t_all[-1] + 1.0)
        ids = np.arange(len(onsets), dtype=np.int64)
    else:
        warnings.warn(f"{where}: no trials table: the whole recording is one trial",
                      stacklevel=3)
        starts, stops = t_all[:1], t_all[-1:] + 1.0
        ids = np.zeros(1, dtype=np.int64)
    by_start = np.argsort(starts, kind="stable")
    starts, stops, ids = starts[by_start], stops[by_start], ids[by_start]
    k = np.searchsorted(starts, t_all, side="right") - 1
    inside = (k >= 0) & (t_all < stops[np.clip(k, 0, None)])
    keep = np.flatnonzero(inside)
    trial = ids[k[keep]]
    t = t_all[keep]
    gaze = gaze_all[keep]
    if len(t) == 0:
        raise SessionError(f"{where}: no gaze sample falls inside a trial")
    name = str(nwb.session_id or nwb.identifier)
    try:
        rate = median_rate(t, trial)
    except ValueError as e:
        raise SessionError(f"{where}: {e}") from e
    dt = 1.0 / rate

    # spikes: times are small, binned per chunk
    if nwb.units is None or len(nwb.units) == 0:
        raise SessionError(f"{where}: no Units table (spike times) in the file")
    units = nwb.units
    unit_ids = np.asarray(units.id[:], dtype=np.int64)
    spikes = [np.sort(np.asarray(units.get_unit_spike_times(j), dtype=np.float64))
              for j in range(len(unit_ids))]
    obs = ([units.get_unit_obs_intervals(j) for j in range(len(unit_ids))]
           if "obs_intervals" in units.colnames else None)

    # stimulus geometry and the frame (or image) behind every bin
    if screen:
        if screen_ppd is None:
            raise _geometry_error(where, f"the screen's pixels per degree for {stim_path}")
        if "crop_ppd" in info and "crop_px" in info:
            crop_px, crop_ppd = int(info["crop_px"]), float(info["crop_ppd"])
        else:
            if opt.crop_deg is None:
                raise _geometry_error(where, f"the crop size for {stim_path}")
            crop_px = int(opt.crop_px or 51)
            crop_ppd = crop_px / float(opt.crop_deg)
        fill = float(info.get("fill", 127))
        which = np.asarray(series.data[:], dtype=np.int64)
        if len(which) != len(onsets):
            raise SessionError(f"{where}: {stim_path}: {len(which)} indices for "
                               f"{len(onsets)} onsets")
        if len(which) and (which.min() < 0 or which.max() >= len(order)):
            raise SessionError(f"{where}: {stim_path} indexes image {which.max()} of "
                               f"{len(order)}")
        p_of_bin = np.searchsorted(onsets, t, side="right") - 1
        held = hold_last_valid(gaze, np.isfinite(gaze).all(axis=1))
        ppd = crop_ppd
        frame_hw = (crop_px, crop_px)
    else:
        frames_t = _times(series, f"{where}: {stim_path}")
        f_of_bin = np.searchsorted(frames_t, t + 1e-9 * dt, side="right") - 1
        if (f_of_bin < 0).any():
            raise SessionError(f"{where}: {stim_path}: gaze bins before the first frame")
        frame_hw = tuple(series.data.shape[1:3])
        if "ppd" in info:
            ppd = float(info["ppd"])
        elif opt.crop_deg is not None:
            ppd = frame_hw[1] / float(opt.crop_deg)
        else:
            raise _geometry_error(where, f"the crops' pixels per degree for {stim_path}")
    if not math.isfinite(ppd) or ppd <= 0:
        raise SessionError(f"{where}: crop pixels per degree {ppd} is not positive")

    truth = None
    for module in ("misc", "ground_truth"):
        if module in nwb.processing and "expected_counts" in nwb.processing[module].data_interfaces:
            truth = nwb.processing[module]["expected_counts"].data
            break
    stim_type = str(nwb.stimulus_notes or "backimage")
    image_cache: dict[int, np.ndarray] = {}

    def frames(a: int, b: int) -> np.ndarray:
        if not screen:
            rows = f_of_bin[a:b]
            lo = int(rows.min())
            block = np.asarray(series.data[lo : int(rows.max()) + 1])  # one contiguous read
            if len(block) != len(rows) or (np.diff(rows) != 1).any():  # repeats, skips
                block = block[rows - lo]
            return to_uint8_luminance(block, where)
        out = np.full((b - a, *frame_hw), int(round(fill)), dtype=np.uint8)
        p_chunk = p_of_bin[a:b]
        for p in np.unique(p_chunk[p_chunk >= 0]):
            sel = np.flatnonzero(p_chunk == p)
            i = int(which[p])
            if i not in image_cache:
                image_cache.clear()  # one screen image held at a time
                image_cache[i] = to_uint8_luminance(order[i].data[:], where)
            out[sel] = render_crops(image_cache[i], held[a:b][sel], float(screen_ppd),
                                    crop_px, crop_ppd, fill=fill)
        return out

    def read(a: int, b: int) -> Session:
        tb = t[a:b]
        robs = np.empty((b - a, len(unit_ids)), dtype=np.int32)
        unit_valid = None if obs is None else np.empty((b - a, len(unit_ids)), dtype=bool)
        for j, st in enumerate(spikes):
            robs[:, j] = np.searchsorted(st, tb + dt, "left") - np.searchsorted(st, tb, "left")
            if obs is not None:
                unit_valid[:, j] = bins_in_intervals(tb, dt, obs[j])
        true_rate = None
        if truth is not None:
            rows = keep[a:b]
            block = np.asarray(truth[int(rows[0]) : int(rows[-1]) + 1], dtype=np.float32)
            true_rate = block[rows - rows[0]]
        session = Session(
            name=name, rate_hz=rate, ppd=ppd, stim=frames(a, b), eyepos=gaze[a:b],
            eye_valid=np.isfinite(gaze[a:b]).all(axis=1), trial=trial[a:b], t=tb, robs=robs,
            unit_ids=unit_ids, stim_type=stim_type, unit_valid=unit_valid,
            true_rate=true_rate, provenance=source.provenance)
        return session.validate()

    source = SessionSource(name=name, rate_hz=rate, t=t, trial=trial, read=read)
    return source


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
    """Write ``session`` as a DANDI-clean NWB file in layout ``crops`` or ``screen`` (module
    docstring); ``nwbinspector --config dandi`` finds no critical issue and no best-practice
    violation in it.

    ``spike_times``: per unit, float64 seconds (spikes outside a unit's valid periods are
    dropped: NWB's ``obs_intervals`` say the unit was not observed then). For ``screen``:
    ``screen_images`` (uint8 [Hs, Ws] each), ``presentation`` = (onset times [P], image index
    [P]) and ``screen_ppd``.
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
        experiment_description="Free viewing of natural images with precise eye tracking; "
        "V1 spikes simulated from a Gabor-energy population with a saccade-locked gain.",
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
    for j in range(session.n_units):
        kw = {}
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
    if session.true_rate is not None:
        gt = nwb.create_processing_module("misc", "the demo generator's ground truth")
        gt.add(TimeSeries(name="expected_counts", data=session.true_rate,
                          unit="spikes per bin", timestamps=session.t,
                          description="true expected spike counts per bin of every unit"))
    tmp = path.with_name(path.stem + ".partial.nwb")
    with NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)
    tmp.replace(path)
    return path
