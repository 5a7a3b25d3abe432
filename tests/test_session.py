from dataclasses import replace

import numpy as np
import pytest
from helpers import tiny_session

from polar_data.sessions.session import SessionError


def test_tiny_session_is_valid():
    s = tiny_session()
    assert s.validate() is s
    ids, starts, stops = s.trial_bounds()
    assert ids.tolist() == [0, 1, 2] and starts.tolist() == [0, 20, 40]
    assert stops.tolist() == [20, 40, 60]


def _bad(**changes):
    s = tiny_session()
    return replace(s, **{k: (v(s) if callable(v) else v) for k, v in changes.items()})


@pytest.mark.parametrize(
    "changes, key, words",
    [
        ({"eyepos": lambda s: s.eyepos[:-1]}, "eyepos", "length"),
        ({"robs": lambda s: s.robs[:-2]}, "robs", "length"),
        ({"stim": lambda s: s.stim.astype(np.float32)}, "stim", "dtype"),
        ({"eyepos": lambda s: s.eyepos.astype(np.float16)}, "eyepos", "dtype"),
        ({"eyepos": lambda s: s.eyepos[:, :1]}, "eyepos", "[T, 2]"),
        ({"stim": lambda s: s.stim[:, 0]}, "stim", "rank"),
        ({"t": lambda s: s.t[::-1].copy()}, "t", "chronological"),
        ({"t": lambda s: np.where(np.arange(len(s.t)) == 3, s.t[2], s.t)}, "t", "increasing"),
        ({"eyepos": lambda s: np.where(np.arange(len(s.t))[:, None] == 30, np.nan, s.eyepos)
          .astype(np.float32)}, "eyepos", "bin 30"),
        ({"robs": lambda s: np.where(np.arange(len(s.t))[:, None] == 4, -1, s.robs)},
         "robs", "negative"),
        ({"stim": lambda s: s.stim[:0], "eyepos": lambda s: s.eyepos[:0],
          "eye_valid": lambda s: s.eye_valid[:0], "trial": lambda s: s.trial[:0],
          "t": lambda s: s.t[:0], "robs": lambda s: s.robs[:0],
          "unit_valid": None, "true_rate": None}, "stim", "empty"),
        ({"unit_ids": lambda s: s.unit_ids[:2]}, "unit_ids", "ids"),
        ({"unit_valid": lambda s: s.unit_valid[:, :2]}, "unit_valid", "shape"),
        ({"trial": lambda s: np.where(np.arange(len(s.t)) >= 50, 0, s.trial)}, "trial",
         "contiguous"),
        ({"rate_hz": 0.0}, "rate_hz", "positive"),
    ],
)
def test_validate_rejects(changes, key, words):
    with pytest.raises(SessionError) as err:
        _bad(**changes).validate()
    msg = str(err.value)
    assert "'tiny'" in msg and f"{key}:" in msg and words in msg, msg
