"""The one typed config tree of a training run, and its one loader.

A run's config is one tree (:class:`RunConfig`)::

    sessions, demo, store, nwb, loader   the data config (configs/data/*.yaml, DataConfig)
    model                                PolarConfig | BaselineConfig, picked by ``kind:``
                                         (configs/model/*.yaml)
    train                                TrainConfig (configs/train/*.yaml)

:func:`load_run_config` builds it, lowest precedence first, from the dataclasses' defaults, a
whole run config (``config``: e.g. a run folder's ``config.yaml``), the data, model and train
files (each replaces the sections it gives), then dotted command-line overrides
(``--model.n_pairs 12 --train.lr 3e-3 --loader.batch_size 16 --store.window_len 20``;
``--model.kind resnet_convgru`` starts the model section from that kind's defaults). Every
file is checked against its own dataclass first, so an error names the file and the key in it
(``configs/model/x.yaml: n_pairs: expected an integer, got 'a'``); an override's error names
its flag (``command line: --train.lr: expected a number, got 'fast'``); an error that only the
whole tree shows (a check across keys) names the files and flags that made that section.

The trainer saves the tree whole into ``<run>/config.yaml`` and into every checkpoint
(hyperparameter ``run_config``), storage-option secrets redacted
(:mod:`polar_data.config.storage_options`); ``--config <run>/config.yaml`` loads it back unchanged
but for those, which then come from the environment or a named profile.

Why not jsonargparse: it reads dataclasses and gives dotted overrides, but it treats a union of
dataclasses as subclass types (``class_path`` / ``init_args``), so our model YAMLs (``kind:``)
would not load as they are, ``--model FILE`` is refused for the union, and its errors do not
name the file. This module is a thin layer on the typed loader :mod:`polar_data.config.typed_yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

from polar_data.config.data_config import DATA_SECTIONS, DataConfig
from polar_data.config.typed_yaml import (
    SEED_RANGE,
    ConfigError,
    apply_overrides,
    bounded,
    check_fields,
    from_dict,
    load_config,
    read_mapping,
    to_dict,
    to_yaml,
)
from polar_model.config import ModelConfig, PolarConfig, config_from_dict

# The precisions Lightning's Trainer accepts ("32-true", "bf16-mixed", "16", 32, ...): its own
# Literal, so the list follows the installed Lightning.
Precision = Literal[get_args(_PRECISION_INPUT)]  # a union of Literals -> one Literal
STEPS = "[1, 1000000000]"  # counts of optimizer steps


@dataclass
class TrainConfig:
    """Optimisation settings (``configs/train/*.yaml``); steps are optimizer steps."""

    lr: float = bounded(3e-3, "(0, 10]")
    weight_decay: float = bounded(1e-4, "[0, 10]")  # AdamW's decoupled decay (x lr)
    betas: tuple[float, float] = bounded((0.9, 0.999), "[0, 1)")  # Adam's moment decays
    warmup_steps: int = bounded(50, "[0, 1000000000]")
    max_steps: int = bounded(600, STEPS)
    max_epochs: int = bounded(1000, "[1, 1000000000]")  # the step budget usually ends first
    grad_clip: float = bounded(1.0, "[0, 1000000]")  # gradient norm clip (0: none)
    ema_decay: float | None = bounded(None, "(0, 1)")  # EMA of weights for evaluation
    seed: int = bounded(0, SEED_RANGE)
    val_every_steps: int = bounded(100, STEPS)
    log_every_steps: int = bounded(10, STEPS)
    precision: Precision = "32-true"
    head_lr_mult: float = bounded(  # lr multiplier of the per-unit heads (readouts and
        1.0, "(0, 10000]")          # saccade-locked gains)

    def __post_init__(self):
        check_fields(self)


@dataclass
class RunConfig(DataConfig):
    """Everything a training run is configured by: the data config's sections (so a
    ``RunConfig`` is a :class:`DataConfig` for the DataModule) plus ``model`` and ``train``."""

    model: ModelConfig = field(default_factory=PolarConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = (*DATA_SECTIONS, "model", "train")


def load_run_config(config: str | Path | None = None, data: str | Path | None = None,
                    model: str | Path | None = None, train: str | Path | None = None,
                    overrides=()) -> RunConfig:
    """The run's config tree (see the module docstring for precedence and errors).

    ``overrides``: ``[(dotted key, text), ...]`` as
    :func:`polar_data.config.typed_yaml.split_overrides` returns them, e.g.
    ``[("model.n_pairs", "12")]``.
    """
    tree: dict = {}
    origin: dict[str, list[str]] = {}  # section -> where its values came from

    def take(section_data: dict, where: str) -> None:
        for k, v in section_data.items():
            tree[k] = v
            origin[k] = [where]

    if config is not None:
        d = read_mapping(config)
        load_config(config, RunConfig)  # errors name this file and the dotted key
        take(d, str(config))
    if data is not None:
        d = read_mapping(data)
        load_config(data, DataConfig)
        take(d, str(data))
    if model is not None:
        d = read_mapping(model)
        config_from_dict(d, str(model))
        take({"model": d}, str(model))
    if train is not None:
        d = read_mapping(train)
        load_config(train, TrainConfig)
        take({"train": d}, str(train))
    try:  # every default filled in, so an override of one key keeps its neighbours
        tree = to_dict(from_dict(RunConfig, tree))
    except ConfigError as e:
        raise ConfigError(f"{' + '.join(sum(origin.values(), [])) or 'defaults'}: {e}") from None
    for key, text in overrides:  # a new model kind starts from that kind's defaults
        if key == "model.kind" and text != tree["model"].get("kind"):
            tree["model"] = {"kind": text}
    tree = apply_overrides(RunConfig, tree, overrides)
    for key, _ in overrides:
        origin.setdefault(key.split(".", 1)[0], []).append(f"--{key}")
    try:
        return from_dict(RunConfig, tree)
    except ConfigError as e:  # a check across keys, e.g. a __post_init__ after overrides
        msg = str(e)
        section = msg.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
        where = origin.get(section) or ["defaults"]
        raise ConfigError(f"{' + '.join(where)}: {msg}") from None


def run_config_from_hparams(hparams: dict) -> RunConfig | None:
    """The tree saved in a checkpoint's hyperparameters (None for checkpoints made before
    it was saved)."""
    tree = hparams.get("run_config")
    return None if tree is None else from_dict(RunConfig, tree)


def write_run_config(cfg: RunConfig, path: str | Path) -> None:
    """``<run>/config.yaml``: the whole tree, loadable with ``--config``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_yaml(cfg))


__all__ = ["RunConfig", "TrainConfig", "load_run_config", "run_config_from_hparams",
           "write_run_config", "to_dict", "to_yaml", "SECTIONS", "DATA_SECTIONS"]
