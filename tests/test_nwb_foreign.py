"""NWB files as other labs write them: plain pynwb, standard types, their own object names,
images of several sizes (grayscale and RGB, uint8 and float), no geometry in the file; our own
files pass the DANDI inspector; remote files stream from an object store."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny

from polar_data.demo.nwb_writer import write_nwb
from polar_data.readers import NwbOptions, read_nwb
from polar_data.sessions.session import SessionError

RATE = 240.0


def _foreign(path: Path, *, trials=True, gaze_unit="degrees", two_gaze=False, geometry=False,
             seed=0) -> tuple[Path, dict]:
    """Write a free-viewing session the way another lab might, with plain pynwb. Returns the
    path and the ground truth (spike times, bin grid) to compare against."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.base import Images
    from pynwb.behavior import EyeTracking
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage, IndexSeries, RGBImage

    rng = np.random.default_rng(seed)
    nwb = NWBFile(session_description="free viewing", identifier=f"lab-x-{seed}",
                  session_start_time=datetime(2025, 3, 1, tzinfo=UTC),
                  session_id=f"M7 2025-03-01 #{seed}")
    nwb.subject = Subject(subject_id="M7", species="Callithrix jacchus", sex="M", age="P4Y")
    n_bins = int(4 * RATE)
    t = np.arange(n_bins) / RATE
    gaze = np.cumsum(rng.normal(0, 0.05, (n_bins, 2)), axis=0).astype(np.float32)
    gaze[100:110] = np.nan  # a blink
    data = gaze
    if gaze_unit == "pixels":  # screen 300 x 400 px, 20 px per degree, origin top-left
        data = np.stack([gaze[:, 0] * 20 + 199.5, 149.5 - gaze[:, 1] * 20], axis=1)
    eye = EyeTracking(name="eye_tracker")
    eye.create_spatial_series(name="eye_position", data=data, timestamps=t,
                              reference_frame="screen centre", unit=gaze_unit)
    if two_gaze:
        eye.create_spatial_series(name="eye_position_raw", data=data, timestamps=t,
                                  reference_frame="screen centre", unit=gaze_unit)
    nwb.add_acquisition(eye)
    images = [GrayscaleImage(name="im_small", data=rng.integers(0, 256, (120, 160), np.uint8)),
              RGBImage(name="im_rgb", data=rng.integers(0, 256, (300, 400, 3), np.uint8)),
              GrayscaleImage(name="im_float", data=rng.random((200, 200)).astype(np.float32))]
    shown = Images(name="library", images=images, description="natural images")
    nwb.add_stimulus_template(shown)
    onsets = np.array([0.0, 1.0, 2.0, 3.0])
    nwb.add_stimulus(IndexSeries(name="image_shown", data=np.array([0, 1, 2, 1], np.uint32),
                                 indexed_images=shown, timestamps=onsets, unit="N/A",
                                 comments=json.dumps({"screen_ppd": 20.0, "crop_px": 21,
                                                      "crop_ppd": 7.0}) if geometry else ""))
    if trials:
        for a in onsets:
            nwb.add_trial(start_time=a, stop_time=a + 0.9)
    spikes = [np.sort(rng.uniform(0, 4, rng.integers(20, 60))) for _ in range(4)]
    for k, st in enumerate(spikes):
        nwb.add_unit(id=100 + k, spike_times=st)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path, {"spikes": spikes, "t": t, "onsets": onsets}


def _binned_in_trials(truth, rate=RATE) -> np.ndarray:
    t = truth["t"]
    inside = np.zeros(len(t), bool)
    for a in truth["onsets"]:
        inside |= (t >= a) & (t < a + 0.9)
    tt = t[inside]
    return np.array([(np.searchsorted(st, tt + 1 / rate) - np.searchsorted(st, tt)).sum()
                     for st in truth["spikes"]])


def test_standard_layout_is_read_by_type_with_geometry_from_options(tmp_path):
    path, truth = _foreign(tmp_path / "lab.nwb")
    with pytest.raises(SessionError, match="--screen-ppd and --crop-deg"):
        read_nwb(path)
    s = read_nwb(path, NwbOptions(screen_ppd=20.0, crop_deg=3.0, crop_px=21))
    assert s.name == "M7 2025-03-01 #0" and s.rate_hz == RATE
    assert s.stim.shape[1:] == (21, 21) and s.stim.dtype == np.uint8
    assert abs(s.ppd - 7.0) < 1e-9
    assert s.unit_ids.tolist() == [100, 101, 102, 103]
    assert len(np.unique(s.trial)) == 4 and s.n_bins == 4 * int(0.9 * RATE)
    np.testing.assert_array_equal(s.robs.sum(0), _binned_in_trials(truth))
    assert (~s.eye_valid).sum() == 10
    # every image of the presentation shows up: the float image differs from the others
    per_trial = [s.stim[s.trial == k].astype(float).mean() for k in np.unique(s.trial)]
    assert len({round(x, 3) for x in per_trial}) >= 3


def test_geometry_recorded_in_the_file_needs_no_option(tmp_path):
    path, _ = _foreign(tmp_path / "lab.nwb", geometry=True)
    s = read_nwb(path)
    assert s.stim.shape[1:] == (21, 21) and abs(s.ppd - 7.0) < 1e-9


def test_build_from_a_foreign_file_round_trips_the_counts(tmp_path, capsys):
    path, truth = _foreign(tmp_path / "lab.nwb")
    out = tmp_path / "out"
    assert build_tiny(tmp_path, [path], out, target_rate_hz=None) == 1
    assert "--screen-ppd" in capsys.readouterr().out
    assert build_tiny(tmp_path, [path], out, "--screen-ppd", "20", "--crop-deg", "3",
                      "--crop-px", "21", target_rate_hz=None) == 0
    from polar_data.store.verify import verify
    from polar_data.store.zarr_groups import open_store

    assert verify(out) == []
    root = open_store(out / "zarr")
    (name,) = list(root.group_keys())
    g = root[name]
    assert g.attrs["name_in_file"] == "M7 2025-03-01 #0"
    np.testing.assert_array_equal(g["robs"][...].sum(0), _binned_in_trials(truth))
    assert g.attrs["unit_ids"] == [100, 101, 102, 103]


def test_two_gaze_candidates_are_listed_with_the_option(tmp_path):
    path, _ = _foreign(tmp_path / "lab.nwb", two_gaze=True, geometry=True)
    with pytest.raises(SessionError, match=r"eye_position.*eye_position_raw.*--nwb-gaze"):
        read_nwb(path)
    s = read_nwb(path, NwbOptions(gaze="eye_position_raw"))
    assert s.n_bins > 0
    with pytest.raises(SessionError, match="--nwb-gaze 'nope' matches 0"):
        read_nwb(path, NwbOptions(gaze="nope"))


def test_gaze_in_pixels_is_converted_and_unknown_units_refused(tmp_path):
    deg, _ = _foreign(tmp_path / "deg.nwb", geometry=True)
    px, _ = _foreign(tmp_path / "px.nwb", gaze_unit="pixels", geometry=True)
    a, b = read_nwb(deg), read_nwb(px)
    np.testing.assert_allclose(b.eyepos, a.eyepos, atol=1e-4)
    odd, _ = _foreign(tmp_path / "odd.nwb", gaze_unit="furlongs", geometry=True)
    with pytest.raises(SessionError, match="'furlongs'"):
        read_nwb(odd)


def test_no_trials_table_means_one_trial_per_presentation_with_a_warning(tmp_path):
    path, _ = _foreign(tmp_path / "lab.nwb", trials=False, geometry=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = read_nwb(path)
    assert any("one trial per stimulus presentation" in str(x.message) for x in w)
    assert len(np.unique(s.trial)) == 4 and s.n_bins == int(4 * RATE)


def test_demo_files_pass_the_dandi_inspector(tmp_path):
    nwbinspector = pytest.importorskip("nwbinspector")
    from helpers import spike_times_from_counts, tiny_session

    s = tiny_session(n_trials=4, bins_per_trial=60, name="insp")
    path = write_nwb(s, tmp_path / "insp.nwb", spike_times_from_counts(s))
    msgs = [m for m in nwbinspector.inspect_nwbfile(
        nwbfile_path=str(path), config=nwbinspector.load_config("dandi")) if m is not None]
    bad = [m for m in msgs if m.importance.name in ("CRITICAL", "BEST_PRACTICE_VIOLATION")]
    assert bad == [], [(m.check_function_name, m.message) for m in bad]


def test_remote_nwb_streams_from_an_object_store(tmp_path, object_store):
    s3, opts = object_store
    path, _ = _foreign(tmp_path / "lab.nwb", geometry=True)
    s3.upload_file(str(path), "lab", "raw/lab.nwb")
    remote = read_nwb("s3://lab/raw/lab.nwb", NwbOptions(storage_options=opts))
    local = read_nwb(path)
    np.testing.assert_array_equal(remote.stim, local.stim)
    np.testing.assert_array_equal(remote.robs, local.robs)
    assert remote.provenance.source == "s3://lab/raw/lab.nwb"
    assert remote.provenance.sha256 == local.provenance.sha256
