"""Lightning DataModule over a built store (streaming WebDataset or random-access Zarr)."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from polar_data.config.data_config import DataConfig
from polar_data.loaders.batches import Batch, normalise_stim
from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.streaming import ShardStream
from polar_data.loaders.zarr_windows import LocalityBatchSampler, ZarrWindows, identity


class PolarDataModule(L.LightningDataModule):
    """Train / val / test loaders from ``cfg.loader``.

    Attributes after construction: ``base`` (the store's folder or URL) and ``info`` (its
    :class:`StoreInfo`: window length, units per session, pixel statistics and the rest).
    Workers are persistent (the streaming loader's epoch counter lives in them).
    Batches cross from the workers with uint8 frames; :meth:`on_after_batch_transfer`
    normalises them once Lightning has moved them to the model's device.
    """

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg
        lc = cfg.loader
        self.base = lc.store if lc.store is not None else str(cfg.store.out_dir)
        self.info = StoreInfo.load(self.base, lc.storage_options)

    def _start_epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else 0

    def _done_in_epoch(self, batches_per_epoch: int) -> int:
        """Batches of the current epoch already trained: non-zero only when Lightning has
        restored a checkpoint saved mid-epoch (one optimizer step per batch, every epoch
        ``batches_per_epoch`` long, so ``global_step = epoch x batches_per_epoch + done``)."""
        if self.trainer is None:
            return 0
        done = int(self.trainer.global_step) - self._start_epoch() * batches_per_epoch
        return done if 0 < done < batches_per_epoch else 0

    def loader(self, split: str, train: bool) -> DataLoader:
        lc = self.cfg.loader
        bs = lc.batch_size if train else (lc.eval_batch_size or lc.batch_size)
        common = {"num_workers": lc.num_workers, "pin_memory": lc.pin_memory,
                  "persistent_workers": lc.num_workers > 0}
        if lc.kind == "wds":
            ds = ShardStream(self.info, split, lc.mode, bs, seed=lc.seed,
                             start_epoch=self._start_epoch(), shuffle=train,
                             clip_buffer=lc.clip_buffer, window_buffer=lc.window_buffer,
                             num_workers=lc.num_workers,
                             batches_per_epoch=lc.batches_per_epoch if train else None,
                             skip_corrupt=lc.skip_corrupt, single_pass=not train,
                             sample_len=lc.sample_len,
                             storage_options=dict(lc.storage_options))
            if train:
                ds.skip_batches = self._done_in_epoch(len(ds))
            return DataLoader(ds, batch_size=None, **common)
        ds = ZarrWindows(self.info, split, lc.mode, verify_chunks=lc.verify_chunks,
                        sample_len=lc.sample_len)
        sampler = LocalityBatchSampler(ds, bs, seed=lc.seed, shuffle=train,
                                       blocks_per_batch=lc.blocks_per_batch, drop_last=train,
                                       start_epoch=self._start_epoch())
        if train:
            sampler.skip_batches = self._done_in_epoch(len(sampler))
        return DataLoader(ds, batch_sampler=sampler, collate_fn=identity, **common)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Lightning calls this after moving a batch to the model's device (train, val,
        test): uint8 frames -> float32 ``(x - pixel_mean) / pixel_std`` of this store, on
        that device (so uint8 crosses PCIe too)."""
        return normalise_stim(batch, self.info.pixel_mean, self.info.pixel_std)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", train=False)
