"""One test per hole of the store's integrity: the build owns only what it wrote, a killed
worker fails only its session, rebuilds are atomic for readers, a Zarr reader notices a
store changed under it, shard sample lists and a keyed seal, read-only stores, verify of an
unfinished build and session names that collide with Zarr's own files."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import webdataset as wds
from conftest import build_tiny
from helpers import spike_times_from_counts, tiny_session

from polar_data.demo.nwb_writer import write_nwb
from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.streaming import ShardStream
from polar_data.loaders.zarr_windows import ZarrWindows
from polar_data.schema import StoreError
from polar_data.store.checksum import sha256_file
from polar_data.store.manifest import load_manifest, seal
from polar_data.store.safe_names import session_folder_name
from polar_data.store.shards import _from_npy, _npy, sample_digest, tar_end_bytes, tar_sample_parts
from polar_data.store.verify import verify


def _nwb(path: Path, name: str, seed: int = 0) -> Path:
    s = tiny_session(n_trials=8, bins_per_trial=80, n_units=3, seed=seed, name=name)
    return write_nwb(s, path, spike_times_from_counts(s), layout="crops")


def _sources(tmp_path: Path, n: int = 3) -> list[Path]:
    return [_nwb(tmp_path / "src" / f"s{k}.nwb", f"s{k}", seed=k) for k in range(n)]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------- 5. the build owns what it wrote


def test_a_foreign_out_folder_is_refused_untouched(tmp_path, tiny_sources, capsys):
    out = tmp_path / "mine"
    (out / "wds").mkdir(parents=True)
    (out / "wds" / "train-00000.tar").write_bytes(b"my own shard")
    (out / "notes.txt").write_text("precious")
    before = _files(out)
    assert build_tiny(tmp_path, tiny_sources, out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not a store built by" in err
    assert _files(out) == before and sorted(p.name for p in out.iterdir()) == ["notes.txt",
                                                                                "wds"]


def test_files_the_build_did_not_write_survive_a_rebuild(tmp_path, capsys):
    srcs = _sources(tmp_path)
    out = tmp_path / "out"
    assert build_tiny(tmp_path, srcs, out) == 0
    (out / "wds" / "foreign-00000.tar").write_bytes(b"not a shard of this build")
    (out / "zarr" / "not_ours").mkdir()
    (out / "zarr" / "not_ours" / "zarr.json").write_text('{"zarr_format": 3, '
                                                         '"node_type": "group"}')
    (out / "zarr" / "not_ours" / "data.bin").write_bytes(b"\x00\x01" * 100)
    foreign = {k: v for k, v in _files(out).items() if "foreign" in k or "not_ours" in k}
    _nwb(srcs[1], "s1", seed=7)  # a rebuild that rewrites shards and a group ...
    capsys.readouterr()
    assert build_tiny(tmp_path, srcs[:2], out) == 0  # ... and removes the stale s2
    after = _files(out)
    assert {k: after.get(k) for k in foreign} == foreign  # byte for byte
    assert "left alone: 3 files the build did not write" in capsys.readouterr().out
    assert not (out / "zarr" / "s2").exists()  # what the build did write is removed
    assert "not_ours/data.bin" not in json.dumps(load_manifest(out)["zarr_files"])
    assert verify(out) == []


# ------------------------------------------------------------- 6. a killed worker

_KILL_HOOK = textwrap.dedent("""
    import os, signal
    victim = os.environ.get("POLAR_TEST_KILL_SOURCE")
    if victim:
        import polar_data.readers as readers
        real = readers.open_session
        def open_session(src, *args, **kw):
            if os.path.basename(str(src)) == victim:
                os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
            return real(src, *args, **kw)
        readers.open_session = open_session
""")


def test_a_killed_worker_fails_only_the_session_it_held(tmp_path, monkeypatch, capsys):
    srcs = _sources(tmp_path, 4)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KILL_HOOK)  # imported by each spawned worker
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("POLAR_TEST_KILL_SOURCE", "s1.nwb")
    out = tmp_path / "out"
    assert build_tiny(tmp_path, srcs, out, "--workers", "2") == 1
    cap = capsys.readouterr()
    failed = [ln for ln in cap.out.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and str(srcs[1]) in failed[0]
    assert "killed" in failed[0] and "fewer --workers" in failed[0]
    assert "BrokenProcessPool" not in cap.out + cap.err
    assert sorted(p.name for p in (out / "zarr").iterdir() if p.is_dir()) == ["s0", "s2", "s3"]
    records = [json.loads(p.read_text())["name"] for p in (out / "parts").glob("session-*")]
    assert sorted(records) == ["s0", "s2", "s3"]  # nothing marked done for the killed one
    assert not (out / "manifest.json").exists()
    monkeypatch.delenv("POLAR_TEST_KILL_SOURCE")
    assert build_tiny(tmp_path, srcs, out, "--workers", "2") == 0
    assert sorted(load_manifest(out)["sessions"]) == ["s0", "s1", "s2", "s3"]
    assert verify(out) == []


# ------------------------------------------------------------- 8. atomic rebuilds


def test_an_interrupted_rebuild_is_not_loadable_and_a_rerun_completes(tmp_path, monkeypatch):
    import polar_data.store.finalize as finalize_stage

    srcs = _sources(tmp_path)
    out = tmp_path / "out"
    assert build_tiny(tmp_path, srcs, out) == 0
    StoreInfo.load(str(out))
    _nwb(srcs[1], "s1", seed=7)
    real = finalize_stage._zarr_file_table

    def crash(*args, **kw):  # killed in finalize, after the stale files went
        raise KeyboardInterrupt("simulated kill -9 during finalize")

    monkeypatch.setattr(finalize_stage, "_zarr_file_table", crash)
    with pytest.raises(KeyboardInterrupt):
        build_tiny(tmp_path, srcs, out)
    for load in (lambda: StoreInfo.load(str(out)), lambda: load_manifest(out)):
        with pytest.raises(StoreError, match=r"being \(re\)built or its build was "
                                             "interrupted: run the build again"):
            load()
    monkeypatch.setattr(finalize_stage, "_zarr_file_table", real)
    assert build_tiny(tmp_path, srcs, out) == 0
    assert load_manifest(out)["sessions"]["s1"]["source"]["sha256"] == sha256_file(srcs[1])
    assert verify(out) == []
    assert not (out / "manifest.json.withdrawn").exists()


def test_verify_of_an_unfinished_rebuild_says_so_once(tmp_path):
    srcs = _sources(tmp_path)
    out = tmp_path / "out"
    assert build_tiny(tmp_path, srcs, out) == 0
    _nwb(srcs[1], "s1", seed=7)
    for stage in ("ingest", "shards"):  # an array job between its shards and finalize
        assert build_tiny(tmp_path, srcs, out, "--stage", stage) == 0
    problems = verify(out)
    assert len(problems) == 1 and "being (re)built" in problems[0]


# ------------------------------------------------------------- 9. zarr readers


def test_a_zarr_reader_stops_when_the_store_changes_under_it(tmp_path):
    srcs = _sources(tmp_path)
    out = tmp_path / "out"
    assert build_tiny(tmp_path, srcs, out, chunk_bins=8) == 0
    ds = ZarrWindows(StoreInfo.load(str(out)), "train", "window", cache_mb=0.001)
    ds.__getitems__([0, 1])
    inode = (out / "manifest.json").stat().st_ino
    assert build_tiny(tmp_path, srcs, out, chunk_bins=8) == 0  # a re-run changing nothing
    assert (out / "manifest.json").stat().st_ino == inode  # leaves the manifest in place
    for i in range(0, len(ds), 7):
        ds.__getitems__([i])  # and its readers alone
    _nwb(srcs[1], "s1", seed=7)
    assert build_tiny(tmp_path, srcs, out, chunk_bins=8) == 0  # rebuilt while reading
    with pytest.raises(StoreError, match=f"{out}.*changed while reading"):
        for i in range(0, len(ds), 7):
            ds.__getitems__([i])


def test_a_chunk_deleted_after_open_is_an_error_naming_it(tiny_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    info = StoreInfo.load(str(store))
    ds = ZarrWindows(info, "train", "window", cache_mb=0.001)
    chunk = sorted((store / "zarr" / "s1" / "stim").glob("c.*"))[0]
    chunk.unlink()  # after the check at open
    s1 = info.sessions.index("s1")
    first = int(next(i for i, (s, _) in enumerate(ds.index) if s == s1))
    with pytest.raises(StoreError, match=f"{chunk}.*missing"):
        ds.__getitems__([first])


# ------------------------------------------------------------- 11. shard sample lists, keyed seal


def _samples(shard: Path) -> list[dict]:
    with open(shard, "rb") as f:
        files = wds.tariterators.tar_file_expander([{"url": str(shard), "stream": f}],
                                                   handler=wds.reraise_exception)
        return [{k: v for k, v in raw.items() if k != "__url__"}
                for raw in wds.tariterators.group_by_keys(files,
                                                          handler=wds.reraise_exception)]


def _write_tar(shard: Path, samples: list[dict]) -> None:
    data = b"".join(b"".join(tar_sample_parts(s)) for s in samples)
    shard.write_bytes(data + tar_end_bytes(len(data)))


@pytest.mark.parametrize("edit", ["duplicate_and_drop", "reorder"])
def test_a_shard_with_other_samples_than_listed_is_an_error(tiny_store, tmp_path, edit):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    info = StoreInfo.load(str(store))
    url, entry = info.shard_urls("train")[0]
    shard = Path(url)
    samples = _samples(shard)
    assert len(samples) >= 3
    if edit == "duplicate_and_drop":  # not side by side (tar members would merge)
        samples[2] = samples[0]
    else:
        samples[0], samples[1] = samples[1], samples[0]
    _write_tar(shard, samples)
    ds = ShardStream(info, "train", "clip", batch_size=1, shuffle=False, single_pass=True)
    with pytest.raises(StoreError, match="train-00000.tar: sample"):
        list(ds._samples([(url, entry)], None))
    ds = ShardStream(info, "train", "clip", batch_size=1, shuffle=False, single_pass=True,
                     skip_corrupt=True)
    with pytest.warns(UserWarning, match="train-00000.tar"):
        list(ds._samples([(url, entry)], None))


def test_an_edited_and_resealed_store_is_caught_by_the_keyed_seal_and_verify(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("POLAR_SEAL_KEY", "a lab secret")
    out = tmp_path / "out"
    assert build_tiny(tmp_path, _sources(tmp_path), out) == 0
    manifest = load_manifest(out)
    assert manifest.get("seal_hmac") and verify(out) == []
    entry = manifest["shards"][0]
    shard = out / "wds" / entry["name"]
    samples = _samples(shard)
    stim = _from_npy(samples[0]["stim.npy.zst"]).copy()
    stim[0, 0, 0] ^= 0xFF  # one pixel of one sample
    samples[0]["stim.npy.zst"] = _npy(stim)
    _write_tar(shard, samples)
    key = samples[0]["__key__"]
    entry["sample_sha256"][key] = sample_digest(samples[0])
    entry.update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    (out / "manifest.json").write_text(json.dumps(seal(manifest)))  # re-sealed, no key
    with pytest.raises(StoreError, match="manifest.json: .*seal_hmac"):
        StoreInfo.load(str(out))
    monkeypatch.delenv("POLAR_SEAL_KEY")
    StoreInfo.load(str(out))  # without the key only the plain seal is checked ...
    problems = verify(out)  # ... but verify compares the samples with the Zarr groups
    assert len(problems) == 1 and entry["name"] in problems[0] and key in problems[0]
    assert "stim" in problems[0] and "Zarr" in problems[0]


# ------------------------------------------------------------- 16. read-only, names


_READ_ONLY: list[Path] = []  # folders the audit hook below treats as read-only
_WRITES = {"os.mkdir", "os.remove", "os.rename", "os.rmdir", "os.truncate", "shutil.rmtree",
           "os.chmod", "os.link", "os.symlink"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple) -> None:
    if not _READ_ONLY or (event != "open" and event not in _WRITES) or not args:
        return
    if event == "open":
        mode, flags = args[1], args[2]
        writes = (flags & _WRITE_FLAGS) if isinstance(flags, int) and flags >= 0 else (
            isinstance(mode, str) and any(c in mode for c in "wax+"))
        if not writes:
            return
    try:
        path = Path(os.fsdecode(args[0])).resolve()
    except (TypeError, ValueError):
        return
    for root in _READ_ONLY:
        if path == root or root in path.parents:
            raise PermissionError(13, "Permission denied (read-only test folder)", str(path))


sys.addaudithook(_audit)


@pytest.fixture
def read_only():
    """Make folders read-only for this process, whoever runs the tests (root ignores
    permission bits): every write, create, rename or delete below them is refused."""
    yield _READ_ONLY.append
    _READ_ONLY.clear()


def test_reading_a_store_needs_no_write_access(tiny_store, tmp_path, read_only, capsys):
    from helpers import load_pipeline

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    (store / ".build.lock").unlink()
    read_only(store.resolve())
    info = StoreInfo.load(str(store))
    ZarrWindows(info, "train", "window").__getitems__([0, 1])
    assert len(list(ShardStream(info, "val", "clip", batch_size=1, shuffle=False,
                                single_pass=True))) > 0
    main = load_pipeline("build_shards").main
    assert main(["--verify", "--out", str(store), "--no-progress"]) == 0
    _READ_ONLY.clear()  # and with a lock file there that this user cannot write
    (store / ".build.lock").write_text("")
    read_only(store.resolve())
    assert main(["--verify", "--out", str(store), "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out


def test_a_build_into_a_read_only_folder_is_a_clear_error(tmp_path, tiny_sources, read_only,
                                                          capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    read_only(parent.resolve())
    assert build_tiny(tmp_path, tiny_sources, parent / "store") == 2
    err = capsys.readouterr().err
    assert str(parent / "store") in err and "not writable" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["zarr.json", "ZARR.JSON", ".zgroup", ".zarray", ".zattrs",
                                  ".zmetadata"])
def test_session_names_of_zarrs_own_files_are_mapped(name):
    mapped = session_folder_name(name, "f.nwb")
    assert mapped.lower() not in {"zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata"}
    assert mapped[0].isalnum() and len(mapped) <= 64


def test_a_session_named_zarr_json_builds(tmp_path):
    src = _nwb(tmp_path / "src" / "s.nwb", "zarr.json")
    out = tmp_path / "out"
    assert build_tiny(tmp_path, [src], out) == 0
    (name,) = load_manifest(out)["sessions"]
    assert name.startswith("zarr.json-") and (out / "zarr" / name / "zarr.json").is_file()
    attrs = json.loads((out / "zarr" / name / "zarr.json").read_text())["attributes"]
    assert attrs["name_in_file"] == "zarr.json"
    assert verify(out) == []
    assert tarfile.is_tarfile(next((out / "wds").glob("*.tar")))
