"""The data configuration (``configs/data/*.yaml``): which sessions, how to store them, how to
load them. Plain YAML mapped onto these dataclasses; unknown keys are errors naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .demo.generate import DemoConfig
from .readers.nwb import NwbOptions
from .schema import SPLITS
from .typed_yaml import load_config

DEFAULT_WINDOW_LEN = 16


@dataclass
class StoreConfig:
    """How ``build_shards.py`` turns sessions into stores (rates in Hz, sizes in bins / MB)."""

    out_dir: Path = Path("data/demo_store")
    window_len: int | None = None  # None: derived from --model-config, else 16
    clip_len: int = 256            # target bins per WebDataset clip (at most)
    target_rate_hz: float | None = 120.0  # resample within trials (None: keep source rate)
    splits: dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    split_seed: int = 0
    chunk_bins: int = 64           # Zarr chunk length along time (bins)
    zstd_level: int = 3
    shard_target_mb: float = 8.0   # uncompressed stimulus bytes per WebDataset shard
    shard_seed: int = 0            # order in which clips of all sessions are interleaved
    trust_pickle: bool = False     # .dset files are pickles: load only if you trust them
    ingest_chunk_bins: int = 4096  # source bins read at a time (whole trials): bounds memory

    def __post_init__(self):
        if self.window_len is not None and self.window_len < 1:
            raise ValueError("window_len must be >= 1")
        if self.clip_len < 1:
            raise ValueError("clip_len must be >= 1")
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"splits.{unknown[0]}: unknown split (use {list(SPLITS)})")
        if any(v < 0 for v in self.splits.values()) or abs(sum(self.splits.values()) - 1) > 1e-6:
            raise ValueError(f"splits must be non-negative and sum to 1, got {self.splits}")
        if self.chunk_bins < 1 or self.shard_target_mb <= 0 or self.ingest_chunk_bins < 1:
            raise ValueError("chunk_bins, shard_target_mb and ingest_chunk_bins must be "
                             "positive")


@dataclass
class LoaderConfig:
    """How the DataModule reads a store (see polar_data.batches for the batch layout)."""

    store: str | None = None          # folder or URL (s3://...) of a built store; None: out_dir
    kind: str = "wds"                 # "wds" (streaming shards) or "zarr" (random access)
    mode: str = "clip"                # "clip" (dense, all targets) or "window" (last bin)
    batch_size: int = 16
    clip_len: int | None = None       # clip mode: targets per sample (None: the store's)
    eval_batch_size: int | None = None
    num_workers: int = 2
    pin_memory: bool = False
    seed: int = 0
    clip_buffer: int = 32             # shuffle buffer, clips (wds)
    window_buffer: int = 2048         # shuffle buffer, windows (wds, window mode)
    blocks_per_batch: int = 4         # chunk blocks pooled per batch (zarr)
    batches_per_epoch: int | None = None  # per rank; None: one pass over the split
    skip_corrupt: bool = False        # skip (with a warning) shards failing their checksum
    verify_chunks: bool = False       # zarr: sha256 every chunk file on open (sizes: always)
    storage_options: dict[str, str] = field(default_factory=dict)  # fsspec options

    def __post_init__(self):
        if self.kind not in ("wds", "zarr"):
            raise ValueError(f"kind: must be 'wds' or 'zarr', got {self.kind!r}")
        if self.mode not in ("window", "clip"):
            raise ValueError(f"mode: must be 'window' or 'clip', got {self.mode!r}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")


@dataclass
class DataConfig:
    """Top level of ``configs/data/*.yaml``.

    ``sessions``: paths or globs of ``.dset`` / ``.nwb`` files (or ``s3://...`` NWB URLs);
    empty means "generate the demo sessions described by ``demo``". ``nwb``: choices and
    geometry for NWB files that do not record them (``polar_data.readers.nwb.NwbOptions``).
    """

    sessions: list[str] = field(default_factory=list)
    demo: DemoConfig = field(default_factory=DemoConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    nwb: NwbOptions = field(default_factory=NwbOptions)
    loader: LoaderConfig = field(default_factory=LoaderConfig)


DATA_SECTIONS = ("sessions", "demo", "store", "nwb", "loader")  # DataConfig's keys


def load_data_config(path: str | Path | None) -> DataConfig:
    """Read a data config (None: all defaults, i.e. the demo)."""
    return DataConfig() if path is None else load_config(path, DataConfig)
