"""One test per hole of the safety issue: hostile names, changed sources, concurrent builds,
a malformed session among good ones, corrupt shards and chunks, edited manifests, settings
that depend on how the command was spelled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny
from helpers import spike_times_from_counts, tiny_session

from polar_data.demo.nwb_writer import write_nwb
from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.streaming import ShardStream
from polar_data.loaders.zarr_windows import ZarrWindows
from polar_data.schema import StoreError
from polar_data.store.build_lock import BuildLocked, build_lock
from polar_data.store.checksum import sha256_file
from polar_data.store.manifest import load_manifest, seal
from polar_data.store.safe_names import UnsafeNameError, inside, session_folder_name
from polar_data.store.verify import verify


def _nwb(path: Path, name: str, seed: int = 0) -> Path:
    s = tiny_session(n_trials=8, bins_per_trial=80, n_units=3, seed=seed, name=name)
    return write_nwb(s, path, spike_times_from_counts(s), layout="crops")


def _tree(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` except below ``skip``, with file contents."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        out[str(p)] = p.read_bytes() if p.is_file() else None
    return out


# ------------------------------------------------------------------------ 1. hostile names


def test_session_folder_name_rule():
    assert session_folder_name("demo00", "f") == "demo00"
    assert session_folder_name("M1_2023-01-05.a", "f") == "M1_2023-01-05.a"
    for bad in ["", ".", "..", "/", "../..", "\x00"]:
        with pytest.raises(UnsafeNameError, match="f.nwb"):
            session_folder_name(bad, "f.nwb")
    mapped = {t: session_folder_name(t, "f") for t in
              ["../x", "../../../x", "/etc/passwd", "a/b", "a\\b", "x" * 500, "séance 1",
               ".hidden", "a..b", "-rf", "ok name"]}
    for text, name in mapped.items():
        assert name != text and len(name) <= 64
        assert name[0].isalnum() and ".." not in name and "/" not in name
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789._-")
    assert len(set(mapped.values())) == len(mapped)  # distinct originals, distinct names
    assert session_folder_name("a/b", "f") != session_folder_name("a_b", "f")
    with pytest.raises(UnsafeNameError, match="outside"):
        inside(Path("/tmp/out"), Path("/tmp/out/../x"))
    with pytest.raises(UnsafeNameError, match="outside"):
        inside(Path("/tmp/out"), Path("/tmp/out"))


@pytest.mark.parametrize("name", ["..", "../x", "../../../x", "ABS", "a/b", "", "x" * 300,
                                  "séance/ü"])
def test_hostile_session_names_never_touch_anything_outside_the_output(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    if name == "ABS":
        name = str(victim)
    src = _nwb(tmp_path / "src" / "s.nwb", name)
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    out.parent.mkdir(parents=True)
    before = _tree(tmp_path, out)
    code = build_tiny(tmp_path, [src], out)
    after = _tree(tmp_path, out)
    before.pop(str(tmp_path / "data.yaml"), None), after.pop(str(tmp_path / "data.yaml"), None)
    assert after == before  # nothing beside the output folder was created, changed or deleted
    if any(c.isalnum() for c in name):
        assert code == 0
        (group,) = [p for p in (out / "zarr").iterdir() if p.is_dir()]
        attrs = json.loads((group / "zarr.json").read_text())["attributes"]
        assert attrs["name_in_file"] == name and attrs["name"] == group.name
        assert verify(out) == []
    else:
        assert code == 1 and not (out / "zarr" / name).resolve().is_relative_to(victim)


def test_two_sources_mapping_to_one_name_is_an_error_naming_both(tmp_path, capsys):
    a = _nwb(tmp_path / "a.nwb", "same", seed=0)
    b = _nwb(tmp_path / "b.nwb", "same", seed=1)
    assert build_tiny(tmp_path, [a, b], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err and "'same'" in err


# ------------------------------------------------------------------------ 2. changed sources


def test_source_changed_in_place_is_reingested_and_its_shards_rewritten(tmp_path, capsys):
    srcs = [_nwb(tmp_path / f"s{k}.nwb", f"s{k}", seed=k) for k in range(3)]
    out = tmp_path / "out"
    assert build_tiny(tmp_path, srcs, out) == 0
    old = load_manifest(out)
    _nwb(srcs[1], "s1", seed=7)  # same path, same name, other content
    assert verify(out) == [f"{srcs[1].resolve()}: source of session 's1' changed since the "
                           "build; re-run the same build command to re-ingest it"]
    capsys.readouterr()
    assert build_tiny(tmp_path, srcs, out) == 0
    table = capsys.readouterr().out
    assert table.count("skipped (done)") == 2  # s0 and s2 only
    new = load_manifest(out)
    assert new["sessions"]["s1"]["source"]["sha256"] == sha256_file(srcs[1])
    assert new["sessions"]["s0"] == old["sessions"]["s0"]
    old_sh = {e["name"]: e["sha256"] for e in old["shards"]}
    for e in new["shards"]:  # every shard holding s1 was rewritten, the others kept
        assert (e["sha256"] != old_sh[e["name"]]) == ("s1" in e["sessions"])
    assert verify(out) == []


def test_a_source_removed_from_the_build_leaves_no_stale_group(tmp_path):
    srcs = [_nwb(tmp_path / f"s{k}.nwb", f"s{k}", seed=k) for k in range(3)]
    out = tmp_path / "out"
    assert build_tiny(tmp_path, srcs, out) == 0
    assert build_tiny(tmp_path, srcs[:2], out) == 0
    assert sorted(p.name for p in (out / "zarr").iterdir() if p.is_dir()) == ["s0", "s1"]
    assert sorted(load_manifest(out)["sessions"]) == ["s0", "s1"] and verify(out) == []


# ------------------------------------------------------------------------ 3. one writer

_HOLD = textwrap.dedent("""
    import sys, time
    from polar_data.store.build_lock import build_lock
    with build_lock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(60)
""")


def _holder(out: Path, stage: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out), stage],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_build_is_refused_at_once_naming_the_holder(tmp_path, tiny_sources, capsys):
    out = tmp_path / "out"
    holder = _holder(out, "all")
    try:
        t0 = time.perf_counter()
        assert build_tiny(tmp_path, tiny_sources, out) == 2
        assert time.perf_counter() - t0 < 1.0
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "being built by another process" in err
        assert not (out / "zarr").exists()  # the refused build wrote nothing
        with pytest.raises(BuildLocked):  # verify waits for no one either
            with build_lock(out, "verify"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert build_tiny(tmp_path, tiny_sources, out) == 0  # released when the holder died


def test_array_job_stages_share_but_the_same_job_twice_and_finalize_do_not(tmp_path):
    out = tmp_path / "out"
    with build_lock(out, "ingest", 0, 2):
        with build_lock(out, "ingest", 1, 2):  # another job of the array: shares
            pass
        with pytest.raises(BuildLocked, match="ingest job 0/2"):
            with build_lock(out, "ingest", 0, 2):
                pass
        with pytest.raises(BuildLocked):
            with build_lock(out, "finalize"):
                pass


# ------------------------------------------------------------------------ 4. one bad session


def test_any_exception_in_one_session_is_reported_and_the_others_complete(tmp_path, capsys):
    good = [_nwb(tmp_path / f"s{k}.nwb", f"s{k}", seed=k) for k in range(2)]
    bad = tmp_path / "bad" / "datasets" / "backimage.dset"
    bad.parent.mkdir(parents=True)
    torch.save({"covariates": {"stim": [1, 2, 3]}, "metadata": 5}, bad)  # malformed
    out = tmp_path / "out"
    assert build_tiny(tmp_path, [*good, bad], out, "--trust-pickle") == 1
    cap = capsys.readouterr()
    line = [ln for ln in cap.out.splitlines() if ln.startswith("FAILED")]
    assert len(line) == 1 and str(bad) in line[0] and "Error)" in line[0]
    assert {p.name for p in (out / "zarr").iterdir() if p.is_dir()} == {"s0", "s1"}


# ------------------------------------------------------------------------ 5. corrupt shards


def _corrupt_member(shard: Path, index: int) -> str:
    """Flip a byte inside the stim member of sample ``index``; return that sample's key."""
    with tarfile.open(shard) as tf:
        members = [m for m in tf.getmembers() if m.name.endswith("stim.npy.zst")]
    m = members[index]
    data = bytearray(shard.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return m.name.split(".", 1)[0]


def test_a_corrupt_sample_never_reaches_a_batch(tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    info = StoreInfo.load(str(store))
    shard = store / "wds" / "train-00000.tar"
    n = info.shards[0]["n_samples"]
    key = _corrupt_member(shard, n - 1)  # the last sample: all others are read first
    ds = ShardStream(info, "train", "clip", batch_size=1, shuffle=False, single_pass=True)
    seen = []
    with pytest.raises(StoreError, match=f"train-00000.tar: sample '{key}' does not match"):
        for clip in ds._samples(info.shard_urls("train")[:1], None):
            seen.append(f"{clip['meta']['session_index']:04d}_{clip['meta']['start']:09d}")
    assert len(seen) == n - 1 and key not in seen
    ds = ShardStream(info, "train", "clip", batch_size=1, shuffle=False, single_pass=True,
                     skip_corrupt=True)
    with pytest.warns(UserWarning, match="train-00000.tar"):
        batches = [(int(b["session"][0]), int(b["end"][0])) for b in ds]
    # skipped: the corrupt clip (the others of its shard were verified and passed on)
    assert len(batches) == sum(e["n_samples"] for e in info.shards
                               if e["split"] == "train") - 1


def test_a_truncated_shard_is_named(tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    info = StoreInfo.load(str(store))
    shard = store / "wds" / "train-00000.tar"
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-1]
    shard.write_bytes(shard.read_bytes()[: last.offset])  # whole samples missing at the end
    ds = ShardStream(info, "train", "clip", batch_size=1, shuffle=False, single_pass=True)
    with pytest.raises(StoreError, match="train-00000.tar: .*truncated|train-00000.tar"):
        list(ds._samples(info.shard_urls("train")[:1], None))


# ------------------------------------------------------------------------ 6. verify figures


@pytest.mark.parametrize("edit", [
    ("pixel_stats", "mean", 99.0), ("window_len", None, 7), ("n_samples", "train", 1),
    ("sessions", ("s0", "n_windows", "val"), 3), ("sessions", ("s1", "mean_rate", 0), 9.0),
    ("shards", (0, "n_targets"), 1), ("sessions", ("s2", "pixel_stats", "sum"), 12)])
def test_an_edited_manifest_fails_verify(tiny_store, tmp_path, edit):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    assert verify(store) == []
    path = store / "manifest.json"
    m = json.loads(path.read_text())
    top, sub, value = edit
    if sub is None:
        m[top] = value
    else:
        node = m[top]
        keys = sub if isinstance(sub, tuple) else (sub,)
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    path.write_text(json.dumps(m))  # seal left as it was
    assert any("checksum" in p for p in verify(store))
    with pytest.raises(StoreError, match="checksum"):
        StoreInfo.load(str(store))
    path.write_text(json.dumps(seal(m)))  # resealed: the figures themselves must be checked
    problems = verify(store)
    assert problems, edit


# ------------------------------------------------------------------------ 7. zarr chunks


def _chunk(store: Path, session: str, array: str) -> Path:
    return sorted((store / "zarr" / session / array).glob("c.*"))[-1]


def test_missing_truncated_and_swapped_zarr_chunks_are_errors(tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    info = StoreInfo.load(str(store))
    ZarrWindows(info, "train", "clip")  # intact: opens
    chunk = _chunk(store, "s1", "stim")
    data = chunk.read_bytes()
    chunk.unlink()
    with pytest.raises(StoreError, match=r"array 's1/stim'.*is missing"):
        ZarrWindows(info, "train", "clip")
    chunk.write_bytes(data[:-5])
    with pytest.raises(StoreError, match=r"array 's1/stim'.*bytes"):
        ZarrWindows(info, "train", "window")
    other = _chunk(store, "s2", "stim")  # swap in another valid chunk of the same size
    chunk.write_bytes(data)
    if other.stat().st_size == len(data):
        chunk.write_bytes(other.read_bytes())
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 1
        chunk.write_bytes(bytes(flipped))
    ZarrWindows(info, "train", "clip")  # sizes agree: the cheap check passes ...
    with pytest.raises(StoreError, match=r"array 's1/stim'.*sha256"):
        ZarrWindows(info, "train", "clip", verify_chunks=True)  # ... the hash check does not


# ------------------------------------------------------------------------ 9. settings


def test_settings_do_not_depend_on_how_the_command_was_spelled(tmp_path, tiny_sources,
                                                               capsys):
    out = tmp_path / "out"
    assert build_tiny(tmp_path, tiny_sources, out) == 0
    manifest = (out / "manifest.json").read_bytes()
    cwd = os.getcwd()
    try:  # relative source paths, from another folder, with the trust flag spelled out
        os.chdir(tiny_sources[0].parent)
        capsys.readouterr()
        code = build_tiny(tmp_path, [p.name for p in tiny_sources], out, "--trust-pickle")
    finally:
        os.chdir(cwd)
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("skipped (done)") == len(tiny_sources)
    assert (out / "manifest.json").read_bytes() == manifest
    assert "sources" not in json.loads((out / "build.json").read_text())
    assert build_tiny(tmp_path, tiny_sources, out, window_len=8) == 2  # a real change is not


def test_store_figures_are_exact(tiny_store):
    from polar_data.store.zarr_groups import open_store

    root = open_store(tiny_store / "zarr")
    m = load_manifest(tiny_store)
    stim = np.concatenate([root[n]["stim"][...].reshape(-1) for n in sorted(m["sessions"])])
    assert m["pixel_stats"]["sum"] == int(stim.sum(dtype=np.int64))
    assert m["pixel_stats"]["count"] == stim.size
    assert abs(m["pixel_stats"]["mean"] - stim.mean(dtype=np.float64)) < 1e-12
