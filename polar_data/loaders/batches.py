"""The batch layout: one typed definition that every loader produces and the trainer,
evaluation and prediction consume (:class:`Batch`, built by :func:`collate` from
:class:`Sample` items made by :func:`sample`). The bytes and names on disk are the store's
(``polar_data.store.zarr_groups``, ``polar_data.store.shards``); this is what crosses from loader
workers to the training process.

Frames stay **uint8** (the stored pixel values) up to the training process: a float32 batch
is 4x the bytes to move between processes (and over PCIe). :func:`normalise_stim` - the one
place the pixel normalisation ``(x - mean) / std`` is done - turns ``stim`` into the float32
frames a model takes, on whatever device the batch is on, once the batch has arrived
(``EncodingModule.on_after_batch_transfer``, ``evaluation.predict_split``, readout placement,
the predictor).

One batch holds windows or clips of **one session** (its readout is per session; unit counts
differ between sessions), so no padding is needed. Time is oldest first: index -1 of a window
is the current bin.

Window mode (``W = window_len``)::

    stim      uint8   [B, 1, W, H, W']   stored pixel values (normalise_stim: float32,
                                         (x - mean) / std of the store)
    eyepos    float32 [B, W, 2]          raw gaze, degrees, x right / y up
    robs      float32 [B, N]             counts at the last bin
    dfs       float32 [B, N]             unit mask at the last bin (loss weight)
    session   int64   [B]                index into StoreInfo.sessions (all equal)
    end       int64   [B]                bin index of the last bin in the session
    true_rate float32 [B, N]             demo stores only: expected counts per bin

Clip mode (``L = clip_len``, ``S = L + W - 1``)::

    stim [B, 1, S, H, W'], eyepos [B, S, 2], robs [B, L, N], dfs [B, L, N],
    session [B], end [B] (bin of the clip's last real target), true_rate [B, L, N]

A clip with fewer than ``L`` targets (the end of a run of valid bins) is padded at the end:
the last frame and gaze repeated, counts 0, ``dfs`` False. Padding lies in the future of
every real target, so a causal model's outputs for the real targets are unchanged.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np
import torch

# the keys of a sample and of a batch
STIM, ROBS, DFS = "stim", "robs", "dfs"
SESSION, END, TRUE_RATE, EYEPOS = "session", "end", "true_rate", "eyepos"


class Batch(TypedDict):
    """A batch as the module docstring lays it out (shapes, dtypes, units there)."""

    stim: torch.Tensor        # uint8 [B, 1, S, H, W'] frames (S = W window mode); float32
    #                           normalised once normalise_stim has run (what a model takes)
    behavior: torch.Tensor    # float32 [B, S, 2] gaze in degrees, x right / y up
    robs: torch.Tensor        # float32 [B, N] (window) or [B, L, N] (clip): counts
    dfs: torch.Tensor         # float32, as robs: unit mask (loss weight)
    session: torch.Tensor     # int64 [B]: one session index, repeated
    end: torch.Tensor         # int64 [B]: bin of the last (real) target
    true_rate: NotRequired[torch.Tensor]  # float32, as robs: demo stores only


class Sample(TypedDict):
    """One window or clip before collation (numpy, as read from a store)."""

    stim: np.ndarray          # uint8 [S, H, W'] frames, oldest first
    eyepos: np.ndarray        # float32 [S, 2] gaze in degrees
    robs: np.ndarray          # [N] (window) or [L, N] (clip): counts
    dfs: np.ndarray           # bool, as robs
    session: int
    end: int
    true_rate: NotRequired[np.ndarray]


def sample(stim, eyepos, robs, dfs, session: int, end: int, true_rate=None) -> Sample:
    """A :class:`Sample` (``true_rate`` only when given): how every loader makes one."""
    item: Sample = {STIM: stim, EYEPOS: eyepos, ROBS: robs, DFS: dfs, SESSION: session,
                    END: end}
    if true_rate is not None:
        item[TRUE_RATE] = true_rate
    return item


def session_of(batch: Batch) -> int:
    """The session index of a batch (one per batch)."""
    return int(batch[SESSION][0])


def as_clip(batch: Batch, key: str) -> torch.Tensor:
    """``robs``, ``dfs`` or ``true_rate`` as ``[B, L, N]`` in both modes (window: L = 1)."""
    x = batch[key]
    return x[:, None] if x.ndim == 2 else x


def normalise_stim(x: Batch | torch.Tensor, mean: float, std: float) -> Batch | torch.Tensor:
    """The pixel normalisation, the only one: uint8 frames -> float32 ``(x - mean) / std``
    (computed as ``(x - float32(mean)) * float32(1 / std)``, each step rounded to float32),
    on the tensor's own device (normalise after moving a batch to the GPU, so uint8 crosses
    PCIe). ``x``: a tensor of frames, or a batch (a new dict with ``stim`` replaced, other
    entries shared). Raises TypeError on frames that are not uint8 (already normalised)."""
    if isinstance(x, dict):
        return {**x, STIM: normalise_stim(x[STIM], mean, std)}
    if x.dtype != torch.uint8:
        raise TypeError(f"normalise_stim takes uint8 frames, got {x.dtype} (normalised "
                        "twice?)")
    shift, scale = np.float32(mean), np.float32(1.0 / std)
    if x.device.type == "cpu":  # numpy: one thread, ~5x faster than torch's CPU kernels here
        out = x.numpy().astype(np.float32)
        out -= shift
        out *= scale
        return torch.from_numpy(out)
    return x.to(torch.float32).sub_(float(shift)).mul_(float(scale))


def collate(items: list[Sample]) -> Batch:
    """Stack :class:`Sample` items of one session into a :class:`Batch` (the one place a
    batch is made); frames stay uint8 (see :func:`normalise_stim`)."""
    sessions = {it[SESSION] for it in items}
    if len(sessions) != 1:
        raise ValueError(f"a batch must hold one session, got {sorted(sessions)}")

    def stack(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([it[key] for it in items]).astype(np.float32))

    batch: Batch = {
        STIM: torch.from_numpy(np.stack([it[STIM] for it in items])).unsqueeze(1),
        EYEPOS: stack(EYEPOS), ROBS: stack(ROBS), DFS: stack(DFS),
        SESSION: torch.full((len(items),), items[0][SESSION], dtype=torch.int64),
        END: torch.tensor([it[END] for it in items], dtype=torch.int64),
    }
    if all(TRUE_RATE in it for it in items):
        batch[TRUE_RATE] = stack(TRUE_RATE)
    return batch


def windows_from_clip(clip: dict, window_len: int) -> list[Sample]:
    """Cut the window-mode samples out of one decoded clip: one per owned target whose unit
    mask is not all False. Windows are views of the clip's arrays (no copy)."""
    meta = clip["meta"]
    out = []
    for k in range(meta["n_targets"]):
        dfs = clip["dfs"][k]
        if not dfs.any():
            continue
        out.append(sample(clip[STIM][k : k + window_len], clip[EYEPOS][k : k + window_len],
                          clip[ROBS][k], dfs, meta["session_index"], meta["start"] + k,
                          clip[TRUE_RATE][k] if TRUE_RATE in clip else None))
    return out


def pad_clip(item: Sample, sample_len: int) -> Sample:
    """Pad a clip-mode sample with fewer than ``sample_len`` targets at its end (see above)."""
    short = sample_len - len(item["robs"])
    if short <= 0:
        return item
    edge = {STIM: "edge", EYEPOS: "edge"}
    out = dict(item)
    for k in (STIM, EYEPOS, ROBS, DFS, TRUE_RATE):
        if k in item:
            a = item[k]
            width = [(0, short)] + [(0, 0)] * (a.ndim - 1)
            out[k] = np.pad(a, width, mode=edge.get(k, "constant"))
    return out


def clip_items(clip: dict, sample_len: int | None = None) -> list[Sample]:
    """A decoded clip as clip-mode samples of ``sample_len`` targets (default: the whole clip),
    each with its own ``window_len - 1`` bins of history, the last one padded."""
    meta = clip["meta"]
    L = sample_len or meta["clip_len"]
    n, h = meta["n_targets"], meta["window_len"] - 1
    out = []
    for a in range(0, n, L):
        b = min(a + L, n)
        item = sample(clip[STIM][a : b + h], clip[EYEPOS][a : b + h], clip[ROBS][a:b],
                      clip[DFS][a:b], meta["session_index"], meta["start"] + b - 1,
                      clip[TRUE_RATE][a:b] if TRUE_RATE in clip else None)
        out.append(pad_clip(item, L))
    return out
