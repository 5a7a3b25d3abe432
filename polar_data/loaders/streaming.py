"""Streaming batches from WebDataset shards (local paths or any fsspec URL, e.g. ``s3://``).

Pipeline per DataLoader worker (webdataset's tar stages do the parsing)::

    epoch shard order (seed, epoch) -> this rank's and worker's shards -> open
    -> tar_file_expander -> group_by_keys -> sha256 check per sample -> decode clip
    -> clip shuffle buffer -> [window mode: cut windows, window shuffle buffer]
    -> one-session batches

Guarantees:
* Every rank yields exactly ``len(self)`` batches per epoch (shards are cycled if a rank runs
  short), so DDP never waits on a rank with fewer samples.
* Ranks and workers read disjoint shards (when there are at least ranks x workers shards).
* Epoch ``e`` uses seed ``(seed, e)``: epochs differ, and a run restarted at epoch ``e``
  (``start_epoch``) gets the same fresh order an uninterrupted run would.
* Nothing unverified reaches a batch: each sample is checked against its sha256 in the
  manifest before it is decoded, and a shard holding other samples than the manifest lists,
  or that cannot be parsed, raises StoreError naming shard and sample, unless
  ``skip_corrupt`` (then the rest of that shard is skipped with a warning; samples already
  passed on were verified).

The epoch counter lives in each worker: use persistent workers (the DataModule does) so that
the counter survives between epochs.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator

import fsspec
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from polar_data.loaders.batches import SESSION, clip_items, collate, windows_from_clip
from polar_data.loaders.store_info import StoreInfo
from polar_data.schema import StoreError
from polar_data.store.shards import decode_clip, sample_digest


def checked_samples(raw_samples: Iterator[dict], url: str, entry: dict,
                    verify: bool = True) -> Iterator[dict]:
    """Pass on each raw sample of shard ``url`` only after its bytes match the manifest's
    ``sample_sha256`` (:func:`polar_data.store.shards.sample_digest`) and its key is the next
    one of the manifest's sample list (``samples``, in shard order; a store without it: no
    key twice); at the end, check that the shard held exactly the manifest's samples. Raises
    StoreError naming shard and sample, so nothing unverified ever reaches a batch and no
    sample is duplicated, dropped or moved."""
    expected = entry.get("sample_sha256") or {}
    order = entry.get("samples")
    seen, keys = 0, set()
    for raw in raw_samples:
        key = raw.get("__key__")
        if verify:
            if key not in expected:
                raise StoreError(f"{url}: sample {key!r} is not in the manifest (corrupt shard)")
            if sample_digest(raw) != expected[key]:
                raise StoreError(f"{url}: sample {key!r} does not match its sha256 in the "
                                 "manifest (corrupt shard)")
            if key in keys:
                raise StoreError(f"{url}: sample {key!r} appears twice (corrupt shard)")
            if order is not None and (seen >= len(order) or order[seen] != key):
                raise StoreError(f"{url}: sample {key!r} at position {seen}, the manifest "
                                 "lists another sample there (samples reordered, dropped or "
                                 "added: corrupt shard)")
            keys.add(key)
        seen += 1
        yield raw
    if verify and seen != entry["n_samples"]:
        raise StoreError(f"{url}: {seen} samples, the manifest lists {entry['n_samples']} "
                         "(truncated shard)")


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardStream(IterableDataset):
    """Batches (see :mod:`polar_data.loaders.batches`) streamed from the shards of one split.

    Args:
        info: the store (``StoreInfo.load(base)``).
        split: ``train``, ``val`` or ``test``.
        mode: ``window`` or ``clip``.
        batch_size: samples per batch.
        seed, start_epoch: order control (see module docstring).
        shuffle: shuffle shards and samples (False: manifest order, for evaluation).
        clip_buffer, window_buffer: shuffle-buffer sizes (clips, windows).
        rank, world_size: default from torch.distributed when initialised, else 0 / 1.
        num_workers: DataLoader workers per rank (sets each worker's batch quota).
        batches_per_epoch: per rank; default: the split's samples // (world_size x batch_size).
        single_pass: read this rank's shards once and flush partial batches (evaluation:
            every sample exactly once; batch counts may then differ between ranks).
        sample_len: clip mode: targets per sample, cut from the stored clips (default: a
            whole stored clip, the store's clip_len); shorter samples cost less memory per step.
        skip_batches: batches of the first epoch (``start_epoch``) already trained, counted
            in the DataLoader's order (worker ``i % num_workers`` makes batch ``i``): they are
            drawn but not yielded, so a run resumed mid-epoch sees the rest of the epoch in
            the order an uninterrupted run would.
    """

    def __init__(self, info: StoreInfo, split: str, mode: str, batch_size: int, seed: int = 0,
                 start_epoch: int = 0, shuffle: bool = True, clip_buffer: int = 32,
                 window_buffer: int = 2048, rank: int | None = None,
                 world_size: int | None = None, num_workers: int = 0,
                 batches_per_epoch: int | None = None, skip_corrupt: bool = False,
                 verify_checksums: bool = True, storage_options: dict | None = None,
                 single_pass: bool = False, sample_len: int | None = None,
                 skip_batches: int = 0):
        if mode not in ("window", "clip"):
            raise ValueError(f"mode must be 'window' or 'clip', got {mode!r}")
        self.info, self.split, self.mode, self.batch_size = info, split, mode, batch_size
        self.seed, self.start_epoch, self.shuffle = seed, start_epoch, shuffle
        self.clip_buffer, self.window_buffer = clip_buffer, window_buffer
        r, w = dist_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        self.num_workers = num_workers
        self.skip_corrupt, self.verify_checksums = skip_corrupt, verify_checksums
        self.storage_options = storage_options or {}
        self.shards = info.shard_urls(split)
        if not self.shards:
            raise StoreError(f"{info.base}: no {split} shards in the manifest")
        self.sample_len = sample_len or info.clip_len
        samples = (info.n_targets[split] if mode == "window"
                   else info.n_targets[split] // self.sample_len)
        if batches_per_epoch is None:
            batches_per_epoch = samples // (self.world_size * batch_size)
        if batches_per_epoch < 1:
            raise StoreError(f"{info.base}: {split} has {samples} {mode} samples, too few for "
                             f"one batch of {batch_size} on each of {self.world_size} "
                             "rank(s): lower loader.batch_size (loader.eval_batch_size for "
                             "val / test)")
        self.batches_per_epoch = batches_per_epoch
        self.single_pass = single_pass
        self.skip_batches = skip_batches
        self._iterations = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    # ---------------------------------------------------------------- stages
    def _my_shards(self, epoch: int, worker: int, n_workers: int) -> list[tuple[str, dict]]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        slots = self.world_size * n_workers
        slot = self.rank * n_workers + worker
        mine = order[slot::slots]
        if not mine and self.single_pass:
            return []
        if not mine:
            warnings.warn(f"{len(self.shards)} {self.split} shards for {slots} rank x worker "
                          "slots: some slots re-read another slot's shard", stacklevel=2)
            mine = [order[slot % len(order)]]
        return [self.shards[i] for i in mine]

    def _samples(self, shards, rng: random.Random) -> Iterator[dict]:
        """Decoded clips from ``shards``, cycled forever (reshuffled on each pass) unless
        ``single_pass``."""
        shards = list(shards)
        while True:
            for url, entry in shards:
                try:
                    with fsspec.open(url, "rb", **self.storage_options) as stream:
                        files = wds.tariterators.tar_file_expander(
                            [{"url": url, "stream": stream}], handler=wds.reraise_exception)
                        raws = wds.tariterators.group_by_keys(files,
                                                              handler=wds.reraise_exception)
                        for raw in checked_samples(raws, url, entry, self.verify_checksums):
                            raw["__url__"] = url
                            yield decode_clip(raw)
                except Exception as e:
                    err = e if isinstance(e, StoreError) else StoreError(
                        f"{url}: corrupt or unreadable shard ({type(e).__name__}: {e})")
                    if not self.skip_corrupt:
                        raise err from e
                    warnings.warn(f"skipping {err}", stacklevel=2)
            if self.single_pass:
                return
            if self.shuffle:
                rng.shuffle(shards)

    @staticmethod
    def _buffer(items: Iterator, size: int, rng: random.Random) -> Iterator:
        buf = []
        for it in items:
            buf.append(it)
            if len(buf) >= size:
                k = rng.randrange(len(buf))
                buf[k], buf[-1] = buf[-1], buf[k]
                yield buf.pop()

    def __iter__(self) -> Iterator[dict]:
        epoch = self.start_epoch + self._iterations
        wi = get_worker_info()
        worker, n_workers = (0, 1) if wi is None else (wi.id, wi.num_workers)
        skipped = 0 if self._iterations else self.skip_batches
        self._iterations += 1
        # The DataLoader takes batch i from worker i % n_workers, starting at worker 0: after
        # skipping k batches, worker w plays the part of worker (w + k) % n_workers and drops
        # that part's batches below k.
        worker = (worker + skipped) % n_workers
        skip = max(0, -(-(skipped - worker) // n_workers))
        quota = self.batches_per_epoch // n_workers + (
            worker < self.batches_per_epoch % n_workers)
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{worker}")
        clips = self._samples(self._my_shards(epoch, worker, n_workers), rng)
        if self.shuffle:
            clips = self._buffer(clips, self.clip_buffer, rng)
        if self.mode == "window":
            items = (w for c in clips for w in windows_from_clip(c, self.info.window_len))
            if self.shuffle:
                items = self._buffer(items, self.window_buffer, rng)
        else:
            items = (it for c in clips for it in clip_items(c, self.sample_len))
        buckets: dict[int, list] = {}
        made = 0
        if quota == 0 and not self.single_pass:
            return
        for it in items:
            b = buckets.setdefault(it[SESSION], [])
            b.append(it)
            if len(b) == self.batch_size:
                buckets[it[SESSION]] = []
                made += 1
                if made > skip:
                    yield collate(b)
                if made == quota and not self.single_pass:
                    return
        for b in buckets.values():  # single pass: the remainders too
            if b:
                yield collate(b)

