"""A ground-truth V1 population that is NOT the Polar-V1 model.

Units of several families, mixed in configurable fractions (``PopulationParams.mix``; each
unit's ``kind``): Gabor **simple** cells and energy-model **complex** cells (Polar-V1's own
family), and **normalised**, **surround**-suppressed, centre-surround **dog**, **endstopped**
and space-time inseparable **direction**-selective units (filters and drives:
:mod:`polar_data.demo.families`). Each sits at its own orientation, spatial frequency and
receptive-field centre in the gaze-contingent crop:

    drive_n(t)  = sum_k  kernel_n[k] * z_n(t - k)            (causal, biphasic, ~30-50 ms peak)
    z_n(t)      = (s_n(t) - ref_mean_n) / ref_std_n           (s_n: the family's drive)
    rate_n(t)   = softplus(3 gain_n drive_n(t) + offset_n) * saccade_gain(t - last saccade)
                  * gaze_gain_n(true gaze(t)) * exp(-a_n h_n(t))

with the reference statistics computed once, at construction, from crops of a natural image
(so the same frames always give the same rates); a direction unit filters its linear pair in
space-time first, so its ``drive`` is the standardised motion energy. ``saccade_gain`` dips to
``1 - saccade_suppression`` 30-80 ms after a saccade onset and peaks at
``1 + saccade_enhancement`` 100-200 ms after it. Modifiers on a fraction of the units of any
kind: a **gaze-position gain field** ``gaze_gain = 1 + depth tanh(<gaze, direction> /
scale)`` (in [1 - depth, 1 + depth]; the eye's true position on the screen), and
**spike-history adaptation** ``exp(-a_n h_n(t))``, ``h_n`` the unit's own past spikes
filtered by ``exp(-lag / tau_n)``: those units' spikes are drawn bin by bin
(:meth:`V1Population.sample`) and their written expected counts are the conditional
intensity given that history. Temporal filtering, saccade history and spike history restart at
every trial start. Expected counts per bin = rate x dt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polar_data.config.typed_yaml import FieldError, bounded, check_fields
from polar_data.demo import families as fam
from polar_data.demo.families import DEFAULT_MIX, FAMILIES


@dataclass(frozen=True)
class PopulationParams:
    """Population parameters (YAML: ``demo.population``; frequencies in cycles/deg, rates in
    spikes/s, times in ms, positions in degrees). ``mix``: family -> fraction of the units
    (:data:`~polar_data.demo.families.FAMILIES`, summing to 1); the modifiers apply to a
    fraction of the units of any kind: ``adaptation_frac`` (spike-history adaptation),
    ``gain_field_frac`` (gaze-position gain field). Defaults: marmoset foveal V1 (RFs a few
    tenths of a degree, 1-4 cpd: the demo crops' Nyquist limit is 6.4 cpd; 2-30 Hz)."""

    mix: dict[str, float] = bounded(DEFAULT_MIX, "[0, 1]")
    sf_cpd: tuple[float, float] = bounded((1.0, 4.0), "(0, 100]")  # lo, hi (log-uniform)
    rf_sigma_cycles: float = bounded(0.6, "(0, 10]")  # Gabor envelope sigma x sf
    rf_center_spread_deg: float = bounded(0.6, "[0, 90]")  # sd of RF centres about the crop's
    mean_rate_hz: tuple[float, float] = bounded((2.0, 30.0), "(0, 1000]")  # at zero drive
    temporal_kernel_ms: float = bounded(60.0, "(0, 1000]")
    saccade_suppression: float = bounded(0.6, "[0, 1]")
    saccade_enhancement: float = bounded(0.5, "[0, 10]")
    partial_frac: float = bounded(0.2, "[0, 1]")  # units valid for part of the session
    norm_c50: tuple[float, float] = bounded((0.1, 0.3), "(0, 10]")  # half-max grating contrast
    surround_strength: tuple[float, float] = bounded((1.0, 3.0), "[0, 100]")  # w
    endstop_strength: tuple[float, float] = bounded((0.8, 1.2), "[0, 10]")  # w
    direction_tf_hz: tuple[float, float] = bounded((4.0, 10.0), "(0, 100]")
    adaptation_frac: float = bounded(0.25, "[0, 1]")
    adaptation_strength: float = bounded(0.15, "[0, 10]")  # rate x exp(-a h), per spike
    adaptation_tau_ms: float = bounded(150.0, "(0, 100000]")  # decay of the history h
    gain_field_frac: float = bounded(0.25, "[0, 1]")
    gain_field_depth: float = bounded(0.3, "[0, 0.9]")  # gain in [1 - depth, 1 + depth]
    gain_field_scale_deg: float = bounded(5.0, "(0, 90]")  # gaze distance of the tanh ramp

    def __post_init__(self):
        check_fields(self)
        unknown = sorted(set(self.mix) - set(FAMILIES))
        if unknown:
            raise FieldError("mix", f"unknown family {unknown[0]!r} (allowed: "
                                    f"{', '.join(FAMILIES)})")
        total = sum(self.mix.values())
        if abs(total - 1.0) > 1e-6:
            raise FieldError("mix", f"fractions must sum to 1, got {total:g} ({self.mix})")
        for name in ("sf_cpd", "mean_rate_hz", "norm_c50", "surround_strength",
                     "endstop_strength", "direction_tf_hz"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise FieldError(name, f"must be a range lo <= hi, got {(lo, hi)}")


def saccade_gain_curve(n: int, rate_hz: float, suppression: float, enhancement: float
                       ) -> np.ndarray:
    """Gain [n] at 0 .. n-1 bins after a saccade onset: a dip then a rebound, back to ~1."""
    t = np.arange(n) / rate_hz * 1000.0  # ms
    dip = suppression * np.exp(-0.5 * ((t - 55.0) / 20.0) ** 2)
    bump = enhancement * np.exp(-0.5 * ((t - 150.0) / 40.0) ** 2)
    return 1.0 - dip + bump


def _reference_frames(crop_px: int, rng: np.random.Generator, n: int = 256) -> np.ndarray:
    import skimage.data

    img = skimage.data.camera().astype(np.float32)
    ys = rng.integers(0, img.shape[0] - crop_px, n)
    xs = rng.integers(0, img.shape[1] - crop_px, n)
    return np.stack([img[y : y + crop_px, x : x + crop_px] for y, x in zip(ys, xs)])


def _reference_movie(crop_px: int, rng: np.random.Generator, n_seg: int = 24,
                     seg: int = 32) -> np.ndarray:
    """float32 [n_seg * seg, P, P]: crops of a natural image drifting a pixel per frame in
    a random direction, ``n_seg`` segments (reference statistics of space-time drives)."""
    import skimage.data

    img = skimage.data.camera().astype(np.float32)
    out = []
    for _ in range(n_seg):
        y, x = rng.integers(seg, img.shape[0] - crop_px - seg, 2)
        d = rng.integers(-1, 2, 2)
        if not d.any():
            d[0] = 1
        out += [img[y + k * d[0] : y + k * d[0] + crop_px, x + k * d[1] : x + k * d[1] + crop_px]
                for k in range(seg)]
    return np.stack(out)


def _choose_kinds(u: np.ndarray, mix: dict[str, float]) -> np.ndarray:
    """Kind names [N] from uniforms ``u`` [N] by the cumulative fractions of ``mix`` (in
    :data:`FAMILIES` order, so ``{simple: f, complex: 1 - f}`` gives complex where
    ``u < 1 - f``); a family with a positive fraction and no unit takes one from the most
    numerous family (when there are at least as many units as families)."""
    names = [k for k in FAMILIES if mix.get(k, 0.0) > 0]
    edges = np.cumsum([mix[k] for k in names])
    idx = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    kinds = np.array(names, dtype=object)[idx]
    if len(u) >= len(names):
        for k in names:
            if not (kinds == k).any():
                counts = {m: int((kinds == m).sum()) for m in names}
                donor = max(counts, key=counts.get)
                kinds[np.flatnonzero(kinds == donor)[-1]] = k
    return kinds.astype(str)


class V1Population:
    """Ground-truth units for one session (see module docstring and
    :mod:`polar_data.demo.families`).

    Attributes: ``kind`` str [N] (family names), ``bank`` float32 [F, P, P] (filters; unit
    ``n``'s own pair at rows ``2n, 2n + 1``, further filters in ``extra`` index arrays),
    ``orientation`` rad [N], ``sf`` cpd [N], ``center`` deg [N, 2] (x right, y up from the
    crop centre), ``kernels`` float32 [N, K] (oldest first: the last tap weights the current
    frame; a direction unit's is the identity, its kernel is ``dir_kernels``), ``gain`` /
    ``offset`` [N], ``adapting`` bool [N] with ``adapt_strength`` / ``adapt_tau_ms`` [N],
    ``gain_field`` bool [N] with ``gf_angle`` rad / ``gf_depth`` [N].

    ``rng`` draws what the old two-family demo drew (in its order); ``extra_rng`` (default:
    ``rng``) draws the further families' and the modifiers' parameters, so a session's other
    draws do not move with them.
    """

    def __init__(self, params: PopulationParams, crop_px: int, ppd: float, rate_hz: float,
                 rng: np.random.Generator, n_units: int = 32,
                 extra_rng: np.random.Generator | None = None):
        self.params, self.crop_px, self.ppd, self.rate_hz = params, crop_px, ppd, rate_hz
        ext = rng if extra_rng is None else extra_rng
        self.n_units = N = int(n_units)
        self.kind = _choose_kinds(rng.random(N), params.mix)
        self.orientation = rng.uniform(0, np.pi, N)
        lo, hi = params.sf_cpd
        self.sf = np.exp(rng.uniform(np.log(lo), np.log(hi), N))
        half = crop_px / ppd / 2
        self.center = np.clip(rng.normal(0, params.rf_center_spread_deg, (N, 2)),
                              -0.6 * half, 0.6 * half)
        phase = rng.uniform(0, 2 * np.pi, N)
        X, Y = fam.crop_grid(crop_px, ppd)
        sigma = params.rf_sigma_cycles / self.sf
        own = np.empty((N, 2, crop_px, crop_px), dtype=np.float32)
        extra: list[np.ndarray] = []
        self.extra: dict[str, np.ndarray] = {}  # kind -> [n_kind, n_filters] bank rows
        rows: dict[str, list[list[int]]] = {}

        def add(filters) -> list[int]:
            extra.extend(filters)
            return list(range(2 * N + len(extra) - len(filters), 2 * N + len(extra)))

        c, th, f = self.center, self.orientation, self.sf
        for n in range(N):
            k = self.kind[n]
            if k == "dog":
                sign = 1.0 if ext.random() < 0.5 else -1.0
                own[n, 0] = sign * fam.dog(X, Y, c[n], 0.25 / f[n])
                own[n, 1] = 0.0
                continue
            own[n] = fam.gabor_pair(X, Y, c[n], th[n], f[n], sigma[n], phase[n])
            if k == "normalised":
                r = []
                for j in range(fam.N_POOL):
                    r += add(fam.gabor_pair(X, Y, c[n], th[n] + j * np.pi / fam.N_POOL, f[n],
                                            2 * sigma[n], phase[n]))
                rows.setdefault(k, []).append(r)
            elif k == "surround":
                env = fam.annulus(X, Y, c[n], 2.0 * sigma[n], 4.0 * sigma[n])
                rows.setdefault(k, []).append(
                    add(fam.gabor_pair(X, Y, c[n], th[n], f[n], sigma[n], phase[n], env)))
            elif k == "endstopped":
                axis = np.array([-np.sin(th[n]), np.cos(th[n])])  # the bar's long axis
                r = []
                for side in (-1, 1):
                    r += add(fam.gabor_pair(X, Y, c[n] + side * 2.5 * sigma[n] * axis, th[n],
                                            f[n], sigma[n], phase[n]))
                rows.setdefault(k, []).append(r)
        self.extra = {k: np.asarray(v, dtype=np.int64) for k, v in rows.items()}
        self.bank = np.concatenate([own.reshape(2 * N, crop_px, crop_px),
                                    np.asarray(extra, np.float32).reshape(-1, crop_px, crop_px)])
        self.filters = own  # [N, 2, P, P]: each unit's own pair
        K = max(2, int(round(params.temporal_kernel_ms / 1000 * rate_hz)))
        tk = np.arange(K)[::-1] / rate_hz * 1000.0  # ms into the past, oldest first
        peak = rng.uniform(30, 50, N)[:, None]
        kern = np.exp(-0.5 * ((tk - peak) / 10.0) ** 2) - 0.4 * np.exp(
            -0.5 * ((tk - peak - 25.0) / 15.0) ** 2)
        self.kernels = (kern / np.abs(kern).sum(1, keepdims=True)).astype(np.float32)
        self.is_direction = self.kind == "direction"
        self.kernels[self.is_direction] = 0.0
        self.kernels[self.is_direction, -1] = 1.0  # filtered in time before the nonlinearity
        nd = int(self.is_direction.sum())
        tf = ext.uniform(*params.direction_tf_hz, nd)
        sgn = np.where(ext.random(nd) < 0.5, 1.0, -1.0)
        self.dir_sign = sgn
        self.dir_kernels = np.stack([fam.direction_kernel(rate_hz, tf[i], sgn[i])
                                     for i in range(nd)]) if nd else np.zeros((0, 2), np.complex64)
        self.sacc_gain = saccade_gain_curve(int(0.5 * rate_hz), rate_hz,
                                            params.saccade_suppression,
                                            params.saccade_enhancement)
        # per-unit constants of the further families (the normalisation's sigma^2 and the
        # surround's scale are set from natural-image crops below)
        n_of = {k: int((self.kind == k).sum()) for k in FAMILIES}
        self.norm_sigma2 = np.zeros(n_of["normalised"])
        self.surround_w = ext.uniform(*params.surround_strength, n_of["surround"])
        self.surround_scale = np.ones(n_of["surround"])
        self.endstop_w = ext.uniform(*params.endstop_strength, n_of["endstopped"])
        # fixed reference statistics of the instantaneous drive, from natural-image crops
        ref_frames = _reference_frames(crop_px, rng)
        lin = self._linear(ref_frames)
        if n_of["normalised"]:  # sigma^2 = pool of a full-contrast grating x c50^2
            sel = np.flatnonzero(self.kind == "normalised")
            grat = np.stack([fam.grating(X, Y, c[n], th[n], f[n], phase[n]) for n in sel])
            pool = np.diagonal(self._pool(self._linear(grat)))
            self.norm_sigma2 = ext.uniform(*params.norm_c50, len(sel)) ** 2 * pool
        if n_of["surround"]:
            self.surround_scale = np.median(self._pair_amp(lin, self.extra["surround"]), 0) \
                + 1e-6
        ref = self._drive(lin)
        self.ref_mean = ref.mean(0)
        self.ref_std = ref.std(0) + 1e-6
        if nd:
            movie = self._linear(_reference_movie(crop_px, ext))
            amp = np.abs(self._direction(movie))
            self.ref_mean[self.is_direction] = amp.mean(0)
            self.ref_std[self.is_direction] = amp.std(0) + 1e-6
        target = np.exp(rng.uniform(np.log(params.mean_rate_hz[0]),
                                    np.log(params.mean_rate_hz[1]), N))
        self.gain = rng.uniform(1.0, 2.0, N)
        # softplus(offset) ~ target mean rate at zero drive
        self.offset = np.log(np.expm1(target))
        self.target_rate_hz = target
        # modifiers, on a fraction of the units of any kind
        self.adapting = np.zeros(N, dtype=bool)
        self.adapting[ext.choice(N, int(round(params.adaptation_frac * N)), replace=False)] = True
        self.adapt_strength = params.adaptation_strength * ext.uniform(0.5, 1.5, N) * self.adapting
        self.adapt_tau_ms = params.adaptation_tau_ms * np.exp(ext.uniform(-0.5, 0.5, N))
        self.gain_field = np.zeros(N, dtype=bool)
        self.gain_field[ext.choice(N, int(round(params.gain_field_frac * N)),
                                   replace=False)] = True
        self.gf_angle = ext.uniform(0, 2 * np.pi, N)
        self.gf_depth = params.gain_field_depth * ext.uniform(0.5, 1.0, N) * self.gain_field

    @property
    def is_complex(self) -> np.ndarray:
        """bool [N]: the unit is an energy-model complex cell."""
        return self.kind == "complex"

    # ------------------------------------------------------------------ drives

    def _linear(self, frames: np.ndarray) -> np.ndarray:
        """float32 [T, F] linear responses of every bank filter to frames [T, P, P]."""
        x = (np.asarray(frames, dtype=np.float32) - 127.0) / 128.0
        return x.reshape(len(x), -1) @ self.bank.reshape(len(self.bank), -1).T

    @staticmethod
    def _pair_amp(lin: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """[T, M] quadrature amplitudes of the pairs at bank rows ``rows`` [M, 2]."""
        return np.sqrt(lin[:, rows[:, 0]] ** 2 + lin[:, rows[:, 1]] ** 2)

    def _pool(self, lin: np.ndarray) -> np.ndarray:
        """[T, n_normalised] mean energy of each normalised unit's orientation pool."""
        r = lin[:, self.extra["normalised"]]  # [T, M, 2 * N_POOL]
        return (r ** 2).sum(-1) / fam.N_POOL

    def _drive(self, lin: np.ndarray) -> np.ndarray:
        """float32 [T, N] instantaneous drive s_n(t) of each unit from linear responses
        ``lin`` [T, F] (direction units: 0, their drive is filtered in time first)."""
        N = self.n_units
        r0, r1 = lin[:, 0 : 2 * N : 2], lin[:, 1 : 2 * N : 2]
        amp = np.sqrt(r0 ** 2 + r1 ** 2)
        s = np.where(self.kind == "complex", amp, np.maximum(r0, 0.0))  # simple, dog
        k = self.kind
        if (k == "normalised").any():
            sel = k == "normalised"
            s[:, sel] = amp[:, sel] ** 2 / (self.norm_sigma2 + self._pool(lin))
        if (k == "surround").any():
            sel = k == "surround"
            sur = self._pair_amp(lin, self.extra["surround"]) / self.surround_scale
            s[:, sel] = amp[:, sel] / (1.0 + self.surround_w * sur)
        if (k == "endstopped").any():
            sel = k == "endstopped"
            rows = self.extra["endstopped"]
            ends = 0.5 * (self._pair_amp(lin, rows[:, 0:2]) + self._pair_amp(lin, rows[:, 2:4]))
            s[:, sel] = np.maximum(amp[:, sel] - self.endstop_w * ends, 0.0)
        s[:, self.is_direction] = 0.0
        return s.astype(np.float32)

    def _direction(self, lin: np.ndarray) -> np.ndarray:
        """complex64 [T, n_direction]: direction units' space-time filtered responses of one
        trial's linear responses ``lin`` [T, F] (causal, zero before the trial)."""
        d = np.flatnonzero(self.is_direction)
        z = lin[:, 2 * d] + 1j * lin[:, 2 * d + 1]
        return fam.causal_complex_filter(z, self.dir_kernels)

    def _instant(self, frames: np.ndarray) -> np.ndarray:
        """Instantaneous drive s_n(t) [T, N] of uint8/float frames [T, P, P]."""
        return self._drive(self._linear(frames))

    def gaze_gain(self, gaze: np.ndarray | None, n_bins: int) -> np.ndarray:
        """float32 [T, N] gain-field factor at gaze [T, 2] (deg, x right / y up; finite;
        None: the screen centre, gain 1): ``1 + depth tanh(<gaze, (cos a, sin a)> / scale)``
        for the units with a gain field, 1 for the others."""
        if gaze is None or not self.gain_field.any():
            return np.ones((n_bins, self.n_units), dtype=np.float32)
        g = np.asarray(gaze, dtype=np.float64)
        proj = g[:, :1] * np.cos(self.gf_angle) + g[:, 1:] * np.sin(self.gf_angle)
        return (1.0 + self.gf_depth * np.tanh(proj / self.params.gain_field_scale_deg)
                ).astype(np.float32)

    def expected_counts(self, frames: np.ndarray, trial: np.ndarray,
                        saccade_onset: np.ndarray, valid: np.ndarray | None = None,
                        chunk: int = 8192, gaze: np.ndarray | None = None) -> np.ndarray:
        """float32 [T, N] expected spike counts per bin before spike-history adaptation
        (causal; restarts at trial starts; :meth:`sample` adds the adaptation).

        frames uint8 [T, P, P] (oldest first: what the eye sees, rendered at the true gaze),
        trial int [T], saccade_onset bool [T]; ``gaze`` float [T, 2] true gaze in degrees
        (finite: hold it through blinks) for the gain fields (None: gain 1); ``valid`` is
        accepted for symmetry and unused (neurons see whatever is on screen).
        """
        del valid
        T, N = len(frames), self.n_units
        inst = np.empty((T, N), dtype=np.float32)
        has_dir = bool(self.is_direction.any())
        lin_dir = np.empty((T, 2 * int(self.is_direction.sum())), np.float32) if has_dir else None
        d = np.flatnonzero(self.is_direction)
        cols = np.stack([2 * d, 2 * d + 1], 1).ravel()
        for i in range(0, T, chunk):
            lin = self._linear(frames[i : i + chunk])
            inst[i : i + chunk] = self._drive(lin)
            if has_dir:
                lin_dir[i : i + chunk] = lin[:, cols]
        z = (inst - self.ref_mean) / self.ref_std
        K = self.kernels.shape[1]
        out = np.empty((T, N), dtype=np.float32)
        trial = np.asarray(trial)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(trial)) + 1, [T]])
        G = len(self.sacc_gain)
        field = self.gaze_gain(gaze, T)
        for a, b in zip(starts[:-1], starts[1:]):
            if has_dir:  # space-time filtered first, within the trial
                zc = lin_dir[a:b, 0::2] + 1j * lin_dir[a:b, 1::2]
                amp = np.abs(fam.causal_complex_filter(zc, self.dir_kernels))
                z[a:b, d] = (amp - self.ref_mean[d]) / self.ref_std[d]
            zt = np.concatenate([np.zeros((K - 1, N), np.float32), z[a:b]])  # causal pad
            drive = np.zeros((b - a, N), dtype=np.float32)
            for k in range(K):  # kernels oldest first: tap K-1 weights the current frame
                drive += self.kernels[:, k] * zt[k : k + b - a]
            gain = np.ones(b - a)
            for o in np.flatnonzero(saccade_onset[a:b]):
                n = min(G, b - a - o)
                gain[o : o + n] = self.sacc_gain[:n]
            rate = np.logaddexp(0.0, self.gain * drive * 3.0 + self.offset) * gain[:, None]
            out[a:b] = rate * field[a:b] / self.rate_hz
        return out

    # ------------------------------------------------------------------ adaptation

    def _decay(self) -> np.ndarray:
        return np.exp(-1000.0 / self.rate_hz / self.adapt_tau_ms)  # [N], per bin

    def adapted_intensity(self, expected: np.ndarray, spikes: np.ndarray,
                          trial: np.ndarray) -> np.ndarray:
        """float32 [T, N]: the conditional intensity (expected counts per bin) given the
        units' own past ``spikes`` [T, N]: ``expected x exp(-a_n h_n(t))``, ``h_n(t) =
        sum_{k >= 1} spikes_n(t - k) exp(-k dt / tau_n)`` (restarting at each trial); units
        without adaptation keep ``expected``."""
        from scipy.signal import lfilter

        out = np.array(expected, dtype=np.float32, copy=True)
        trial = np.asarray(trial)
        T = len(trial)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(trial)) + 1, [T]])
        dec = self._decay()
        for n in np.flatnonzero(self.adapting):
            for a, b in zip(starts[:-1], starts[1:]):
                x = np.asarray(spikes[a:b, n], dtype=np.float64)
                h = lfilter([0.0, dec[n]], [1.0, -dec[n]], x)  # h(t) = dec (h(t-1) + x(t-1))
                out[a:b, n] = expected[a:b, n] * np.exp(-self.adapt_strength[n] * h)
        return out

    def sample(self, expected: np.ndarray, trial: np.ndarray, rng: np.random.Generator,
               adapt_rng: np.random.Generator | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(int32 counts [T, N], float32 conditional intensity [T, N]) from expected counts
        ``expected`` [T, N] (:meth:`expected_counts`). Units without adaptation: Poisson with
        means ``expected`` (drawn from ``rng``); adapting units are drawn from ``adapt_rng``
        (default ``rng``) as bin by bin, each bin Poisson with the intensity given the unit's
        own spikes so far (:meth:`adapted_intensity`), which is what the intensity holds
        (drawn event by event, the same distribution: :func:`_sample_adapting`)."""
        counts = sample_spikes(expected, rng)
        intensity = np.array(expected, dtype=np.float32, copy=True)
        A = np.flatnonzero(self.adapting)
        if not len(A):
            return counts, intensity
        adapt_rng = rng if adapt_rng is None else adapt_rng
        trial = np.asarray(trial)
        T = len(trial)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(trial)) + 1, [T]])
        dec = self._decay()
        lam_all = np.empty((T, len(A)))
        cnt = np.zeros((T, len(A)), dtype=np.int32)
        for j, n in enumerate(A):
            for a, b in zip(starts[:-1], starts[1:]):
                _sample_adapting(np.asarray(expected[a:b, n], np.float64), dec[n],
                                 self.adapt_strength[n], adapt_rng, lam_all[a:b, j],
                                 cnt[a:b, j])
        counts[:, A] = cnt
        intensity[:, A] = lam_all
        return counts, intensity

    def unit_valid(self, n_bins: int, rng: np.random.Generator) -> np.ndarray:
        """bool [T, N]: ``partial_frac`` of the units are valid only in one contiguous part
        of the session (they appear late or drop out early); the others throughout."""
        N = self.n_units
        m = np.ones((n_bins, N), dtype=bool)
        n_part = int(round(self.params.partial_frac * N))
        for n in rng.choice(N, size=n_part, replace=False):
            cut = int(rng.uniform(0.3, 0.7) * n_bins)
            if rng.random() < 0.5:
                m[:cut, n] = False
            else:
                m[cut:, n] = False
        return m


def _sample_adapting(base: np.ndarray, dec: float, strength: float, rng: np.random.Generator,
                     lam_out: np.ndarray, cnt_out: np.ndarray, window: int = 64) -> None:
    """Spikes of one adapting unit over one trial, as a bin-by-bin draw (each bin Poisson with
    ``base[t] exp(-strength h(t))``, ``h(t) = dec (h(t-1) + count(t-1))``), but event by
    event: between spikes the intensity is known ahead, so the first bin with a spike is where
    its cumulative sum passes an Exp(1) draw (P(no spike in bins t..u) = exp(-sum of the
    intensities)), and that bin's count is Poisson conditioned on at least one. Fills
    ``lam_out`` (intensity) and ``cnt_out`` (counts) [T]."""
    T, t, h = len(base), 0, 0.0
    while t < T:
        W = min(T, t + window)
        lam = base[t:W] * np.exp(-strength * h * dec ** np.arange(W - t))
        cum = np.cumsum(lam)
        j = int(np.searchsorted(cum, rng.exponential()))
        if j >= W - t:  # no spike in the window (memoryless: a fresh draw next)
            lam_out[t:W] = lam
            h *= dec ** (W - t)
            t = W
            continue
        lam_out[t : t + j + 1] = lam[: j + 1]
        lj = lam[j]  # count ~ Poisson(lj) given >= 1, by inversion
        u = rng.random() * -np.expm1(-lj)
        c, p, acc = 1, lj * np.exp(-lj), lj * np.exp(-lj)
        while acc < u and c < 1000:
            c += 1
            p *= lj / c
            acc += p
        cnt_out[t + j] = c
        h = dec * (h * dec ** j + c)
        t += j + 1


def sample_spikes(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson spike counts int32 [T, N] with means ``expected``."""
    return rng.poisson(expected).astype(np.int32)
