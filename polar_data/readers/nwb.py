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
  error lists them and ``--nwb-gaze NAME`` (``nwb.gaze``) picks one. Gaze-like series (a
  ``[T, 2]`` series in a ``PupilTracking`` / ``*EyeTracking`` container such as
  ndx-ellipse-series' ``EllipseEyeTracking``, or an ``EllipseSeries``-like type) are never
  taken on their own (they may hold pupil or corneal-reflection positions): with no
  EyeTracking SpatialSeries the error lists them, and ``--nwb-gaze NAME`` uses one.
* **Trials**: the ``trials`` table (``start_time``, ``stop_time``; ids = row ids); bins outside
  every trial are dropped. Without a table: one trial per stimulus presentation (screen
  images) or one trial for the whole recording (crops), said in a warning. A trial with a
  NaN / infinite start or stop, or stopping before it starts, is refused naming its row and
  id. A trial starting before an earlier one has stopped starts at that stop instead (the
  earlier trial keeps its bins), one lying wholly inside an earlier trial is dropped (its bins
  belong to the earlier one): no bin is lost, a warning names the file and the counts are in
  ``SessionSource.notes`` (``trials_trimmed``, ``trials_dropped``, ``overlap_bins``).
* **Spikes**: ``Units`` spike times, binned on the grid (bin i counts ``[t_i, t_i + dt)``);
  ``obs_intervals`` (if present) are each unit's valid periods (a bin is valid when its
  midpoint lies in one). Unit ids = the table's ids. Spike times that cannot be seconds are
  refused (more than half after the recording's end and their median beyond 10 x the end:
  what milliseconds give). Without a Units table (or with ``--nwb.spikes NAME`` /
  ``nwb.spikes``): a spike-count raster, a plain ``TimeSeries`` ``[R, N]`` of counts (e.g. in
  ``processing/ecephys``) at least as fine as the gaze grid; each raster bin counts in the grid
  bin holding its start, bins the raster does not cover are invalid, unit ids ``0 .. N-1``.
  Several rasters: the error lists them and ``--nwb.spikes NAME`` picks one.
* **Stimulus**, one of (more than one candidate: ``--nwb-stimulus NAME`` / ``nwb.stimulus``):
  A. *crops*: an ``ImageSeries`` / ``OpticalSeries`` (in ``stimulus`` or ``acquisition``) of
     gaze-contingent frames ``[F, H, W]`` (or RGB ``[F, H, W, 3]``), sampled onto the gaze's
     bins (each bin shows the last frame at or before it);
  B. *screen images*: an ``IndexSeries`` showing ``Images`` from ``stimulus_template``
     (``GrayscaleImage`` / ``RGBImage`` / ``RGBAImage``, any sizes), one entry per onset, with
     ``timestamps`` or ``starting_time`` + ``rate``. The reader renders a gaze-contingent crop
     at every bin (bilinear, sub-pixel; :mod:`polar_data.sessions.render`), each image centred
     on the screen, holding the last valid gaze through tracking loss; before the first onset the
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

**A session split into files** (``<stem>.nwb`` + ``<stem>_image.nwb`` + ``<stem>_behavior.nwb``,
as DANDI:000628 is) is given as its core file ``<stem>.nwb``; the companions beside it are
opened with it (:func:`session_files`) and every object is looked for in the core first, then
in the companions; the source's sha256 covers every file.

**Reads stay inside the file.** HDF5 lets a file name other files: *external storage* (a
dataset's bytes in a raw file, resolved against the working directory), *external links* and
*virtual datasets* (objects of other HDF5 files). A file from elsewhere could thus copy any
file of the builder's disk (a private key) into the store, or, read from a URL, make the
builder read its own disk. So before any data is read, every file's metadata is walked
(:mod:`polar_data.readers.hdf5_safety`) and a file naming any outside file is refused, naming
the file, the object, the outside path and why. ``nwb.allow_external_files: true`` allows
outside files that resolve (symlinks included) inside the source's own folder, never for a
URL; they are hashed into the source's sha256, so a change of one rebuilds the session.

**Memory follows the data, not the header.** Before reading, the reader estimates from the
declared shapes and dtypes what the session will allocate (arrays read whole: gaze and its
times, trials, spike times, the largest screen image decoded to float; per bin of a chunk:
frames, rendered crops, counts ``[T, N]``, raster rows, true rates) and refuses past
``nwb.max_memory_gb`` (default: the smaller of 8 GB and half the physical memory), naming the
dataset, its declared shape and the option (:mod:`polar_data.readers.budget`); the chunk
length is checked by :func:`polar_data.sessions.session_source.session_chunks`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polar_data.config.typed_yaml import bounded, check_fields
from polar_data.readers.binning import bins_in_intervals, median_rate
from polar_data.readers.budget import UNIT_BIN_BYTES, Estimate, label
from polar_data.readers.hdf5_safety import scan_file
from polar_data.sessions.render import hold_last_valid, render_crops
from polar_data.sessions.session import Provenance, Session, SessionError
from polar_data.sessions.session_source import SessionSource, chunk_bounds
from polar_data.store.checksum import sha256_bytes, sha256_file

CROPS_NAME = "gaze_contingent_stim"
PRESENTATION_NAME = "stimulus_presentation"
_DEGREES = ("degrees", "degree", "deg")
_PIXELS = ("pixels", "pixel", "px")
COMPANION_SUFFIXES = ("_image.nwb", "_behavior.nwb")  # a session split into files (DANDI)


class MissingError(SessionError):
    """A file lacks something a session needs (gaze, stimulus, spikes)."""

@dataclass
class NwbOptions:
    """Choices and geometry for NWB files that do not record them (all optional).

    ``gaze`` / ``stimulus``: name (or path) of the object to use when a file has several
    candidates. ``screen_ppd``: screen image pixels per degree. ``crop_deg``: side of the
    gaze-contingent crop in degrees; ``crop_px``: its side in pixels (default: 51 when
    rendering from screen images; the frames' own size for crops). ``storage_options``:
    fsspec options (credentials, endpoint) for files given as URLs; never recorded.
    ``spikes``: name (or path) of a spike-count raster ``TimeSeries`` to read spikes from
    (used without it only when the file has no Units table and one raster candidate).
    ``allow_external_files``: let a file's external links, external storage and virtual
    dataset sources read files inside the source's own folder (hashed with the source);
    off, such a file is refused. ``max_memory_gb``: the most a session may allocate, estimated
    from declared shapes before reading (None: the smaller of 8 GB and half the physical
    memory; :mod:`polar_data.readers.budget`).
    """

    gaze: str | None = None
    stimulus: str | None = None
    screen_ppd: float | None = bounded(None, "(0, 10000]", "screen pixels per degree")
    crop_deg: float | None = bounded(None, "(0, 360]")
    crop_px: int | None = bounded(None, "[1, 4096]", "crop side in pixels, rendered per bin")
    spikes: str | None = None
    allow_external_files: bool = False
    max_memory_gb: float | None = bounded(None, "(0, 1000000]")
    storage_options: dict[str, object] = field(default_factory=dict)  # fsspec options (s3://)

    def __post_init__(self):
        check_fields(self)


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
        hits = [c for c in candidates if wanted in (c[0], c[0].split(":", 1)[-1], c[1].name)]
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


def _in_eye_container(obj) -> bool:
    """True for a series inside an EyeTracking / PupilTracking interface, or an extension's
    container named like one (e.g. ndx-ellipse-series' ``EllipseEyeTracking``)."""
    from pynwb.behavior import EyeTracking, PupilTracking

    parent = getattr(obj, "parent", None)
    kind = str(getattr(parent, "neurodata_type", "") or type(parent).__name__)
    return isinstance(parent, EyeTracking | PupilTracking) or "EyeTracking" in kind \
        or "PupilTracking" in kind


def gaze_candidates(nwb) -> tuple[list, list]:
    """(gaze, gaze-like) series of a file: every SpatialSeries inside an EyeTracking; and
    every other [T, 2] series (x/y columns) in an eye-tracking container or of an
    ``EllipseSeries``-like type, offered by name but used only when named."""
    from pynwb import TimeSeries
    from pynwb.behavior import EyeTracking, SpatialSeries

    gaze, like = [], []
    for path, obj in _walk(nwb, ""):
        if isinstance(obj, SpatialSeries) and isinstance(obj.parent, EyeTracking):
            gaze.append((path.lstrip("/"), obj))
        elif isinstance(obj, TimeSeries) and obj.data is not None \
                and tuple(getattr(obj.data, "shape", ()))[1:] == (2,) \
                and (_in_eye_container(obj) or "Ellipse" in str(obj.neurodata_type)):
            like.append((path.lstrip("/"), obj))
    return gaze, like


def _labelled(files, find) -> list:
    """``find(nwb)``'s candidates of every file, a companion's paths prefixed ``file:``."""
    return [(f"{label}:{p}" if label else p, obj) for label, nwb in files for p, obj in find(nwb)]


def _find_gaze(files, where: str, wanted: str | None):
    what, option = "gaze (EyeTracking SpatialSeries)", "--nwb-gaze"
    if wanted is not None:
        both = _labelled(files, lambda n: sum(gaze_candidates(n), []))
        return _pick(both, wanted, what, option, where)
    for one in files:  # the core file first, then its companions
        gaze = _labelled([one], lambda n: gaze_candidates(n)[0])
        if gaze:
            return _pick(gaze, None, what, option, where)
    like = _labelled(files, lambda n: gaze_candidates(n)[1])
    if like:
        names = ", ".join(p for p, _ in like)
        raise MissingError(
            f"{where}: no EyeTracking SpatialSeries; gaze-like series (x/y columns in an eye "
            f"or pupil tracking container, or EllipseSeries-like): {names}. If one is the gaze "
            f"(x right, y up, with its unit), choose it with {option} NAME (nwb.gaze)")
    raise MissingError(f"{where}: no EyeTracking SpatialSeries in acquisition or processing")


def stimulus_candidates(nwb) -> list:
    """(path, series) of every stimulus candidate of a file: an IndexSeries of Images, or an
    ImageSeries / OpticalSeries of frames that no IndexSeries indexes."""
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
    return cands


def _find_in_files(files, find, where: str, wanted: str | None, what: str, option: str):
    """The one candidate of the first file (the core first) that has any, or the one
    ``wanted`` names among those of every file; raises :class:`MissingError` for none."""
    if wanted is not None:
        return _pick(_labelled(files, find), wanted, what, option, where)
    for one in files:
        cands = _labelled([one], find)
        if cands:
            return _pick(cands, None, what, option, where)
    if what.startswith("stimulus"):
        raise MissingError(f"{where}: no stimulus: expected an IndexSeries showing "
                           "stimulus_template Images, or an ImageSeries of gaze-contingent "
                           "frames (see polar_data.readers.nwb)")
    return None


def raster_candidates(nwb) -> list:
    """(path, series) of every spike-count raster of a file: a plain ``TimeSeries`` of
    counts ``[T, N]`` (integer data, or a name / unit / description saying spikes or counts),
    other than the demo's ``expected_counts``."""
    cands = []
    for path, obj in _walk(nwb, ""):
        if type(obj).__name__ != "TimeSeries" or obj.name == "expected_counts" \
                or len(getattr(obj.data, "shape", ())) != 2:
            continue
        words = f"{obj.name} {obj.unit} {obj.description}".lower()
        if np.dtype(obj.data.dtype).kind in "iu" or "spike" in words or "count" in words:
            cands.append((path.lstrip("/"), obj))
    return cands


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


def _hash_one(path: str, storage_options: dict | None) -> str:
    """sha256 of one local file or fsspec URL (streamed)."""
    if "://" not in str(path):
        return sha256_file(path)
    import hashlib

    import fsspec

    h = hashlib.sha256()
    with fsspec.open(str(path), "rb", **(storage_options or {})) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def companion_core(path: str) -> str | None:
    """The core file ``<stem>.nwb`` of a companion ``<stem>_image.nwb`` /
    ``<stem>_behavior.nwb`` (None for any other path)."""
    for suffix in COMPANION_SUFFIXES:
        if str(path).endswith(suffix) and len(Path(str(path)).name) > len(suffix):
            return str(path)[: -len(suffix)] + ".nwb"
    return None


def _exists(path: str, storage_options: dict | None) -> bool:
    if "://" not in path:
        return Path(path).is_file()
    import fsspec

    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return fs.isfile(p)


def session_files(path: str, storage_options: dict | None = None) -> list[str]:
    """The files of one session: ``path`` and, for a core ``<stem>.nwb``, the companions
    ``<stem>_image.nwb`` / ``<stem>_behavior.nwb`` that exist beside it (a session split into
    files, as DANDI:000628 is); a companion itself has none."""
    path = str(path)
    if not path.endswith(".nwb") or companion_core(path) is not None:
        return [path]
    stem = path[: -len(".nwb")]
    return [path] + [c for c in (stem + s for s in COMPANION_SUFFIXES)
                     if _exists(c, storage_options)]


def source_sha256(path: str, storage_options: dict | None = None) -> str:
    """sha256 of a session's source: of the file (local path or fsspec URL, streamed) when it
    is the session's only file; else of the JSON of every file's sha256, the file's own with
    its companions (:func:`session_files`) and the outside files inside its folder that its
    HDF5 metadata names (:mod:`polar_data.readers.hdf5_safety`; read only with
    ``nwb.allow_external_files``), so that a change of any of them is seen."""
    path = str(path)
    own = _hash_one(path, storage_options)
    if not path.endswith(".nwb"):
        return own
    others = {}
    for f in session_files(path, storage_options)[1:]:
        others[f.rsplit("/", 1)[-1]] = _hash_one(f, storage_options)
    if "://" not in path:
        folder = Path(path).resolve().parent
        for f in session_files(path, storage_options):
            try:
                outside = scan_file(f, allow=True)
            except SessionError:
                continue  # the reader refuses it with the reason
            for real in outside:
                others[str(real.relative_to(folder))] = sha256_file(real)
    if not others:
        return own
    return sha256_bytes(json.dumps({"file": own, "with": dict(sorted(others.items()))},
                                   sort_keys=True).encode())


def open_nwb(path: str | Path, options: NwbOptions | None = None,
             sha256: str | None = None) -> SessionSource:
    """Open one NWB session (local path or fsspec URL; with its companion files,
    :func:`session_files`) as a :class:`SessionSource`: the bin grid is read now, frames and
    counts chunk by chunk (module docstring: what is read from where). Every file's HDF5
    metadata is checked first: one naming files outside itself is refused (or, with
    ``allow_external_files``, confined to its folder). ``sha256``: the source's hash if the
    caller has it (else :func:`source_sha256`)."""
    opt = options or NwbOptions()
    path = str(path)
    files = session_files(path, opt.storage_options)
    for f in files:  # metadata only, before any data is read
        scan_file(f, opt.allow_external_files, opt.storage_options)
    opened: list = []

    def close():
        for io, raw in opened:
            io.close()
            if raw is not None:
                raw.close()

    nwbs = []
    try:
        for f in files:
            try:
                io, raw = _open(f, opt.storage_options)
                opened.append((io, raw))
                nwbs.append((f, io.read()))
            except FileNotFoundError:
                raise
            except Exception as e:  # h5py/hdmf raise many types for a damaged file
                raise SessionError(f"{f}: corrupt or unreadable NWB file ({e})") from e
        try:
            source = _plan(nwbs, path, opt)
        except MissingError as e:
            raise MissingError(f"{e}{_lone_companion_hint(path, opt.storage_options)}") from e
        source.provenance = Provenance(
            source=str(Path(path).resolve()) if "://" not in path else path,
            sha256=sha256 or source_sha256(path, opt.storage_options), reader="nwb")
        source.close = close
        return source
    except BaseException:
        close()
        raise


def _lone_companion_hint(path: str, storage_options: dict | None) -> str:
    core = companion_core(path)
    if core is None:
        return ""
    part = path[len(core) - len(".nwb"):]
    where = ("is beside it: give that file instead (its companions are read with it)"
             if _exists(core, storage_options) else "is not beside it")
    return (f" ({path} looks like the {part!r} part of a session split into files; its core "
            f"file {core} {where})")


def read_nwb(path: str | Path, options: NwbOptions | None = None) -> Session:
    """Read one NWB session (local path or fsspec URL) whole into a validated Session."""
    with open_nwb(path, options) as source:
        if source.budget is not None:
            source.budget.check(source.n_bins)
        return source.read(0, source.n_bins)


def _basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _first_of(files, get):
    """``get(nwb)`` of the first file (the core first) where it is not None, else None."""
    for _, nwb in files:
        value = get(nwb)
        if value is not None:
            return value
    return None


def _table(table):
    return table if table is not None and len(table) > 0 else None


def _truth(nwb):
    for module in ("misc", "ground_truth"):
        if module in nwb.processing and "expected_counts" in nwb.processing[module].data_interfaces:
            return nwb.processing[module]["expected_counts"]
    return None


def _root(obj):
    while getattr(obj, "parent", None) is not None:
        obj = obj.parent
    return obj


def checked_trials(starts: np.ndarray, stops: np.ndarray, ids: np.ndarray, t_all: np.ndarray,
                   where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Trials sorted by start, refused when a start or stop is NaN / infinite or a trial ends
    before it starts (naming the row and id). A trial that starts before an earlier one has
    stopped starts at that stop (the earlier trial keeps its bins); one lying wholly inside an
    earlier trial is dropped. Returns (starts, stops, ids, counts): ``trials_trimmed``,
    ``trials_dropped`` and ``overlap_bins`` (gaze samples claimed by two trials, kept in the
    earlier one only), each present only when not 0."""
    bad = ~(np.isfinite(starts) & np.isfinite(stops))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SessionError(f"{where}: trials row {i} (id {ids[i]}) has start_time "
                           f"{starts[i]} and stop_time {stops[i]} ({int(bad.sum())} such "
                           "trials): every trial needs a finite start and stop; fix or remove "
                           "them")
    neg = stops < starts
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise SessionError(f"{where}: trials row {i} (id {ids[i]}) stops before it starts "
                           f"({starts[i]} -> {stops[i]} s; {int(neg.sum())} such trials): fix "
                           "or remove them")
    by_start = np.argsort(starts, kind="stable")
    starts, stops, ids = starts[by_start], stops[by_start], ids[by_start]
    before = np.concatenate([[-np.inf], np.maximum.accumulate(stops)[:-1]]) if len(stops) \
        else stops
    late = starts < before
    dropped = late & (stops <= before)
    trimmed = late & ~dropped
    notes = {}
    if late.any():
        lo, hi = starts[late], np.minimum(stops[late], before[late])
        overlap = np.searchsorted(t_all, hi, "left") - np.searchsorted(t_all, lo, "left")
        notes = {"trials_trimmed": int(trimmed.sum()), "trials_dropped": int(dropped.sum()),
                 "overlap_bins": int(overlap.sum())}
        notes = {k: v for k, v in notes.items() if v}
    starts = np.where(trimmed, before, starts)
    keep = ~dropped
    return starts[keep], stops[keep], ids[keep], notes


def check_spike_units(spikes: np.ndarray, t_end: float, where: str, table: str) -> None:
    """Refuse spike times that cannot be seconds: more than half after the recording's end
    ``t_end`` (s) and a median beyond 10 x ``t_end`` (milliseconds give about 1000 x)."""
    if spikes.size == 0 or not t_end > 0:
        return
    after = float((spikes > t_end).mean())
    median = float(np.median(spikes))
    if after > 0.5 and median > 10 * t_end:
        raise SessionError(
            f"{where}: Units table {table!r}: {after:.0%} of its {spikes.size} spike times lie "
            f"after the recording's end ({t_end:.6g} s), median {median:.6g}: spike_times must "
            "be in seconds (in milliseconds? divide them by 1000)")


def _read_units(units, where: str, t_end: float):
    """(unit ids, sorted spike times per unit, obs_intervals per unit or None), each column
    read in one piece."""
    unit_ids = np.asarray(units.id[:], dtype=np.int64)
    flat = np.asarray(units.spike_times.data[:], dtype=np.float64)
    ends = np.asarray(units.spike_times_index.data[:], dtype=np.int64)
    check_spike_units(flat, t_end, where, units.name)
    spikes = [np.sort(s) for s in np.split(flat, ends[:-1])] if len(ends) else []
    obs = None
    if "obs_intervals" in units.colnames:
        iv = np.asarray(units.obs_intervals.data[:], dtype=np.float64).reshape(-1, 2)
        iends = np.asarray(units.obs_intervals_index.data[:], dtype=np.int64)
        obs = np.split(iv, iends[:-1]) if len(iends) else []
    return unit_ids, spikes, obs


def _raster_reader(series, where: str, dt: float):
    """counts(tb) -> (int32 [len(tb), N] spikes per grid bin, bool [len(tb), N] covered) of a
    raster ``TimeSeries`` [R, N]: each raster bin counts in the grid bin holding its start;
    grid bins the raster does not cover are invalid. Refuses a raster coarser than the grid."""
    rt = _times(series, where)
    if len(rt) > 1 and (np.diff(rt) <= 0).any():
        raise SessionError(f"{where}: raster times are not strictly increasing")
    rdt = 1.0 / float(series.rate) if series.rate else float(np.median(np.diff(rt)))
    if rdt > dt * (1 + 1e-6):
        raise SessionError(f"{where}: raster bins of {rdt:.6g} s are coarser than the gaze "
                           f"grid's {dt:.6g} s: spikes cannot be placed in its bins")
    data, n = series.data, int(series.data.shape[1])
    conversion = float(series.conversion or 1.0)

    def counts(tb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(rt, tb, "left")
        hi = np.searchsorted(rt, tb + dt * (1 - 1e-9), "left")
        r0, r1 = int(lo[0]), int(hi[-1])
        block = np.asarray(data[r0:r1], dtype=np.float64).reshape(-1, n) * conversion
        whole = np.rint(block)
        if (np.abs(block - whole) > 1e-6).any() or (whole < 0).any():
            raise SessionError(f"{where}: raster values are not non-negative whole counts")
        cum = np.zeros((r1 - r0 + 1, n), np.int64)
        np.cumsum(whole.astype(np.int64), axis=0, out=cum[1:])
        robs = (cum[hi - r0] - cum[lo - r0]).astype(np.int32)
        covered = (tb >= rt[0] - 1e-9 * dt) & (tb + dt <= rt[-1] + rdt + 1e-9 * dt)
        return robs, np.repeat(covered[:, None], n, axis=1)

    return counts, n, rdt


def _plan(files: list[tuple[str, object]], where: str, opt: NwbOptions) -> SessionSource:
    """The session's bin grid and everything small, and a reader of bins ``a .. b-1``.
    ``files``: (path, NWBFile) of the session's files, the core first; every object is
    looked for in the core first, then in its companions. Memory is estimated from declared
    shapes (:mod:`polar_data.readers.budget`) and checked before data is read."""
    from pynwb.image import IndexSeries

    labelled = [("" if k == 0 else _basename(f), nwb) for k, (f, nwb) in enumerate(files)]
    nwb = files[0][1]
    gaze_path, eye = _find_gaze(labelled, where, opt.gaze)
    stim_path, series = _find_in_files(labelled, stimulus_candidates, where, opt.stimulus,
                                       "stimulus (IndexSeries of Images, ImageSeries)",
                                       "--nwb-stimulus")
    trials_table = _first_of(labelled, lambda n: _table(n.trials))
    units = _first_of(labelled, lambda n: _table(n.units))
    truth_series = _first_of(labelled, _truth)
    raster_path = raster = None
    if opt.spikes is not None or units is None:
        hit = _find_in_files(labelled, raster_candidates, where, opt.spikes,
                             "spike raster (TimeSeries of counts [T, N])", "--nwb.spikes")
        if hit is None:
            raise MissingError(f"{where}: no Units table (spike times) and no spike-count "
                               "raster (a TimeSeries [T, N] of counts) in the file")
        raster_path, raster = hit
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

    est = Estimate(where, opt.max_memory_gb)  # from declared shapes: nothing read yet
    est.gaze(f"{gaze_path}/data", eye.data)
    for path, obj in ((gaze_path, eye), (stim_path, series), (raster_path, raster)):
        if obj is not None and obj.timestamps is not None:
            est.whole(f"{path}/timestamps", obj.timestamps, copies=1)
        elif obj is not None:  # times made from starting_time + rate, one per row
            est.add(f"{path} (times of {obj.data.shape[0]} rows)", held=obj.data.shape[0] * 16)
    if trials_table is not None:
        est.add(f"trials ({len(trials_table)} rows)", held=len(trials_table) * 48)
    if screen:
        est.whole(stim_path, series.data)
        big = max(order, key=lambda im: math.prod(im.data.shape))
        est.image(f"{stim_path} -> image {big.name}", big.data)
        side = int(info.get("crop_px", opt.crop_px or 51))
        est.add(f"{stim_path} (rendered crops of {side} x {side} px)", per_bin=side * side * 4)
    else:
        rows = series.data.shape[0] / max(1, eye.data.shape[0])
        est.frames(stim_path, series.data, rows_per_bin=max(1.0, rows))
    if raster is None:
        n_units, n_spikes = len(units.id), len(units.spike_times.data)
        est.units(f"Units table {units.name!r} ({n_units} units, {n_spikes} spike times)",
                  n_units, held=n_spikes * 24 + n_units * 200)
        if "obs_intervals" in units.colnames:
            est.whole(f"Units table {units.name!r} obs_intervals", units.obs_intervals.data)
    if truth_series is not None:
        est.units(label("expected_counts", truth_series.data), truth_series.data.shape[1],
                  per_unit_bin=truth_series.data.dtype.itemsize + 8)
    est.budget().check(1)

    t_all = _times(eye, f"{where}: {gaze_path}")
    gaze_all = _gaze_degrees(eye, where, screen_ppd, screen_hw)
    if len(t_all) != len(gaze_all):
        raise SessionError(f"{where}: {gaze_path}: {len(t_all)} times for {len(gaze_all)} "
                           "gaze samples")

    # trials -> bin trial ids; drop bins outside trials
    onsets = _times(series, f"{where}: {stim_path}") if screen else None
    if trials_table is not None:
        starts = np.asarray(trials_table["start_time"][:], dtype=np.float64)
        stops = np.asarray(trials_table["stop_time"][:], dtype=np.float64)
        ids = np.asarray(trials_table.id[:], dtype=np.int64)
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
    starts, stops, ids, notes = checked_trials(starts, stops, ids, t_all, where)
    if notes:
        warnings.warn(f"{where}: overlapping trials: {notes.get('trials_trimmed', 0)} start(s) "
                      "moved to the stop of the earlier trial they overlap, "
                      f"{notes.get('trials_dropped', 0)} trial(s) lying wholly inside an "
                      f"earlier one dropped; {notes.get('overlap_bins', 0)} gaze samples "
                      "claimed by two trials kept in the earlier one only", stacklevel=3)
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
    t_end = float(t_all[-1]) + dt

    # spikes: read at the first chunk (after the budget's check), binned per chunk
    if raster is not None:
        counts, n_raster, rdt = _raster_reader(raster, f"{where}: {raster_path}", dt)
        est.units(label(raster_path, raster.data), n_raster,
                  per_unit_bin=dt / rdt * (raster.data.dtype.itemsize + 24) + UNIT_BIN_BYTES)
    else:
        est.units("per-bin counts", 0)
    budget = est.budget()
    budget.check(max(b - a for a, b in chunk_bounds(trial, 1)))  # a chunk is a whole trial
    spike_cache: list = []

    def unit_spikes():
        if not spike_cache:
            spike_cache.append(_read_units(units, where, t_end))
        return spike_cache[0]

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

    truth = None if truth_series is None else truth_series.data
    stim_type = str(nwb.stimulus_notes or "backimage")
    image_cache: dict[int, np.ndarray] = {}
    _warn_unused(files, (eye, series, trials_table, units, raster, truth_series), where)

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

    def spike_counts(tb: np.ndarray):
        if raster is not None:
            robs, unit_valid = counts(tb)
            return np.arange(robs.shape[1], dtype=np.int64), robs, unit_valid
        unit_ids, spikes, obs = unit_spikes()
        robs = np.empty((len(tb), len(unit_ids)), dtype=np.int32)
        unit_valid = None if obs is None else np.empty((len(tb), len(unit_ids)), dtype=bool)
        for j, st in enumerate(spikes):
            robs[:, j] = np.searchsorted(st, tb + dt, "left") - np.searchsorted(st, tb, "left")
            if obs is not None:
                unit_valid[:, j] = bins_in_intervals(tb, dt, obs[j])
        return unit_ids, robs, unit_valid

    def read(a: int, b: int) -> Session:
        tb = t[a:b]
        unit_ids, robs, unit_valid = spike_counts(tb)
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

    source = SessionSource(name=name, rate_hz=rate, t=t, trial=trial, read=read,
                           budget=budget, notes=notes)
    return source


def _warn_unused(files, used, where: str) -> None:
    """Warn about a companion file none of whose objects the session uses."""
    roots = {id(_root(obj)) for obj in used if obj is not None}
    for path, nwb in files[1:]:
        if id(nwb) not in roots:
            warnings.warn(f"{where}: companion file {path} was opened with it but nothing in it "
                          "is used (the core file has everything)", stacklevel=4)
