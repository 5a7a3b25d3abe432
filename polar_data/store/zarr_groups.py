"""The Zarr v3 store: one group per session, every array chunked along time, frames once.

Layout of ``<out>/zarr/`` (a Zarr v3 hierarchy)::

    zarr.json                 root group; attrs: schema, sessions, window_len, config
    <session>/                one group per session; attrs: see ``session_attrs``
        stim      uint8   [T, H, W]   chunks (chunk_bins, H, W), zstd
        eyepos    float32 [T, 2]      degrees, x right / y up, NaN where eye-invalid
        eye_valid bool    [T]
        trial     int64   [T]
        t         float64 [T]         seconds
        robs      int32   [T, N]
        dfs       bool    [T, N]      unit mask at each window end (see schema.CONVENTIONS)
        true_rate float32 [T, N]      demo sessions only
        split     int8    [T]         0 train, 1 val, 2 test (by trial)
        windows/<split> int64 [W_s]   end bins of every valid window of that split
        clips/<split>   int64 [C, 2]  (first target bin, number of targets) of each clip

Overlapping windows are never materialised: a window is just its end bin.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BytesCodec, ZstdCodec

from polar_data.schema import CONVENTIONS, SCHEMA_VERSION, SPLITS, StoreError, check_schema
from polar_data.sessions.clips import cut_clips
from polar_data.sessions.session import Session, SessionError
from polar_data.sessions.splits import assign_trials
from polar_data.sessions.validity import unit_filter, window_valid
from polar_data.store.checksum import default_threads

# dimension names (Zarr v3 ``dimension_names``, read by xarray) and units of every array
ARRAY_DIMS = {
    "stim": (("time", "y", "x"), "luminance, uint8 0..255 (row 0 = top)"),
    "eyepos": (("time", "xy"), "degrees of visual angle (x right, y up)"),
    "eye_valid": (("time",), "bool"),
    "trial": (("time",), "trial id"),
    "t": (("time",), "seconds (bin start)"),
    "robs": (("time", "unit"), "spikes per bin"),
    "dfs": (("time", "unit"), "bool"),
    "split": (("time",), "0 train, 1 val, 2 test"),
    "true_rate": (("time", "unit"), "expected spikes per bin"),
    "windows": (("window",), "bin index of each valid window's last bin"),
    "clips": (("clip", "start_count"), "(first target bin, number of targets)"),
}


def pixel_sums(frames: np.ndarray, block: int = 1 << 16) -> tuple[int, int, int]:
    """Exact ``(count, sum, sum of squares)`` of uint8 frames, in blocks of integer sums.

    Each block (at most 65536 pixels) is widened to uint16, where a square fits (255**2 <
    2**16), and summed in uint32, where a block's sums fit (65536 * 255**2 < 2**32): 5x
    faster than squaring in uint32 and 50x faster than a histogram (``np.bincount`` widens
    every pixel to int64)."""
    block = min(block, 1 << 16)
    flat = np.ascontiguousarray(frames).reshape(-1)
    buf = np.empty(min(block, flat.size), np.uint16)
    total = total_sq = 0
    for i in range(0, flat.size, block):
        b = flat[i : i + block]
        x = buf[: len(b)]
        np.copyto(x, b)
        total += int(x.sum(dtype=np.uint32))
        np.multiply(x, x, out=x)
        total_sq += int(x.sum(dtype=np.uint32))
    return int(flat.size), total, total_sq


def pixel_stats(stim: np.ndarray) -> dict:
    """Exact statistics of uint8 frames [T, H, W]: ``count``, integer ``sum`` and ``sum_sq``,
    and the ``mean`` and ``std`` they give."""
    return stats_from_sums(*pixel_sums(stim))


def stats_from_sums(count: int, total: int, total_sq: int) -> dict:
    """Pixel statistics from exact integer sums (any number of sessions added together)."""
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return {"count": count, "sum": total, "sum_sq": total_sq, "mean": mean,
            "std": float(np.sqrt(var))}


def train_mean_rates(robs: np.ndarray, dfs: np.ndarray, split: np.ndarray) -> np.ndarray:
    """float64 [N]: per-unit mean spikes per bin over the training targets only (bins of the
    train split where ``dfs`` counts the unit), for the readout's bias: validation and test
    bins never inform a model. 0 for a unit with no training target."""
    m = dfs & (split == SPLITS.index("train"))[:, None]
    return (robs.astype(np.int64) * m).sum(0) / np.maximum(m.sum(0), 1)


_FLUSH_BYTES = 2 << 20  # pending rows of a small array written once they reach this
# chunk files named ``c.<k>.0...`` side by side in the array's folder (Zarr v3's default
# encoding with its other separator): one file per chunk, no folder per chunk index
CHUNK_KEYS = {"name": "default", "separator": "."}


class _Appender:
    """One array of a session group, written in whole chunks as rows arrive (the last chunk
    at ``close``), so a session is never held whole and every chunk is encoded once. Rows
    are written once about ``_FLUSH_BYTES`` of whole chunks are pending (each write also
    rewrites the array's metadata: few writes are faster)."""

    def __init__(self, group, name: str, row_shape: tuple, dtype, chunk_rows: int, comp):
        dims, units = ARRAY_DIMS[name]
        self.array = group.create_array(name, shape=(0, *row_shape),
                                        chunks=(chunk_rows, *row_shape), dtype=dtype,
                                        compressors=comp, dimension_names=dims,
                                        chunk_key_encoding=CHUNK_KEYS,
                                        attributes={"units": units})
        self.rows, self.pending, self.n_pending = chunk_rows, [], 0
        chunk_bytes = chunk_rows * int(np.prod(row_shape)) * np.dtype(dtype).itemsize
        self.flush_rows = chunk_rows * max(1, _FLUSH_BYTES // max(1, chunk_bytes))

    def add(self, block: np.ndarray) -> None:
        self.pending.append(np.asarray(block, dtype=self.array.dtype))
        self.n_pending += len(block)
        if self.n_pending >= self.flush_rows:
            data = np.concatenate(self.pending)
            k = (len(data) // self.rows) * self.rows
            self._write(data[:k])
            self.pending = [data[k:]] if k < len(data) else []
            self.n_pending = len(data) - k

    def _write(self, data: np.ndarray) -> None:
        n0 = self.array.shape[0]
        self.array.resize((n0 + len(data), *self.array.shape[1:]))
        self.array[n0:] = data

    def close(self) -> None:
        if self.n_pending:
            self._write(np.concatenate(self.pending))
        self.pending, self.n_pending = [], 0


def _frame_chunk_task(path: Path, block: np.ndarray, n_rows: int, codec) -> tuple:
    """Everything one stim chunk needs, in one pool thread (zstd, numpy's reductions,
    sha256 and the write all release the GIL): the pixel sums of its ``n_rows`` real
    rows, and the chunk file written and hashed. Returns ``(sums, bytes, sha256)``, bytes
    0 when the chunk is all fill value and no file is written (as Zarr does)."""
    sums = pixel_sums(block[:n_rows])
    if not block.any():  # Zarr writes no chunk equal to the fill value (0) everywhere
        return sums, 0, ""
    data = codec.encode(block)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return sums, len(data), hashlib.sha256(data).hexdigest()


class _FrameChunks(_Appender):
    """The stim array written chunk by chunk by a thread pool, bypassing Zarr's write path:
    each whole chunk is compressed, hashed and written to its chunk file by one task, with
    the pixel sums of its frames. The bytes are exactly Zarr's (``bytes`` then ``zstd``
    codecs, the last chunk padded with the fill value, an all-fill chunk not stored:
    ``tests/test_store.py`` checks them against Zarr's own writes); the array's metadata
    is Zarr's, its shape set at ``close``.

    ``files``: {path below the group: (bytes, sha256)} of every chunk file written, so the
    build never reads them back to hash them. At most ``2 * threads`` chunks in flight."""

    def __init__(self, group, group_path: Path, name: str, row_shape: tuple, chunk_rows: int,
                 level: int, pool: ThreadPoolExecutor, threads: int):
        super().__init__(group, name, row_shape, np.uint8,
                         chunk_rows, ZstdCodec(level=level))
        meta = self.array.metadata
        if (len(meta.codecs) != 2 or not isinstance(meta.codecs[0], BytesCodec)
                or meta.codecs[1] != ZstdCodec(level=level, checksum=False)
                or meta.fill_value != 0 or zarr.config.get("array.write_empty_chunks")):
            raise RuntimeError(f"unexpected Zarr array layout for {name}: {meta}")
        self.codec = numcodecs.Zstd(level=level, checksum=False)
        self.dir, self.name = Path(group_path), name
        self.pool, self.max_ahead = pool, 2 * max(1, threads)
        self.n_rows, self.n_chunks = 0, 0
        self.inflight: deque[tuple[str, Future]] = deque()
        self.files: dict[str, tuple[int, str]] = {}
        self.pixels = [0, 0, 0]

    def _submit(self, block: np.ndarray, n_rows: int) -> None:
        while len(self.inflight) >= self.max_ahead:
            self._collect()
        rel = f"{self.name}/" + self.array.metadata.encode_chunk_key(
            (self.n_chunks,) + (0,) * (block.ndim - 1))
        fut = self.pool.submit(_frame_chunk_task, self.dir / rel, block, n_rows, self.codec)
        self.inflight.append((rel, fut))
        self.n_chunks += 1
        self.n_rows += n_rows

    def _collect(self) -> None:
        rel, fut = self.inflight.popleft()
        sums, size, digest = fut.result()
        self.pixels = [x + y for x, y in zip(self.pixels, sums)]
        if size:
            self.files[rel] = (size, digest)

    def add(self, block: np.ndarray) -> None:
        """Whole chunks go to the pool as views of ``block`` (never copied: the caller
        hands over ``block`` and never changes it after); the rows left over wait for
        the next block."""
        block = np.asarray(block, dtype=np.uint8)
        if self.n_pending:
            k = min(self.rows - self.n_pending, len(block))
            self.pending.append(block[:k])
            self.n_pending += k
            block = block[k:]
            if self.n_pending < self.rows:
                return
            self._write(np.concatenate(self.pending))
            self.pending, self.n_pending = [], 0
        k = (len(block) // self.rows) * self.rows
        self._write(block[:k])
        if k < len(block):
            self.pending, self.n_pending = [block[k:]], len(block) - k

    def _write(self, data: np.ndarray) -> None:
        # ``data`` is never changed after (see ``add``): tasks may hold views of it
        for i in range(0, len(data), self.rows):
            block = np.ascontiguousarray(data[i : i + self.rows])
            n = len(block)
            if n < self.rows:  # the last chunk: padded with the fill value, as Zarr does
                block = np.concatenate([block, np.zeros((self.rows - n, *block.shape[1:]),
                                                        block.dtype)])
            self._submit(block, n)

    def close(self) -> None:
        super().close()
        while self.inflight:
            self._collect()
        self.array.resize((self.n_rows, *self.array.shape[1:]))


def write_session_group(chunks: Iterable[Session], group_path: Path, window_len: int,
                        store_cfg, threads: int | None = None,
                        files: dict | None = None) -> dict:
    """Write one session's group at ``group_path`` (a fresh directory) from consecutive
    chunks of whole trials (one :class:`Session` is one chunk), each written as it comes;
    returns the group's attrs.

    Held at a time: one chunk, a few frame chunks in the pool, about 2 MB of pending rows
    per other array, a few bytes per bin (window validity, trial ids) plus per-trial spike
    sums, from which the
    trial split, windows, clips and training mean rates are made at the end, exactly as
    from the whole session. Raises SessionError naming the session when it has no valid
    window.

    Frames go through a pool of ``threads`` threads (default: one per core) that compress,
    hash and write each stim chunk with its pixel sums; ``files``, when given, receives
    {path below the group: (bytes, sha256)} of every stim chunk file.
    """
    threads = default_threads() if threads is None else max(1, threads)
    with ThreadPoolExecutor(threads) as pool:
        return _write_session_group(chunks, Path(group_path), window_len, store_cfg, pool,
                                    threads, files)


def _write_session_group(chunks, group_path: Path, window_len: int, store_cfg, pool,
                         threads: int, files: dict | None) -> dict:
    g = zarr.open_group(store=str(group_path), mode="w-", zarr_format=3)
    comp = ZstdCodec(level=store_cfg.zstd_level)
    cb = store_cfg.chunk_bins
    arrays: dict[str, _Appender] = {}
    first = None
    valid_parts, trial_parts = [], []
    spike_sums: dict[int, np.ndarray] = {}  # trial -> [2, N] int64: sum dfs*robs, sum dfs
    n_bins = 0
    for chunk in chunks:
        if first is None:
            first = chunk
            H, W = chunk.frame_hw
            N = chunk.n_units
            rows = {"stim": ((H, W), np.uint8, cb), "eyepos": ((2,), np.float32, cb * 16),
                    "eye_valid": ((), bool, cb * 16), "trial": ((), np.int64, cb * 16),
                    "t": ((), np.float64, cb * 16), "robs": ((N,), np.int32, cb * 16),
                    "dfs": ((N,), bool, cb * 16)}
            if chunk.true_rate is not None:
                rows["true_rate"] = ((N,), np.float32, cb * 16)
            for name, (shape, dtype, n) in rows.items():
                if name == "stim":
                    arrays[name] = _FrameChunks(g, group_path, name, shape, n,
                                                store_cfg.zstd_level, pool, threads)
                else:
                    arrays[name] = _Appender(g, name, shape, dtype, n, comp)
        elif chunk.frame_hw != first.frame_hw or chunk.n_units != first.n_units:
            raise SessionError(f"session {first.name!r}: chunk at bin {n_bins} has frames "
                               f"{chunk.frame_hw} and {chunk.n_units} units, the first had "
                               f"{first.frame_hw} and {first.n_units}")
        elif len(trial_parts) and chunk.trial[0] == trial_parts[-1][-1]:
            raise SessionError(f"session {first.name!r}: trial {chunk.trial[0]} is split "
                               f"across two chunks at bin {n_bins}")
        valid = window_valid(chunk, window_len)
        dfs = unit_filter(chunk, valid)
        for name, data in (("stim", chunk.stim), ("eyepos", chunk.eyepos),
                           ("eye_valid", chunk.eye_valid), ("trial", chunk.trial),
                           ("t", chunk.t), ("robs", chunk.robs), ("dfs", dfs),
                           ("true_rate", chunk.true_rate)):
            if name in arrays:
                arrays[name].add(data)
        counted = chunk.robs.astype(np.int64) * dfs
        for tid, a, b in zip(*chunk.trial_bounds()):
            spike_sums[int(tid)] = np.stack([counted[a:b].sum(0), dfs[a:b].sum(0)])
        valid_parts.append(valid)
        trial_parts.append(chunk.trial.astype(np.int64))
        n_bins += chunk.n_bins
    if first is None:
        raise SessionError(f"{group_path.name}: the session has no bins")
    valid = np.concatenate(valid_parts)
    trial = np.concatenate(trial_parts)
    if not valid.any():
        raise SessionError(
            f"session {first.name!r}: no valid window of {window_len} bins (every window "
            "crosses a trial edge or an eye-tracking dropout)"
        )
    split_of_trial = assign_trials(trial, store_cfg.splits, store_cfg.split_seed, first.name)
    code_of_trial = {k: SPLITS.index(v) for k, v in split_of_trial.items()}
    split = np.array([code_of_trial[int(k)] for k in trial], dtype=np.int8)
    arrays["split"] = _Appender(g, "split", (), np.int8, cb * 16, comp)
    arrays["split"].add(split)
    for appender in arrays.values():
        appender.close()
    stim = arrays["stim"]
    pixels = stim.pixels  # exact integers: count, sum, sum of squares
    if files is not None:
        files.update(stim.files)

    def put(name, data, chunk_shape):
        dims, units = ARRAY_DIMS[name.split("/")[0]]
        a = g.create_array(name, shape=data.shape, chunks=chunk_shape, dtype=data.dtype,
                           compressors=comp, dimension_names=dims,
                           chunk_key_encoding=CHUNK_KEYS, attributes={"units": units})
        a[...] = data

    n_windows, n_clips = {}, {}
    for code, name in enumerate(SPLITS):
        ends = np.flatnonzero(valid & (split == code)).astype(np.int64)
        put(f"windows/{name}", ends, (max(len(ends), 1),))
        clips = cut_clips(valid & (split == code), store_cfg.clip_len)
        put(f"clips/{name}", clips, (max(len(clips), 1), 2))
        n_windows[name] = int(len(ends))
        n_clips[name] = int(len(clips))
    train = [s for k, s in spike_sums.items() if split_of_trial[k] == "train"]
    totals = np.sum(train, axis=0) if train else np.zeros((2, first.n_units), np.int64)
    mean_rate = totals[0] / np.maximum(totals[1], 1)
    prov = first.provenance
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "conventions": CONVENTIONS,
        "name": first.name,
        "name_in_file": first.extra.get("name_in_file", first.name),
        "stim_type": first.stim_type,
        "rate_hz": first.rate_hz,
        "ppd": first.ppd,
        "frame_hw": list(first.frame_hw),
        "n_bins": n_bins,
        "n_units": first.n_units,
        "unit_ids": [int(u) for u in first.unit_ids],
        "mean_rate": [float(x) for x in mean_rate],
        "window_len": window_len,
        "clip_len": store_cfg.clip_len,
        "splits": dict(store_cfg.splits),
        "split_seed": store_cfg.split_seed,
        "trial_split": {str(k): v for k, v in sorted(split_of_trial.items())},
        "n_windows": n_windows,
        "n_clips": n_clips,
        "pixel_stats": stats_from_sums(*pixels),
        "has_true_rate": first.true_rate is not None,
        "source": {"path": prov.source if prov else "", "sha256": prov.sha256 if prov else "",
                   "reader": prov.reader if prov else ""},
    }
    g.attrs.update(attrs)
    return attrs


def open_root(zarr_dir: str | Path, mode: str = "r") -> zarr.Group:
    """The root group of a store's ``zarr/`` folder, finished or not (the build's own opens:
    ``mode="a"`` creates it); readers use :func:`open_store`."""
    return zarr.open_group(store=str(zarr_dir), mode=mode, zarr_format=3)


def open_store(zarr_dir: str | Path) -> zarr.Group:
    """Open a finished Zarr store read-only, checking the schema: the one way every reader
    (loaders, verification, evaluation, benchmarks) opens a store's ``zarr/`` folder."""
    zarr_dir = Path(zarr_dir)
    if not (zarr_dir / "zarr.json").is_file():
        raise StoreError(f"{zarr_dir}: no Zarr store here (zarr.json missing); "
                         "run pipelines/build_shards.py first")
    root = open_root(zarr_dir)
    check_schema(dict(root.attrs), str(zarr_dir))
    return root


def read_session_group(group: zarr.Group) -> dict[str, np.ndarray]:
    """All per-bin arrays of one session group as numpy (for verification and tests)."""
    names = ["stim", "eyepos", "eye_valid", "trial", "t", "robs", "dfs", "split"]
    if group.attrs.get("has_true_rate"):
        names.append("true_rate")
    try:
        return {n: group[n][...] for n in names}
    except KeyError as e:
        raise StoreError(f"{group.store}: session {group.path!r} lacks array {e}") from e
