"""The window-length rule: :func:`required_window_len` (the shortest window a model needs) and
:func:`check_window_len` (the one check and its one message, :class:`WindowTooShort`).

The check runs in :func:`polar_model.models.build_model`, so a training checks its store once,
when it builds its model (the trainer names the store and the model file in the message); a
build takes the plain ``window_len`` it is given (``pipelines/build_shards.py --model-config``
asks :func:`required_window_len`)."""

from __future__ import annotations

from polar_model.config import ModelConfig, PolarConfig

MIN_WINDOW = 2  # recurrent models need at least one step of history to differentiate gaze


def required_window_len(cfg: ModelConfig) -> int:
    """The shortest window a model can be trained on: ``jepa_delta + min_context`` with JEPA;
    1 for the static configurations; 2 otherwise."""
    if isinstance(cfg, PolarConfig) and cfg.use_jepa:
        return cfg.jepa_delta + cfg.min_context
    if isinstance(cfg, PolarConfig) and cfg.temporal == "static":
        return 1
    return MIN_WINDOW


class WindowTooShort(ValueError):
    """Windows of ``window_len`` bins are shorter than ``cfg`` needs; the message names
    ``where`` the windows come from, the model (``model_ref``: its YAML, else its name), both
    numbers and the command that rebuilds the store. :meth:`naming` gives the same error
    with another ``where`` / ``model_ref`` (the trainer names its store and model file)."""

    def __init__(self, cfg: ModelConfig, window_len: int, where: str = "the data",
                 model_ref: str | None = None):
        self.cfg, self.window_len = cfg, window_len
        need = required_window_len(cfg)
        model = model_ref or repr(cfg.name)
        jepa = isinstance(cfg, PolarConfig) and cfg.use_jepa
        why = " (jepa_delta + min_context)" if jepa else ""
        super().__init__(
            f"{where} has window_len = {window_len}, but {model} needs window_len >= "
            f"{need}{why}. Rebuild the store for this model: python pipelines/build_shards.py "
            f"--model-config {model_ref or '<this model YAML>'} --out <new folder>")

    def naming(self, where: str, model_ref: str | None) -> WindowTooShort:
        return WindowTooShort(self.cfg, self.window_len, where, model_ref)


def check_window_len(cfg: ModelConfig, window_len: int) -> None:
    """Raise :class:`WindowTooShort` when windows of ``window_len`` bins are too short for
    ``cfg`` (see :func:`required_window_len`)."""
    if window_len < required_window_len(cfg):
        raise WindowTooShort(cfg, window_len)
