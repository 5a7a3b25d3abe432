"""The demo population's unit families: their spatial filters and instantaneous drives.

Every unit has one kind (:data:`FAMILIES`); its filters are columns of one filter bank (each
float32 [P, P], zero DC, unit norm, on the crop grid: x right, y up from the crop centre, in
degrees). A unit's first two columns are always its own pair (a quadrature Gabor pair at the
unit's centre, orientation, spatial frequency and phase; a ``dog`` unit's difference of
Gaussians and a zero filter); the further filters a family needs follow after every unit's
pair. Kinds (``A = sqrt(r0^2 + r1^2)``: the quadrature energy's amplitude of a pair of linear
responses ``r0, r1``):

* ``simple``: ``max(r0, 0)`` (half-rectified Gabor, phase-sensitive);
* ``complex``: ``A`` (energy model, phase-invariant);
* ``normalised``: ``A^2 / (sigma^2 + pool)``, ``pool`` the mean energy of four quadrature
  pairs at orientations ``theta + k pi / 4`` with a Gaussian envelope twice the centre's:
  divisive normalisation by a local contrast pool, so the response saturates with contrast
  (``sigma^2`` set so that a grating at the preferred orientation reaches half the maximum
  drive at contrast ``norm_c50``);
* ``surround``: ``A / (1 + w A_s / median(A_s))``, ``A_s`` the energy of a pair at the same
  orientation and frequency on an annulus (2 to 4 centre sigmas; the median over
  natural-image crops): orientation-tuned surround suppression, so the response falls as a
  grating patch grows beyond the centre;
* ``dog``: ``max(+-<DoG, frame>, 0)``, a balanced centre-surround difference of Gaussians
  (ON or OFF; centre sigma ``0.25 / sf``, surround sigma 2.5 x centre's, so it prefers about
  half the unit's ``sf``): untuned for orientation;
* ``endstopped``: ``max(A - w (A_1 + A_2) / 2, 0)``, ``A_1, A_2`` the energies of pairs
  centred 2.5 sigmas along the preferred bar's long axis on either side: prefers short bars;
* ``direction``: space-time inseparable: the spatial pair as one complex response
  ``r0 + i r1`` filtered in time by ``g(tau) exp(+-i 2 pi f tau)`` (``g`` a Gaussian 50 ms after
  the frame, sigma 25 ms; ``f`` in ``direction_tf_hz``), then its amplitude: a quadrature pair
  with a temporal phase shift between its members (motion energy), direction selective.
"""

from __future__ import annotations

import numpy as np

FAMILIES = ("complex", "simple", "normalised", "surround", "dog", "endstopped", "direction")
POLAR_FAMILY = ("simple", "complex")  # the two Polar-V1 computes by construction

DEFAULT_MIX = {"simple": 0.15, "complex": 0.15, "normalised": 0.14, "surround": 0.14,
               "dog": 0.14, "endstopped": 0.14, "direction": 0.14}

N_POOL = 4  # orientations of a normalised unit's contrast pool
DIRECTION_KERNEL_MS = 150.0  # length of a direction unit's space-time kernel


def crop_grid(crop_px: int, ppd: float) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) float64 [P, P] degrees of each crop pixel from the crop centre (x right, y up;
    row 0 = top)."""
    c = (np.arange(crop_px) - (crop_px - 1) / 2) / ppd
    return np.meshgrid(c, -c)


def _unit(g: np.ndarray, env: np.ndarray) -> np.ndarray:
    g = g - env * (g.sum() / env.sum())  # zero DC: no response to uniform light
    return g / max(np.linalg.norm(g), 1e-12)


def gabor_pair(X, Y, center, theta, sf, sigma, phase, envelope=None) -> np.ndarray:
    """float32 [2, P, P]: a quadrature Gabor pair (phases ``phase``, ``phase + pi/2``) at
    ``center`` (deg), carrier direction ``theta`` (rad), ``sf`` (cycles/deg), Gaussian
    envelope ``sigma`` deg (or the given ``envelope`` [P, P])."""
    dx, dy = X - center[0], Y - center[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    env = np.exp(-(dx**2 + dy**2) / (2 * sigma**2)) if envelope is None else envelope
    out = np.empty((2,) + X.shape, dtype=np.float32)
    for q in range(2):
        out[q] = _unit(env * np.cos(2 * np.pi * sf * u + phase + q * np.pi / 2), env)
    return out


def grating(X, Y, center, theta, sf, phase, contrast=1.0) -> np.ndarray:
    """uint8 [P, P]: a full-field grating ``127 + 127 contrast cos(2 pi sf u + phase)``,
    ``u`` the distance from ``center`` along ``theta``."""
    u = (X - center[0]) * np.cos(theta) + (Y - center[1]) * np.sin(theta)
    return np.rint(127 + 127 * contrast * np.cos(2 * np.pi * sf * u + phase)).astype(np.uint8)


def annulus(X, Y, center, inner, outer) -> np.ndarray:
    """float64 [P, P]: a Gaussian annulus, ``exp(-r^2/2 outer^2) - exp(-r^2/2 inner^2)``."""
    r2 = (X - center[0]) ** 2 + (Y - center[1]) ** 2
    return np.exp(-r2 / (2 * outer**2)) - np.exp(-r2 / (2 * inner**2))


def dog(X, Y, center, sigma_c, ratio=2.5) -> np.ndarray:
    """float32 [P, P]: a balanced (zero DC) difference of Gaussians, unit norm, centre
    positive."""
    r2 = (X - center[0]) ** 2 + (Y - center[1]) ** 2
    gc = np.exp(-r2 / (2 * sigma_c**2))
    gs = np.exp(-r2 / (2 * (ratio * sigma_c) ** 2))
    g = gc / gc.sum() - gs / gs.sum()
    return (g / max(np.linalg.norm(g), 1e-12)).astype(np.float32)


def direction_kernel(rate_hz: float, tf_hz: float, sign: float) -> np.ndarray:
    """complex64 [K] (oldest first: the last tap weights the current frame) of a direction
    unit: ``g(tau) exp(sign i 2 pi tf tau)``, ``g`` Gaussian at 50 ms (sigma 25 ms), sum of
    ``g`` = 1."""
    K = max(2, int(round(DIRECTION_KERNEL_MS / 1000 * rate_hz)))
    tau = np.arange(K)[::-1] / rate_hz  # s into the past, oldest first
    g = np.exp(-0.5 * ((tau - 0.050) / 0.025) ** 2)
    return (g / g.sum() * np.exp(sign * 2j * np.pi * tf_hz * tau)).astype(np.complex64)


def causal_complex_filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """complex64 [T, M]: ``x`` [T, M] (complex, one trial, oldest first) filtered causally
    by ``kernel`` [M, K] (oldest first; zero before the trial's first bin)."""
    T, M = x.shape
    K = kernel.shape[1]
    pad = np.concatenate([np.zeros((K - 1, M), np.complex64), x.astype(np.complex64)])
    out = np.zeros((T, M), dtype=np.complex64)
    for k in range(K):
        out += kernel[:, k] * pad[k : k + T]
    return out
