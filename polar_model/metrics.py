"""Bits per spike, exactly as the lab computes it (numpy; see the README).

Per unit i with mask d, predicted expected counts r_hat, observed counts y, and the null model
r_bar = the unit's masked mean count on the same data:

    BPS_i = sum_t d [(y ln r_hat - r_hat) - (y ln r_bar - r_bar)] / (N_i ln 2),  N_i = sum d y

Units with no spike under the mask give NaN. The lab clamped negative units to 0 before
averaging; we report both means.
"""

from __future__ import annotations

import numpy as np


def _flat(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.reshape(-1, x.shape[-1]).astype(np.float64)


def bits_per_spike(rate_hat, robs, dfs) -> np.ndarray:
    """Per-unit BPS [N] of expected counts ``rate_hat`` ([..., N]) against ``robs``."""
    r, y, d = _flat(rate_hat), _flat(robs), _flat(dfs)
    n_spk = (d * y).sum(0)
    rbar = (d * y).sum(0) / np.maximum(d.sum(0), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll_model = (d * (np.where(y > 0, y * np.log(np.maximum(r, 1e-30)), 0.0) - r)).sum(0)
        ll_null = (d * (np.where(y > 0, y * np.log(np.maximum(rbar, 1e-30)), 0.0) - rbar)).sum(0)
        bps = (ll_model - ll_null) / (n_spk * np.log(2))
    return np.where(n_spk > 0, bps, np.nan)


def oracle_bps(true_rate, robs, dfs) -> np.ndarray:
    """BPS of the ground-truth expected counts (the ceiling a model can reach on this data)."""
    return bits_per_spike(true_rate, robs, dfs)


def summarize_bps(bps) -> dict:
    """Unclamped and clamped (negatives -> 0) means over units with spikes."""
    b = np.asarray(bps, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return {"mean_unclamped": float("nan"), "mean_clamped": float("nan"), "n_units": 0}
    return {"mean_unclamped": float(b.mean()), "mean_clamped": float(np.maximum(b, 0).mean()),
            "n_units": int(b.size)}
