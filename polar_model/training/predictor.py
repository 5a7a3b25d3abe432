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
from polar_data.sessions.clips import cut_clips
from polar_data.sessions.validity import valid_window_ends
from polar_model.training.checkpoints import (
    DATA_FACTS,
    load_module,
    read_checkpoint,
    saved_facts,
)
from polar_model.training.store_facts import checkpoint_facts

HISTORY = ("clip", "window")  # what a prediction's recurrent state has seen (Predictor.predict)
CLIP_LEN = 256       # targets per clip: the store's default clip_len, what evaluate.py runs
BATCH_FRAMES = 512   # frames per forward pass: bounds memory (~0.55 GB at 51 x 51)


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

    def predictable(self, eyepos: np.ndarray, trial: np.ndarray | None = None) -> np.ndarray:
        """bool ``[T]``: the bins :meth:`predict` predicts, the store's window rule
        (:func:`polar_data.sessions.validity.valid_window_ends`): the ``window_len`` bins
        ending there lie in one trial (``trial`` int ``[T]`` ids; None: the input is one
        trial) and all have finite gaze (``eyepos`` ``[T, 2]`` degrees)."""
        eyepos = np.asarray(eyepos)
        trial = np.zeros(len(eyepos), np.int64) if trial is None else np.asarray(trial)
        if trial.shape != (len(eyepos),):
            raise ValueError(f"trial must be [T] = ({len(eyepos)},), got {trial.shape}")
        return valid_window_ends(np.isfinite(eyepos).all(axis=1), trial, self.window_len)

    def clips(self, eyepos: np.ndarray, trial: np.ndarray | None = None,
              history: str = "clip", clip_len: int = CLIP_LEN) -> np.ndarray:
        """int64 ``[C, 2]`` (first target bin, number of targets): the clips :meth:`predict`
        runs, each one forward over its targets and the ``window_len - 1`` bins before the
        first. ``history="clip"``: every run of :meth:`predictable` bins, within one trial,
        tiled left to right in clips of ``clip_len`` targets
        (:func:`polar_data.sessions.clips.cut_clips`, as the store cuts its clips; the last
        clip of a run holds the rest); ``"window"``: one clip per predictable bin."""
        if history not in HISTORY:
            raise ValueError(f"history must be one of {HISTORY}, got {history!r}")
        if isinstance(clip_len, bool) or not isinstance(clip_len, int | np.integer) \
                or clip_len < 1:
            raise ValueError(f"clip_len must be an integer >= 1, got {clip_len!r}")
        ends = self.predictable(eyepos, trial)
        n = 1 if history == "window" else int(clip_len)
        if trial is None or self.window_len > 1:
            # a valid end is never a trial's first bin (window_len > 1): runs stay in a trial
            return cut_clips(ends, n)
        trial = np.asarray(trial)
        starts = np.flatnonzero(np.diff(trial) != 0) + 1
        parts = [cut_clips(ends[a:b], n) + [a, 0] for a, b in
                 zip(np.r_[0, starts], np.r_[starts, len(trial)])]
        return np.concatenate(parts).astype(np.int64)

    @torch.no_grad()
    def predict(self, stim: np.ndarray, eyepos: np.ndarray, session: str,
                trial: np.ndarray | None = None, *, history: str = "clip",
                clip_len: int = CLIP_LEN, batch_frames: int = BATCH_FRAMES,
                start_bin: int = 0, progress: bool | None = None) -> np.ndarray:
        """Expected spike counts per bin, float32 ``[T, N]`` (NaN where not predicted).

        ``stim``: uint8 ``[T, H, W]`` gaze-contingent frames, oldest first, at ``rate_hz``
        (a numpy array or ``np.memmap``: only each batch's rows are read); ``eyepos``:
        float32 ``[T, 2]`` gaze in degrees (x right, y up); ``trial``: int ``[T]`` trial ids
        (None: the input is one trial). Bin ``t`` is predicted where the window of
        ``window_len`` bins ending at ``t`` lies in one trial with finite gaze everywhere
        (:meth:`predictable`, the store's window rule); other rows are NaN.

        ``history`` says what the recurrent state has seen (a static model, or
        ``window_len`` 1 without recurrence, gives the same rates either way):

        * ``"clip"`` (the default): the model's clip mode, as training and ``evaluate.py``
          run it: each run of predictable bins is cut into clips of ``clip_len`` targets
          (:meth:`clips`), the state starts ``window_len - 1`` bins before a clip's first
          target and runs through the clip, so target ``k`` of a clip has seen
          ``window_len - 1 + k`` bins of history. With the store's ``clip_len`` (256 by
          default) these are the rates ``evaluate.py`` scores. Each frame goes through the
          model about once.
        * ``"window"``: every bin from its own window of ``window_len`` bins (the state
          restarts at each window, as the window-mode loader feeds the model):
          ``window_len`` times the work.

        ``batch_frames``: frames per forward pass (whole clips; at least one clip), which
        bounds memory: the input is never made float32 at once. ``start_bin``: the session
        bin of the input's row 0 (a shifter's drift, ``shifter_drift``, reads the session's
        clock; 0: the input starts the session). ``progress``: a tqdm bar (None: when more
        than 10,000 bins are predicted).
        """
        from tqdm.auto import tqdm

        index = self.sessions.index(self._check_session(session))
        stim = stim if isinstance(stim, np.ndarray) else np.asarray(stim)
        eyepos = np.asarray(eyepos, dtype=np.float32)
        if stim.dtype != np.uint8 or stim.ndim != 3 or stim.shape[1:] != self.frame_hw:
            raise ValueError(f"stim must be uint8 [T, {self.frame_hw[0]}, {self.frame_hw[1]}], "
                             f"got {stim.dtype} {stim.shape}")
        if eyepos.shape != (len(stim), 2):
            raise ValueError(f"eyepos must be [T, 2] = {(len(stim), 2)}, got {eyepos.shape}")
        if isinstance(batch_frames, bool) or not isinstance(batch_frames, int | np.integer) \
                or batch_frames < 1:
            raise ValueError(f"batch_frames must be an integer >= 1, got {batch_frames!r}")
        if isinstance(start_bin, bool) or not isinstance(start_bin, int | np.integer) \
                or start_bin < 0:
            raise ValueError(f"start_bin must be an integer >= 0, got {start_bin!r}")
        clips = self.clips(eyepos, trial, history, clip_len)
        out = np.full((len(stim), len(self._unit_ids[session])), np.nan, dtype=np.float32)
        clips = clips[np.argsort(-clips[:, 1], kind="stable")]  # longest first: little padding
        n_bins = int(clips[:, 1].sum())
        history_bins = self.window_len - 1
        with tqdm(total=n_bins, unit="bin", desc=f"predict {session}",
                  disable=not (n_bins > 10_000 if progress is None else progress)) as bar:
            i = 0
            while i < len(clips):
                steps = int(clips[i, 1]) + history_bins  # the longest clip of this batch
                batch = clips[i : i + max(1, batch_frames // steps)]
                i += len(batch)
                first, n = batch[:, 0], batch[:, 1]
                # each clip's bins, padded at its end with its last bin (the future of every
                # target: a causal model's outputs for them are unchanged)
                rows = first[:, None] - history_bins + np.arange(steps)[None, :]
                rows = np.minimum(rows, (first + n - 1)[:, None])
                # uint8 to the device, normalised there as training normalised its batches
                x = normalise_stim(torch.from_numpy(stim[rows]).unsqueeze(1).to(self.device),
                                   self.pixel_mean, self.pixel_std)
                # end: each sample's last real target in the session, as a loader batch's
                end = torch.from_numpy(start_bin + first + n - 1).to(self.device)
                log_rate = self.module.model(x, torch.from_numpy(eyepos[rows]).to(self.device),
                                             index, end=end).log_rate  # [B, L, N]
                real = np.arange(steps - history_bins)[None, :] < n[:, None]
                bins = first[:, None] + np.arange(steps - history_bins)[None, :]
                out[bins[real]] = log_rate.exp().float().cpu().numpy()[real]
                bar.update(int(n.sum()))
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
