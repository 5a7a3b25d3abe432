"""DANDI layouts: spikes as a binned raster with no Units table, a session split into
``<ses>.nwb`` + ``<ses>_image.nwb`` + ``<ses>_behavior.nwb`` (as DANDI:000628 is), and gaze
only in an ndx-style ellipse / pupil tracking container."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny
from helpers import spike_times_from_counts, tiny_session

from polar_data.readers import NwbOptions, read_nwb, source_sha256
from polar_data.sessions.session import SessionError
from polar_data.store.settings import BuildError
from polar_data.store.sources import resolve_sources

RASTER_HZ = 960.0  # 4 raster bins per 240 Hz bin


def _session():
    return replace(tiny_session(n_trials=4, bins_per_trial=40, n_units=3), true_rate=None)


def _write(path: Path, s, *, gaze="eye", stim=True, units=True, trials=True, rasters=()):
    """Write parts of session ``s`` with plain pynwb, as write_nwb writes them. ``gaze``:
    ``eye`` (EyeTracking SpatialSeries), ``pupil`` (a [T, 2] TimeSeries in an
    ``EllipseEyeTracking`` pupil-tracking container, the ndx-ellipse-series layout) or None;
    ``rasters``: names of spike-count rasters [R, N] at RASTER_HZ in processing/ecephys."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import EyeTracking, PupilTracking, SpatialSeries
    from pynwb.image import ImageSeries

    nwb = NWBFile(session_description="split session", identifier=path.stem,
                  session_id=s.name, session_start_time=datetime(2025, 1, 1, tzinfo=UTC))
    dt = 1.0 / s.rate_hz
    if trials:
        _, starts, stops = s.trial_bounds()
        for a, b in zip(starts, stops):
            nwb.add_trial(start_time=float(s.t[a]), stop_time=float(s.t[b - 1] + dt))
    data = np.where(s.eye_valid[:, None], s.eyepos, np.nan).astype(np.float32)
    if gaze == "eye":
        beh = nwb.create_processing_module("behavior", "eye tracking")
        beh.add(EyeTracking(spatial_series=SpatialSeries(
            name="gaze", data=data, timestamps=s.t, reference_frame="screen centre",
            unit="degrees")))
    elif gaze == "pupil":
        beh = nwb.create_processing_module("behavior", "eye tracking")
        beh.add(PupilTracking(name="EllipseEyeTracking", time_series=[TimeSeries(
            name="eye_tracking", data=data, timestamps=s.t, unit="degrees",
            description="ellipse centre x, y")]))
    if stim:
        nwb.add_stimulus(ImageSeries(name="frames", data=s.stim, unit="luminance",
                                     timestamps=s.t, comments=json.dumps({"ppd": s.ppd})))
    if units:
        spikes = spike_times_from_counts(s)
        for j in range(s.n_units):
            nwb.add_unit(id=int(s.unit_ids[j]), spike_times=spikes[j])
    if rasters:
        n_rows = int(round((s.t[-1] + 1.0) * RASTER_HZ))
        counts = np.zeros((n_rows, s.n_units), np.uint8)
        rows = np.rint(s.t * RASTER_HZ).astype(np.int64) + 1  # inside each grid bin
        counts[rows] = s.robs
        ecephys = nwb.create_processing_module("ecephys", "binned spikes")
        for name in rasters:
            ecephys.add(TimeSeries(name=name, data=counts, unit="spikes", rate=RASTER_HZ,
                                   starting_time=0.0, description="1 ms-style spike raster"))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_a_spike_raster_without_units_is_read(tmp_path):
    s = _session()
    path = _write(tmp_path / "r.nwb", s, units=False, rasters=["spike_raster"])
    r = read_nwb(path)
    np.testing.assert_array_equal(r.robs, s.robs)
    assert r.unit_ids.tolist() == [0, 1, 2] and r.unit_mask().all()
    np.testing.assert_array_equal(r.stim, s.stim)
    assert build_tiny(tmp_path, [path], tmp_path / "store", target_rate_hz=None) == 0


def test_several_rasters_are_named_with_the_option(tmp_path, capsys):
    s = _session()
    path = _write(tmp_path / "r.nwb", s, units=False, rasters=["raster_a", "raster_b"])
    with pytest.raises(SessionError, match=r"raster_a.*raster_b.*--nwb.spikes NAME"):
        read_nwb(path)
    r = read_nwb(path, NwbOptions(spikes="raster_b"))
    np.testing.assert_array_equal(r.robs, s.robs)
    out = tmp_path / "store"
    assert build_tiny(tmp_path, [path], out, "--nwb.spikes", "raster_a",
                      target_rate_hz=None) == 0
    with pytest.raises(SessionError, match="no Units table .* and no spike-count raster"):
        read_nwb(_write(tmp_path / "none.nwb", s, units=False))


def _split(folder: Path, s) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [_write(folder / "ses.nwb", s, gaze=None, stim=False),
            _write(folder / "ses_image.nwb", s, gaze=None, units=False, trials=False),
            _write(folder / "ses_behavior.nwb", s, stim=False, units=False, trials=False)]


def test_a_split_session_is_read_as_one(tmp_path):
    s = _session()
    (tmp_path / "one").mkdir()
    whole = read_nwb(_write(tmp_path / "one" / "ses.nwb", s))
    core, image, behavior = _split(tmp_path / "split", s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every file is used: no warning
        split = read_nwb(core)
    for key in ("robs", "eyepos", "stim", "trial", "t", "unit_ids", "eye_valid"):
        np.testing.assert_array_equal(getattr(split, key), getattr(whole, key))
    assert split.provenance.source == str(core.resolve())
    # the source's identity hashes every file: a change of a companion is seen
    before = source_sha256(str(core))
    with open(behavior, "r+b") as f:
        f.seek(0, 2)
        f.write(b"\0")
    assert source_sha256(str(core)) != before


def test_a_glob_of_a_split_session_builds_one_session(tmp_path):
    s = _session()
    _split(tmp_path / "split", s)
    one = tmp_path / "one"
    one.mkdir()
    _write(one / "ses.nwb", s)
    assert resolve_sources([str(tmp_path / "split" / "*.nwb")]) == \
        [str(tmp_path / "split" / "ses.nwb")]
    from polar_data.store.zarr_groups import open_store

    groups = []
    for src in (tmp_path / "split" / "*.nwb", one / "ses.nwb"):
        out = tmp_path / f"store-{len(groups)}"
        assert build_tiny(tmp_path, [src], out, target_rate_hz=None) == 0
        root = open_store(out / "zarr")
        (name,) = list(root.group_keys())
        groups.append(root[name])
    for key in ("robs", "eyepos", "stim"):
        np.testing.assert_array_equal(groups[0][key][...], groups[1][key][...])


def test_a_lone_companion_file_is_explained(tmp_path):
    s = _session()
    core, image, _ = _split(tmp_path / "split", s)
    with pytest.raises(BuildError, match=f"{image}: a companion file .* give {core}"):
        resolve_sources([str(image)])
    core.unlink()
    with pytest.raises(SessionError, match=r"looks like the '_image.nwb' part of a session "
                                           r"split into files; its core file .* not beside"):
        read_nwb(image)


def test_ellipse_style_gaze_is_offered_by_name_and_used_when_named(tmp_path):
    s = _session()
    path = _write(tmp_path / "e.nwb", s, gaze="pupil")
    with pytest.raises(SessionError,
                       match=r"behavior/EllipseEyeTracking/eye_tracking.*--nwb-gaze NAME"):
        read_nwb(path)
    r = read_nwb(path, NwbOptions(gaze="eye_tracking"))
    np.testing.assert_array_equal(r.eyepos, s.eyepos)
    np.testing.assert_array_equal(r.robs, s.robs)
