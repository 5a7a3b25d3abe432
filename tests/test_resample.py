import numpy as np
import pytest
from helpers import tiny_session

from polar_data.sessions.resample import resample


def test_counts_conserved_and_no_trial_crossing():
    s = tiny_session(n_trials=3, bins_per_trial=21)  # odd: one trailing bin per trial dropped
    r = resample(s, 2).validate()
    assert r.rate_hz == 120.0 and r.n_bins == 3 * 10
    # every output bin pools two source bins of ONE trial
    for k in range(3):
        src = s.robs[s.trial == k][:20]
        np.testing.assert_array_equal(r.robs[r.trial == k], src.reshape(10, 2, -1).sum(1))
    # total counts conserved except the dropped trailing bins
    dropped = sum(s.robs[s.trial == k][20:].sum() for k in range(3))
    assert r.robs.sum() == s.robs.sum() - dropped
    np.testing.assert_allclose(r.true_rate.sum(), s.true_rate.sum() - 3 * 4 * 0.5)


def test_validity_is_all_of_group_and_gaze_is_mean():
    s = tiny_session()
    r = resample(s, 2)
    # source invalid bins 5, 6, 7 -> output bins 2 (4,5) and 3 (6,7) invalid
    assert r.eye_valid[:5].tolist() == [True, True, False, False, True]
    np.testing.assert_allclose(r.eyepos[0], s.eyepos[0:2].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(r.stim[1], s.stim[2])  # first frame of the group
    assert r.t[1] == s.t[2]
    assert not r.unit_valid[: s.n_bins // 4, 0].any()


def test_pooling_across_trial_edge_is_impossible():
    # trials of 3 bins with factor 2: bin 2 of each trial must be dropped, never paired with
    # the next trial's first bin
    s = tiny_session(n_trials=4, bins_per_trial=3)
    r = resample(s, 2)
    assert r.n_bins == 4
    np.testing.assert_array_equal(r.trial, [0, 1, 2, 3])


def test_bad_factor():
    with pytest.raises(ValueError, match="positive integer"):
        resample(tiny_session(), 0)
