"""Where each unit's receptive field lies: correlation maps of its counts with local
quadrature responses, for placing Gaussian readouts before training.

A Gaussian readout learns its position by gradient descent only within reach of its mask:
started at the crop centre, a mask far from its unit's RF stays there. This module finds each
unit's RF from the training data instead, as a spike-triggered map (Chichilnisky 2001;
Touryan et al. 2005 for the energy part):

* the frames go through a fixed Laplacian pyramid and a fixed bank of quadrature (Gabor)
  pairs (:class:`~polar_model.quadrature.QuadratureFilterBank` at its initial values), giving
  per level, orientation and pixel the even and odd responses and the energy
  ``sqrt(even^2 + odd^2)``;
* each is averaged over the lags a V1 response follows its input by (``lags_ms``, default
  25-60 ms, in bins of the store's rate);
* per unit, the correlation of its counts with each of these over its valid training bins;
  the energy map finds complex cells, the quadrature magnitude ``sqrt(r_even^2 + r_odd^2)``
  finds simple cells (their response is linear in the stimulus before rectification);
* the position is the peak of the map (max over orientations) with the largest peak in
  units of that map's own spread (median absolute deviation over pixels), so maps of
  different noise floors compare fairly.
"""

from __future__ import annotations

import torch

from polar_model.pyramid import LaplacianPyramid
from polar_model.quadrature import QuadratureFilterBank


class RFMapper:
    """Accumulates per-unit correlation maps over batches, then gives positions.

    ``frame_hw``: (H, W) pixels; ``rate_hz``: bin rate. Maps are computed on ``n_levels``
    pyramid levels with ``n_orient`` orientations; level-0 maps are kept at every second
    pixel (half the cost; positions are still finer than 0.2 deg on the demo).
    """

    def __init__(self, n_units: int, frame_hw: tuple[int, int], rate_hz: float,
                 n_levels: int = 3, n_orient: int = 8, lags_ms: tuple[float, float] = (25, 60)):
        lo, hi = (max(0, round(ms / 1000 * rate_hz)) for ms in lags_ms)
        self.lags = list(range(lo, max(lo, hi) + 1))
        self.n_units = n_units
        self.pyramid = LaplacianPyramid(n_levels)
        self.banks = [QuadratureFilterBank(n_orient, 9) for _ in range(n_levels)]
        self.n_kinds = 3  # energy, even, odd
        self.sums: list[dict[str, torch.Tensor]] | None = None
        self.shapes: list[tuple[int, int]] = []

    @torch.no_grad()
    def _features(self, stim: torch.Tensor, n_targets: int) -> list[torch.Tensor]:
        """stim ``[B, 1, S, H, W]`` -> per level ``[B * L, 3 * M * h * w]``: each target
        bin's lag-averaged energy, even and odd responses (the last ``L`` bins are targets;
        lags longer than the history before the first target are left out)."""
        B, _, S, H, W = stim.shape
        first = S - n_targets  # bins of history before the first target
        lags = [lag for lag in self.lags if lag <= first] or [first]  # short windows: fewer
        frames = stim[:, 0].reshape(B * S, 1, H, W).float()
        out = []
        lo, hi = lags[0], lags[-1]  # consecutive
        for level, (band, bank) in enumerate(zip(self.pyramid(frames), self.banks)):
            even, odd = bank(band, stride=2 if level == 0 else 1)
            f = torch.stack([torch.hypot(even, odd), even, odd], 1).view(B, S, -1)
            # mean over lags lo..hi of f[t - lag] for targets t = first .. S-1, from running
            # sums C of g = f[first - hi .. S - lo - 1]: target j is C[j + hi - lo] - C[j - 1]
            C = f[:, first - hi : S - lo].cumsum(1)
            lagged = C[:, hi - lo :].clone()
            lagged[:, 1:] -= C[:, : n_targets - 1]
            lagged /= len(lags)
            out.append(lagged.reshape(B * n_targets, -1))
            if len(self.shapes) < len(self.banks):
                self.shapes.append(tuple(even.shape[-2:]))
        return out

    @torch.no_grad()
    def update(self, stim: torch.Tensor, robs: torch.Tensor, dfs: torch.Tensor) -> None:
        """One batch of one session: stim ``[B, 1, S, H, W]`` (normalised frames, oldest
        first), robs and dfs ``[B, L, N]`` for its last ``L`` bins."""
        B, L, N = robs.shape
        if N != self.n_units:
            raise ValueError(f"batch has {N} units, the mapper {self.n_units}")
        m = dfs.reshape(B * L, N).float()
        y = robs.reshape(B * L, N).float() * m
        feats = self._features(stim, L)
        if self.sums is None:
            self.sums = [{"my_x": 0, "m_x": 0, "m_xx": 0, "y": 0, "yy": 0, "m": 0}
                         for _ in feats]
        for s, x in zip(self.sums, feats):
            s["my_x"] = s["my_x"] + y.T @ x
            s["m_x"] = s["m_x"] + m.T @ x
            s["m_xx"] = s["m_xx"] + m.T @ (x * x)
            s["y"] = s["y"] + y.sum(0)
            s["yy"] = s["yy"] + (y * y).sum(0)
            s["m"] = s["m"] + m.sum(0)

    def maps(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Correlation maps of ``level``: energy ``[N, M, h, w]`` and quadrature magnitude
        ``[N, M, h, w]`` (both >= 0 where the unit follows the stimulus)."""
        if self.sums is None:
            raise RuntimeError("RFMapper.maps before any update")
        s = self.sums[level]
        n = s["m"].clamp_min(1.0)[:, None]
        cov = s["my_x"] / n - (s["y"][:, None] / n) * (s["m_x"] / n)
        var_x = (s["m_xx"] / n - (s["m_x"] / n) ** 2).clamp_min(1e-12)
        var_y = (s["yy"] / n[:, 0] - (s["y"] / n[:, 0]) ** 2).clamp_min(1e-12)[:, None]
        r = (cov / (var_x * var_y).sqrt()).view(self.n_units, self.n_kinds, -1,
                                               *self.shapes[level])
        return r[:, 0], torch.sqrt(r[:, 1] ** 2 + r[:, 2] ** 2)

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit: position ``[N, 2]`` (x right, y down, in [-1, 1] over the crop, the
        readouts' coordinates) and the peak's height in units of its map's spread ``[N]``
        (below ~5 the peak is hard to tell from noise)."""
        best = torch.full((self.n_units,), -float("inf"))
        pos = torch.zeros(self.n_units, 2)
        for level, (h, w) in enumerate(self.shapes):
            for r in self.maps(level):
                peak_map = r.amax(1).flatten(1)                       # [N, h * w]
                med = peak_map.median(1, keepdim=True).values
                spread = 1.4826 * (peak_map - med).abs().median(1).values.clamp_min(1e-9)
                height, where = peak_map.max(1)
                z = (height - med[:, 0]) / spread
                ys = torch.linspace(-1, 1, h)[where // w]
                xs = torch.linspace(-1, 1, w)[where % w]
                better = z > best
                best = torch.where(better, z, best)
                pos[better] = torch.stack([xs, ys], 1)[better]
        return pos, best
