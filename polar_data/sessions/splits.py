"""Train / val / test assignment by whole trials, so no window ever crosses a split."""

from __future__ import annotations

import numpy as np

from polar_data.schema import SPLITS


def assign_trials(trial_ids: np.ndarray, fractions: dict[str, float], seed: int,
                  session_name: str) -> dict[int, str]:
    """Map every trial id to a split name.

    Trials are shuffled with a generator seeded by ``(seed, session_name)`` and cut in the
    order train, val, test by ``fractions`` (rounded to whole trials, every non-zero split
    getting at least one trial when there are enough trials).
    """
    ids = np.unique(np.asarray(trial_ids))
    name_key = int.from_bytes(session_name.encode()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng([seed, name_key])
    order = ids[rng.permutation(len(ids))]
    wanted = [fractions.get(s, 0.0) for s in SPLITS]
    counts = np.floor(np.array(wanted) * len(ids)).astype(int)
    for k in np.argsort(-np.array(wanted)):  # hand out the rounding remainder
        if counts.sum() >= len(ids):
            break
        counts[k] += 1
    for k in range(len(SPLITS)):  # a requested split should not be empty
        if wanted[k] > 0 and counts[k] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    out, start = {}, 0
    for name, n in zip(SPLITS, counts):
        for tid in order[start : start + n]:
            out[int(tid)] = name
        start += n
    return out
