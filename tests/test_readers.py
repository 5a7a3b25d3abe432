import numpy as np
import pytest
import torch
from helpers import assert_sessions_equal, spike_times_from_counts, tiny_session

from polar_data.demo.dset_writer import write_dset
from polar_data.demo.nwb_writer import write_nwb
from polar_data.readers import (
    UntrustedPickleError,
    read_dset,
    read_nwb,
    read_session,
)
from polar_data.sessions.session import SessionError


def test_dset_round_trip_with_qcmissing(tmp_path):
    s = tiny_session()
    # unit 0 (id 10) invalid for the first half, expressed as a qcmissing interval
    dt = 1 / s.rate_hz
    half = s.n_bins // 2
    qc = {10: [[float(s.t[0]), float(s.t[half - 1] + dt)]]}
    p = write_dset(s, tmp_path / "sess" / "datasets" / "backimage.dset", qcmissing=qc,
                   cids=[10, 11, 12, 13])
    # the YAML's cids index robs columns: write a wide robs so ids 10..13 exist
    from dataclasses import replace

    wide = np.zeros((s.n_bins, 14), np.int32)
    wide[:, 10:] = s.robs
    write_dset(replace(s, robs=wide, unit_ids=np.arange(14), unit_valid=None, true_rate=None),
               p, qcmissing=qc, cids=[10, 11, 12, 13])
    r = read_session(p, trust_pickle=True)
    assert r.provenance.reader == "dset" and len(r.provenance.sha256) == 64
    assert_sessions_equal(r, replace(s, true_rate=None))


def test_dset_requires_trust(tmp_path):
    p = write_dset(tiny_session(), tmp_path / "x.dset")
    with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
        read_dset(p)


def test_dset_bad_inputs(tmp_path):
    s = tiny_session()
    p = write_dset(s, tmp_path / "a.dset")
    blob = torch.load(p, weights_only=False)
    del blob["covariates"]["eyepos"]
    torch.save(blob, tmp_path / "missing.dset")
    with pytest.raises(SessionError, match=r"missing covariate key\(s\) \['eyepos'\]"):
        read_dset(tmp_path / "missing.dset", trust_pickle=True)
    blob = torch.load(p, weights_only=False)
    blob["covariates"]["robs"] = blob["covariates"]["robs"][:-3]
    torch.save(blob, tmp_path / "short.dset")
    with pytest.raises(SessionError, match="disagree on the number of bins"):
        read_dset(tmp_path / "short.dset", trust_pickle=True)
    (tmp_path / "corrupt.dset").write_bytes(p.read_bytes()[:200])
    with pytest.raises(SessionError, match="corrupt"):
        read_dset(tmp_path / "corrupt.dset", trust_pickle=True)
    blob = torch.load(p, weights_only=False)
    blob["covariates"]["eyepos"][30] = float("nan")
    torch.save(blob, tmp_path / "nan.dset")
    with pytest.raises(SessionError, match="NaN/inf gaze at bin 30"):
        read_dset(tmp_path / "nan.dset", trust_pickle=True)


def test_nwb_crops_round_trip(tmp_path):
    s = tiny_session()
    p = write_nwb(s, tmp_path / "tiny.nwb", spike_times_from_counts(s), layout="crops")
    r = read_nwb(p)
    assert r.provenance.reader == "nwb"
    assert_sessions_equal(r, s)


def test_nwb_missing_stimulus_is_named(tmp_path):
    s = tiny_session()
    with pytest.raises(ValueError, match="layout"):
        write_nwb(s, tmp_path / "x.nwb", spike_times_from_counts(s), layout="nope")
    (tmp_path / "junk.nwb").write_bytes(b"not hdf5")
    with pytest.raises(SessionError, match="junk.nwb: corrupt"):
        read_nwb(tmp_path / "junk.nwb")


def test_read_session_resamples(tmp_path):
    s = tiny_session()
    p = write_nwb(s, tmp_path / "tiny.nwb", spike_times_from_counts(s), layout="crops")
    r = read_session(p, target_rate_hz=120)
    assert r.rate_hz == 120 and r.robs.sum() == (s.robs * s.unit_mask()).sum()
    with pytest.raises(ValueError, match="whole number"):
        read_session(p, target_rate_hz=100)
