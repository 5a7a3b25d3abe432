"""Eye-tracker calibration error of the demo sessions: recorded gaze = true gaze + error.

    recorded(t) = true(t) + field(true(t)) + drift(t) + noise(t)        (degrees, x right, y up)

* ``field`` [2]: a smooth gaze-dependent offset, ``c + v(tanh(x / sx), tanh(y / sy))``: a
  constant ``c`` of magnitude ``(lo + hi) / 2`` plus a random polynomial ``v`` of order
  ``field_order`` (no constant term) in the squashed gaze coordinates, scaled so that
  ``max |v| = (hi - lo) / 2`` over the whole plane; so ``|field|`` lies in
  ``field_deg = (lo, hi)`` at every gaze position (``(sx, sy)`` = ``field_scale_deg``, about
  the half-range of the demo's gaze). Note that a constant offset shifts every receptive field
  alike, so spikes identify the field only up to a constant.
* ``drift`` [2]: a slow drift within the session, zero at its start (calibration is done
  then): a sum of three sinusoids per axis with periods in ``drift_period_s`` seconds, scaled
  so ``max |drift| = drift_deg`` over the session.
* ``noise``: white Gaussian tracker noise, ``noise_deg`` per axis per bin.

Everything is drawn from the session's own generator, so it is deterministic per session.
The neurons see crops rendered at the true gaze; the session's ``eyepos`` and ``stim`` are the
recorded gaze and crops rendered at it (:mod:`polar_data.demo.generate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from polar_data.config.typed_yaml import FieldError, bounded, check_fields


@dataclass(frozen=True)
class CalibrationParams:
    """Calibration-error settings (YAML: ``demo.calibration``; degrees and seconds; see the
    module docstring). ``enabled: false``: the recorded gaze is the true gaze."""

    enabled: bool = True
    field_deg: tuple[float, float] = bounded((0.05, 0.2), "[0, 5]")  # lo, hi of |field|
    field_order: int = bounded(2, "[1, 4]")             # polynomial order of the field
    field_scale_deg: tuple[float, float] = bounded((8.0, 6.0), "(0, 90]")  # sx, sy
    drift_deg: float = bounded(0.05, "[0, 5]")          # max |drift| within a session
    drift_period_s: tuple[float, float] = bounded((60.0, 300.0), "(0, 1000000]")  # lo, hi
    noise_deg: float = bounded(1.0 / 60.0, "[0, 1]")    # tracker noise sd per axis per bin

    def __post_init__(self):
        check_fields(self)
        for name in ("field_deg", "drift_period_s"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise FieldError(name, f"must be a range lo <= hi, got {(lo, hi)}")


def _terms(gaze: np.ndarray, scale: np.ndarray, order: int) -> np.ndarray:
    """[M, n_terms] monomials u^i v^j (1 <= i + j <= order) of the squashed gaze."""
    g = np.asarray(gaze, dtype=np.float64).reshape(-1, 2)
    u, v = np.tanh(g[:, 0] / scale[0]), np.tanh(g[:, 1] / scale[1])
    return np.stack([u ** i * v ** (d - i) for d in range(1, order + 1) for i in range(d + 1)],
                    axis=1)


@dataclass(frozen=True)
class CalibrationError:
    """One session's injected error (module docstring): ``const`` [2] deg, ``coef``
    [n_terms, 2] deg, ``scale`` [2] deg, ``order``; drift ``periods`` / ``phases`` /
    ``amps`` [3, 2] (s, rad, deg); ``noise_deg``. ``enabled`` False: no error at all."""

    enabled: bool
    const: np.ndarray
    coef: np.ndarray
    scale: np.ndarray
    order: int
    periods: np.ndarray
    phases: np.ndarray
    amps: np.ndarray
    noise_deg: float

    def field(self, gaze: np.ndarray) -> np.ndarray:
        """float64 [M, 2]: the gaze-dependent offset (deg) at gaze positions [M, 2] (deg);
        NaN gaze gives NaN."""
        g = np.asarray(gaze, dtype=np.float64).reshape(-1, 2)
        if not self.enabled:
            return np.where(np.isfinite(g), 0.0, np.nan)
        return self.const + _terms(g, self.scale, self.order) @ self.coef

    def drift(self, t: np.ndarray) -> np.ndarray:
        """float64 [T, 2]: the slow drift (deg) at session times ``t`` [T] (s; 0 at t = 0)."""
        t = np.asarray(t, dtype=np.float64)[:, None, None]
        if not self.enabled:
            return np.zeros((len(t), 2))
        w = 2 * np.pi / self.periods
        return (self.amps * (np.sin(w * t + self.phases) - np.sin(self.phases))).sum(1)

    def record(self, true_eyepos: np.ndarray, t: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """float32 [T, 2]: what the tracker records for true gaze [T, 2] (deg; NaN stays
        NaN) at times ``t`` [T] s; the noise is drawn from ``rng``."""
        g = np.asarray(true_eyepos, dtype=np.float64)
        if not self.enabled:
            return g.astype(np.float32)
        noise = rng.normal(0.0, self.noise_deg, g.shape) if self.noise_deg > 0 else 0.0
        return (g + self.field(g) + self.drift(t) + noise).astype(np.float32)

    def to_json(self) -> str:
        """The parameters as JSON (read back by :meth:`from_json`)."""
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
             for k, v in self.__dict__.items()}
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> CalibrationError:
        d = json.loads(text)
        return cls(**{k: (np.asarray(v, dtype=np.float64) if isinstance(v, list) else v)
                      for k, v in d.items()})


def draw_calibration(params: CalibrationParams, rng: np.random.Generator,
                     duration_s: float) -> CalibrationError:
    """One session's calibration error (module docstring), drawn from ``rng``;
    ``duration_s``: the span of the session's times (the drift's scale is set over it)."""
    scale = np.asarray(params.field_scale_deg, dtype=np.float64)
    order = int(params.field_order)
    n_terms = (order + 1) * (order + 2) // 2 - 1
    lo, hi = params.field_deg
    angle = rng.uniform(0, 2 * np.pi)
    const = 0.5 * (lo + hi) * np.array([np.cos(angle), np.sin(angle)])
    coef = rng.normal(0.0, 1.0, (n_terms, 2)) / np.repeat(
        np.arange(1, order + 1), np.arange(2, order + 2))[:, None]  # higher orders smaller
    s = np.linspace(-1, 1, 81) * 0.999999  # the squashed plane, through arctanh
    G = np.stack(np.meshgrid(np.arctanh(s) * scale[0], np.arctanh(s) * scale[1]), -1)
    peak = np.abs(np.linalg.norm(_terms(G.reshape(-1, 2), scale, order) @ coef, axis=1)).max()
    coef = coef * (0.5 * (hi - lo) / max(peak, 1e-12))
    plo, phi = params.drift_period_s
    periods = np.exp(rng.uniform(np.log(plo), np.log(phi), (3, 2)))
    phases = rng.uniform(0, 2 * np.pi, (3, 2))
    amps = rng.normal(0.0, 1.0, (3, 2))
    err = CalibrationError(True, const, coef, scale, order, periods, phases, amps,
                           float(params.noise_deg))
    tt = np.linspace(0.0, max(duration_s, 1e-6), 2001)
    peak_d = np.linalg.norm(err.drift(tt), axis=1).max()
    amps = amps * (params.drift_deg / max(peak_d, 1e-12))
    return CalibrationError(params.enabled, const, coef, scale, order, periods, phases, amps,
                            float(params.noise_deg))
