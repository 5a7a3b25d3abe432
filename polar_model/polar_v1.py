"""Polar-V1: pyramid -> quadrature pairs -> polar -> (gaze-driven) dynamics -> summaries ->
multi-level Gaussian readout, optional JEPA."""

from __future__ import annotations

import torch
from torch import nn

from polar_model.base import EncodingModel, ModelOutput
from polar_model.config import PolarConfig
from polar_model.dynamics import PolarDynamics
from polar_model.gaze import BehaviorEncoder, GazeEncoder, SaccadeGain
from polar_model.jepa import JEPA
from polar_model.pyramid import LaplacianPyramid
from polar_model.quadrature import QuadratureFilterBank
from polar_model.readout import MultiLevelGaussianReadout
from polar_model.shifter import Shifter, shift_frames
from polar_model.spec import DataSpec
from polar_model.temporal_summary import TemporalSummarizer, static_features


class PolarV1(EncodingModel):
    """The six configurations: ``temporal`` recurrent/static x ``use_behavior`` x ``use_jepa``.

    * recurrent: :class:`PolarDynamics` (gaze-driven when ``use_behavior``) + 9 temporal
      summaries per pair; static: the current frame's amplitude, even and odd responses only.
    * Behaviour: raw gaze -> :class:`GazeEncoder` -> :class:`BehaviorEncoder` -> saccade
      gate, retinal velocity, phase gains and offsets for the dynamics; and per session a
      :class:`SaccadeGain` (each unit's saccade-locked log gain, from the gate's onsets).
    * Per level a shared linear map (``mix``) takes the summaries to ``readout_dim``
      channels; each session has its own :class:`MultiLevelGaussianReadout`. Masks sum to
      one, so the map is applied after each unit's Gaussian pooling (the same function as a
      1x1 conv before it, without the conv's cost at full resolution). The summaries are
      pooled by the masks as they are made
      (:class:`TemporalSummarizer`), never kept at full resolution.
    * JEPA (``use_jepa``): on the per-step spatially pooled features (training mode only).
    * Shifter (``shifter``; :mod:`polar_model.shifter`): per session, the eye tracker's
      calibration error learned from the recorded gaze (and with ``shifter_drift`` the bin's
      time); each frame is moved by it before the pyramid, so the model sees the crop at the
      estimated true gaze; its penalty is :attr:`ModelOutput.penalty`.
    """

    def __init__(self, cfg: PolarConfig, spec: DataSpec):
        super().__init__(spec)
        self.cfg = cfg
        n_levels, M = cfg.n_levels, cfg.n_pairs
        self.sizes = LaplacianPyramid.sizes(spec.frame_hw, n_levels)
        if min(self.sizes[-1]) < 2:
            raise ValueError(f"n_levels: {n_levels} levels shrink {spec.frame_hw} frames below "
                             "2 px")
        self.pyramid = LaplacianPyramid(n_levels)
        self.filters = nn.ModuleList(QuadratureFilterBank(M, cfg.filter_size)
                                     for _ in range(n_levels))
        self.recurrent = cfg.temporal == "recurrent"
        n_feat = TemporalSummarizer.n_features if self.recurrent else 3
        if self.recurrent:
            self.dynamics = PolarDynamics(self.dt, cfg.lambda_fix, cfg.lambda_sac,
                                          cfg.autograd_dynamics)
            self.summarizer = TemporalSummarizer()
        if cfg.use_behavior:
            self.gaze = GazeEncoder.from_config(cfg, self.dt, len(spec.n_units))
            self.behavior = BehaviorEncoder(cfg.beh_dim, n_levels, M)
            k = max(1, round(cfg.saccade_kernel_ms / 1000 * spec.rate_hz))
            spacing = round(0.015 * spec.rate_hz)  # 15 ms between basis bumps
            self.saccade_gain = nn.ModuleList(SaccadeGain(n, k, spacing) for n in spec.n_units)
        self.mix = nn.ModuleList(nn.Linear(n_feat * M, cfg.readout_dim)
                                 for _ in range(n_levels))
        self.readouts = nn.ModuleList(
            MultiLevelGaussianReadout(n, n_levels, cfg.readout_dim, r, self.readout_sigmas(),
                                      cfg.output_link, cfg.readout_weight_std,
                                      cfg.readout_sample_positions)
            for n, r in zip(spec.n_units, spec.mean_rates))
        self.shifter = (Shifter(len(spec.n_units), cfg.shifter_hidden, cfg.shifter_drift,
                                spec.rate_hz) if cfg.shifter else None)
        self.jepa = (JEPA(n_levels * n_feat * M, cfg.jepa_dim, cfg.jepa_delta, cfg.min_context,
                          cfg.jepa_ema) if cfg.use_jepa else None)

    def readout_sigmas(self) -> list[float]:
        """Initial mask std per level in the readouts' [-1, 1] units: ``readout_sigma_px``
        pixels of each level (a phase-sensitive response survives pooling only under a mask
        narrower than its wavelength)."""
        return [self.cfg.readout_sigma_px * 2.0 / (max(h, w) - 1) for h, w in self.sizes]

    def pooling_weights(self, session: int, pool: bool) -> list[torch.Tensor]:
        """Per level ``[H_l * W_l, K]``: the columns are the session's readout masks (K = N),
        and with ``pool`` one more uniform column (the spatial mean, for JEPA); one position
        draw for all levels (:meth:`MultiLevelGaussianReadout.positions`)."""
        out = []
        mu = self.readouts[session].positions()
        for level, hw in enumerate(self.sizes):
            w = self.readouts[session].weights(level, hw, mu)
            if pool:
                w = torch.cat([w, w.new_full((w.shape[0], 1), 1.0 / w.shape[0])], 1)
            out.append(w)
        return out

    def level_features(self, stim: torch.Tensor, beh_code: tuple | None, weights: list,
                       first: int = 0, pool: bool = False
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per level: the summaries of steps ``first ..`` pooled by each unit's mask
        ``[B, S - first, n_feat * M, N]``, and with ``pool`` their spatial means at every step
        ``[B, S, n_feat * M]`` (else None); S: steps of ``stim``. ``beh_code``: the
        :class:`BehaviorEncoder`'s (q, v_eff, gamma, rho), or None; ``weights``:
        :meth:`pooling_weights` (the last column the mean with ``pool``)."""
        B, _, S, H, W = stim.shape
        # time first from here on: each step's maps are one contiguous block
        frames = stim[:, 0].transpose(0, 1).reshape(S * B, 1, H, W).float()
        out, means = [], []
        for level, (band, bank) in enumerate(zip(self.pyramid(frames), self.filters)):
            y = bank.responses(band)
            y = y.view(S, B, *y.shape[1:])  # [S, B, 2M, H_l, W_l]
            w = weights[level]
            if not self.recurrent:
                f = static_features(y, w).transpose(0, 1)
                if pool:  # every step, the mean column
                    means.append(f[..., -1])
                f = f[:, first:]
            else:
                drive = ()
                if beh_code is not None:
                    q, v_eff, gamma, rho = beh_code
                    M = self.cfg.n_pairs
                    ppd = self.spec.ppd / 2**level
                    v_pix = torch.stack([v_eff[..., 0], -v_eff[..., 1]], -1) * ppd  # y up
                    sl = slice(level * M, (level + 1) * M)
                    drive = (bank.k(), q, v_pix, gamma[..., sl], rho[..., sl])
                f, early = self._recur(y, w, first, drive, pool)
                if pool:  # steps first .. with the mean column; the earlier ones' means
                    means.append(f[..., -1] if early is None
                                 else torch.cat([early, f[..., -1]], 1))
            out.append(f[..., :-1] if pool else f)
        return out, (means if pool else None)

    def _recur(self, y, weights, first: int, drive: tuple, means: bool = False):
        """One level's polar decomposition, dynamics (driven by ``drive`` = (k, q, v_pix,
        gamma, rho), or none) and temporal summaries, from its quadrature responses ``y``
        ``[T, B, 2M, H, W]`` (time first, even then odd): the summaries of steps ``first ..``
        pooled by ``weights`` ``[B, T - first, 9M, K]``, and with ``means`` (the last column
        of ``weights`` the spatial mean) the spatial means of the earlier steps' summaries
        ``[B, first, 9M]`` (else None)."""
        p_even, p_odd, p_amp, *state = self.dynamics(y, weights, first, means, *drive)
        return self.summarizer(p_amp, p_even, p_odd, state[:4], state[4:])

    def forward(self, stim, eyepos, session: int, last_only: bool = False,
                end: torch.Tensor | None = None) -> ModelOutput:
        """``end [B]``: the session bin of each sample's last step (the batch's ``end``); read
        only by the shifter's drift (``shifter_drift``), which needs it."""
        S = self.check(stim, eyepos, session)
        first = S - 1 if last_only else self.window_len - 1
        penalty = None
        if self.shifter is not None:
            with torch.autocast(stim.device.type, enabled=False):  # gaze: float32 always
                shift = self.shifter(eyepos.float(), session, end)  # [B, S, 2] deg
                penalty = self.shifter.penalty(shift, session, self.cfg.shifter_penalty,
                                               self.cfg.shifter_centre_penalty)
            stim = shift_frames(stim, shift, self.spec.ppd)
        beh_code = None
        if self.cfg.use_behavior:
            with torch.autocast(stim.device.type, enabled=False):  # gaze: float32 always
                beh_code = self.behavior(*self.gaze(eyepos.float(), session))
        pool_means = self.jepa is not None and self.training
        weights = self.pooling_weights(session, pool_means)
        feats, means = self.level_features(stim, beh_code, weights, first, pool_means)
        jepa_loss = None
        if pool_means:
            means = torch.cat(means, dim=-1)  # [B, S, C]
            jepa_loss = self.jepa(means.detach() if self.cfg.jepa_stop_grad else means)
        pooled = [f.transpose(-1, -2) for f in feats]                   # [B, L, N, C]
        log_rate = self.readouts[session].head(pooled, self.mix)        # [B, L, N]
        if beh_code is not None:
            log_rate = log_rate + self.saccade_gain[session](beh_code[0])[:, first:]
        return ModelOutput(log_rate, jepa_loss, penalty)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The front end every output depends on (not the readouts, gains or JEPA heads)."""
        own = ("readouts.", "saccade_gain.", "jepa.")
        return [p for n, p in self.named_parameters()
                if p.requires_grad and not n.startswith(own)]

    def update_teacher(self) -> None:
        if self.jepa is not None:
            self.jepa.update_teacher()
