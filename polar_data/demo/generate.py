"""Realistic free-viewing demo sessions with known ground truth, written as ``.dset`` and NWB.

One session = trials of a few seconds, each showing one of scikit-image's bundled natural
photographs (grayscale) full-screen; simulated marmoset gaze (:mod:`.gaze`) moves a
gaze-contingent window over it (:mod:`polar_data.sessions.render`); a ground-truth V1 population
(:mod:`.population`: a mix of families, not the Polar-V1 model) responds with Poisson spikes
to the crops at the eye's TRUE gaze, while the session records the gaze an eye tracker with a
calibration error reports (:mod:`.calibration`) and the crops rendered at it, as a reader
renders them from the file. Everything is deterministic per ``(seed, session index)``.

On disk (``write_demo_session``, one session)::

    <out>/<name>/datasets/backimage.dset   the lab's format (+ backimage.yaml with cids,
                                           qcmissing); robs also holds unselected clusters
    <out>/<name>.nwb                       NWB, "screen" layout (full images + presentation
                                           times; the reader renders the crops) or "crops";
                                           the ground truth (true gaze, expected counts, unit
                                           kinds) in its ``misc`` module and units table
                                           (read back by :mod:`.truth`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from polar_data.config.typed_yaml import SEED_RANGE, FieldError, bounded, check_fields
from polar_data.demo.calibration import CalibrationError, CalibrationParams, draw_calibration
from polar_data.demo.dset_writer import write_dset
from polar_data.demo.eye_movements import GazeParams, simulate_gaze
from polar_data.demo.nwb_writer import write_nwb
from polar_data.demo.population import PopulationParams, V1Population
from polar_data.readers.binning import mask_to_intervals
from polar_data.sessions.render import hold_last_valid, render_crops
from polar_data.sessions.session import Provenance, Session

MAX_SESSION_FRAMES_GIB = 32  # bound on one demo session's frames (uint8, held whole)

IMAGE_NAMES = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon",
               "grass", "gravel", "brick")


@dataclass(frozen=True)
class DemoConfig:
    """Demo-session generator settings (YAML: the ``demo:`` block of a data config).

    Times in seconds, rates in Hz, geometry in pixels and degrees. ``population``: the
    ground-truth units (families, modifiers); ``calibration``: the eye tracker's error (the
    session's gaze and crops are the recorded ones, the neurons see the true ones). A
    session's frames
    (``duration_s x rate_hz`` bins of ``crop_px x crop_px`` uint8 pixels) are held whole, so
    their size is bounded (:data:`MAX_SESSION_FRAMES_GIB`).
    """

    n_sessions: int = bounded(3, "[1, 1000]")
    duration_s: float = bounded(300.0, "(0, 1000000]")  # total in-trial time per session
    rate_hz: float = bounded(240.0, "(0, 10000]")      # source bin rate (the lab's 240 Hz)
    trial_s: tuple[float, float] = bounded((3.0, 6.0), "(0, 3600]")  # lo, hi
    iti_s: float = bounded(0.5, "[0, 3600]")            # gap between trials (no bins)
    crop_px: int = bounded(51, "[1, 1024]")             # crop side, pixels
    crop_deg: float = bounded(4.0, "(0, 180]")          # crop side, degrees (-> ppd)
    screen_ppd: float = bounded(25.0, "(0, 1000]")      # screen image pixels per degree
    n_units: tuple[int, int] = bounded(  # selected units per session, drawn in this range
        (24, 40), "[1, 4096]")
    n_noise_clusters: int = bounded(4, "[0, 4096]")     # extra .dset columns not in cids
    nwb_layout: Literal["screen", "crops"] = "screen"
    seed: int = bounded(0, SEED_RANGE)
    gaze: GazeParams = field(default_factory=GazeParams)
    population: PopulationParams = field(default_factory=PopulationParams)
    calibration: CalibrationParams = field(default_factory=CalibrationParams)

    def __post_init__(self):
        check_fields(self)
        if self.trial_s[0] > self.trial_s[1]:
            raise FieldError("trial_s", f"must be a range lo <= hi, got {self.trial_s}")
        if self.n_units[0] > self.n_units[1]:
            raise FieldError("n_units", f"must be a range lo <= hi, got {self.n_units}")
        gib = self.duration_s * self.rate_hz * self.crop_px ** 2 / 2 ** 30
        if gib > MAX_SESSION_FRAMES_GIB:
            raise ValueError(
                f"one session's frames (duration_s x rate_hz bins of crop_px x crop_px "
                f"pixels) would be {gib:.1f} GiB, more than {MAX_SESSION_FRAMES_GIB} GiB: "
                f"shorten duration_s or lower rate_hz / crop_px")

    @property
    def crop_ppd(self) -> float:
        return self.crop_px / self.crop_deg


def natural_images() -> list[np.ndarray]:
    """scikit-image's bundled photographs as uint8 grayscale [H, W] (no downloads)."""
    import skimage.data
    from skimage.color import rgb2gray

    out = []
    for name in IMAGE_NAMES:
        im = getattr(skimage.data, name)()
        if im.ndim == 3:
            im = (rgb2gray(im[..., :3]) * 255).round().astype(np.uint8)
        out.append(np.ascontiguousarray(im, dtype=np.uint8))
    return out


@dataclass
class DemoSession:
    """A generated session plus what the file writers need beyond it."""

    session: Session
    spike_times: list[np.ndarray]       # per selected unit, seconds
    onsets: np.ndarray                  # [n_trials] image onset times, s
    image_index: np.ndarray             # [n_trials] index into natural_images()
    noise_robs: np.ndarray              # [T, n_noise_clusters] counts of unselected clusters
    population: V1Population
    true_eyepos: np.ndarray             # [T, 2] float32 deg, the eye's true gaze (NaN where
                                        # invalid); session.eyepos is the recorded gaze
    calibration: CalibrationError       # the injected recorded-minus-true error


def generate_session(cfg: DemoConfig, index: int, images: list[np.ndarray] | None = None,
                     scratch: str | Path | None = None) -> DemoSession:
    """Simulate session ``index`` of ``cfg`` (deterministic per ``(cfg.seed, index)``).

    ``scratch``: a folder for the frames, held as a memory-mapped ``.npy`` file there instead
    of in memory (long sessions: an hour at 240 Hz of 51 x 51 crops is 2.2 GB). Everything
    else a session holds is a few bytes per bin and unit.
    """
    images = natural_images() if images is None else images
    rng = np.random.default_rng([cfg.seed, index])
    rate, dt = cfg.rate_hz, 1.0 / cfg.rate_hz
    half_crop = cfg.crop_deg / 2

    gaze, valid, onset_bins, trial, t = [], [], [], [], []
    onsets, image_index = [], []
    clock, total, k = 0.0, 0, 0
    while total < int(cfg.duration_s * rate):
        n = int(rng.uniform(*cfg.trial_s) * rate)
        n = min(n, int(cfg.duration_s * rate) - total) if total else n
        img = int(rng.integers(len(images)))
        h, w = images[img].shape
        bx = max(w / cfg.screen_ppd / 2 - half_crop, 0.5)
        by = max(h / cfg.screen_ppd / 2 - half_crop, 0.5)
        params = _with_bounds(cfg.gaze, (bx, by))
        start = (rng.uniform(-bx, bx) * 0.5, rng.uniform(-by, by) * 0.5)
        tr = simulate_gaze(n, rate, rng, params, start_deg=start)
        gaze.append(tr.eyepos)
        valid.append(tr.valid)
        onset_bins.append(tr.saccade_onset)
        trial.append(np.full(n, k, dtype=np.int64))
        t.append(clock + np.arange(n) * dt)
        onsets.append(clock)
        image_index.append(img)
        clock += n * dt + cfg.iti_s
        total += n
        k += 1
    true_eyepos = np.concatenate(gaze).astype(np.float32)
    eye_valid = np.concatenate(valid)
    trial_ids = np.concatenate(trial)
    times = np.concatenate(t)
    # the tracker's calibration error (its own streams: the other draws do not move with it)
    calib = draw_calibration(cfg.calibration, np.random.default_rng([cfg.seed, index, 2]),
                             float(times[-1] - times[0]) if len(times) else 0.0)
    eyepos = calib.record(true_eyepos, times - times[0],
                          np.random.default_rng([cfg.seed, index, 3]))
    held_true = hold_last_valid(true_eyepos, eye_valid)
    held = hold_last_valid(eyepos, eye_valid)  # as the reader renders from the recorded gaze
    stim = _frames(cfg, index, len(times), scratch, "frames")
    seen = _frames(cfg, index, len(times), scratch, "seen") if calib.enabled else stim
    for k, img in enumerate(image_index):
        sel = np.flatnonzero(trial_ids == k)
        stim[sel] = render_crops(images[img], held[sel], cfg.screen_ppd, cfg.crop_px,
                                 cfg.crop_ppd)
        if calib.enabled:  # what the eye sees: crops at the true gaze
            seen[sel] = render_view(images[img], held_true[sel], cfg.screen_ppd, cfg.crop_px,
                                    cfg.crop_ppd)

    n_units = int(rng.integers(cfg.n_units[0], cfg.n_units[1] + 1))
    pop = V1Population(cfg.population, cfg.crop_px, cfg.crop_ppd, rate, rng, n_units=n_units,
                       extra_rng=np.random.default_rng([cfg.seed, index, 1]))
    expected = pop.expected_counts(seen, trial_ids, np.concatenate(onset_bins), eye_valid,
                                   gaze=held_true)
    if calib.enabled and scratch is not None:
        del seen
        (Path(scratch) / f"demo{index:02d}.seen.npy").unlink(missing_ok=True)
    robs, expected = pop.sample(expected, trial_ids, rng,
                                adapt_rng=np.random.default_rng([cfg.seed, index, 4]))
    unit_valid = pop.unit_valid(len(times), rng)
    noise = rng.poisson(0.02, size=(len(times), cfg.n_noise_clusters)).astype(np.int32)
    # selected units sit at scattered columns of the full cluster table (cids)
    n_all = n_units + cfg.n_noise_clusters
    cids = np.sort(rng.choice(n_all, size=n_units, replace=False)).astype(np.int64)
    spike_times = []
    for j in range(n_units):
        c = robs[:, j]
        st = np.repeat(times, c) + rng.uniform(0.05, 0.95, size=int(c.sum())) * dt
        spike_times.append(np.sort(st))
    session = Session(
        name=f"demo{index:02d}",
        rate_hz=rate,
        ppd=cfg.crop_ppd,
        stim=stim,
        eyepos=np.where(eye_valid[:, None], eyepos, np.nan).astype(np.float32),  # recorded
        eye_valid=eye_valid,
        trial=trial_ids,
        t=times,
        robs=robs,
        unit_ids=cids,
        stim_type="backimage",
        unit_valid=unit_valid,
        true_rate=expected.astype(np.float32),
        provenance=Provenance(source=f"demo:seed={cfg.seed},index={index}", sha256="",
                              reader="demo"),
    )
    true_eyepos = np.where(eye_valid[:, None], true_eyepos, np.nan).astype(np.float32)
    return DemoSession(session.validate(), spike_times, np.asarray(onsets),
                       np.asarray(image_index), noise, pop, true_eyepos, calib)


def render_view(image: np.ndarray, gaze_deg: np.ndarray, screen_ppd: float, crop_px: int,
                crop_ppd: float, fill: float = 127.0, chunk: int = 64) -> np.ndarray:
    """uint8 [F, crop_px, crop_px]: what the eye sees at gaze [F, 2] (deg, finite): the
    geometry and bilinear sampling of :func:`polar_data.sessions.render.render_crops`, in
    fewer passes (the neurons' view, rendered at the true gaze, need not match a reader's
    rendering to the last bit: a pixel may differ by one grey level where a value rounds at
    .5). Each pixel's four bilinear neighbours are packed into one 4-byte word, so a crop
    pixel is one gather."""
    Hs, Ws = image.shape
    W2 = Ws + 2
    fillv = int(np.clip(np.rint(fill), 0, 255))
    padded = np.full((Hs + 4, W2), fillv, dtype=np.uint8)  # 2 more rows: the last quads
    padded[1 : Hs + 1, 1:-1] = image
    f = padded.ravel()
    n = (Hs + 2) * W2
    quad = np.ascontiguousarray(np.stack(
        [f[:n], f[1 : n + 1], f[W2 : n + W2], f[W2 + 1 : n + W2 + 1]], -1)).view(np.uint32)
    quad = quad.ravel()
    cy, cx = (Hs - 1) / 2.0, (Ws - 1) / 2.0
    off = (np.arange(crop_px) - (crop_px - 1) / 2.0) / crop_ppd
    gaze = np.asarray(gaze_deg, dtype=np.float64)
    out = np.empty((len(gaze), crop_px, crop_px), dtype=np.uint8)
    for s in range(0, len(gaze), chunk):
        g = gaze[s : s + chunk]
        cols = np.clip(cx + (g[:, 0, None] + off) * screen_ppd + 1.0, 0.0, Ws + 1.0 - 1e-6)
        rows = np.clip(cy - (g[:, 1, None] - off) * screen_ppd + 1.0, 0.0, Hs + 1.0 - 1e-6)
        c0, r0 = cols.astype(np.int32), rows.astype(np.int32)  # floor: both are >= 0
        fc = (cols - c0).astype(np.float32)[:, None, :]
        fr = (rows - r0).astype(np.float32)[:, :, None]
        q = quad.take((r0 * W2)[:, :, None] + c0[:, None, :]).view(np.uint8)
        q = q.reshape(len(g), crop_px, crop_px, 4).astype(np.float32)
        top = q[..., 0] + (q[..., 1] - q[..., 0]) * fc
        val = top + (q[..., 2] + (q[..., 3] - q[..., 2]) * fc - top) * fr
        out[s : s + chunk] = np.clip(np.rint(val), 0, 255)
    return out


def _frames(cfg: DemoConfig, index: int, n: int, scratch, what: str) -> np.ndarray:
    """uint8 [n, crop_px, crop_px] to fill: in memory, or memory-mapped in ``scratch``."""
    shape = (n, cfg.crop_px, cfg.crop_px)
    if scratch is None:
        return np.empty(shape, dtype=np.uint8)
    Path(scratch).mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(Path(scratch) / f"demo{index:02d}.{what}.npy",
                                     mode="w+", dtype=np.uint8, shape=shape)


def _with_bounds(params: GazeParams, bounds: tuple[float, float]) -> GazeParams:
    from dataclasses import replace

    return replace(params, bounds_deg=(float(bounds[0]), float(bounds[1])))


def unit_truth_columns(pop: V1Population) -> dict[str, tuple[np.ndarray, str]]:
    """The units table's ground-truth columns of a demo population (read back by
    :func:`polar_data.demo.truth.read_truth`)."""
    return {
        "kind": (pop.kind, "ground-truth family of the simulated unit "
                           "(polar_data.demo.families)"),
        "adapting": (pop.adapting, "true if the unit's rate adapts to its own spikes"),
        "gain_field": (pop.gain_field, "true if the unit's rate has a gaze-position gain field"),
    }


def write_demo_session(demo: DemoSession, out_dir: str | Path, cfg: DemoConfig,
                       images: list[np.ndarray], dset: bool = True) -> tuple[Path | None, Path]:
    """Write one generated session as ``.dset`` (+ YAML; unless ``dset`` is False) and NWB;
    returns both paths."""
    out_dir = Path(out_dir)
    s = demo.session
    nwb = write_nwb(
        s, out_dir / f"{s.name}.nwb", demo.spike_times, layout=cfg.nwb_layout,
        screen_images=[images[i] for i in range(len(images))],
        presentation=(demo.onsets, demo.image_index), screen_ppd=cfg.screen_ppd,
        true_eyepos=demo.true_eyepos, unit_columns=unit_truth_columns(demo.population),
        truth_comments=demo.calibration.to_json(),
    )
    if not dset:
        return None, nwb
    # the .dset holds every cluster; cids in the YAML pick the selected ones
    n_all = s.n_units + demo.noise_robs.shape[1]
    full = np.zeros((s.n_bins, n_all), dtype=np.int32)
    truth = np.zeros((s.n_bins, n_all), dtype=np.float32)
    noise_cols = np.setdiff1d(np.arange(n_all), s.unit_ids)
    full[:, s.unit_ids] = s.robs
    full[:, noise_cols] = demo.noise_robs
    truth[:, s.unit_ids] = s.true_rate
    truth[:, noise_cols] = 0.02
    from dataclasses import replace

    wide = replace(s, robs=full, unit_ids=np.arange(n_all), true_rate=truth, unit_valid=None)
    dt = 1.0 / s.rate_hz
    qcmissing = {int(cid): mask_to_intervals(s.t, dt, ~s.unit_valid[:, j])
                 for j, cid in enumerate(s.unit_ids) if not s.unit_valid[:, j].all()}
    dset_path = write_dset(wide, out_dir / s.name / "datasets" / f"{s.stim_type}.dset",
                           screen_ppd=cfg.screen_ppd, qcmissing=qcmissing,
                           cids=[int(c) for c in s.unit_ids])
    return dset_path, nwb


def write_sized_sessions(folder: str | Path, gb: float, crop_px: int, rate_hz: float,
                         n_sessions: int, seed: int = 0) -> tuple[list[Path], int]:
    """Demo NWB sessions (crops layout) holding about ``gb`` GB of frames in all, for
    benchmarks; returns the paths and the number of bins."""
    folder = Path(folder)
    duration = gb * 1e9 / (crop_px * crop_px) / rate_hz / n_sessions * 1.02
    cfg = DemoConfig(n_sessions=n_sessions, duration_s=duration, rate_hz=rate_hz,
                     crop_px=crop_px, crop_deg=crop_px / 37.505, screen_ppd=37.505, seed=seed)
    images = natural_images()
    paths, bins = [], 0
    for i in range(n_sessions):
        scratch = folder / f".scratch-{i:02d}"
        demo = generate_session(cfg, i, images, scratch=scratch)
        paths.append(write_nwb(demo.session, folder / f"bench{i:02d}.nwb", demo.spike_times,
                               layout="crops"))
        bins += demo.session.n_bins
        del demo
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return paths, bins
