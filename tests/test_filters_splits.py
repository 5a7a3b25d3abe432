from dataclasses import replace

import numpy as np
from helpers import tiny_session

from polar_data.sessions.clips import cut_clips
from polar_data.sessions.splits import assign_trials
from polar_data.sessions.validity import segments, unit_filter, window_valid


def test_window_validity_at_trial_edges_and_invalid_gaze():
    s = tiny_session(n_trials=3, bins_per_trial=20)  # bins 5..7 eye-invalid (trial 0)
    v = window_valid(s, 4)
    for i in range(s.n_bins):
        lo = i - 3
        expect = (lo >= 0 and (s.trial[lo : i + 1] == s.trial[i]).all()
                  and s.eye_valid[lo : i + 1].all())
        assert v[i] == expect, i
    # first window_len-1 bins of each trial invalid; bins 5..10 invalid (gaze dropout)
    assert not v[20:23].any() and v[23] and not v[5:11].any() and v[11]


def test_window_len_one_equals_eye_validity():
    s = tiny_session()
    np.testing.assert_array_equal(window_valid(s, 1), s.eye_valid)


def test_dfs_combines_window_and_unit_validity():
    s = tiny_session()
    v = window_valid(s, 4)
    dfs = unit_filter(s, v)
    np.testing.assert_array_equal(dfs[:, 1], v)
    np.testing.assert_array_equal(dfs[:, 0], v & s.unit_valid[:, 0])


def test_splits_are_whole_trials_deterministic_and_cover_fractions():
    ids = np.arange(40)
    fr = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = assign_trials(ids, fr, 0, "s1")
    assert a == assign_trials(ids, fr, 0, "s1")
    assert a != assign_trials(ids, fr, 1, "s1")
    counts = {k: sum(v == k for v in a.values()) for k in fr}
    assert counts == {"train": 28, "val": 6, "test": 6}
    small = assign_trials(np.arange(3), fr, 0, "s1")
    assert sorted(small.values()) == ["test", "train", "val"]  # no empty split


def test_clips_tile_each_valid_target_exactly_once():
    mask = np.zeros(200, bool)
    mask[10:80] = True    # 70 targets: clips at 10, 30, 50 and a 10-target one at 70
    mask[100:110] = True  # shorter than clip_len: one short clip
    clips = cut_clips(mask, 20)
    assert clips.tolist() == [[10, 20], [30, 20], [50, 20], [70, 10], [100, 10]]
    covered = np.zeros(200, int)
    for s, n in clips:
        covered[s : s + n] += 1
    np.testing.assert_array_equal(covered, mask.astype(int))
    assert segments(mask) == [(10, 80), (100, 110)]


def test_reversed_time_is_not_a_valid_session_for_windows():
    s = tiny_session()
    r = replace(s, t=s.t[::-1].copy())
    import pytest

    from polar_data.sessions.session import SessionError
    with pytest.raises(SessionError, match="chronological"):
        r.validate()
