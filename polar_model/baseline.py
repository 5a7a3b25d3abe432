"""ResNet + ConvGRU baseline: per-session adapter, causal temporal front end, small 3-D
ResNet, eye-movement modulator, ConvGRU, Gaussian readout of each step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polar_model.base import EncodingModel, ModelOutput
from polar_model.config import BaselineConfig
from polar_model.gaze import V_SCALE, kinematics
from polar_model.readout import MultiLevelGaussianReadout
from polar_model.shifter import Shifter, translation
from polar_model.spec import DataSpec


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only on the past side of time (and 'same' in space)."""

    def __init__(self, cin, cout, kernel, stride=(1, 1, 1)):
        super().__init__(cin, cout, kernel, stride=stride)
        kt, kh, kw = self.kernel_size
        self.pad = (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self.pad))


class FrameNorm(nn.GroupNorm):
    """GroupNorm of each time step separately (normalising over time would leak the future)."""

    def forward(self, x):  # [B, C, T, H, W]
        B, C, T, H, W = x.shape
        y = super().forward(x.transpose(1, 2).reshape(B * T, C, H, W))
        return y.view(B, T, C, H, W).transpose(1, 2)


class ResBlock3d(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1 = CausalConv3d(ch, ch, (3, 3, 3))
        self.c2 = CausalConv3d(ch, ch, (3, 3, 3))
        self.n1, self.n2 = FrameNorm(4, ch), FrameNorm(4, ch)

    def forward(self, x):
        return F.gelu(x + self.n2(self.c2(F.gelu(self.n1(self.c1(x))))))


class ConvGRUCell(nn.Module):
    def __init__(self, cin: int, hidden: int, k: int):
        super().__init__()
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, k, padding=k // 2)
        self.cand = nn.Conv2d(cin + hidden, hidden, k, padding=k // 2)

    def forward(self, x, h):
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * n


class ResNetConvGRU(EncodingModel):
    """The lab's current best, at CPU-friendly resolution (frames downsampled 4x in space by
    the ResNet). Causal in time everywhere; the readout reads the GRU state at every output
    step. With ``shifter`` (:mod:`polar_model.shifter`) the learned calibration error joins
    the per-session adapter's translation: one ``grid_sample`` per frame moves its content
    by the shift (edges by border padding then; without the shifter, zeros as before)."""

    def __init__(self, cfg: BaselineConfig, spec: DataSpec):
        super().__init__(spec)
        self.cfg = cfg
        n_sess = len(spec.n_units)
        eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.adapter = nn.Parameter(eye.repeat(n_sess, 1, 1))  # per-session affine
        c0, (c1, c2) = cfg.front_channels, cfg.res_channels
        self.front = CausalConv3d(1, c0, (cfg.temporal_kernel, 1, 1))
        self.stem = CausalConv3d(c0, c1, (3, 5, 5), stride=(1, 2, 2))
        self.block1 = ResBlock3d(c1)
        self.down = CausalConv3d(c1, c2, (3, 3, 3), stride=(1, 2, 2))
        self.block2 = ResBlock3d(c2)
        self.modulator = nn.Sequential(nn.Linear(5, 32), nn.GELU(), nn.Linear(32, cfg.beh_emb_dim))
        self.gru = ConvGRUCell(c2 + cfg.beh_emb_dim, cfg.gru_hidden, cfg.gru_kernel)
        self.readouts = nn.ModuleList(
            MultiLevelGaussianReadout(n, 1, cfg.gru_hidden, r, cfg.readout_sigma,
                                      cfg.output_link, cfg.readout_weight_std,
                                cfg.readout_sample_positions)
            for n, r in zip(spec.n_units, spec.mean_rates))
        self.shifter = (Shifter(n_sess, cfg.shifter_hidden, cfg.shifter_drift, spec.rate_hz)
                        if cfg.shifter else None)

    def forward(self, stim, eyepos, session: int, last_only: bool = False,
                end: torch.Tensor | None = None) -> ModelOutput:
        """``end [B]``: each sample's last session bin; read only by ``shifter_drift``."""
        S = self.check(stim, eyepos, session)
        B, _, _, H, W = stim.shape
        frames = stim[:, 0].reshape(B * S, 1, H, W).float()
        theta = self.adapter[session].expand(B * S, 2, 3)
        penalty, padding = None, "zeros"
        if self.shifter is not None:
            with torch.autocast(stim.device.type, enabled=False):  # gaze: float32 always
                shift = self.shifter(eyepos.float(), session, end)  # [B, S, 2] deg
                penalty = self.shifter.penalty(shift, session, self.cfg.shifter_penalty,
                                               self.cfg.shifter_centre_penalty)
            move = translation(shift.reshape(B * S, 2), self.spec.ppd, (H, W))
            theta = torch.cat([theta[..., :2], theta[..., 2:] + move[..., 2:]], -1)
            padding = "border"
        grid = F.affine_grid(theta, frames.shape, align_corners=False)
        x = F.grid_sample(frames, grid, padding_mode=padding,
                          align_corners=False).view(B, S, H, W)[:, None]
        x = self.block2(F.gelu(self.down(self.block1(F.gelu(self.stem(self.front(x)))))))
        with torch.autocast(stim.device.type, enabled=False):  # gaze: float32 always
            v, _ = kinematics(eyepos.float(), self.dt)
            speed = v.norm(dim=-1, keepdim=True)
            beh = self.modulator(torch.cat([v / V_SCALE, speed / V_SCALE,
                                            eyepos.float() / 10.0], -1))  # [B, S, E]
        h = torch.zeros(B, self.cfg.gru_hidden, *x.shape[-2:], device=x.device)
        first = S - 1 if last_only else self.window_len - 1
        states = []
        for t in range(S):
            e = beh[:, t, :, None, None].expand(-1, -1, *x.shape[-2:])
            h = self.gru(torch.cat([x[:, :, t], e], 1), h)
            if t >= first:
                states.append(h)
        feats = torch.stack(states, 1)  # [B, L, hidden, h, w]
        return ModelOutput(self.readouts[session]([feats]), None, penalty)
