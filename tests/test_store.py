"""End-to-end store builds on small hand-made NWB sessions."""

import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from conftest import build_tiny
from helpers import load_pipeline

from polar_data.readers import read_session
from polar_data.schema import SPLITS
from polar_data.store.shards import decode_clip
from polar_data.store.zarr_groups import open_store

build_shards = load_pipeline("build_shards")


@pytest.fixture
def sources(tiny_sources):
    return tiny_sources


@pytest.fixture
def built(tiny_store):
    return tiny_store


def _build(tmp_path, sources, out, *extra, **store):
    return build_tiny(tmp_path, sources, out, *extra, **store)


def test_zarr_equals_sessions_frame_for_frame(built, sources):
    root = open_store(built / "zarr")
    assert root.attrs["window_len"] == 6 and root.attrs["conventions"]["gaze_axes"]
    for src in sources:
        s = read_session(src, target_rate_hz=120)
        g = root[s.name]
        np.testing.assert_array_equal(g["stim"][...], s.stim)
        np.testing.assert_array_equal(g["eyepos"][...], s.eyepos)
        np.testing.assert_array_equal(g["robs"][...], s.robs)
        np.testing.assert_array_equal(g["t"][...], s.t)
        assert g.attrs["unit_ids"] == s.unit_ids.tolist()
        assert g.attrs["source"]["sha256"] == s.provenance.sha256
        assert g["stim"].dtype == np.uint8 and g["eyepos"].dtype == np.float32


def test_windows_never_cross_trials_or_splits(built):
    root = open_store(built / "zarr")
    for name in root.attrs["sessions"]:
        g = root[name]
        trial, split, valid = g["trial"][...], g["split"][...], g["eye_valid"][...]
        per_split_trials = []
        for code, sp in enumerate(SPLITS):
            ends = g[f"windows/{sp}"][...]
            assert len(ends) > 0
            for e in ends:
                w = slice(e - 5, e + 1)
                assert e >= 5 and (trial[w] == trial[e]).all() and valid[w].all()
                assert (split[w] == code).all()
            per_split_trials.append(set(trial[split == code].tolist()))
        a, b, c = per_split_trials
        assert not (a & b) and not (a & c) and not (b & c)


def _samples(built):
    shards = sorted((built / "wds").glob("*.tar"))
    return shards, [(p, s) for p in shards
                    for s in wds.WebDataset(str(p), shardshuffle=False, empty_check=False)]


def test_shards_equal_zarr_and_mix_sessions(built):
    root = open_store(built / "zarr")
    manifest = json.loads((built / "manifest.json").read_text())
    shards, samples = _samples(built)
    assert len(shards) == len(manifest["shards"]) > 3
    assert any(len(e["sessions"]) > 1 for e in manifest["shards"])
    owned = {}
    for path, raw in samples:
        c = decode_clip(raw)
        m = c["meta"]
        assert path.name.startswith(m["split"])
        g = root[m["session"]]
        n = m["n_targets"]
        assert 1 <= n <= 10
        a, b = m["start"] - 5, m["start"] + n
        np.testing.assert_array_equal(c["stim"], g["stim"][a:b])
        np.testing.assert_array_equal(c["eyepos"], g["eyepos"][a:b])
        np.testing.assert_array_equal(c["robs"], g["robs"][m["start"]:b])
        assert np.isfinite(c["eyepos"]).all()  # clips never hold a dropout
        assert (np.diff(c["t"]) > 0).all()     # oldest first
        for k in range(n):
            key = (m["session"], m["start"] + k)
            assert key not in owned
            owned[key] = m["split"]
    # clip targets are exactly the valid windows of their split: each once, none missing
    for name in root.attrs["sessions"]:
        for sp in SPLITS:
            ends = set(root[name][f"windows/{sp}"][...].tolist())
            mine = {t for (n, t), s in owned.items() if n == name and s == sp}
            assert mine == ends


def test_verify_ok_then_catches_flipped_byte_and_truncated_chunk(tmp_path, sources):
    out = tmp_path / "store"
    assert _build(tmp_path, sources, out) == 0
    assert build_shards.main(["--verify", "--out", str(out), "--no-progress"]) == 0
    shard = sorted((out / "wds").glob("*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = __import__("polar_data.store.verify", fromlist=["verify"]).verify(out)
    assert any(shard.name in p and "sha256" in p for p in problems), problems
    chunk = sorted((out / "zarr" / "s1" / "stim").glob("c.*"))[0]
    chunk.write_bytes(chunk.read_bytes()[:-10])
    problems = __import__("polar_data.store.verify", fromlist=["verify"]).verify(out)
    assert any("stim/c." in p and "truncated" in p for p in problems), problems
    assert build_shards.main(["--verify", "--out", str(out), "--no-progress"]) == 1


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_after_crash_is_byte_identical(tmp_path, sources, built, monkeypatch):
    import polar_data.store.shards as ws

    out = tmp_path / "store"
    real = ws.write_shard
    calls = {"n": 0}

    def crashing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            # leave a half-written partial shard behind, like a killed process would
            args[2].with_name(args[2].name + ".partial").write_bytes(b"garbage")
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(ws, "write_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, sources, out)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(ws, "write_shard", real)
    # also lose one session's group mid-write: a stale partial dir
    (out / ".partial" / "s2").mkdir(parents=True)
    assert _build(tmp_path, sources, out) == 0
    a, b = _tree(out), _tree(built)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_bad_session_is_named_and_others_complete(tmp_path, sources, capsys):
    bad = tmp_path / "broken.nwb"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    out = tmp_path / "store"
    assert _build(tmp_path, [*sources, bad], out) == 1
    err = capsys.readouterr()
    assert "broken.nwb" in err.out and "FAILED" in err.out
    assert {p.name for p in (out / "zarr").iterdir() if p.is_dir()} == {
        "s0", "s1", "s2"}


def test_unknown_config_key_and_changed_settings_are_refused(tmp_path, sources, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("store:\n  window_length: 8\n")
    assert build_shards.main(["--config", str(cfg), "--no-progress", str(sources[0])]) == 2
    assert "store.window_length: unknown key" in capsys.readouterr().err
    out = tmp_path / "store"
    assert _build(tmp_path, sources[:1], out, "--stage", "ingest") == 0
    assert _build(tmp_path, sources[:1], out, "--stage", "ingest", clip_len=12) == 2
    assert "different settings" in capsys.readouterr().err


def test_session_without_valid_windows_is_refused(tmp_path, sources, capsys):
    out = tmp_path / "store"
    assert _build(tmp_path, sources[:1], out, window_len=500) == 1
    assert "no valid window of 500 bins" in capsys.readouterr().out


def test_tar_members_are_deterministic(built):
    shard = sorted((built / "wds").glob("*.tar"))[0]
    with tarfile.open(shard) as tf:
        assert {m.mtime for m in tf} == {0}


def test_array_job_stages_equal_single_run(tmp_path, sources, built):
    """Two jobs ingest and shard disjoint parts; one finalizes: same bytes as one run."""
    out = tmp_path / "store"
    for stage in ("ingest", "shards"):
        for j in (1, 0):
            assert _build(tmp_path, sources, out, "--stage", stage, "--job-index", str(j),
                          "--num-jobs", "2") == 0
    assert _build(tmp_path, sources, out, "--stage", "finalize") == 0
    a, b = _tree(out), _tree(built)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_shards_before_ingest_is_refused(tmp_path, sources, capsys):
    out = tmp_path / "store"
    assert _build(tmp_path, sources, out, "--stage", "shards") == 2
    assert "not ingested yet" in capsys.readouterr().err


@pytest.mark.slow
def test_worker_processes_give_the_same_store(tmp_path, sources, built):
    out = tmp_path / "store"
    assert _build(tmp_path, sources, out, "--workers", "2") == 0
    a, b = _tree(out), _tree(built)
    assert [k for k in a if a[k] != b.get(k)] == []


def test_model_config_derives_or_refuses_the_window(tmp_path, sources, capsys):
    out = tmp_path / "store"
    full = "configs/model/full.yaml"  # jepa_delta 4 + min_context 8 = 12
    assert _build(tmp_path, sources[:1], out, "--model-config", full, window_len=8) == 2
    err = capsys.readouterr().err
    assert "window_len = 8" in err and ">= 12" in err and "full.yaml" in err
    assert _build(tmp_path, sources[:1], out, "--model-config", full, "--stage", "ingest",
                  window_len=None) == 0
    assert json.loads((out / "build.json").read_text())["window_len"] == 16  # max(12, 16)
