"""Build a model from its config and the data's spec, refusing data that cannot serve it
(the window rule: :mod:`polar_model.window_rule`)."""

from __future__ import annotations

from polar_model.base import EncodingModel
from polar_model.baseline import ResNetConvGRU
from polar_model.config import BaselineConfig, ModelConfig, PolarConfig
from polar_model.polar_v1 import PolarV1
from polar_model.spec import DataSpec
from polar_model.window_rule import check_window_len


def build_model(cfg: ModelConfig, spec: DataSpec) -> EncodingModel:
    """The model of ``cfg`` for data of ``spec``; :class:`WindowTooShort` when the spec's
    windows are too short for it."""
    check_window_len(cfg, spec.window_len)
    if isinstance(cfg, PolarConfig):
        return PolarV1(cfg, spec)
    if isinstance(cfg, BaselineConfig):
        return ResNetConvGRU(cfg, spec)
    raise TypeError(f"unknown model config {type(cfg).__name__}")
