"""The data configuration (``configs/data/*.yaml``): which sessions, how to store them, how to
load them. Plain YAML mapped onto these dataclasses; unknown keys are errors naming the key.

Every number has a declared range (:func:`polar_data.config.typed_yaml.bounded`): sizes are bounded
generously but finitely, as each sizes an allocation (frames are uint8 ``H x W``; the demo's
51 x 51 crops are 2.6 kB a frame), so a typo cannot ask for terabytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from polar_data.config.typed_yaml import SEED_RANGE, FieldError, bounded, check_fields, load_config
from polar_data.demo.generate import DemoConfig
from polar_data.readers.nwb import NwbOptions
from polar_data.schema import SPLITS

DEFAULT_WINDOW_LEN = 16


@dataclass
class StoreConfig:
    """How ``build_shards.py`` turns sessions into stores (rates in Hz, sizes in bins / MB)."""

    out_dir: Path = Path("data/demo_store")
    window_len: int | None = bounded(None, "[1, 4096]")  # None: from --model-config, else 16
    clip_len: int = bounded(  # target bins per WebDataset clip (at most)
        256, "[1, 16384]", "bins per WebDataset clip, each clip held whole in memory")
    target_rate_hz: float | None = bounded(  # resample within trials (None: source rate)
        120.0, "(0, 100000]")
    splits: dict[str, float] = bounded({"train": 0.7, "val": 0.15, "test": 0.15}, "[0, 1]")
    split_seed: int = bounded(0, SEED_RANGE)
    chunk_bins: int = bounded(  # Zarr chunk length along time (bins)
        64, "[1, 16384]", "bins per Zarr chunk: a chunk holds chunk_bins uint8 frames, "
                          "16384 frames of 256 x 256 pixels are 1074 MB")
    zstd_level: int = bounded(3, "[1, 22]", "zstd's compression levels")
    shard_target_mb: float = bounded(  # uncompressed stimulus bytes per WebDataset shard
        8.0, "(0, 65536]", "MB of frames per shard")
    shard_seed: int = bounded(0, SEED_RANGE)  # order in which clips of all sessions interleave
    trust_pickle: bool = False     # .dset files are pickles: load only if you trust them
    ingest_chunk_bins: int = bounded(  # source bins read at a time (whole trials): bounds memory
        4096, "[1, 1048576]", "source bins held in memory at a time: 1048576 frames of "
                              "51 x 51 pixels are 2727 MB")

    def __post_init__(self):
        check_fields(self)
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise FieldError(f"splits.{unknown[0]}", f"unknown split (use {list(SPLITS)})")
        if abs(sum(self.splits.values()) - 1) > 1e-6:
            raise FieldError("splits", f"must sum to 1, got {self.splits}")


@dataclass
class LoaderConfig:
    """How the DataModule reads a store (see polar_data.loaders.batches for the batch layout);
    the defaults are the demo's (``configs/data/demo.yaml`` lists what it changes)."""

    store: str | None = None          # folder or URL (s3://...) of a built store; None: out_dir
    kind: Literal["wds", "zarr"] = "wds"  # streaming shards or random access
    mode: Literal["clip", "window"] = "clip"  # dense, all targets / the last bin of a window
    batch_size: int = bounded(8, "[1, 8192]", "samples per batch, held in memory")
    sample_len: int | None = bounded(  # clip mode: targets per sample, cut from the store's
        None, "[1, 16384]")  # clips (None: a whole stored clip, store.clip_len, any store)
    eval_batch_size: int | None = bounded(None, "[1, 8192]", "samples per batch")
    num_workers: int = bounded(2, "[0, 256]")
    pin_memory: bool = False
    seed: int = bounded(0, SEED_RANGE)
    clip_buffer: int = bounded(  # shuffle buffer, clips (wds)
        32, "[1, 4096]", "clips held in memory per worker")
    window_buffer: int = bounded(  # shuffle buffer, windows (wds, window mode)
        2048, "[1, 65536]", "windows held in memory per worker")
    blocks_per_batch: int = bounded(  # chunk blocks pooled per batch (zarr)
        4, "[1, 1024]", "Zarr chunks read and held per batch")
    batches_per_epoch: int | None = bounded(  # per rank; None: one pass over the split
        None, "[1, 1000000000]")
    skip_corrupt: bool = False        # skip (with a warning) shards failing their checksum
    verify_chunks: bool = False       # zarr: sha256 every chunk file on open (sizes: always)
    storage_options: dict[str, object] = field(default_factory=dict)  # fsspec options:
    # plain data, e.g. {anon: true} or {client_kwargs: {region_name: eu-west-1}}

    def __post_init__(self):
        check_fields(self)


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
BUILD_SECTIONS = ("sessions", "demo", "store", "nwb")  # what pipelines/build_shards.py reads


def load_data_config(path: str | Path | None) -> DataConfig:
    """Read a data config (None: all defaults, i.e. the demo)."""
    return DataConfig() if path is None else load_config(path, DataConfig)
