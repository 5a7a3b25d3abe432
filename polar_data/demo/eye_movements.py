"""Free-viewing marmoset gaze: fixations with drift and microsaccades, main-sequence saccades,
blinks / tracking loss.

Model (all times in seconds, angles in degrees, speeds in deg/s):
* fixation durations ~ gamma(shape, mean), clipped to [0.08, 1.5] s;
* during fixation the eye drifts as a random walk (diffusion ``drift_deg_per_sqrt_s``) and
  makes microsaccades (Poisson, ``microsaccade_rate_hz``; amplitude 0.1-0.5 deg);
* saccade amplitudes ~ gamma(2, mean), clipped to [0.5, 12] deg, aimed so the landing point
  stays inside ``bounds_deg``; every (micro)saccade follows the main sequence:
  duration D = a + b A (ms) and peak speed Vp = vmax (1 - exp(-A / c)), with a smooth
  velocity profile ``v(s) ~ sin(pi s)^k`` whose shape k is set so that mean speed A / D
  matches Vp (so the simulated peak speed is exactly the main-sequence value);
* blinks (Poisson, ``blink_rate_hz``, during fixations) make the tracker report nothing for
  ``blink_duration_s``: those bins are invalid and their gaze is NaN.

Documented ranges of the statistics (``DOCUMENTED_RANGES``) are checked by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import beta as beta_fn

from polar_data.config.typed_yaml import bounded, check_fields


@dataclass(frozen=True)
class GazeParams:
    """Gaze model parameters (see the module docstring for units and roles)."""

    fixation_mean_s: float = bounded(0.30, "(0, 10]")
    fixation_shape: float = bounded(3.0, "(0, 100]")
    saccade_amp_mean_deg: float = bounded(4.0, "(0, 90]")
    main_seq_duration_ms: tuple[float, float] = bounded(  # D = a + b * A
        (21.0, 2.2), "[0, 1000]")
    main_seq_vmax_deg_s: float = bounded(600.0, "(0, 5000]")
    main_seq_c_deg: float = bounded(6.0, "(0, 100]")
    drift_deg_per_sqrt_s: float = bounded(0.1, "[0, 10]")
    microsaccade_rate_hz: float = bounded(1.0, "[0, 50]")
    blink_rate_hz: float = bounded(0.2, "[0, 10]")
    blink_duration_s: tuple[float, float] = bounded((0.1, 0.3), "(0, 10]")
    bounds_deg: tuple[float, float] = bounded((8.0, 6.0), "(0, 90]")

    def __post_init__(self):
        check_fields(self)


DOCUMENTED_RANGES = {
    "fixation_median_s": (0.12, 0.5),           # intervals between saccades >= 1 deg
    "fraction_invalid": (0.01, 0.15),
    "saccade_peak_velocity_deg_s": (50.0, 600.0),
    "large_saccade_peak_min_deg_s": 250.0,      # saccades > 5 deg peak above this
    "microsaccade_rate_hz": (0.3, 2.5),
}


@dataclass
class GazeTrace:
    """One simulated trace (``T`` bins, oldest first).

    eyepos        float32 [T, 2]  degrees, x right / y up; NaN where ``valid`` is False
    valid         bool    [T]     False during blinks / tracking loss
    saccade_onset bool    [T]     True at the first bin of every (micro)saccade
    saccades      float64 [K, 4]  onset bin, offset bin (exclusive), amplitude deg, peak deg/s
    """

    eyepos: np.ndarray
    valid: np.ndarray
    saccade_onset: np.ndarray
    saccades: np.ndarray


def main_sequence(amp: float, p: GazeParams) -> tuple[float, float]:
    """(duration s, peak speed deg/s) of a saccade of amplitude ``amp`` deg."""
    a, b = p.main_seq_duration_ms
    return (a + b * amp) / 1000.0, p.main_seq_vmax_deg_s * (1 - np.exp(-amp / p.main_seq_c_deg))


def _profile(n: int, amp: float, duration: float, peak: float) -> np.ndarray:
    """Cumulative displacement fractions [n] of a saccade sampled at n bins (ends at 1).

    Velocity ~ sin(pi s)^k with k chosen so that mean/peak speed = (amp/duration)/peak.
    """
    ratio = min(max(amp / duration / max(peak, 1e-9), 0.05), 0.95)
    # mean of sin(pi s)^k over s in [0, 1] = B((k+1)/2, 1/2) / pi; solve for k by bisection
    lo, hi = 0.01, 200.0
    for _ in range(60):
        k = 0.5 * (lo + hi)
        m = beta_fn((k + 1) / 2, 0.5) / np.pi
        lo, hi = (k, hi) if m > ratio else (lo, k)
    s = np.linspace(0, 1, 2001)
    v = np.sin(np.pi * s) ** k
    cum = np.concatenate([[0], np.cumsum((v[1:] + v[:-1]) / 2)])
    cum /= cum[-1]
    return np.interp(np.arange(1, n + 1) / n, s, cum)


def simulate_gaze(n_bins: int, rate_hz: float, rng: np.random.Generator,
                  params: GazeParams = GazeParams(), start_deg=(0.0, 0.0)) -> GazeTrace:
    """Simulate ``n_bins`` bins of free-viewing gaze at ``rate_hz`` (see module docstring)."""
    p, dt = params, 1.0 / rate_hz
    bx, by = p.bounds_deg
    sd_step = p.drift_deg_per_sqrt_s * np.sqrt(dt)
    pos = np.array(start_deg, dtype=np.float64)
    pos = np.clip(pos, [-bx, -by], [bx, by])
    eye = np.empty((n_bins, 2))
    valid = np.ones(n_bins, dtype=bool)
    onset = np.zeros(n_bins, dtype=bool)
    events = []
    t = 0

    def saccade(amp, direction):
        nonlocal t, pos
        target = pos + amp * np.array([np.cos(direction), np.sin(direction)])
        target = np.clip(target, [-bx, -by], [bx, by])
        amp_eff = float(np.hypot(*(target - pos)))
        dur, peak = main_sequence(max(amp_eff, 0.05), p)
        n = max(2, int(round(dur * rate_hz)))
        frac = _profile(n, amp_eff, n * dt, peak)
        start = pos.copy()
        k0 = t
        for f in frac:
            if t >= n_bins:
                break
            eye[t] = start + f * (target - start)
            t += 1
        if k0 < n_bins:
            onset[k0] = True
            events.append((k0, t, amp_eff, peak))
        pos = target

    while t < n_bins:
        fix = float(np.clip(rng.gamma(p.fixation_shape, p.fixation_mean_s / p.fixation_shape),
                            0.08, 1.5))
        n_fix = int(round(fix * rate_hz))
        fix_start = t
        micro_at = set(
            (rng.uniform(0.1, 0.9, size=rng.poisson(p.microsaccade_rate_hz * fix))
             * n_fix).astype(int).tolist())
        blink_at = None
        if rng.random() < p.blink_rate_hz * fix:
            blink_at = int(rng.uniform(0.2, 0.8) * n_fix)
        k = 0
        while k < n_fix and t < n_bins:
            if k in micro_at:
                saccade(rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi))
                k = t - fix_start
                continue
            if blink_at is not None and k == blink_at:
                nb = int(rng.uniform(*p.blink_duration_s) * rate_hz)
                end = min(t + nb, n_bins)
                eye[t:end] = pos
                valid[t:end] = False
                k += end - t
                t = end
                continue
            d = rng.normal(0, sd_step, size=2)  # scalar clipping: the loop's cost is per bin
            pos = np.array((min(max(pos[0] + d[0], -bx), bx), min(max(pos[1] + d[1], -by), by)))
            eye[t] = pos
            t += 1
            k += 1
        if t >= n_bins:
            break
        amp = float(np.clip(rng.gamma(2.0, p.saccade_amp_mean_deg / 2.0), 0.5, 12.0))
        # aim inside the bounds: try a few directions, keep the one that lands furthest inside
        best, best_margin = 0.0, -np.inf
        for d in rng.uniform(0, 2 * np.pi, size=8):
            land = pos + amp * np.array([np.cos(d), np.sin(d)])
            margin = min(bx - abs(land[0]), by - abs(land[1]))
            if margin > best_margin:
                best, best_margin = d, margin
        saccade(amp, best)
    eyepos = eye.astype(np.float32)
    eyepos[~valid] = np.nan
    sacc = np.asarray(events, dtype=np.float64).reshape(-1, 4)
    return GazeTrace(eyepos=eyepos, valid=valid, saccade_onset=onset, saccades=sacc)


def detect_saccades(eyepos: np.ndarray, valid: np.ndarray, rate_hz: float,
                    threshold_deg_s: float = 30.0) -> np.ndarray:
    """[K, 4] (onset bin, offset bin, amplitude deg, peak deg/s) of runs of speed above
    ``threshold_deg_s`` in valid gaze (central-difference speed)."""
    g = np.asarray(eyepos, dtype=np.float64)
    speed = np.full(len(g), 0.0)
    if len(g) > 2:
        v = (g[2:] - g[:-2]) * rate_hz / 2
        speed[1:-1] = np.hypot(v[:, 0], v[:, 1])
    ok = np.asarray(valid, bool) & np.isfinite(speed)
    ok[1:-1] &= valid[:-2] & valid[2:]
    fast = ok & (np.nan_to_num(speed) > threshold_deg_s)
    edges = np.diff(np.concatenate([[0], fast.astype(np.int8), [0]]))
    out = []
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        a0, b0 = max(a - 1, 0), min(b, len(g) - 1)
        out.append((a, b, float(np.hypot(*(g[b0] - g[a0]))), float(speed[a:b].max())))
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def gaze_statistics(trace: GazeTrace, rate_hz: float) -> dict:
    """Fixation durations (s, between saccades >= 1 deg), saccade amplitudes and peaks,
    fraction invalid, microsaccade rate, and the main-sequence slope of peak vs amplitude."""
    s = trace.saccades
    big = s[s[:, 2] >= 1.0]
    fix = np.diff(big[:, 0]) / rate_hz if len(big) > 1 else np.zeros(0)
    micro = s[s[:, 2] < 0.6]
    duration = len(trace.valid) / rate_hz
    slope = np.polyfit(s[:, 2], s[:, 3], 1)[0] if len(s) > 2 else np.nan
    return {
        "fixation_durations_s": fix,
        "fixation_median_s": float(np.median(fix)) if len(fix) else np.nan,
        "saccade_amplitudes_deg": s[:, 2],
        "saccade_peak_velocities_deg_s": s[:, 3],
        "fraction_invalid": float(1 - trace.valid.mean()),
        "microsaccade_rate_hz": len(micro) / duration,
        "main_sequence_slope": float(slope),
    }
