"""A trained model anyone can use: ``polar_model.load(ckpt).predict(stim, eyepos, session)``.

The checkpoint carries everything prediction needs, each fact once: the module's spec holds
the bin rate, window length, crop size and session names; ``checkpoint["data_facts"]`` (the
trainer writes :func:`.store_facts.checkpoint_facts`) the store's pixel statistics and each
session's recording unit ids; so no store or loader is needed.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from polar_data.loaders.batches import normalise_stim
from polar_data.sessions.validity import valid_window_ends
from polar_model.training.checkpoints import (
    DATA_FACTS,
    load_module,
    read_checkpoint,
    saved_facts,
)
from polar_model.training.store_facts import checkpoint_facts


class Predictor:
    """A trained encoding model in eval mode with the facts of the data it was trained on.

    Attributes: ``sessions`` (names), ``rate_hz`` (bins per second), ``window_len`` (bins of
    history per prediction, the current bin included), ``pixel_mean`` / ``pixel_std``,
    ``frame_hw`` (crop size in pixels), ``module`` (the Lightning module).
    """

    def __init__(self, module, facts: dict, device: str | torch.device = "cpu"):
        """``facts``: the checkpoint's data facts (pixel statistics, unit ids); the rest
        comes from ``module.spec``."""
        self.module = module.to(device).eval()
        self.device = torch.device(device)
        spec = module.spec
        self.sessions = tuple(spec.session_names)
        self.rate_hz = float(spec.rate_hz)
        self.window_len = int(spec.window_len)
        self.pixel_mean = float(facts["pixel_mean"])
        self.pixel_std = float(facts["pixel_std"])
        self.frame_hw = tuple(spec.frame_hw)
        self._unit_ids = {k: np.asarray(v, dtype=np.int64) for k, v in facts["unit_ids"].items()}

    def unit_ids(self, session: str) -> np.ndarray:
        """int64 [N]: the recording's unit ids of ``session``, in output column order."""
        return self._unit_ids[self._check_session(session)]

    def _check_session(self, session: str) -> str:
        if session not in self.sessions:
            raise KeyError(f"unknown session {session!r}; the model knows {list(self.sessions)}")
        return session

    @torch.no_grad()
    def predict(self, stim: np.ndarray, eyepos: np.ndarray, session: str,
                batch_size: int = 256) -> np.ndarray:
        """Expected spike counts per bin, float32 ``[T, N]``.

        ``stim``: uint8 ``[T, H, W]`` gaze-contingent frames, oldest first, at ``rate_hz``;
        ``eyepos``: float32 ``[T, 2]`` gaze in degrees (x right, y up). Bin ``t`` is predicted
        from the window of ``window_len`` bins ending at ``t`` (as the window-mode loader
        does), so rows before the first full window, and rows whose window holds a bin
        without valid (finite) gaze, are NaN: the store's window rule
        (:func:`polar_data.sessions.validity.valid_window_ends`), the input one trial.
        """
        index = self.sessions.index(self._check_session(session))
        stim = np.asarray(stim)
        eyepos = np.asarray(eyepos, dtype=np.float32)
        if stim.dtype != np.uint8 or stim.ndim != 3 or stim.shape[1:] != self.frame_hw:
            raise ValueError(f"stim must be uint8 [T, {self.frame_hw[0]}, {self.frame_hw[1]}], "
                             f"got {stim.dtype} {stim.shape}")
        if eyepos.shape != (len(stim), 2):
            raise ValueError(f"eyepos must be [T, 2] = {(len(stim), 2)}, got {eyepos.shape}")
        W, T = self.window_len, len(stim)
        n_units = len(self._unit_ids[session])
        out = np.full((T, n_units), np.nan, dtype=np.float32)
        finite = np.isfinite(eyepos).all(axis=1)
        ends = np.flatnonzero(valid_window_ends(finite, np.zeros(T, dtype=np.int64), W))
        offsets = np.arange(-W + 1, 1)
        for i in range(0, len(ends), batch_size):
            e = ends[i : i + batch_size]
            rows = e[:, None] + offsets[None, :]
            # uint8 to the device, normalised there as training normalised its batches
            x = normalise_stim(torch.from_numpy(stim[rows]).unsqueeze(1).to(self.device),
                               self.pixel_mean, self.pixel_std)
            eyepos_rows = torch.from_numpy(eyepos[rows]).to(self.device)
            log_rate = self.module.model(x, eyepos_rows, index, last_only=True).log_rate
            out[e] = log_rate[:, -1].exp().float().cpu().numpy()
        return out


class SaveDataFacts(L.Callback):
    """Writes the part of ``facts`` (:func:`.store_facts.data_facts`) that the spec lacks
    (:func:`.store_facts.checkpoint_facts`) into every checkpoint."""

    def __init__(self, facts: dict):
        self.facts = checkpoint_facts(facts)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[DATA_FACTS] = self.facts


def load(ckpt_path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """A ready model from a checkpoint of ``pipelines/train.py`` (eval mode, on ``device``).

    The file is read with ``weights_only=True`` (:func:`.checkpoints.read_checkpoint`): a
    checkpoint carrying anything but tensors and plain data is refused, never run; refused,
    empty or truncated files raise :class:`.checkpoints.CheckpointError` naming the file."""
    ckpt = read_checkpoint(ckpt_path)
    facts = saved_facts(ckpt_path, ckpt)  # CheckpointError naming the file when it lacks them
    return Predictor(load_module(ckpt_path, ckpt), facts, device)
