"""Memory a session will allocate, estimated from the shapes and dtypes a file declares.

A file's header may declare any size (a chunked dataset costs nothing on disk until it is
written), so the NWB reader adds up, before reading data, what each dataset will cost once
read: arrays read whole (gaze and its times, spike times, the largest screen image decoded to
float for rendering, raster times) are *held*; frames, counts and validity read chunk by
chunk cost *per bin* (:class:`polar_data.sessions.session_source.ChunkBudget`). The factors below
count the copies the reader and the ingestion make of each array (dtype conversions, masks,
index arrays), rounded up.

Limit: ``nwb.max_memory_gb``; unset, the smaller of 8 GB and half the machine's physical
memory (``os.sysconf``), 8 GB where that is unknown. GB here is 10^9 bytes.
"""

from __future__ import annotations

import math
import os

import numpy as np

from polar_data.sessions.session_source import ChunkBudget

GB = 1e9
DEFAULT_CAP_GB = 8.0
OPTION = "nwb.max_memory_gb"
# bytes per gaze sample beyond the raw [T, 2] read: float64 copy and scaled copy, float32
# result, times, trial lookup (int64), masks, kept times/trials/gaze, held gaze, frame index
GAZE_ROW_BYTES = 2 * 8 * 2 + 2 * 4 + 8 + 8 + 2 + 8 + 8 + 8 + 2 * 4 + 2 * 4 + 8
# bytes per unit per bin: robs int32, unit_valid, window filter, int64 counts of the build,
# resampling copies (int32 + int64 sums)
UNIT_BIN_BYTES = 4 + 1 + 1 + 8 + 4 + 8


def default_max_memory_gb() -> float:
    """The smaller of 8 GB and half the physical memory; 8 GB where it is unknown."""
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_CAP_GB
    return min(DEFAULT_CAP_GB, phys / 2 / GB) if phys > 0 else DEFAULT_CAP_GB


def declared(data) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an h5py dataset or array, read from its header only."""
    shape = tuple(int(n) for n in getattr(data, "shape", None) or (len(data),))
    dtype = np.dtype(getattr(data, "dtype", None) or np.float64)
    return shape, dtype


def label(path: str, data) -> str:
    shape, dtype = declared(data)
    return f"{path} (declared shape {list(shape)}, {dtype})"


class Estimate:
    """Items of a session's :class:`ChunkBudget`, added as the reader finds its datasets."""

    def __init__(self, where: str, max_memory_gb: float | None):
        self.where = where
        gb = default_max_memory_gb() if max_memory_gb is None else float(max_memory_gb)
        self.limit = int(gb * GB)
        self.items: list[tuple[str, int, int]] = []

    def add(self, what: str, held: float = 0, per_bin: float = 0) -> None:
        self.items.append((what, int(math.ceil(held)), int(math.ceil(per_bin))))

    def gaze(self, path: str, data) -> None:
        shape, dtype = declared(data)
        rows = shape[0]
        width = math.prod(shape[1:])
        self.add(label(path, data), held=rows * (width * dtype.itemsize + GAZE_ROW_BYTES))

    def whole(self, path: str, data, copies: int = 2) -> None:
        """An array read whole, with ``copies`` float64 copies made of it."""
        shape, dtype = declared(data)
        n = math.prod(shape)
        self.add(label(path, data), held=n * (dtype.itemsize + 8 * copies))

    def image(self, path: str, data) -> None:
        """A screen image, read whole, decoded to float luminance and rendered (float32)."""
        shape, dtype = declared(data)
        hw = math.prod(shape[:2])
        channels = math.prod(shape[2:])
        decode = hw * channels * 8 + hw * 8 if (channels > 1 or dtype.kind == "f") else 0
        self.add(label(path, data), held=hw * channels * dtype.itemsize + decode + hw * 9)

    def frames(self, path: str, data, rows_per_bin: float = 1.0) -> None:
        """Frames [F, H, W(, C)] read chunk by chunk (``rows_per_bin`` frames per bin)."""
        shape, dtype = declared(data)
        hw = math.prod(shape[1:3])
        channels = math.prod(shape[3:])
        decode = hw * channels * 8 + hw * 16 if (channels > 1 or dtype.kind == "f") else 0
        self.add(label(path, data),
                 per_bin=rows_per_bin * (hw * channels * dtype.itemsize + decode) + hw * 3)

    def units(self, what: str, n_units: int, per_unit_bin: float = UNIT_BIN_BYTES,
              held: float = 0) -> None:
        self.add(what, held=held, per_bin=n_units * per_unit_bin)

    def budget(self) -> ChunkBudget:
        return ChunkBudget(items=tuple(self.items), limit=self.limit, where=self.where,
                           option=OPTION)
