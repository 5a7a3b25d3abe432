"""Clips: contiguous runs of target bins that a causal model predicts in one pass.

A clip with first target bin ``s`` and ``n`` targets covers bins ``s - (window_len - 1)`` ..
``s + n - 1``: the window_len - 1 bins of history, then the targets, every target's window
valid. Clips are cut inside maximal runs of valid window ends (so a clip never holds an
eye-tracking dropout or a trial edge), tiled left to right with ``clip_len`` targets; the
last clip of a run holds the remainder (``n < clip_len``). Every valid target bin belongs to
exactly one clip and no frame is stored twice except the history bins. Loaders pad short
clips at the end (future bins: a causal model's outputs for real targets are unaffected).
"""

from __future__ import annotations

import numpy as np

from polar_data.sessions.validity import segments


def cut_clips(valid_ends: np.ndarray, clip_len: int) -> np.ndarray:
    """int64 [C, 2]: (first target bin, number of targets) of every clip.

    ``valid_ends``: bool [T], True where the window ending at that bin is valid (and in the
    split being cut).
    """
    out = [(s, min(clip_len, b - s)) for a, b in segments(valid_ends)
           for s in range(a, b, clip_len)]
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)
