"""Predictions over a whole split, and their scores (BPS per unit and session, oracle).

Predictions are made in clip mode over the Zarr store's clip index, so every valid window of
the split is scored exactly once, and are laid back on each session's bin grid (NaN where a
bin is not a target) for traces and saccade-triggered averages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from polar_data.loaders.batches import DFS, END, TRUE_RATE, Batch, normalise_stim, session_of
from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.zarr_windows import every_clip
from polar_model.metrics import bits_per_spike, oracle_bps, summarize_bps


@dataclass
class SessionPredictions:
    """One session's predictions on one split, on the session's bin grid ``[T, N]``."""

    name: str
    rate: np.ndarray       # predicted expected counts per bin (NaN off-target)
    robs: np.ndarray       # observed counts
    dfs: np.ndarray        # mask (False off-target)
    true_rate: np.ndarray | None

    def bps(self) -> np.ndarray:
        m = self.dfs.any(1)
        return bits_per_spike(self.rate[m], self.robs[m], self.dfs[m])

    def oracle(self) -> np.ndarray | None:
        if self.true_rate is None:
            return None
        m = self.dfs.any(1)
        return oracle_bps(self.true_rate[m], self.robs[m], self.dfs[m])


def predict_split(predict: Callable[[Batch], torch.Tensor], info: StoreInfo, split: str,
                  batch_size: int = 8, progress: bool = False) -> list[SessionPredictions]:
    """Run ``predict(batch) -> log expected counts [B, L, N]`` over every clip of ``split``;
    ``batch`` has normalised float32 frames (:func:`polar_data.loaders.batches.normalise_stim` with
    the store's pixel statistics), as ``EncodingModule.forward`` takes them."""
    from tqdm.auto import tqdm

    from polar_data.store.zarr_groups import open_store

    root = open_store(f"{info.base}/zarr")
    ds, batches, loader = every_clip(info, split, batch_size)
    out = []
    for s, name in enumerate(info.sessions):
        T, N = int(root[name].attrs["n_bins"]), info.n_units[s]
        out.append(SessionPredictions(name, np.full((T, N), np.nan, np.float32),
                                      root[name]["robs"][...], np.zeros((T, N), bool),
                                      np.zeros((T, N), np.float32) if info.has_true_rate
                                      else None))
    # Each clip's real targets are bins start .. start + n - 1 (ds.index / ds.n_targets), its
    # outputs 0 .. n - 1; padding (and masked targets at any position) never moves them.
    with torch.no_grad():
        for idx, batch in zip(batches, tqdm(loader, desc=f"predict {split}",
                                            disable=not progress)):
            batch = normalise_stim(batch, info.pixel_mean, info.pixel_std)
            rate = predict(batch).exp().numpy()
            sp = out[session_of(batch)]
            for b, i in enumerate(idx):
                start, n = int(ds.index[i, 1]), int(ds.n_targets[i])
                if start + n - 1 != int(batch[END][b]):
                    raise RuntimeError(f"clip {i} of {split}: index and batch disagree")
                bins = np.arange(start, start + n)
                sp.rate[bins] = rate[b, :n]
                sp.dfs[bins] = batch[DFS][b, :n].numpy() > 0
                if sp.true_rate is not None:
                    sp.true_rate[bins] = batch[TRUE_RATE][b, :n].numpy()
    return out


def score(preds: list[SessionPredictions]) -> dict:
    """Per-session and overall BPS summaries (unclamped and clamped), oracle and ratio."""
    sessions, units, oracle_units = {}, [], []
    for p in preds:
        b = p.bps()
        o = p.oracle()
        units.append(b)
        entry = {"bps": summarize_bps(b)}
        if o is not None:
            oracle_units.append(o)
            entry["oracle"] = summarize_bps(o)
        sessions[p.name] = entry
    allb = np.concatenate(units)
    result = {"sessions": sessions, "bps": summarize_bps(allb), "units": allb.tolist()}
    if oracle_units:
        allo = np.concatenate(oracle_units)
        result["oracle"] = summarize_bps(allo)
        result["oracle_units"] = allo.tolist()
        result["fraction_of_oracle"] = (result["bps"]["mean_unclamped"]
                                        / result["oracle"]["mean_unclamped"])
    return result
