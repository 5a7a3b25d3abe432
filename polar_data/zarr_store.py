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


def pixel_stats(stim: np.ndarray, chunk_bytes: int = 1 << 22) -> dict:
    """Exact statistics of uint8 frames [T, H, W]: ``count``, integer ``sum`` and ``sum_sq``
    (from a histogram of each chunk), and the ``mean`` and ``std`` they give."""
    flat = stim.reshape(-1)
    hist = np.zeros(256, dtype=np.int64)
    for i in range(0, flat.size, chunk_bytes):
        hist += np.bincount(flat[i : i + chunk_bytes], minlength=256)
    return stats_from_sums(int(flat.size), *_hist_sums(hist))


def _hist_sums(hist: np.ndarray) -> tuple[int, int]:
    v = np.arange(256, dtype=object)
    return int((hist.astype(object) * v).sum()), int((hist.astype(object) * v * v).sum())


def stats_from_sums(count: int, total: int, total_sq: int) -> dict:
    """Pixel statistics from exact integer sums (any number of sessions added together)."""
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return {"count": count, "sum": total, "sum_sq": total_sq, "mean": mean,
            "std": float(np.sqrt(var))}


def session_attrs(session: Session, window_len: int, store_cfg, stats: dict,
                  n_windows: dict, n_clips: dict, split_of_trial: dict, dfs: np.ndarray,
                  split: np.ndarray) -> dict:
    prov = session.provenance
    return {
        "schema_version": SCHEMA_VERSION,
        "conventions": CONVENTIONS,
        "name": session.name,
        "name_in_file": session.extra.get("name_in_file", session.name),
        "stim_type": session.stim_type,
        "rate_hz": session.rate_hz,
        "ppd": session.ppd,
        "frame_hw": list(session.frame_hw),
        "n_bins": session.n_bins,
        "n_units": session.n_units,
        "unit_ids": [int(u) for u in session.unit_ids],
        "mean_rate": [float(x) for x in train_mean_rates(session.robs, dfs, split)],
        "window_len": window_len,
        "clip_len": store_cfg.clip_len,
        "splits": dict(store_cfg.splits),
        "split_seed": store_cfg.split_seed,
        "trial_split": {str(k): v for k, v in sorted(split_of_trial.items())},
        "n_windows": n_windows,
        "n_clips": n_clips,
        "pixel_stats": stats,
        "has_true_rate": session.true_rate is not None,
        "source": {"path": prov.source if prov else "", "sha256": prov.sha256 if prov else "",
                   "reader": prov.reader if prov else ""},
    }


def train_mean_rates(robs: np.ndarray, dfs: np.ndarray, split: np.ndarray) -> np.ndarray:
    """float64 [N]: per-unit mean spikes per bin over the training targets only (bins of the
    train split where ``dfs`` counts the unit), for the readout's bias: validation and test
    bins never inform a model. 0 for a unit with no training target."""
    m = dfs & (split == SPLITS.index("train"))[:, None]
    return (robs.astype(np.float64) * m).sum(0) / np.maximum(m.sum(0), 1)


def write_session_group(session: Session, group_path: Path, window_len: int, store_cfg) -> dict:
    """Write one session's group at ``group_path`` (a fresh directory). Returns its attrs.

    Raises SessionError naming the session when it has no valid window.
    """
    valid = window_valid(session, window_len)
    if not valid.any():
        raise SessionError(
            f"session {session.name!r}: no valid window of {window_len} bins (every window "
            "crosses a trial edge or an eye-tracking dropout)"
        )
    dfs = unit_filter(session, valid)
    split_of_trial = assign_trials(session.trial, store_cfg.splits, store_cfg.split_seed,
                                   session.name)
    split_code = {name: i for i, name in enumerate(SPLITS)}
    split = np.array([split_code[split_of_trial[int(k)]] for k in session.trial], dtype=np.int8)

    g = zarr.open_group(store=str(group_path), mode="w-", zarr_format=3)
    comp = ZstdCodec(level=store_cfg.zstd_level)
    H, W = session.frame_hw
    cb = store_cfg.chunk_bins

    def put(name, data, chunks):
        dims, units = ARRAY_DIMS[name.split("/")[0]]
        a = g.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                           compressors=comp, dimension_names=dims,
                           attributes={"units": units})
        a[...] = data

    put("stim", session.stim, (cb, H, W))
    put("eyepos", session.eyepos, (cb * 16, 2))
    put("eye_valid", session.eye_valid, (cb * 16,))
    put("trial", session.trial.astype(np.int64), (cb * 16,))
    put("t", session.t, (cb * 16,))
    put("robs", session.robs.astype(np.int32), (cb * 16, session.n_units))
    put("dfs", dfs, (cb * 16, session.n_units))
    put("split", split, (cb * 16,))
    if session.true_rate is not None:
        put("true_rate", session.true_rate.astype(np.float32), (cb * 16, session.n_units))
    n_windows, n_clips = {}, {}
    for code, name in enumerate(SPLITS):
        ends = np.flatnonzero(valid & (split == code)).astype(np.int64)
        put(f"windows/{name}", ends, (max(len(ends), 1),))
        clips = cut_clips(valid & (split == code), store_cfg.clip_len)
        put(f"clips/{name}", clips, (max(len(clips), 1), 2))
        n_windows[name] = int(len(ends))
        n_clips[name] = int(len(clips))
    attrs = session_attrs(session, window_len, store_cfg, pixel_stats(session.stim),
                          n_windows, n_clips, split_of_trial, dfs, split)
    g.attrs.update(attrs)
    return attrs


def open_store(zarr_dir: str | Path) -> zarr.Group:
    """Open a finished Zarr store read-only, checking the schema."""
    zarr_dir = Path(zarr_dir)
    if not (zarr_dir / "zarr.json").is_file():
        raise StoreError(f"{zarr_dir}: no Zarr store here (zarr.json missing); "
                         "run pipelines/build_shards.py first")
    root = zarr.open_group(store=str(zarr_dir), mode="r", zarr_format=3)
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
