"""Build a model from its config and the data's spec, refusing data that cannot serve it.

The window-length rule lives here: :func:`required_window_len` (what a model needs) and
:func:`check_window_len` (the one check, used by :func:`build_model`, the trainer and
``pipelines/build_shards.py --model-config``)."""

from __future__ import annotations

from polar_model.base import EncodingModel
from polar_model.baseline import ResNetConvGRU
from polar_model.config import BaselineConfig, ModelConfig, PolarConfig
from polar_model.polar_v1 import PolarV1
from polar_model.spec import DataSpec

MIN_WINDOW = 2  # recurrent models need at least one step of history to differentiate gaze


def required_window_len(cfg: ModelConfig) -> int:
    """The shortest window a model can be trained on: ``jepa_delta + min_context`` with JEPA;
    1 for the static configurations; 2 otherwise."""
    if getattr(cfg, "use_jepa", False):
        return cfg.jepa_delta + cfg.min_context
    if isinstance(cfg, PolarConfig) and cfg.temporal == "static":
        return 1
    return MIN_WINDOW


def check_window_len(cfg: ModelConfig, window_len: int, where: str = "the data",
                     model_ref: str | None = None) -> None:
    """Raise ValueError when windows of ``window_len`` bins are too short for ``cfg`` (see
    :func:`required_window_len`), naming ``where`` the windows come from, the model
    (``model_ref``: its YAML, else its name) and the command that rebuilds the store."""
    need = required_window_len(cfg)
    if window_len < need:
        model = model_ref or repr(cfg.name)
        why = " (jepa_delta + min_context)" if getattr(cfg, "use_jepa", False) else ""
        raise ValueError(
            f"{where} has window_len = {window_len}, but {model} needs window_len >= "
            f"{need}{why}. Rebuild the store for this model: python pipelines/build_shards.py "
            f"--model-config {model_ref or '<this model YAML>'} --out <new folder>"
        )


def build_model(cfg: ModelConfig, spec: DataSpec) -> EncodingModel:
    check_window_len(cfg, spec.window_len)
    if isinstance(cfg, PolarConfig):
        return PolarV1(cfg, spec)
    if isinstance(cfg, BaselineConfig):
        return ResNetConvGRU(cfg, spec)
    raise TypeError(f"unknown model config {type(cfg).__name__}")
