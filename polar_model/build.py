"""Build a model from its config and the data's spec, refusing data that cannot serve it."""

from __future__ import annotations

from .base import EncodingModel
from .baseline import ResNetConvGRU
from .config import BaselineConfig, ModelConfig, PolarConfig
from .polar_v1 import PolarV1
from .spec import DataSpec

MIN_WINDOW = 2  # recurrent models need at least one step of history to differentiate gaze


def required_window_len(cfg: ModelConfig) -> int:
    """The shortest window a model can be trained on: ``jepa_delta + min_context`` with JEPA;
    1 for the static configurations; 2 otherwise."""
    if getattr(cfg, "use_jepa", False):
        return cfg.jepa_delta + cfg.min_context
    if isinstance(cfg, PolarConfig) and cfg.temporal == "static":
        return 1
    return MIN_WINDOW


def build_model(cfg: ModelConfig, spec: DataSpec) -> EncodingModel:
    need = required_window_len(cfg)
    if spec.window_len < need:
        raise ValueError(
            f"window_len = {spec.window_len} is shorter than {cfg.name!r} needs: "
            f"jepa_delta + min_context = {need}. Rebuild the store with "
            f"python pipelines/build_shards.py --model-config <this model's YAML>"
        )
    if isinstance(cfg, PolarConfig):
        return PolarV1(cfg, spec)
    if isinstance(cfg, BaselineConfig):
        return ResNetConvGRU(cfg, spec)
    raise TypeError(f"unknown model config {type(cfg).__name__}")
