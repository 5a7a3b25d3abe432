"""Bounded-memory ingestion: sessions flow through the build in chunks of whole trials, with
the same bytes as one whole-session pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny
from helpers import assert_sessions_equal, spike_times_from_counts, tiny_session

from polar_data.demo.dset_writer import write_dset
from polar_data.demo.nwb_writer import write_nwb
from polar_data.readers import open_session, read_session
from polar_data.sessions.session import SessionError
from polar_data.sessions.session_source import chunk_bounds, concat, session_chunks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mixed_sources(tmp_path_factory):
    """Two NWB sessions (crops) and one .dset, trials of uneven length."""
    d = tmp_path_factory.mktemp("mixed")
    out = []
    for k in range(2):
        s = tiny_session(n_trials=9, bins_per_trial=70 + 10 * k, n_units=3, seed=k,
                         name=f"n{k}")
        out.append(write_nwb(s, d / f"n{k}.nwb", spike_times_from_counts(s), layout="crops"))
    s = tiny_session(n_trials=7, bins_per_trial=90, n_units=4, seed=5, name="d0")
    out.append(write_dset(s, d / "d0" / "datasets" / "backimage.dset"))
    return out


def _files(store: Path) -> dict:
    m = json.loads((store / "manifest.json").read_text())
    return {"zarr": m["zarr_files"], "shards": {e["name"]: e["sha256"] for e in m["shards"]},
            "sessions": m["sessions"], "pixel_stats": m["pixel_stats"]}


def test_small_chunks_give_the_bytes_of_one_whole_session_pass(tmp_path, mixed_sources):
    whole, small = tmp_path / "whole", tmp_path / "small"
    assert build_tiny(tmp_path, mixed_sources, whole, "--trust-pickle",
                      ingest_chunk_bins=10**6) == 0  # more bins than a session
    assert build_tiny(tmp_path, mixed_sources, small, "--trust-pickle",
                      ingest_chunk_bins=50) == 0  # one trial per chunk (trials are 70-90)
    a, b = _files(whole), _files(small)
    assert a["zarr"] == b["zarr"] and a["shards"] == b["shards"]
    assert a["sessions"] == b["sessions"] and a["pixel_stats"] == b["pixel_stats"]


@pytest.mark.parametrize("max_bins", [1, 75, 160, 10**6])
def test_chunks_hold_whole_trials_and_resample_as_the_whole_session(mixed_sources, max_bins):
    for src in mixed_sources:
        with open_session(src, trust_pickle=True) as source:
            bounds = chunk_bounds(source.trial, max_bins)
            assert bounds[0][0] == 0 and bounds[-1][1] == source.n_bins
            for (_, b), (c, _) in zip(bounds, bounds[1:]):
                assert b == c and source.trial[b - 1] != source.trial[b]  # trial edges only
            chunks = list(session_chunks(source, 2, max_bins))
        whole = read_session(src, trust_pickle=True, target_rate_hz=120.0)
        assert_sessions_equal(concat(chunks), whole)


def test_a_time_glitch_mid_file_is_named_with_its_bin(tmp_path):
    s = tiny_session(n_trials=6, bins_per_trial=50, n_units=2, name="glitch")
    s.t = s.t.copy()
    s.t[170] = s.t[168]  # the clock steps back inside trial 3
    path = write_nwb(s, tmp_path / "g.nwb", spike_times_from_counts(s), layout="crops")
    with pytest.raises(SessionError, match=r"'glitch'.*not strictly increasing at bin 170"):
        open_session(path)
    assert build_tiny(tmp_path, [path], tmp_path / "out") == 1


def test_chunk_memory_does_not_grow_with_the_session(tmp_path):
    """Reading chunk by chunk holds one chunk: the largest array alive stays one chunk's."""
    s = tiny_session(n_trials=40, bins_per_trial=100, n_units=3, hw=31, name="long")
    path = write_nwb(s, tmp_path / "long.nwb", spike_times_from_counts(s), layout="crops")
    with open_session(path) as source:
        sizes = [c.stim.nbytes for c in session_chunks(source, 1, 200)]
    assert len(sizes) == 20 and max(sizes) == 200 * 31 * 31


@pytest.mark.slow
def test_peak_memory_of_a_15_minute_build_stays_bounded(tmp_path):
    """A 15-minute demo session (51 x 51 crops at 240 Hz: 0.56 GB of source frames) builds
    in one worker under 700 MB peak RSS (measured ~0.4-0.5 GB; the whole-session build of
    2026-11 needed 1.25 GB)."""
    from polar_data.demo.generate import (
        DemoConfig,
        generate_session,
        natural_images,
        write_demo_session,
    )

    cfg = DemoConfig(n_sessions=1, duration_s=900.0, seed=15)
    images = natural_images()
    demo = generate_session(cfg, 0, images, scratch=tmp_path / "scratch")
    _, nwb = write_demo_session(demo, tmp_path / "src", cfg, images, dset=False)
    del demo
    out = tmp_path / "store"
    code = ("import runpy, sys\n"
            f"sys.argv = ['b', '--out', {str(out)!r}, '--no-progress', {str(nwb)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / 'pipelines/build_shards.py')!r}, "
            "run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
            "print('PEAK', int(hwm.split()[1]) / 1024)\n")  # ru_maxrss counts the parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = float(done.stdout.split("PEAK")[-1])
    assert peak < 700, f"peak RSS {peak:.0f} MB"
