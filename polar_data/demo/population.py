"""A ground-truth V1 population that is NOT the Polar-V1 model.

Each unit is a Gabor **simple cell** (one linear filter, half-rectified) or an energy-model
**complex cell** (sum of squares of a quadrature pair), at its own orientation, spatial
frequency and receptive-field centre in the gaze-contingent crop:

    drive_n(t)  = sum_k  kernel_n[k] * s_n(t - k)            (causal, biphasic, ~30-50 ms peak)
    s_n(t)      = <f_n, frame_t>  (simple)  or  <f_n,0, frame_t>^2 + <f_n,1, frame_t>^2  (complex)
    rate_n(t)   = softplus(gain_n * z_n(t) + offset_n) * saccade_gain(t - last saccade onset)

with ``z`` the drive standardised by fixed reference statistics (computed once, at
construction, from crops of a natural image, so the same frames always give the same rates).
``saccade_gain`` dips to ``1 - saccade_suppression`` 30-80 ms after a saccade onset and peaks at
``1 + saccade_enhancement`` 100-200 ms after it. Temporal filtering and the saccade history
restart at every trial start. Expected counts per bin = rate x dt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PopulationParams:
    """Population parameters (frequencies in cycles/deg, rates in spikes/s, times in ms)."""

    n_units: int = 32
    frac_complex: float = 0.5
    sf_cpd: tuple[float, float] = (0.75, 3.0)
    rf_sigma_cycles: float = 0.6
    rf_center_spread_deg: float = 0.6
    mean_rate_hz: tuple[float, float] = (4.0, 20.0)
    temporal_kernel_ms: float = 60.0
    saccade_suppression: float = 0.6
    saccade_enhancement: float = 0.5
    partial_frac: float = 0.2


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


class V1Population:
    """Ground-truth units for one session (see module docstring).

    Attributes: ``filters`` float32 [N, 2, P, P] (pair; simple cells use ``[:, 0]``),
    ``is_complex`` bool [N], ``orientation`` rad [N], ``sf`` cpd [N], ``center`` deg [N, 2]
    (x right, y up from the crop centre), ``kernels`` float32 [N, K] (oldest first: the last
    tap weights the current frame), ``gain``/``offset`` [N].
    """

    def __init__(self, params: PopulationParams, crop_px: int, ppd: float, rate_hz: float,
                 rng: np.random.Generator):
        self.params, self.crop_px, self.ppd, self.rate_hz = params, crop_px, ppd, rate_hz
        N = params.n_units
        self.is_complex = rng.random(N) < params.frac_complex
        self.orientation = rng.uniform(0, np.pi, N)
        lo, hi = params.sf_cpd
        self.sf = np.exp(rng.uniform(np.log(lo), np.log(hi), N))
        half = crop_px / ppd / 2
        self.center = np.clip(rng.normal(0, params.rf_center_spread_deg, (N, 2)),
                              -0.6 * half, 0.6 * half)
        phase = rng.uniform(0, 2 * np.pi, N)
        c = (np.arange(crop_px) - (crop_px - 1) / 2) / ppd
        X, Y = np.meshgrid(c, -c)  # x right, y up (row 0 = top)
        f = np.empty((N, 2, crop_px, crop_px), dtype=np.float32)
        for n in range(N):
            dx, dy = X - self.center[n, 0], Y - self.center[n, 1]
            u = dx * np.cos(self.orientation[n]) + dy * np.sin(self.orientation[n])
            sigma = params.rf_sigma_cycles / self.sf[n]
            env = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
            for q in range(2):
                g = env * np.cos(2 * np.pi * self.sf[n] * u + phase[n] + q * np.pi / 2)
                g -= env * (g.sum() / env.sum())  # zero DC: no response to uniform light
                f[n, q] = g / np.linalg.norm(g)
        self.filters = f
        K = max(2, int(round(params.temporal_kernel_ms / 1000 * rate_hz)))
        tk = np.arange(K)[::-1] / rate_hz * 1000.0  # ms into the past, oldest first
        peak = rng.uniform(30, 50, N)[:, None]
        kern = np.exp(-0.5 * ((tk - peak) / 10.0) ** 2) - 0.4 * np.exp(
            -0.5 * ((tk - peak - 25.0) / 15.0) ** 2)
        self.kernels = (kern / np.abs(kern).sum(1, keepdims=True)).astype(np.float32)
        self.sacc_gain = saccade_gain_curve(int(0.5 * rate_hz), rate_hz,
                                            params.saccade_suppression,
                                            params.saccade_enhancement)
        # fixed reference statistics of the instantaneous drive, from natural-image crops
        ref = self._instant(_reference_frames(crop_px, rng))
        self.ref_mean = ref.mean(0)
        self.ref_std = ref.std(0) + 1e-6
        target = np.exp(rng.uniform(np.log(params.mean_rate_hz[0]),
                                    np.log(params.mean_rate_hz[1]), N))
        self.gain = rng.uniform(1.0, 2.0, N)
        # softplus(offset) ~ target mean rate at zero drive
        self.offset = np.log(np.expm1(target))
        self.target_rate_hz = target

    def _instant(self, frames: np.ndarray) -> np.ndarray:
        """Instantaneous drive s_n(t) [T, N] of uint8/float frames [T, P, P]."""
        x = (np.asarray(frames, dtype=np.float32) - 127.0) / 128.0
        resp = x.reshape(len(x), -1) @ self.filters.reshape(-1, self.crop_px**2).T
        resp = resp.reshape(len(x), -1, 2)
        return np.where(self.is_complex, np.sqrt(resp[..., 0] ** 2 + resp[..., 1] ** 2),
                        np.maximum(resp[..., 0], 0.0))

    def expected_counts(self, frames: np.ndarray, trial: np.ndarray,
                        saccade_onset: np.ndarray, valid: np.ndarray | None = None,
                        chunk: int = 8192) -> np.ndarray:
        """float32 [T, N] expected spike counts per bin (causal; restarts at trial starts).

        frames uint8 [T, P, P] (oldest first), trial int [T], saccade_onset bool [T];
        ``valid`` is accepted for symmetry and unused (neurons see whatever is on screen).
        """
        del valid
        T, N = len(frames), self.params.n_units
        inst = np.empty((T, N), dtype=np.float32)
        for i in range(0, T, chunk):
            inst[i : i + chunk] = self._instant(frames[i : i + chunk])
        z = (inst - self.ref_mean) / self.ref_std
        K = self.kernels.shape[1]
        out = np.empty((T, N), dtype=np.float32)
        trial = np.asarray(trial)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(trial)) + 1, [T]])
        G = len(self.sacc_gain)
        for a, b in zip(starts[:-1], starts[1:]):
            zt = np.concatenate([np.zeros((K - 1, N), np.float32), z[a:b]])  # causal pad
            drive = np.zeros((b - a, N), dtype=np.float32)
            for k in range(K):  # kernels oldest first: tap K-1 weights the current frame
                drive += self.kernels[:, k] * zt[k : k + b - a]
            gain = np.ones(b - a)
            for o in np.flatnonzero(saccade_onset[a:b]):
                n = min(G, b - a - o)
                gain[o : o + n] = self.sacc_gain[:n]
            rate = np.logaddexp(0.0, self.gain * drive * 3.0 + self.offset) * gain[:, None]
            out[a:b] = rate / self.rate_hz
        return out

    def unit_valid(self, n_bins: int, rng: np.random.Generator) -> np.ndarray:
        """bool [T, N]: ``partial_frac`` of the units are valid only in one contiguous part
        of the session (they appear late or drop out early); the others throughout."""
        N = self.params.n_units
        m = np.ones((n_bins, N), dtype=bool)
        n_part = int(round(self.params.partial_frac * N))
        for n in rng.choice(N, size=n_part, replace=False):
            cut = int(rng.uniform(0.3, 0.7) * n_bins)
            if rng.random() < 0.5:
                m[:cut, n] = False
            else:
                m[cut:, n] = False
        return m

def sample_spikes(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson spike counts int32 [T, N] with means ``expected``."""
    return rng.poisson(expected).astype(np.int32)
