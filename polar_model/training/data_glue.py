"""Store facts -> what the model layer needs (``DataSpec``), the window check before
training, and the data facts a checkpoint carries for :func:`polar_model.load`."""

from __future__ import annotations

from polar_data.store_info import StoreInfo

from ..factory import check_window_len
from ..spec import DataSpec


def spec_of(info: StoreInfo) -> DataSpec:
    """The facts of a store that shape a model."""
    return DataSpec(window_len=info.window_len, rate_hz=info.rate_hz, frame_hw=info.frame_hw,
                    ppd=info.ppd, n_units=info.n_units, mean_rates=info.mean_rates,
                    session_names=info.sessions)


def check_window(info: StoreInfo, model_cfg, model_ref) -> None:
    """Stop before training when the store's windows are too short for the model
    (ValueError naming the store, the model file and the rebuild command)."""
    check_window_len(model_cfg, info.window_len, where=f"store {info.base}",
                     model_ref=str(model_ref))


def data_facts(info: StoreInfo) -> dict:
    """The checkpoint entry :class:`.predictor.Predictor` needs, from a store's
    ``StoreInfo``: pixel statistics, bin rate, window length, session names and each
    session's recording unit ids."""
    return {"sessions": list(info.sessions), "rate_hz": info.rate_hz,
            "window_len": info.window_len, "pixel_mean": info.pixel_mean,
            "pixel_std": info.pixel_std, "frame_hw": list(info.frame_hw),
            "unit_ids": {n: [int(u) for u in ids] for n, ids in zip(info.sessions,
                                                                   info.unit_ids)}}
