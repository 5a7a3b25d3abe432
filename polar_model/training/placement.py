"""Place every session's Gaussian readout on its units' receptive fields before training,
from the store's training split only (:mod:`polar_model.rf_maps`)."""

from __future__ import annotations

from pathlib import Path

import torch

from polar_data.loaders.batches import DFS, ROBS, STIM, normalise_stim, session_of
from polar_data.loaders.store_info import StoreInfo
from polar_data.loaders.zarr_windows import every_clip
from polar_model.rf_maps import RFMapper

# RF positions of stores mapped in this process, keyed by the store and its Zarr files'
# hashes: a run of many trainings on one store (bench_experiment) maps it once.
_MAPPED: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}


def rf_positions(info: StoreInfo, batch_size: int = 4, progress: bool = True
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per session: (positions ``[N, 2]`` in the readouts' [-1, 1] coordinates, x right and
    y down; peak heights ``[N]``), from every clip of the **training** split."""
    from tqdm.auto import tqdm

    _, batches, loader = every_clip(info, "train", batch_size)
    mappers = [RFMapper(n, info.frame_hw, info.rate_hz) for n in info.n_units]
    for batch in tqdm(loader, total=len(batches), desc="placing readouts (RF maps)",
                      disable=not progress):
        stim = normalise_stim(batch[STIM], info.pixel_mean, info.pixel_std)
        mappers[session_of(batch)].update(stim, batch[ROBS], batch[DFS])
    out = []
    for s, m in enumerate(mappers):
        if m.sums is None:
            raise ValueError(f"session {info.sessions[s]} has no training clips to map")
        out.append(m.positions())
    return out


def place_readouts(model: torch.nn.Module, info: StoreInfo, progress: bool = True) -> str:
    """Move each session's readout (``model.readouts[s]``) to its units' RF peaks; returns a
    one-line summary for the log. A store without a local Zarr part (shards only, or a
    remote URL) keeps the readouts at the crop centre, and the line says so."""
    if not (Path(info.base) / "zarr").is_dir():
        return (f"readouts start at the crop centre: {info.base} has no local Zarr part "
                "(placement reads the training split through Zarr)")
    key = (str(info.base), tuple(sorted((k, v["sha256"]) for k, v in info.zarr_files.items())))
    if key not in _MAPPED:
        _MAPPED[key] = rf_positions(info, progress=progress)
    placed = _MAPPED[key]
    heights = []
    for readout, (pos, height) in zip(model.readouts, placed):
        readout.place(pos)
        heights.append(height)
    h = torch.cat(heights)
    return (f"readouts placed on RF maps of the training split: {len(h)} units, peak height "
            f"median {h.median():.1f} x its map's spread (min {h.min():.1f})")
