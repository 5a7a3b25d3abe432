"""JEPA self-supervision on the model's own per-step features."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, o))


class JEPA(nn.Module):
    """Predict the teacher's embedding of step ``t + delta`` from the student's of step t.

    Context = steps ``[0, T - delta)``, targets = steps ``[delta, T)``. Student: projector +
    predictor; teacher: a copy of the projector, no gradients, updated only by
    :meth:`update_teacher` (EMA with decay ``ema``), called by the trainer after each
    optimizer step. Loss = mean ``1 - cos(p, z)`` over all pairs: bounded in [0, 2].
    """

    def __init__(self, in_dim: int, dim: int, delta: int, min_context: int, ema: float):
        super().__init__()
        self.delta, self.min_context, self.ema = delta, min_context, ema
        self.norm = nn.LayerNorm(in_dim)
        self.projector = _mlp(in_dim, 2 * dim, dim)
        self.predictor = _mlp(dim, 2 * dim, dim)
        self.teacher = copy.deepcopy(self.projector)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @property
    def required_len(self) -> int:
        return self.delta + self.min_context

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, T, C] (per-step pooled features, oldest first) -> scalar loss."""
        T = feats.shape[1]
        if T < self.required_len:
            raise ValueError(
                f"JEPA needs sequences of at least jepa_delta + min_context = {self.delta} + "
                f"{self.min_context} = {self.required_len} bins, got {T}"
            )
        x = self.norm(feats)
        pred = self.predictor(self.projector(x[:, : T - self.delta]))
        with torch.no_grad():
            target = self.teacher(x[:, self.delta :].detach())
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()

    @torch.no_grad()
    def update_teacher(self) -> None:
        for pt, ps in zip(self.teacher.parameters(), self.projector.parameters()):
            pt.mul_(self.ema).add_(ps.detach(), alpha=1 - self.ema)
