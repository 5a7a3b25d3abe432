"""Random access to the Zarr store: a map-style dataset over its window (or clip) index.

``ZarrWindows.__getitems__`` reads a whole batch at once: the batch's windows are grouped by
the stretch of bins they share and each stretch is read once (neighbouring windows share all
but one frame and share chunks), then windows are cut out as views. ``LocalityBatchSampler``
builds one-session batches from a few random chunk-sized blocks at a time, so reads stay
chunk-local while batches still mix distant parts of the recording and all sessions.

Use with ``DataLoader(ds, batch_sampler=sampler, collate_fn=identity)``.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from polar_data.loaders.batches import Batch, collate, pad_clip, sample
from polar_data.loaders.store_info import StoreInfo, StoreWatch
from polar_data.loaders.streaming import dist_rank_world
from polar_data.schema import SPLITS
from polar_data.store.chunk_files import ChunkFiles
from polar_data.store.manifest import check_chunk_files
from polar_data.store.zarr_groups import open_store


def identity(x):
    """collate_fn for datasets whose ``__getitems__`` already returns a batch."""
    return x


class ChunkCache:
    """Decoded Zarr chunks (along time) of one worker, least recently used dropped first
    beyond ``max_mb``. Neighbouring windows and the batches of one pooled block share chunks,
    so each is decoded about once per epoch instead of once per batch. Chunks are read from
    their files directly where the layout allows (:class:`~polar_data.store.chunk_files.
    ChunkFiles`: a third of the time of a read through Zarr), else through Zarr.

    ``listed``: the manifest's file table (a listed chunk file that is missing is an error,
    not fill values)."""

    def __init__(self, max_mb: float = 64.0, listed: dict | None = None):
        self.max_bytes, self.bytes = int(max_mb * 1e6), 0
        self.chunks: OrderedDict = OrderedDict()
        self.files: dict = {}  # key -> ChunkFiles, or False: read through Zarr
        self.listed = listed

    def rows(self, array, key, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo .. hi-1`` of ``array`` (a zarr array chunked along axis 0). An array of
        at most 1/8 of the budget (gaze, counts, masks of a session) is read whole, once."""
        files = self.files.get(key)
        if files is None:
            files = self.files[key] = ChunkFiles.of(array, self.listed) or False
        small = array.nbytes <= self.max_bytes // 8
        cb = array.shape[0] if small else array.chunks[0]
        first, last = lo // cb, (hi - 1) // cb
        parts = []
        for c in range(first, last + 1):
            k = (key, c)
            chunk = self.chunks.get(k)
            if chunk is None:
                end = min((c + 1) * cb, array.shape[0])
                chunk = files(c * cb, end) if files else array[c * cb : end]
                self.chunks[k] = chunk
                self.bytes += chunk.nbytes
                while self.bytes > self.max_bytes and len(self.chunks) > 1:
                    self.bytes -= self.chunks.popitem(last=False)[1].nbytes
            else:
                self.chunks.move_to_end(k)
            parts.append(chunk)
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return data[lo - first * cb : hi - first * cb]


class ZarrWindows(Dataset):
    """Windows (``mode='window'``) or clips (``mode='clip'``) of one split of a local store.

    Index entry ``i`` is ``(session index, bin)``: the window's last bin, or a sample's first
    target bin (clip mode also keeps the sample's number of targets: the stored clips cut into
    samples of at most ``sample_len`` targets, default a whole stored clip, the last one of a
    clip padded to ``sample_len``). On construction every
    file of the store is checked to exist with its manifest size (``verify_chunks``: and its
    sha256); a missing or truncated chunk raises StoreError naming array and chunk. After
    that, each batch, once read (or when its reading fails), checks that the store is still
    the build that was opened (:class:`~polar_data.loaders.store_info.StoreWatch`: one ``stat`` per
    batch, and every read of the batch happened before it), and a listed chunk file gone
    missing is not read as fill values: either raises StoreError naming the store or file.
    """

    def __init__(self, info: StoreInfo, split: str, mode: str = "window",
                 verify_chunks: bool = False, cache_mb: float = 64.0,
                 sample_len: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if mode not in ("window", "clip"):
            raise ValueError(f"mode must be 'window' or 'clip', got {mode!r}")
        self.info, self.split, self.mode = info, split, mode
        self.sample_len = sample_len or info.clip_len
        self.path = Path(info.base) / "zarr"
        # Zarr reads a missing chunk as its fill value: check the files first (sizes always,
        # sha256 with verify_chunks), naming array and chunk
        check_chunk_files(self.path, info.zarr_files, full_hash=verify_chunks)
        root = self._root()
        rows, n_targets = [], []
        for i, name in enumerate(info.sessions):
            if mode == "window":
                ends = root[name][f"windows/{split}"][...]
                rows.append(np.column_stack([np.full(len(ends), i), ends]))
            else:
                start, n = self._samples(root[name][f"clips/{split}"][...])
                rows.append(np.column_stack([np.full(len(start), i), start]))
                n_targets.append(n)
        self.index = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), int)
        self.n_targets = np.concatenate(n_targets) if n_targets else None
        self.chunk_bins = int(root[info.sessions[0]]["stim"].chunks[0])
        self.cache_mb = cache_mb
        self.watch = StoreWatch(info.base, info.seal)
        self.watch.check()  # the index above was read from the build ``info`` describes
        self._groups = self._cache = None  # opened lazily in each worker

    def _samples(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored clips ``[C, 2]`` (first target bin, targets) cut into samples of at most
        ``sample_len`` targets: their first target bins and target counts."""
        L = self.sample_len
        parts = [(s + a, min(L, n - a)) for s, n in clips.tolist() for a in range(0, n, L)]
        out = np.asarray(parts, dtype=np.int64).reshape(-1, 2)
        return out[:, 0], out[:, 1]

    def _root(self):
        return open_store(self.path)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_groups"] = state["_cache"] = None
        return state

    def _arrays(self, s: int) -> dict:
        """Session ``s``'s arrays, opened once per worker (opening reads their metadata)."""
        if self._groups is None:
            root = self._root()
            names = ["stim", "eyepos", "robs", "dfs"]
            if self.info.has_true_rate:
                names.append("true_rate")
            self._groups = [{k: root[n][k] for k in names} for n in self.info.sessions]
            self._cache = ChunkCache(self.cache_mb, self.info.zarr_files)
        return self._groups[s]

    def _rows(self, s: int, name: str, lo: int, hi: int) -> np.ndarray:
        array = self._arrays(s)[name]  # opens the arrays and the cache on first use
        return self._cache.rows(array, (s, name), lo, hi)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> Batch:
        """One batch (see :mod:`polar_data.loaders.batches`); all indices must share a session.
        Raises StoreError if the store changed while it was read (see the class)."""
        try:
            batch = self._batch(indices)
        except Exception:
            self.watch.check()  # a failure caused by a rebuild is reported as such
            raise
        self.watch.check()
        return batch

    def _batch(self, indices: list[int]) -> Batch:
        idx = np.asarray(indices)
        sess = np.unique(self.index[idx, 0])
        if len(sess) != 1:
            raise ValueError(f"indices span sessions {sess.tolist()}; batches hold one session")
        si = int(sess[0])
        W = self.info.window_len
        bins = self.index[idx, 1]
        items = []
        truth = self.info.has_true_rate
        if self.mode == "window":
            # read each run of nearby windows once: stretches separated by > one chunk
            order = np.argsort(bins)
            cuts = np.flatnonzero(np.diff(bins[order]) > self.chunk_bins) + 1
            by_pos = {}
            for part in np.split(order, cuts):
                lo, hi = int(bins[part].min()) - W + 1, int(bins[part].max()) + 1
                stim, eye = self._rows(si, "stim", lo, hi), self._rows(si, "eyepos", lo, hi)
                robs, dfs = self._rows(si, "robs", lo, hi), self._rows(si, "dfs", lo, hi)
                tr = self._rows(si, "true_rate", lo, hi) if truth else None
                for k in part:
                    e = int(bins[k]) - lo
                    by_pos[int(k)] = sample(stim[e - W + 1 : e + 1], eye[e - W + 1 : e + 1],
                                            robs[e], dfs[e], si, int(bins[k]),
                                            None if tr is None else tr[e])
            items = [by_pos[k] for k in range(len(idx))]
        else:
            for k, i in enumerate(idx):
                s, n = int(bins[k]), int(self.n_targets[i])
                it = sample(self._rows(si, "stim", s - W + 1, s + n),
                            self._rows(si, "eyepos", s - W + 1, s + n),
                            self._rows(si, "robs", s, s + n), self._rows(si, "dfs", s, s + n),
                            si, s + n - 1,
                            self._rows(si, "true_rate", s, s + n) if truth else None)
                items.append(pad_clip(it, self.sample_len))
        return collate(items)


class LocalityBatchSampler(Sampler[list[int]]):
    """One-session batches of indices into a ZarrWindows, chunk-local but well mixed.

    Per epoch (seed ``(seed, epoch)``): each session's entries are grouped into blocks of
    ``chunk_bins`` bins; blocks are shuffled; every ``blocks_per_batch`` blocks are pooled,
    shuffled and cut into batches (a leftover joins the next group, so a batch reads at most
    2 x ``blocks_per_batch`` blocks); the pools of all sessions are then shuffled together,
    each pool's batches kept consecutive, so a worker's chunk cache (:class:`ChunkCache`)
    decodes each chunk about once per epoch.
    With several ranks, rank r takes batches r, r + world, ... and all ranks get the same
    count. ``shuffle=False`` gives entries in index order (evaluation). ``skip_batches``: batches
    of the first epoch already trained (a run resumed mid-epoch); the length stays the
    epoch's full count, as Lightning counts the skipped batches as done.
    """

    def __init__(self, dataset: ZarrWindows, batch_size: int, seed: int = 0,
                 shuffle: bool = True, blocks_per_batch: int = 4, drop_last: bool = True,
                 rank: int | None = None, world_size: int | None = None, start_epoch: int = 0,
                 skip_batches: int = 0):
        self.ds, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.blocks_per_batch, self.drop_last = blocks_per_batch, drop_last
        r, w = dist_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        self.epoch, self.skip_batches = start_epoch, skip_batches

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (through :attr:`sampler`)."""
        self.epoch = epoch

    @property
    def sampler(self) -> LocalityBatchSampler:
        """Lightning calls ``batch_sampler.sampler.set_epoch``: that is this object."""
        return self

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        index = self.ds.index
        out: list[list[int]] = []
        groups: list[list[list[int]]] = []  # the batches cut from one pool of blocks
        for s in np.unique(index[:, 0]):
            rows = np.flatnonzero(index[:, 0] == s)
            if not self.shuffle:
                out += [rows[i : i + self.batch_size].tolist()
                        for i in range(0, len(rows), self.batch_size)]
                continue
            block = index[rows, 1] // self.ds.chunk_bins
            blocks = [rows[block == b].tolist() for b in np.unique(block)]
            rng.shuffle(blocks)
            pool: list[int] = []
            for k in range(0, len(blocks), self.blocks_per_batch):
                for b in blocks[k : k + self.blocks_per_batch]:
                    pool += b
                rng.shuffle(pool)
                group = []
                while len(pool) >= self.batch_size:
                    group.append(pool[: self.batch_size])
                    pool = pool[self.batch_size :]
                if group:
                    groups.append(group)
            if pool and not self.drop_last:
                groups.append([pool])
        if self.shuffle:  # pools in random order; a pool's batches stay together
            rng.shuffle(groups)
            out = [b for g in groups for b in g]
        per_rank = len(out) // self.world_size if self.drop_last else -(-len(out) //
                                                                        self.world_size)
        mine = out[self.rank :: self.world_size][:per_rank]
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip_batches = self.skip_batches, 0
        yield from self._batches()[skip:]

    def __len__(self) -> int:
        return len(self._batches())


def every_clip(info: StoreInfo, split: str, batch_size: int
               ) -> tuple[ZarrWindows, list[list[int]], DataLoader]:
    """Every clip of ``split`` exactly once, in index order, on this process alone (no
    rank split): the dataset, its batches (lists of index entries, one session each) and a
    loader yielding those batches in the same order. For evaluation and readout placement."""
    ds = ZarrWindows(info, split, "clip")
    batches = list(LocalityBatchSampler(ds, batch_size, shuffle=False, drop_last=False,
                                        rank=0, world_size=1))
    return ds, batches, DataLoader(ds, batch_sampler=batches, collate_fn=identity)
