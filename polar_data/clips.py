"""Clips: contiguous runs of target bins that a causal model predicts in one pass.

A clip with first target bin ``s`` and length ``L`` covers bins ``s - (window_len - 1)`` ..
``s + L - 1``: the window_len - 1 bins of history, then L targets, every target's window
valid. Clips are cut inside maximal runs of valid window ends (so a clip never holds an
eye-tracking dropout or a trial edge), tiled left to right; the last clip of a run is
right-aligned to the run's end, and the targets it shares with the previous clip are not
"owned" by it, so every valid target bin is owned by exactly one clip. Runs shorter than
``clip_len`` targets give no clip (their windows are still in the window index).
"""

from __future__ import annotations

import numpy as np

from .filters import segments


def cut_clips(valid_ends: np.ndarray, window_len: int, clip_len: int) -> np.ndarray:
    """int64 [C, 2]: (first target bin, index of the first owned target within the clip).

    ``valid_ends``: bool [T], True where the window ending at that bin is valid (and in the
    split being cut). Owned targets of a clip are ``first + own_from .. first + clip_len - 1``.
    """
    del window_len  # validity of every target's window is already in valid_ends
    out = []
    for a, b in segments(valid_ends):
        if b - a < clip_len:
            continue
        starts = list(range(a, b - clip_len + 1, clip_len))
        for s in starts:
            out.append((s, 0))
        last_end = starts[-1] + clip_len
        if last_end < b:
            s = b - clip_len
            out.append((s, last_end - s))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)
