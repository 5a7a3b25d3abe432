"""What every encoding model shares: the input checks and the output type."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from polar_model.spec import DataSpec


@dataclass
class ModelOutput:
    """log_rate: ``[B, L, N]`` log expected counts per bin for bins ``window_len - 1 .. S - 1``
    of the input's S bins (L = S - window_len + 1; with ``last_only`` L = 1); jepa_loss:
    scalar or None; penalty: scalar or None, a regulariser of the model's own (the shifter's
    penalty toward zero shift) that training adds to the loss as it is."""

    log_rate: torch.Tensor
    jepa_loss: torch.Tensor | None = None
    penalty: torch.Tensor | None = None


class EncodingModel(nn.Module):
    """Base class: ``forward(stim [B, 1, S, H, W], eyepos [B, S, 2], session, last_only,
    end)`` (``eyepos``: raw gaze in degrees, x right / y up; ``end [B]``: each sample's last
    bin in its session, or None; only a shifter's drift reads it).

    Inputs are oldest first (index -1 = current bin); the model is causal: the output for
    bin t depends on inputs at bins <= t only. Recurrent state starts at the first input bin.
    """

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.spec = spec
        self.window_len = spec.window_len
        self.dt = 1.0 / spec.rate_hz

    def check(self, stim: torch.Tensor, eyepos: torch.Tensor, session: int) -> int:
        if stim.ndim != 5 or stim.shape[1] != 1:
            raise ValueError(f"stim must be [B, 1, S, H, W], got {tuple(stim.shape)}")
        B, _, S, H, W = stim.shape
        if (H, W) != tuple(self.spec.frame_hw):
            raise ValueError(f"frames are {H}x{W}, the model was built for {self.spec.frame_hw}")
        if eyepos.shape != (B, S, 2):
            raise ValueError(f"eyepos must be [B, S, 2] = {(B, S, 2)}, got "
                             f"{tuple(eyepos.shape)}")
        if S < self.window_len:
            raise ValueError(f"input has {S} bins, fewer than window_len = {self.window_len}")
        if not 0 <= session < len(self.spec.n_units):
            raise ValueError(f"session {session} out of range 0..{len(self.spec.n_units) - 1}")
        return S

    def update_teacher(self) -> None:
        """EMA update of a JEPA teacher (no-op without JEPA); call after optimizer.step()."""
