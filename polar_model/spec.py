"""What a model needs to know about the data it will see (read from the store)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """Facts of a store that shape a model.

    window_len: bins per window (W); outputs start after W - 1 bins of history.
    rate_hz: bins per second (dt = 1 / rate_hz).
    frame_hw: crop size in pixels (H, W).
    ppd: crop pixels per degree (converts gaze velocity into retinal pixel motion).
    n_units: units per session (one readout each).
    mean_rates: per session, per unit mean spikes per bin (readout bias = its log).
    session_names: sessions in store order (a batch's ``session`` indexes this).
    """

    window_len: int
    rate_hz: float
    frame_hw: tuple[int, int]
    ppd: float
    n_units: tuple[int, ...]
    mean_rates: tuple[tuple[float, ...], ...]
    session_names: tuple[str, ...]

    def __post_init__(self):
        if len(self.n_units) != len(self.mean_rates) or len(self.n_units) != len(
                self.session_names):
            raise ValueError("n_units, mean_rates and session_names must have one entry per "
                             "session")
        for n, r in zip(self.n_units, self.mean_rates):
            if len(r) != n:
                raise ValueError(f"mean_rates has {len(r)} values for {n} units")
