"""Batch layout shared by every loader (and expected by every model).

One batch holds windows or clips of **one session** (its readout is per session; unit counts
differ between sessions), so no padding is needed. Time is oldest first: index -1 of a window
is the current bin.

Window mode (``W = window_len``)::

    stim      float32 [B, 1, W, H, W']   pixel-normalised: (x - mean) / std of the store
    behavior  float32 [B, W, 2]          raw gaze, degrees, x right / y up
    robs      float32 [B, N]             counts at the last bin
    dfs       float32 [B, N]             unit mask at the last bin (loss weight)
    session   int64   [B]                index into StoreInfo.sessions (all equal)
    end       int64   [B]                bin index of the last bin in the session
    true_rate float32 [B, N]             demo stores only

Clip mode (``L = clip_len``, ``S = L + W - 1``)::

    stim [B, 1, S, H, W'], behavior [B, S, 2], robs [B, L, N], dfs [B, L, N],
    session [B], end [B] (bin of the clip's last real target), true_rate [B, L, N]

A clip with fewer than ``L`` targets (the end of a run of valid bins) is padded at the end:
the last frame and gaze repeated, counts 0, ``dfs`` False. Padding lies in the future of
every real target, so a causal model's outputs for the real targets are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch


def normalize(stim: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 frames -> float32 (x - mean) / std."""
    out = stim.astype(np.float32)
    out -= mean
    out *= 1.0 / std
    return out


def collate(items: list[dict], mean: float, std: float) -> dict[str, torch.Tensor]:
    """Stack per-sample dicts (``stim`` uint8 [S, H, W], ``eyepos`` [S, 2], ``robs``, ``dfs``,
    ``session``, ``end``, optional ``true_rate``) into the batch layout above."""
    sessions = {it["session"] for it in items}
    if len(sessions) != 1:
        raise ValueError(f"a batch must hold one session, got {sorted(sessions)}")
    stim = normalize(np.stack([it["stim"] for it in items]), mean, std)
    batch = {
        "stim": torch.from_numpy(stim).unsqueeze(1),
        "behavior": torch.from_numpy(np.stack([it["eyepos"] for it in items]).astype(np.float32)),
        "robs": torch.from_numpy(np.stack([it["robs"] for it in items]).astype(np.float32)),
        "dfs": torch.from_numpy(np.stack([it["dfs"] for it in items]).astype(np.float32)),
        "session": torch.full((len(items),), items[0]["session"], dtype=torch.int64),
        "end": torch.tensor([it["end"] for it in items], dtype=torch.int64),
    }
    if all("true_rate" in it for it in items):
        batch["true_rate"] = torch.from_numpy(
            np.stack([it["true_rate"] for it in items]).astype(np.float32))
    return batch


def windows_from_clip(clip: dict, window_len: int) -> list[dict]:
    """Cut the window-mode samples out of one decoded clip: one per owned target whose unit
    mask is not all False. Windows are views of the clip's arrays (no copy)."""
    meta = clip["meta"]
    out = []
    for k in range(meta["n_targets"]):
        dfs = clip["dfs"][k]
        if not dfs.any():
            continue
        item = {
            "stim": clip["stim"][k : k + window_len],
            "eyepos": clip["eyepos"][k : k + window_len],
            "robs": clip["robs"][k],
            "dfs": dfs,
            "session": meta["session_index"],
            "end": meta["start"] + k,
        }
        if "true_rate" in clip:
            item["true_rate"] = clip["true_rate"][k]
        out.append(item)
    return out


def pad_clip(item: dict, clip_len: int) -> dict:
    """Pad a clip-mode sample with fewer than ``clip_len`` targets at its end (see above)."""
    short = clip_len - len(item["robs"])
    if short <= 0:
        return item
    edge = {"stim": "edge", "eyepos": "edge"}
    out = dict(item)
    for k in ("stim", "eyepos", "robs", "dfs", "true_rate"):
        if k in item:
            a = item[k]
            width = [(0, short)] + [(0, 0)] * (a.ndim - 1)
            out[k] = np.pad(a, width, mode=edge.get(k, "constant"))
    return out


def clip_items(clip: dict, clip_len: int | None = None) -> list[dict]:
    """A decoded clip as clip-mode samples of ``clip_len`` targets (default: the store's),
    each with its own ``window_len - 1`` bins of history, the last one padded."""
    meta = clip["meta"]
    L = clip_len or meta["clip_len"]
    n, h = meta["n_targets"], meta["window_len"] - 1
    out = []
    for a in range(0, n, L):
        b = min(a + L, n)
        item = {"stim": clip["stim"][a : b + h], "eyepos": clip["eyepos"][a : b + h],
                "robs": clip["robs"][a:b], "dfs": clip["dfs"][a:b],
                "session": meta["session_index"], "end": meta["start"] + b - 1}
        if "true_rate" in clip:
            item["true_rate"] = clip["true_rate"][a:b]
        out.append(pad_clip(item, L))
    return out
