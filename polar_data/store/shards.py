"""WebDataset tar shards of clips, for streaming on clusters.

Each sample is one clip (see :mod:`polar_data.sessions.clips`): ``n`` target bins
(``n <= clip_len``) plus the ``window_len - 1`` bins of history before them,
``S = window_len - 1 + n`` bins in all, oldest first. Members of a sample (key
``<session index>_<first target bin>``); every array is a ``.npy`` file (numpy's format,
header included) compressed with zstd, so plain tools decode it (``zstd -d``, or
``np.load(io.BytesIO(numcodecs.Zstd().decode(member)))``, numcodecs >= 0.16.4: ``stim`` is
several zstd frames one after the other, the Zarr store's own compressed chunks reused where
a whole chunk lies in the clip):

    meta.json         session, session_index, split, start (first target bin), n_targets,
                      window_len, clip_len, frame_hw
    stim.npy.zst      uint8 [S, H, W] frames
    eyepos.npy.zst    float32 [S, 2] degrees, x right / y up
    t.npy.zst         float64 [S] seconds
    robs.npy.zst      int32 [n, N] counts at the targets
    dfs.npy.zst       bool [n, N] unit mask at the targets
    true_rate.npy.zst float32 [n, N] (demo stores only)

The manifest lists the sha256 of every sample (:func:`sample_digest`): loaders check each
sample against it before decoding. Shards are named ``<split>-<k:05d>.tar``; clips of every
session are shuffled together (seed ``store.shard_seed``) before they are cut into shards,
so a shard mixes sessions.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numcodecs
import numpy as np

from polar_data.schema import SPLITS, StoreError
from polar_data.store.checksum import HashingWriter, default_threads
from polar_data.store.chunk_files import ChunkFiles

_ZSTD_LEVEL = 3
# the rows of a clip outside whole Zarr chunks (a quarter of a clip's frames on average):
# compressed for speed, 2.3x faster than level 3 on 151 x 151 crops, 11% more bytes
_ENDS_LEVEL = 1


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return numcodecs.Zstd(level=_ZSTD_LEVEL).encode(buf.getvalue())


def _npy_header(shape: tuple, dtype) -> bytes:
    """The header ``np.save`` writes for a C-order array of ``shape`` and ``dtype``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(int(x) for x in shape)})
    return buf.getvalue()


def _frames_npy(g: GroupReader, a: int, b: int) -> bytes:
    """``stim.npy.zst`` of rows ``a .. b-1``: the bytes of ``_npy(frames)`` once decoded,
    made of concatenated zstd frames (which zstd decodes as one stream): the stored Zarr
    chunk files of every whole chunk inside ``a .. b-1`` as they are (compressed once, at
    ingestion), and the header with the rows before the first whole chunk and the rows after
    the last one compressed here (at ``_ENDS_LEVEL``). Without chunk files (not a local
    store of our layout) the whole clip is compressed here."""
    files = g.files["stim"]
    if files is None or b - a < files.rows:
        return _npy(g.read("stim", a, b))
    zstd = numcodecs.Zstd(level=_ENDS_LEVEL)
    c = files.rows
    c0, c1 = -(-a // c) * c, (b // c) * c  # whole chunks: rows c0 .. c1-1
    head = _npy_header((b - a, *files.row_shape), files.dtype)
    parts = [zstd.encode(head + files(a, c0).tobytes())]
    for k in range(c0 // c, c1 // c):
        raw = files.chunk_bytes(k)
        parts.append(raw if raw is not None else zstd.encode(files(k * c, (k + 1) * c)))
    if c1 < b:
        parts.append(zstd.encode(files(c1, b)))
    return b"".join(parts)


_NPY_HEADERS: dict[bytes, tuple] = {}  # header bytes -> (shape, fortran order, dtype)


def _from_npy(b: bytes) -> np.ndarray:
    """Inverse of :func:`_npy`, without copying the array out of the decompressed bytes.
    Parsed headers are remembered (numpy parses them with ``ast``; clips repeat a handful)."""
    raw = numcodecs.Zstd().decode(b)
    header_len = (int.from_bytes(raw[8:10], "little") + 10 if raw[6] == 1
                  else int.from_bytes(raw[8:12], "little") + 12)
    key = bytes(raw[:header_len])
    parsed = _NPY_HEADERS.get(key)
    if parsed is None:
        f = io.BytesIO(key)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        parsed = read_header(f)
        if parsed[2].hasobject:
            raise StoreError("a shard member holds Python objects (refused)")
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[key] = parsed
    shape, fortran, dtype = parsed
    a = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=header_len)
    return a.reshape(shape, order="F" if fortran else "C")


def clip_table(root, window_len: int, names: list[str]) -> dict[str, np.ndarray]:
    """Per split: int64 [C, 3] rows (session index, first target, number of targets) over the
    sessions ``names`` (sorted) of the Zarr ``root`` group."""
    table = {}
    for split in SPLITS:
        rows = []
        for i, name in enumerate(names):
            g = root[name]
            clips = g[f"clips/{split}"][...]
            if len(clips):
                rows.append(np.column_stack([np.full(len(clips), i), clips]))
        table[split] = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
    return table


def plan_shards(table: dict[str, np.ndarray], frame_bytes: int, window_len: int,
                clip_len: int, target_mb: float, seed: int) -> list[tuple[str, np.ndarray]]:
    """Shuffle each split's clips (all sessions together) and cut them into shards of about
    ``target_mb`` MB of raw frames. Returns ``[(shard name, rows [c, 4]), ...]``."""
    plan = []
    for code, split in enumerate(SPLITS):
        rows = table[split]
        if not len(rows):
            continue
        rng = np.random.default_rng([seed, code])
        rows = rows[rng.permutation(len(rows))]
        clip_bytes = frame_bytes * (window_len - 1 + clip_len)
        per_shard = max(1, int(target_mb * 1e6 // clip_bytes))
        for k, s in enumerate(range(0, len(rows), per_shard)):
            plan.append((f"{split}-{k:05d}.tar", rows[s : s + per_shard]))
    return plan


class GroupReader:
    """One session group opened once: its arrays and the attributes clips need (opening a
    group or an array reads its metadata from disk; a shard reads hundreds of clips).
    ``read(name, a, b)``: rows ``a .. b-1`` of an array (from the chunk files, see
    :class:`ChunkFiles`, else through Zarr)."""

    def __init__(self, group):
        attrs = dict(group.attrs)
        self.name, self.clip_len = attrs["name"], int(attrs["clip_len"])
        self.has_true_rate = bool(attrs.get("has_true_rate"))
        names = ["stim", "eyepos", "t", "robs", "dfs"] + (["true_rate"] if self.has_true_rate
                                                          else [])
        self.arrays = {n: group[n] for n in names}
        self.files = {n: ChunkFiles.of(a) for n, a in self.arrays.items()}

    def __getitem__(self, name: str):
        return self.arrays[name]

    def read(self, name: str, a: int, b: int) -> np.ndarray:
        files = self.files[name]
        return files(a, b) if files is not None else self.arrays[name][a:b]


def encode_clip(g: GroupReader, session_index: int, split: str, start: int, n_targets: int,
                window_len: int) -> dict:
    """Read one clip from session ``g`` and encode it as a WebDataset sample dict."""
    a, b = start - (window_len - 1), start + n_targets
    meta = {
        "session": g.name, "session_index": int(session_index), "split": split,
        "start": int(start), "n_targets": int(n_targets), "window_len": int(window_len),
        "clip_len": g.clip_len, "frame_hw": [int(x) for x in g["stim"].shape[1:]],
    }
    sample = {
        "__key__": f"{session_index:04d}_{start:09d}",
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
        "stim.npy.zst": _frames_npy(g, a, b),
        "eyepos.npy.zst": _npy(g.read("eyepos", a, b)),
        "t.npy.zst": _npy(g.read("t", a, b)),
        "robs.npy.zst": _npy(g.read("robs", start, b)),
        "dfs.npy.zst": _npy(g.read("dfs", start, b)),
    }
    if g.has_true_rate:
        sample["true_rate.npy.zst"] = _npy(g.read("true_rate", start, b))
    return sample


def sample_digest(sample: dict) -> str:
    """sha256 (hex) of one sample's key, member names and member bytes, in name order.

    The same for the dict written by :func:`write_shard` and the raw dict that WebDataset's
    ``group_by_keys`` yields when reading it back (leading dots of member names ignored);
    the manifest lists it per sample so that a loader checks each sample before using it.
    """
    h = hashlib.sha256(str(sample["__key__"]).encode() + b"\0")
    members = {k.lstrip("."): v for k, v in sample.items() if not k.startswith("__")}
    for name in sorted(members):
        data = members[name]
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def decode_clip(sample: dict) -> dict:
    """Inverse of :func:`encode_clip` on the raw bytes WebDataset yields (keys without dot)."""
    def get(k):
        v = sample.get(k, sample.get("." + k))
        if v is None:
            raise StoreError(f"sample {sample.get('__key__')!r} from "
                             f"{sample.get('__url__', '?')} lacks member {k!r}")
        return v

    meta = json.loads(get("meta.json"))
    S = meta["window_len"] - 1 + meta["n_targets"]
    stim = _from_npy(get("stim.npy.zst"))
    if stim.shape != (S, *meta["frame_hw"]) or stim.dtype != np.uint8:
        raise StoreError(f"sample {sample.get('__key__')!r}: stim is {stim.dtype} "
                         f"{stim.shape}, its meta says uint8 {(S, *meta['frame_hw'])}")
    out = {
        "meta": meta,
        "stim": stim,
        "eyepos": _from_npy(get("eyepos.npy.zst")),
        "t": _from_npy(get("t.npy.zst")),
        "robs": _from_npy(get("robs.npy.zst")),
        "dfs": _from_npy(get("dfs.npy.zst")),
    }
    if "true_rate.npy.zst" in sample:
        out["true_rate"] = _from_npy(sample["true_rate.npy.zst"])
    return out


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    """The header of one member, as webdataset's ``TarWriter(encoder=False, mtime=0,
    user="polar", group="polar")`` writes it: fixed mtime/user so a rebuilt shard is
    byte-identical; an integer mtime keeps members in plain ustar headers (a float one adds a
    pax header to every member)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 0, 0o444
    ti.uname = ti.gname = "polar"
    return ti


def tar_sample_parts(sample: dict) -> list[bytes]:
    """One sample's members (name order, ``<key>.<member>``) as a tar stream holds them, in
    pieces to write one after the other: each member's header, its bytes, and NUL padding
    to the next 512-byte block, exactly as ``tarfile`` (and so webdataset's TarWriter)
    appends them."""
    key = sample["__key__"]
    parts = []
    for k in sorted(sample):
        if not k.startswith("_"):
            v = sample[k]
            parts += [_tar_member(f"{key}.{k}", len(v)).tobuf(tarfile.PAX_FORMAT, "utf-8",
                                                              "surrogateescape"),
                      v, tarfile.NUL * (-len(v) % tarfile.BLOCKSIZE)]
    return parts


def tar_end_bytes(offset: int) -> bytes:
    """The end of a tar stream of ``offset`` bytes so far: two NUL blocks, then NULs up to a
    whole record (20 blocks), as ``tarfile`` closes a stream."""
    offset += 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-offset % tarfile.RECORDSIZE))


def _encoded(*job) -> tuple[dict, list[bytes], str]:
    """One clip encoded, as tar pieces, with its digest (all in a pool thread)."""
    sample = encode_clip(*job)
    return sample, tar_sample_parts(sample), sample_digest(sample)


def _in_order(fn, jobs, threads: int):
    """``fn(*job)`` for every job, yielded in order; with ``threads > 1`` run by a pool of
    that many threads, at most ``2 * threads`` ahead of the consumer (bounded memory)."""
    if threads <= 1:
        for job in jobs:
            yield fn(*job)
        return
    with ThreadPoolExecutor(threads) as pool:
        ahead: deque = deque()
        for job in jobs:
            ahead.append(pool.submit(fn, *job))
            if len(ahead) >= 2 * threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def write_shard(root, names: list[str], shard_path: Path, rows: np.ndarray,
                window_len: int, threads: int | None = None,
                readers: dict | None = None) -> dict:
    """Write one shard (under a temporary name, renamed when complete). Returns its entry
    for the manifest: name, samples, owned targets, per-session sample counts, and the
    shard's bytes and sha256 (hashed as it is written). ``samples`` lists the sample keys in
    the order the shard holds them (``sample_sha256``, a JSON object, is stored sorted), so a
    loader can check a shard's sample list, order included.

    Clips are read and compressed by ``threads`` threads (default: one per core; zstd and
    Zarr's decoding release the GIL) and written in ``rows`` order, so the file is the
    same whatever the number of threads. ``readers``: {session name: GroupReader} kept by
    the caller across the shards of one stage (each group opened once)."""
    part = shard_path.with_name(shard_path.name + ".partial")
    split = shard_path.name.split("-")[0]
    owned = 0
    per_session: dict[str, int] = {}
    digests: dict[str, str] = {}
    readers = {} if readers is None else readers
    groups = {}
    for i in np.unique(rows[:, 0]).tolist():
        if names[i] not in readers:
            readers[names[i]] = GroupReader(root[names[i]])
        groups[i] = readers[names[i]]
    jobs = ((groups[int(sess)], int(sess), split, int(start), int(n), window_len)
            for sess, start, n in rows)
    with open(part, "wb") as f:
        # a plain (pax-format) tar stream, as webdataset's TarWriter writes it
        out = HashingWriter(f)
        samples = _in_order(_encoded, jobs, default_threads() if threads is None else threads)
        for (sess, _, n), (sample, parts, digest) in zip(rows, samples):
            for data in parts:
                out.write(data)
            digests[sample["__key__"]] = digest
            owned += int(n)
            per_session[names[sess]] = per_session.get(names[sess], 0) + 1
        out.write(tar_end_bytes(out.nbytes))
    part.replace(shard_path)
    return {"name": shard_path.name, "split": split, "n_samples": int(len(rows)),
            "n_targets": owned, "sessions": dict(sorted(per_session.items())),
            "samples": list(digests), "sample_sha256": digests, "bytes": out.nbytes,
            "sha256": out.hexdigest()}
