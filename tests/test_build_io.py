"""The build's fast paths give exactly the bytes of the plain ones: threaded compression,
frame chunks written beside Zarr, hashes taken while writing, frames read from chunk files."""

import hashlib
import io
import json
from types import SimpleNamespace

import numcodecs
import numpy as np
import pytest
import webdataset as wds
import zarr

from polar_data.sessions.session_source import session_chunks
from polar_data.store.checksum import HashingWriter, sha256_file
from polar_data.store.chunk_files import ChunkFiles
from polar_data.store.shards import (
    GroupReader,
    encode_clip,
    sample_digest,
    write_shard,
)
from polar_data.store.zarr_groups import CHUNK_KEYS, open_root, pixel_sums, write_session_group


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_hashing_writer_gives_the_digest_of_the_file(tmp_path):
    path = tmp_path / "f.bin"
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 1, 5000, 1 << 20)]
    with open(path, "wb") as f:
        w = HashingWriter(f)
        for p in parts:
            w.write(p)
        w.write(memoryview(np.arange(10, dtype=np.int64)))  # not bytes, 80 bytes
    assert w.hexdigest() == sha256_file(path)
    assert w.nbytes == w.tell() == path.stat().st_size


@pytest.mark.parametrize("shape", [(0, 3, 3), (1, 1, 1), (3, 151, 151), (70000,),
                                   (3 * 65536 + 5,)])
def test_pixel_sums_are_exact(shape):
    rng = np.random.default_rng(1)
    for a in (rng.integers(0, 256, shape, dtype=np.uint8), np.full(shape, 255, np.uint8)):
        f = a.reshape(-1).astype(np.int64)
        assert pixel_sums(a) == (f.size, int(f.sum()), int((f * f).sum()))


def _zarr_reference(path, data, rows, level=3):
    """The same array written by Zarr itself, all at once."""
    g = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    a = g.create_array("stim", shape=data.shape, chunks=(rows, *data.shape[1:]),
                       dtype=np.uint8, compressors=zarr.codecs.ZstdCodec(level=level),
                       dimension_names=("time", "y", "x"), chunk_key_encoding=CHUNK_KEYS,
                       attributes={"units": "luminance, uint8 0..255 (row 0 = top)"})
    a[...] = data
    return g


@pytest.mark.parametrize("threads", [1, 3])
def test_frame_chunks_are_zarrs_own_bytes(tmp_path, tiny_sources, threads):
    """A session group written by the threaded frame writer: the stim chunk files and
    metadata are byte for byte what Zarr writes for the same frames (last chunk padded, an
    all-zero chunk not stored), and the file table holds their sizes and sha256."""
    from polar_data.readers import open_session

    store = SimpleNamespace(chunk_bins=7, zstd_level=3, splits={"train": 0.6, "val": 0.2,
                            "test": 0.2}, split_seed=0, clip_len=8)
    with open_session(tiny_sources[0]) as sess:
        chunks = list(session_chunks(sess, 1, 25))
    chunks[0].stim[:14] = 0  # two all-zero chunks: Zarr stores no file for them
    files: dict = {}
    out = tmp_path / f"g{threads}"
    attrs = write_session_group(iter(chunks), out, 6, store, threads=threads, files=files)
    stim = np.concatenate([c.stim for c in chunks])
    assert len(stim) % 7  # a partial last chunk
    ref = _zarr_reference(tmp_path / "ref", stim, 7)
    mine, theirs = _tree(out / "stim"), _tree(tmp_path / "ref" / "stim")
    assert mine.keys() == theirs.keys() and "c.0.0.0" not in mine
    assert [k for k in mine if mine[k] != theirs[k]] == []
    np.testing.assert_array_equal(open_root(out)["stim"][...], ref["stim"][...])
    assert files == {f"stim/{k}": (len(v), hashlib.sha256(v).hexdigest())
                     for k, v in mine.items() if k != "zarr.json"}
    f = stim.reshape(-1).astype(np.int64)
    assert [attrs["pixel_stats"][k] for k in ("count", "sum", "sum_sq")] == [
        f.size, int(f.sum()), int((f * f).sum())]


def test_threads_do_not_change_a_session_group(tmp_path, tiny_sources):
    from polar_data.readers import open_session

    store = SimpleNamespace(chunk_bins=4, zstd_level=3, splits={"train": 0.6, "val": 0.2,
                            "test": 0.2}, split_seed=0, clip_len=8)
    trees = []
    for threads in (1, 4):
        with open_session(tiny_sources[1]) as sess:
            write_session_group(session_chunks(sess, 1, 30), tmp_path / str(threads), 6,
                                store, threads=threads)
        trees.append(_tree(tmp_path / str(threads)))
    assert trees[0] == trees[1]


def test_chunk_files_read_what_zarr_reads(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (37, 5, 6), dtype=np.uint8)
    data[8:16] = 0  # chunk 2 not stored
    g = _zarr_reference(tmp_path / "g", data, 4)
    assert not (tmp_path / "g" / "stim" / "c.2.0.0").exists()
    frames = ChunkFiles.of(g["stim"])
    assert frames is not None
    for a, b in [(0, 37), (0, 4), (3, 9), (8, 16), (4, 12), (35, 37), (36, 36), (10, 11)]:
        np.testing.assert_array_equal(frames(a, b), data[a:b])
    with pytest.raises(IndexError):
        frames(30, 38)
    for dtype in (np.float32, np.float64, np.int32, np.int64, bool):
        x = (rng.normal(size=(29, 3)) * 5).astype(dtype)
        x[4:8] = 0  # a chunk equal to the fill value: no file
        arr = g.create_array(f"a_{np.dtype(dtype).name}", shape=x.shape, chunks=(4, 3),
                             dtype=dtype, compressors=zarr.codecs.ZstdCodec(level=3))
        arr[...] = x
        files = ChunkFiles.of(arr)
        assert files is not None
        for a, b in [(0, 29), (3, 9), (4, 8), (27, 29)]:
            got = files(a, b)
            assert got.dtype == arr[a:b].dtype
            np.testing.assert_array_equal(got, arr[a:b])
    other = g.create_array("f", shape=(8, 4), chunks=(4, 2), dtype=np.float32)
    assert ChunkFiles.of(other) is None  # chunked along a second axis: read through Zarr


def test_threaded_shard_equals_serial_and_webdatasets_writer(tmp_path, tiny_store):
    """write_shard with threads gives the serial file; both are what webdataset's TarWriter
    writes for the same samples; the entry's bytes and sha256 (hashed while writing) are the
    file's."""
    root = open_root(tiny_store / "zarr")
    names = sorted(root.group_keys())
    rows = np.concatenate([np.column_stack([np.full(len(c), i), c])
                           for i, n in enumerate(names)
                           for c in [root[n]["clips/train"][...]]])
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    assert len(rows) > 4
    entries = []
    for threads in (1, 3):
        path = tmp_path / f"t{threads}" / "train-00000.tar"
        path.parent.mkdir()
        entries.append(write_shard(root, names, path, rows, 6, threads=threads))
        assert entries[-1]["sha256"] == sha256_file(path)
        assert entries[-1]["bytes"] == path.stat().st_size
    a, b = (tmp_path / "t1" / "train-00000.tar").read_bytes(), \
        (tmp_path / "t3" / "train-00000.tar").read_bytes()
    assert a == b and entries[0] == entries[1]
    buf = io.BytesIO()
    groups = {i: GroupReader(root[n]) for i, n in enumerate(names)}
    with wds.TarWriter(buf, encoder=False, mtime=0, user="polar", group="polar") as tw:
        for sess, start, n in rows:
            sample = encode_clip(groups[int(sess)], int(sess), "train", int(start), int(n), 6)
            assert entries[0]["sample_sha256"][sample["__key__"]] == sample_digest(sample)
            tw.write(sample)
    assert buf.getvalue() == a


def test_manifest_hashes_taken_while_writing_match_the_files(tiny_store):
    m = json.loads((tiny_store / "manifest.json").read_text())
    for rel, info in m["zarr_files"].items():
        p = tiny_store / "zarr" / rel
        assert info == {"bytes": p.stat().st_size, "sha256": sha256_file(p)}, rel
    for e in m["shards"]:
        p = tiny_store / "wds" / e["name"]
        assert (e["bytes"], e["sha256"]) == (p.stat().st_size, sha256_file(p))
    parts = [json.loads(p.read_text()) for p in (tiny_store / "parts").glob("session-*.json")]
    assert parts and all(any(k.startswith("stim/c.") for k in p["files"]) for p in parts)


def test_stim_member_decodes_with_numcodecs(tiny_store):
    """Sanity: the shard format is unchanged (one zstd .npy member per array)."""
    shard = sorted((tiny_store / "wds").glob("train-*.tar"))[0]
    sample = next(iter(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)))
    stim = np.load(io.BytesIO(numcodecs.Zstd().decode(sample["stim.npy.zst"])))
    assert stim.dtype == np.uint8 and stim.ndim == 3


def test_stim_member_reuses_zarr_chunks_and_decodes_to_the_frames(tmp_path):
    """A clip's stim member is the Zarr chunk files of the whole chunks inside it, as stored,
    between zstd frames holding the header and the rows at either end: decoded (numcodecs
    and the zstd command line alike) it is exactly ``np.save`` of the frames, for clips
    starting and ending on or off chunk edges, over an all-zero chunk (no file) and up to
    the last, padded chunk."""
    import shutil
    import subprocess

    from polar_data.store.shards import _frames_npy, _from_npy

    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (45, 6, 7), dtype=np.uint8)
    data[16:24] = 0  # chunk 2 not stored
    g = _zarr_reference(tmp_path / "g", data, 8)
    reader = SimpleNamespace(files={"stim": ChunkFiles.of(g["stim"])},
                             read=lambda name, a, b: g[name][a:b])
    chunk3 = (tmp_path / "g" / "stim" / "c.3.0.0").read_bytes()
    for a, b in [(0, 45), (8, 32), (3, 29), (5, 12), (0, 8), (17, 45), (40, 45), (2, 9)]:
        member = _frames_npy(reader, a, b)
        buf = io.BytesIO()
        np.save(buf, data[a:b], allow_pickle=False)
        assert bytes(numcodecs.Zstd().decode(member)) == buf.getvalue(), (a, b)
        np.testing.assert_array_equal(_from_npy(member), data[a:b])
        assert (chunk3 in member) == (a <= 24 and b >= 32), (a, b)
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-d", "-c"], input=_frames_npy(reader, 3, 45),
                             capture_output=True, check=True).stdout
        np.testing.assert_array_equal(np.load(io.BytesIO(out)), data[3:45])
