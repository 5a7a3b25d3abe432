"""Model configurations (``configs/model/*.yaml``) as typed dataclasses.

``kind: polar`` -> :class:`PolarConfig` (the six Polar-V1 configurations differ in
``use_behavior``, ``temporal`` and ``use_jepa``); ``kind: resnet_convgru`` ->
:class:`BaselineConfig`. The dataclass defaults are the recipe of the default run
(``configs/model/full.yaml``, the full model); each shipped YAML lists only what differs from
them. Unknown or ill-typed keys are errors naming the key; every number has a declared range
(:func:`polar_data.config.typed_yaml.bounded`: widths bound the parameters and activations a
model allocates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from polar_data.config.typed_yaml import (
    ConfigError,
    FieldError,
    bounded,
    check_fields,
    check_name,
    convert,
    read_mapping,
)

WIDTH = "[1, 4096]"  # channels / feature sizes: generous, finite


@dataclass
class GazeCorrection:
    """Settings both models share: the shifter (:mod:`polar_model.shifter`) and readout
    position sampling. A base of :class:`PolarConfig` and :class:`BaselineConfig`, so each
    setting is written once."""

    shifter: bool = True             # learn the eye tracker's calibration error (gaze ->
                                    # shift of the crop, per session; polar_model.shifter)
    shifter_hidden: int = bounded(20, WIDTH)  # shifter MLP: 2 -> hidden (softplus) -> 2
    shifter_penalty: float = bounded(  # weight on the mean squared shift (deg^2) per batch
        0.0, "[0, 1000000]")
    shifter_centre_penalty: float = bounded(  # weight on the squared shift at gaze (0, 0)
        1.0, "[0, 1000000]")            # (deg^2): pins the constant the readouts can absorb
    shifter_drift: bool = False      # + a slow drift in the session's clock (needs `end`)
    readout_sample_positions: bool = False  # training reads each unit at a position drawn
                                    # from N(mu, sigma_pos^2) (sigma_pos learned), eval at mu


@dataclass
class PolarConfig(GazeCorrection):
    """Polar-V1; the defaults are the full model (behaviour + JEPA). Frequencies in
    cycles/pixel, rates in 1/s, speeds in deg/s."""

    name: str = "polar"             # a plain name (the run folder runs/<name>)
    kind: Literal["polar"] = "polar"
    n_levels: int = bounded(4, "[1, 16]")  # Laplacian pyramid levels (51 -> 26 -> 13 -> 7)
    n_pairs: int = bounded(8, "[1, 1024]")  # quadrature pairs per level
    filter_size: int = bounded(9, "[1, 255]")  # pixels, odd
    temporal: Literal["recurrent", "static"] = "recurrent"
    use_behavior: bool = True
    beh_dim: int = bounded(64, WIDTH)  # behaviour code size D
    n_pos_freqs: int = bounded(4, "[0, 256]")  # Fourier features of gaze position
    saccade_detector: Literal["adaptive", "fixed"] = "adaptive"
    saccade_threshold_deg_s: float = bounded(  # fixed: initial gate threshold (learned, > 0)
        100.0, "(0, 100000]")
    saccade_slope_s_deg: float = bounded(  # fixed: initial gate slope beta (learned, > 0)
        0.05, "(0, 1000]")
    saccade_lambda: float = bounded(  # adaptive: threshold in units of the median-based
        6.0, "(0, 1000]")               # velocity spread per session (Engbert & Kliegl); learned
    lambda_fix: float = bounded(10.0, "(0, 100000]")  # amplitude relaxation in fixation (1/s)
    lambda_sac: float = bounded(40.0, "(0, 100000]")  # ... during saccades (1/s)
    autograd_dynamics: bool = False  # recurrent: the dynamics step by step through autograd
                                    # (the reference; ~2x the time, ~3x the memory of the
                                    # default, whose backward is written out)
    saccade_kernel_ms: float = bounded(  # behaviour: span of the saccade-locked gain
        250.0, "(0, 100000]")
    readout_dim: int = bounded(32, WIDTH)  # per-level feature channels fed to the readout
    readout_sigma_px: float = bounded(1.5, "(0, 10000]")  # initial Gaussian std, pixels
    readout_weight_std: float | None = bounded(  # None: 1 / sqrt(levels x readout_dim)
        None, "(0, 1000]")
    readout_placement: Literal["rf_maps", "centre"] = "rf_maps"  # start positions: each
                                    # unit's RF peak on the training split, or the centre
    output_link: Literal["exp", "softplus", "learned"] = "softplus"  # rate = mean rate x
                                    # softplus(x): follows rectified neurons, exp cannot
    use_jepa: bool = True
    jepa_delta: int = bounded(4, "[1, 1024]")  # predict features jepa_delta bins ahead
    min_context: int = bounded(8, "[1, 2048]")  # bins of context the JEPA needs at least
    jepa_dim: int = bounded(64, WIDTH)
    jepa_ema: float = bounded(0.996, "(0, 1)")  # teacher EMA decay (tau)
    lambda_jepa: float = bounded(0.5, "[0, 1000]")
    jepa_max_grad_ratio: float | None = bounded(  # cap on |grad JEPA| / |grad NLL| on the
        0.1, "(0, 1000]")        # shared (front-end) parameters; None: lambda_jepa as given
    jepa_warmup_steps: int = bounded(  # JEPA weight ramps from 0 over these optimizer steps
        0, "[0, 1000000000]")
    jepa_stop_grad: bool = False    # True: JEPA trains its own heads only, not the front end
    jepa_balance_every: int = bounded(  # optimizer steps between measurements of the ratio
        25, "[1, 1000000000]")

    def __post_init__(self):
        check_fields(self)
        check_name("name", self.name)
        if self.filter_size % 2 == 0:
            raise FieldError("filter_size", f"must be odd, got {self.filter_size}")
        if self.temporal == "static" and self.use_behavior:
            raise FieldError("use_behavior",
                             "a static model has no dynamics to drive; set false")


@dataclass
class BaselineConfig(GazeCorrection):
    """ResNet + ConvGRU baseline (the lab's current best)."""

    name: str = "baseline"          # a plain name (the run folder runs/<name>)
    kind: Literal["resnet_convgru"] = "resnet_convgru"
    temporal_kernel: int = bounded(7, "[1, 1024]")  # causal temporal front end (bins)
    front_channels: int = bounded(8, WIDTH)
    res_channels: tuple[int, int] = bounded((32, 64), WIDTH)
    gru_hidden: int = bounded(128, WIDTH)
    gru_kernel: int = bounded(3, "[1, 255]")  # odd
    beh_emb_dim: int = bounded(16, WIDTH)  # eye-movement modulator output channels
    readout_sigma: float = bounded(0.25, "(0, 1000]")
    readout_weight_std: float | None = bounded(None, "(0, 1000]")
    readout_placement: Literal["rf_maps", "centre"] = "rf_maps"
    output_link: Literal["exp", "softplus", "learned"] = "softplus"  # as Polar-V1's
    def __post_init__(self):
        check_fields(self)
        check_name("name", self.name)
        if self.gru_kernel % 2 == 0:
            raise FieldError("gru_kernel", f"must be odd, got {self.gru_kernel}")


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
    return config_from_dict(read_mapping(path, "model config"), str(path))
