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

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from .clips import cut_clips
from .filters import unit_filter, window_valid
from .schema import CONVENTIONS, SCHEMA_VERSION, SPLITS, StoreError, check_schema
from .session import Session, SessionError
from .splits import assign_trials

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


def pixel_sums(frames: np.ndarray, block: int = 1 << 22) -> tuple[int, int, int]:
    """Exact ``(count, sum, sum of squares)`` of uint8 frames, in blocks of integer sums
    (10x faster than a histogram: ``np.bincount`` widens every pixel to int64)."""
    flat = np.ascontiguousarray(frames).reshape(-1)
    total = total_sq = 0
    for i in range(0, flat.size, block):
        b = flat[i : i + block].astype(np.uint32)
        total += int(b.sum(dtype=np.uint64))
        total_sq += int((b * b).sum(dtype=np.uint64))
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


class _Appender:
    """One array of a session group, written in whole chunks as rows arrive (the last chunk
    at ``close``), so a session is never held whole and every chunk is encoded once."""

    def __init__(self, group, name: str, row_shape: tuple, dtype, chunk_rows: int, comp):
        dims, units = ARRAY_DIMS[name]
        self.array = group.create_array(name, shape=(0, *row_shape),
                                        chunks=(chunk_rows, *row_shape), dtype=dtype,
                                        compressors=comp, dimension_names=dims,
                                        attributes={"units": units})
        self.rows, self.pending, self.n_pending = chunk_rows, [], 0

    def add(self, block: np.ndarray) -> None:
        self.pending.append(np.asarray(block, dtype=self.array.dtype))
        self.n_pending += len(block)
        if self.n_pending >= self.rows:
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


def write_session_group(chunks: Iterable[Session], group_path: Path, window_len: int,
                        store_cfg) -> dict:
    """Write one session's group at ``group_path`` (a fresh directory) from consecutive
    chunks of whole trials (one :class:`Session` is one chunk), each written as it comes;
    returns the group's attrs.

    Held at a time: one chunk, less than one Zarr chunk of pending rows per array, and a few
    bytes per bin (window validity, trial ids) plus per-trial spike sums, from which the
    trial split, windows, clips and training mean rates are made at the end, exactly as
    from the whole session. Raises SessionError naming the session when it has no valid
    window.
    """
    g = zarr.open_group(store=str(group_path), mode="w-", zarr_format=3)
    comp = ZstdCodec(level=store_cfg.zstd_level)
    cb = store_cfg.chunk_bins
    arrays: dict[str, _Appender] = {}
    first = None
    valid_parts, trial_parts = [], []
    pixels = [0, 0, 0]  # exact integers: count, sum, sum of squares
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
        pixels = [x + y for x, y in zip(pixels, pixel_sums(chunk.stim))]
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

    def put(name, data, chunk_shape):
        dims, units = ARRAY_DIMS[name.split("/")[0]]
        a = g.create_array(name, shape=data.shape, chunks=chunk_shape, dtype=data.dtype,
                           compressors=comp, dimension_names=dims,
                           attributes={"units": units})
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
