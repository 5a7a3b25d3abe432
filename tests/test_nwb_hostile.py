"""NWB files written to hurt the builder: HDF5 references to files outside the source (external
storage, external links, virtual datasets), sizes declared in headers but never written
(memory bombs), and common mistakes that used to lose data without a word (spike times in
milliseconds, NaN / negative / overlapping trials)."""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import build_tiny
from helpers import spike_times_from_counts, tiny_session

from polar_data.demo.nwb_writer import write_nwb
from polar_data.readers import NwbOptions, open_session, read_nwb, source_sha256
from polar_data.sessions.session import SessionError

STIM = "stimulus/presentation/gaze_contingent_stim/data"
GAZE = "processing/behavior/EyeTracking/gaze"
TOKEN = b"-----BEGIN PRIVATE KEY----- hunter2 "


def _nwb(path: Path, **kw) -> Path:
    s = tiny_session(**kw)
    return write_nwb(s, path, spike_times_from_counts(s), layout="crops")


def _replace(f: h5py.File, name: str, make) -> None:
    """Replace dataset ``name`` by ``make(shape, dtype)`` (or a link), keeping attributes."""
    d = f[name]
    shape, dtype, attrs = d.shape, d.dtype, dict(d.attrs)
    del f[name]
    new = make(shape, dtype)
    if new is not None:
        for k, v in attrs.items():
            new.attrs[k] = v


def _secret_frames(path: Path, shape, dtype) -> np.ndarray:
    """A file of ``prod(shape)`` bytes made of TOKEN (what a private key file would be)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (TOKEN * (n // len(TOKEN) + 1))[:n]
    path.write_bytes(raw)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _hostile(src: Path, secret_dir: Path, kind: str) -> Path:
    """Rewrite ``src``'s frames so that they come from a file in ``secret_dir``."""
    with h5py.File(src, "a") as f:
        shape, dtype = f[STIM].shape, f[STIM].dtype
        if kind == "storage":
            secret = secret_dir / "id_rsa"
            _secret_frames(secret, shape, dtype)
            _replace(f, STIM, lambda sh, dt: f.create_dataset(
                STIM, shape=sh, dtype=dt, external=[(str(secret), 0, secret.stat().st_size)]))
            return secret
        secret = secret_dir / "secret.h5"
        frames = _secret_frames(secret_dir / "raw.bin", shape, dtype)
        (secret_dir / "raw.bin").unlink()
        with h5py.File(secret, "w") as g:
            g["frames"] = frames
        if kind == "link":
            attrs = dict(f[STIM].attrs)
            with h5py.File(secret, "a") as g:
                for k, v in attrs.items():
                    g["frames"].attrs[k] = v
            _replace(f, STIM, lambda sh, dt: None)
            f[STIM] = h5py.ExternalLink(str(secret), "/frames")
        else:  # virtual dataset
            def vds(sh, dt):
                layout = h5py.VirtualLayout(shape=sh, dtype=dt)
                layout[...] = h5py.VirtualSource(str(secret), "frames", shape=sh)
                return f.create_virtual_dataset(STIM, layout)
            _replace(f, STIM, vds)
        return secret


def _files_hold(folder: Path, token: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and token in p.read_bytes()]


@pytest.mark.parametrize("kind, words", [("storage", "external storage"),
                                         ("link", "an external link"),
                                         ("virtual", "a virtual dataset source")])
def test_files_outside_the_source_are_refused_and_never_reach_the_store(tmp_path, capsys,
                                                                         kind, words):
    src_dir, secret_dir = tmp_path / "sessions", tmp_path / "home"
    src_dir.mkdir()
    secret_dir.mkdir()
    src = _nwb(src_dir / "s.nwb", n_trials=8, bins_per_trial=80)
    secret = _hostile(src, secret_dir, kind)
    with pytest.raises(SessionError) as e:
        read_nwb(src)
    msg = str(e.value)
    assert str(src) in msg and words in msg and str(secret) in msg
    assert "/" + STIM.split("/data")[0] in msg  # the object's path inside the file
    # the option confines outside files to the source's folder: this one stays refused
    with pytest.raises(SessionError, match="outside the source's folder"):
        read_nwb(src, NwbOptions(allow_external_files=True))
    out = tmp_path / "store"
    assert build_tiny(tmp_path, [src], out) == 1
    printed = capsys.readouterr().out
    assert str(secret) in printed and "nwb.allow_external_files" in printed
    assert _files_hold(out, TOKEN[:16]) == []
    assert not [p for p in (out / "zarr").iterdir() if p.is_dir()]  # no session group


@pytest.mark.parametrize("kind", ["storage", "link", "virtual"])
def test_outside_files_inside_the_folder_need_the_option_and_are_hashed(tmp_path, kind):
    src = _nwb(tmp_path / "s.nwb", n_trials=8, bins_per_trial=80)
    secret = _hostile(src, tmp_path, kind)
    with pytest.raises(SessionError, match="nwb.allow_external_files"):
        read_nwb(src)
    opt = NwbOptions(allow_external_files=True)
    s = read_nwb(src, opt)
    raw = (TOKEN * 1000)[: s.stim[0].size]
    np.testing.assert_array_equal(s.stim[0].ravel(), np.frombuffer(raw, np.uint8))
    before = source_sha256(str(src))
    assert before != _plain_sha(src) and s.provenance.sha256 == before
    if kind == "storage":
        data = bytearray(secret.read_bytes())
        data[0] ^= 0xFF
        secret.write_bytes(bytes(data))
    else:
        with h5py.File(secret, "a") as g:
            g["frames"][0, 0, 0] = 255 - g["frames"][0, 0, 0]
    assert source_sha256(str(src)) != before  # a change of the outside file is seen
    out = tmp_path / "store"
    assert build_tiny(tmp_path, [src], out, "--nwb.allow_external_files", "true") == 0


def _plain_sha(path: Path) -> str:
    from polar_data.store.checksum import sha256_file

    return sha256_file(path)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    src_dir, secret_dir = tmp_path / "sessions", tmp_path / "home"
    src_dir.mkdir()
    secret_dir.mkdir()
    src = _nwb(src_dir / "s.nwb", n_trials=8, bins_per_trial=80)
    secret = _hostile(src, secret_dir, "storage")
    (src_dir / "frames.bin").symlink_to(secret)
    with h5py.File(src, "a") as f:
        _replace(f, STIM, lambda sh, dt: f.create_dataset(
            STIM, shape=sh, dtype=dt,
            external=[(str(src_dir / "frames.bin"), 0, secret.stat().st_size)]))
    with pytest.raises(SessionError, match=f"resolves to {secret}, outside"):
        read_nwb(src, NwbOptions(allow_external_files=True))


def test_a_remote_file_may_name_no_outside_file(tmp_path, object_store):
    s3, opts = object_store
    src = _nwb(tmp_path / "s.nwb", n_trials=8, bins_per_trial=80)
    _hostile(src, tmp_path, "storage")  # inside the folder: allowed locally
    s3.upload_file(str(src), "lab", "raw/s.nwb")
    with pytest.raises(SessionError, match="URL may name no outside file"):
        read_nwb("s3://lab/raw/s.nwb", NwbOptions(storage_options=opts,
                                                  allow_external_files=True))


# ------------------------------------------------------------------ declared-size bombs


def _refused_fast(path: Path, opt: NwbOptions, *words: str) -> str:
    t0 = time.perf_counter()
    with pytest.raises(SessionError) as e:
        read_nwb(path, opt)
    assert time.perf_counter() - t0 < 3.0
    msg = str(e.value)
    for w in (str(path), "nwb.max_memory_gb", *words):
        assert w in msg, (w, msg)
    assert path.stat().st_size < 2_000_000  # the file itself is small
    return msg


def _empty_like(f: h5py.File, name: str, shape: tuple, chunks: tuple) -> None:
    """Declare ``name`` with ``shape`` (chunked, nothing written: free on disk)."""
    _replace(f, name, lambda sh, dt: f.create_dataset(name, shape=shape, dtype=dt,
                                                      chunks=chunks))


def test_a_huge_declared_screen_image_is_refused_before_reading(tmp_path, capsys):
    s = tiny_session()
    screen = [np.full((40, 50), 100, np.uint8)]
    path = write_nwb(s, tmp_path / "s.nwb", spike_times_from_counts(s), layout="screen",
                     screen_images=screen, presentation=(np.array([0.0]), np.array([0])),
                     screen_ppd=10.0)
    with h5py.File(path, "a") as f:
        _empty_like(f, "stimulus/templates/natural_images/image_000", (100_000, 100_000),
                    (1024, 1024))
    _refused_fast(path, NwbOptions(), "image_000", "[100000, 100000]")
    assert build_tiny(tmp_path, [path], tmp_path / "store") == 1
    assert "nwb.max_memory_gb" in capsys.readouterr().out


def test_fifty_million_declared_gaze_rows_are_refused(tmp_path):
    path = _nwb(tmp_path / "s.nwb")
    with h5py.File(path, "a") as f:
        _empty_like(f, f"{GAZE}/data", (50_000_000, 2), (65536, 2))
        _empty_like(f, f"{GAZE}/timestamps", (50_000_000,), (65536,))
    _refused_fast(path, NwbOptions(max_memory_gb=1), "behavior/EyeTracking/gaze/data",
                  "[50000000, 2]")


def test_a_hundred_thousand_declared_units_are_refused(tmp_path):
    path = _nwb(tmp_path / "s.nwb", n_trials=4, bins_per_trial=500)
    with h5py.File(path, "a") as f:
        for col in ("id", "spike_times_index", "obs_intervals_index"):
            _empty_like(f, f"units/{col}", (100_000,), (10_000,))
    _refused_fast(path, NwbOptions(max_memory_gb=1), "Units table", "100000 units")


def test_the_chunk_length_counts_against_the_limit(tmp_path):
    path = _nwb(tmp_path / "s.nwb", n_trials=8, bins_per_trial=80)
    with h5py.File(path, "a") as f:
        for col in ("id", "spike_times_index", "obs_intervals_index"):
            _empty_like(f, f"units/{col}", (30_000,), (10_000,))
        del f["processing/misc"]  # the true rates of the 4 units written
    # one trial at a time fits in 0.1 GB, the whole session (the default chunk) does not
    from polar_data.sessions.session_source import session_chunks

    with open_session(path, nwb=NwbOptions(max_memory_gb=0.1)) as src:
        with pytest.raises(SessionError, match="store.ingest_chunk_bins"):
            next(session_chunks(src, 1, 4096))
        assert next(session_chunks(src, 1, 80)).n_bins == 80


def test_nwb_options_that_size_allocations_are_bounded(tmp_path, capsys):
    for key, bad in (("screen_ppd", float("nan")), ("crop_deg", float("inf")),
                     ("crop_px", 10**9), ("crop_px", 0), ("screen_ppd", -1.0),
                     ("max_memory_gb", 0.0)):
        with pytest.raises(ValueError, match=f"^{key}: must be"):
            NwbOptions(**{key: bad})
    path = _nwb(tmp_path / "s.nwb")
    assert build_tiny(tmp_path, [path], tmp_path / "store", "--crop-px", "1000000000") == 2
    assert "nwb.crop_px" in capsys.readouterr().err


# ------------------------------------------------------------------ silent loss made loud


def test_spike_times_in_milliseconds_are_refused(tmp_path):
    s = replace(tiny_session(n_trials=8, bins_per_trial=80), unit_valid=None)
    ms = [st * 1000.0 for st in spike_times_from_counts(s)]
    path = write_nwb(s, tmp_path / "ms.nwb", ms, layout="crops")
    with pytest.raises(SessionError, match=r"Units table 'units'.*milliseconds") as e:
        read_nwb(path)
    assert str(path) in str(e.value)


def _set_trials(path: Path, start=None, stop=None) -> None:
    with h5py.File(path, "a") as f:
        for col, values in (("start_time", start), ("stop_time", stop)):
            if values is not None:
                d = f[f"intervals/trials/{col}"]
                data = d[...]
                for row, v in values.items():
                    data[row] = v
                d[...] = data


@pytest.mark.parametrize("start, stop, words", [
    (None, {1: np.nan}, r"trials row 1 \(id 1\) has start_time 10.0 and stop_time nan"),
    ({2: 21.0}, {2: 20.5}, r"trials row 2 \(id 2\) stops before it starts"),
])
def test_nan_and_negative_trials_are_refused_naming_the_row(tmp_path, start, stop, words):
    path = _nwb(tmp_path / "s.nwb")
    _set_trials(path, start, stop)
    with pytest.raises(SessionError, match=words) as e:
        read_nwb(path)
    assert str(path) in str(e.value)


def test_overlapping_trials_are_trimmed_counted_and_warned(tmp_path):
    path = _nwb(tmp_path / "s.nwb")  # 3 trials of 20 bins at 0, 10 and 20 s
    dt = 1 / 240
    # trial 1 starts inside trial 0, 7 bins before its end
    _set_trials(path, start={1: 12.5 * dt})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with open_session(path) as src:
            notes, trial = dict(src.notes), src.trial.copy()
    assert notes == {"trials_trimmed": 1, "overlap_bins": 7}
    assert any(str(path) in str(x.message) and "overlapping trials" in str(x.message)
               for x in w)
    assert (trial[:20] == 0).all() and len(trial) == 60
    # a trial wholly inside another: dropped, and the other keeps every bin (none lost)
    path = _nwb(tmp_path / "t.nwb")
    _set_trials(path, start={1: 10.0 + 5.5 * dt}, stop={0: 10.0 + 20.5 * dt, 1: 10.0 + 9.5 * dt})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with open_session(path) as src:
            notes, n_bins, trial = dict(src.notes), src.n_bins, src.trial.copy()
    assert notes == {"trials_dropped": 1, "overlap_bins": 4}
    assert n_bins == 60 and (trial[:40] == 0).all()
    assert any("1 trial(s) lying wholly inside" in str(x.message) for x in w)


def test_the_build_summary_counts_what_the_reader_trimmed(tmp_path, capsys):
    path = _nwb(tmp_path / "s.nwb")
    _set_trials(path, start={1: 12.5 / 240})  # trial 1 starts 7 bins before trial 0 ends
    assert build_tiny(tmp_path, [path], tmp_path / "out", window_len=4, clip_len=8) == 0
    out = capsys.readouterr().out
    assert "overlap bins 7, trials trimmed 1" in out, out
