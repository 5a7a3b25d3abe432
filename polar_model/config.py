"""Model configurations (``configs/model/*.yaml``) as typed dataclasses.

``kind: polar`` -> :class:`PolarConfig` (the six Polar-V1 configurations differ in
``use_behavior``, ``temporal`` and ``use_jepa``); ``kind: resnet_convgru`` ->
:class:`BaselineConfig`. Unknown or ill-typed keys are errors naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from polar_data.typed_yaml import ConfigError, convert


@dataclass
class PolarConfig:
    """Polar-V1. Frequencies in cycles/pixel, rates in 1/s, speeds in deg/s."""

    name: str = "polar"
    kind: Literal["polar"] = "polar"
    n_levels: int = 4               # Laplacian pyramid levels (51 -> 26 -> 13 -> 7)
    n_pairs: int = 8                # quadrature pairs per level
    filter_size: int = 9            # pixels
    temporal: Literal["recurrent", "static"] = "recurrent"
    use_behavior: bool = True
    beh_dim: int = 64               # behaviour code size D
    n_pos_freqs: int = 4            # Fourier features of gaze position
    saccade_detector: Literal["adaptive", "fixed"] = "adaptive"
    saccade_threshold_deg_s: float = 100.0  # fixed: initial gate threshold (learned, > 0)
    saccade_slope_s_deg: float = 0.05       # fixed: initial gate slope beta (learned, > 0)
    saccade_lambda: float = 6.0     # adaptive: threshold in units of the median-based
                                    # velocity spread per session (Engbert & Kliegl); learned
    lambda_fix: float = 10.0        # amplitude relaxation rate in fixation (1/s)
    lambda_sac: float = 40.0        # ... during saccades (1/s)
    autograd_dynamics: bool = False  # recurrent: the dynamics step by step through autograd
                                    # (the reference; ~2x the time, ~3x the memory of the
                                    # default, whose backward is written out)
    saccade_kernel_ms: float = 250.0  # behaviour: span of the saccade-locked gain after onset
    readout_dim: int = 32           # per-level feature channels fed to the readout
    readout_sigma_px: float = 1.5   # initial Gaussian std, in pixels of each level
    readout_weight_std: float | None = None  # None: 1 / sqrt(levels x readout_dim)
    readout_placement: Literal["rf_maps", "centre"] = "rf_maps"  # start positions: each
                                    # unit's RF peak on the training split, or the centre
    output_link: Literal["exp", "softplus", "learned"] = "exp"
    use_jepa: bool = False
    jepa_delta: int = 4             # predict features jepa_delta bins ahead
    min_context: int = 8            # bins of context the JEPA needs at least
    jepa_dim: int = 64
    jepa_ema: float = 0.996         # teacher EMA decay (tau)
    lambda_jepa: float = 0.5
    jepa_max_grad_ratio: float | None = 0.1  # cap on |grad JEPA| / |grad NLL| on the shared
                                    # (front-end) parameters; None: lambda_jepa as given
    jepa_warmup_steps: int = 0      # JEPA weight ramps from 0 over these optimizer steps
    jepa_stop_grad: bool = False    # True: JEPA trains its own heads only, not the front end
    jepa_balance_every: int = 10    # optimizer steps between measurements of the ratio

    def __post_init__(self):
        for key in ("n_levels", "n_pairs", "filter_size", "beh_dim", "readout_dim",
                    "jepa_delta", "min_context", "jepa_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.saccade_kernel_ms <= 0:
            raise ValueError(f"saccade_kernel_ms: must be > 0, got {self.saccade_kernel_ms}")
        if self.filter_size % 2 == 0:
            raise ValueError(f"filter_size: must be odd, got {self.filter_size}")
        if not 0 < self.jepa_ema < 1:
            raise ValueError(f"jepa_ema: must be in (0, 1), got {self.jepa_ema}")
        if self.temporal == "static" and self.use_behavior:
            raise ValueError("use_behavior: a static model has no dynamics to drive; set false")


@dataclass
class BaselineConfig:
    """ResNet + ConvGRU baseline (the lab's current best)."""

    name: str = "baseline"
    kind: Literal["resnet_convgru"] = "resnet_convgru"
    temporal_kernel: int = 7        # causal temporal front end (bins)
    front_channels: int = 8
    res_channels: tuple[int, int] = (32, 64)
    gru_hidden: int = 128
    gru_kernel: int = 3
    beh_emb_dim: int = 16           # eye-movement modulator output channels
    readout_sigma: float = 0.25
    readout_weight_std: float | None = None
    readout_placement: Literal["rf_maps", "centre"] = "rf_maps"
    output_link: Literal["exp", "softplus", "learned"] = "exp"
    use_jepa: bool = False          # the baseline has no JEPA; kept for a uniform interface
    lambda_jepa: float = 0.0

    def __post_init__(self):
        if self.temporal_kernel < 1 or self.gru_hidden < 1 or self.gru_kernel % 2 == 0:
            raise ValueError("temporal_kernel, gru_hidden must be >= 1 and gru_kernel odd")
        if self.use_jepa:
            raise ValueError("use_jepa: the baseline has no JEPA")


ModelConfig = PolarConfig | BaselineConfig  # a tagged union: ``kind`` picks the class


def config_from_dict(data: dict, where: str = "") -> ModelConfig:
    """Dispatch on ``kind`` (default ``polar``) and build the config (ConfigError names a bad
    key; ``where``, e.g. the file, starts the message)."""
    try:
        return convert(data, ModelConfig)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a model YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model config not found")
    data = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(data, str(path))
