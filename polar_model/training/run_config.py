"""The one typed config tree of a training run, and its one loader.

A run's config is one tree (:class:`RunConfig`) of what training reads, nothing else::

    loader    LoaderConfig: the store it trains on (``loader.store``, a folder or URL) and
              how batches are read from it
    model     PolarConfig | BaselineConfig, picked by ``kind:`` (configs/model/*.yaml)
    train     TrainConfig (configs/train/*.yaml)

The dataclasses' defaults are the default run's recipe; the shipped files list what they
change. :func:`load_run_config` builds the tree, lowest precedence first, from those defaults,
a whole run config (``config``: e.g. a run folder's ``config.yaml``), the data, model and
train files (each replaces the sections it gives), then dotted command-line overrides
(``--model.n_pairs 12 --train.lr 3e-3 --loader.batch_size 16``; ``--model.kind
resnet_convgru`` starts the model section from that kind's defaults).

Build settings (``sessions``, ``demo``, ``store``, ``nwb``: what ``pipelines/build_shards.py``
reads) are not part of a run: what the build made (window length, clip length, rate, splits)
is read from the store itself. The rule:

* a data file (``--data``, configs/data/*.yaml, which holds build and loader sections) is
  checked whole against :class:`~polar_data.config.data_config.DataConfig`; training takes its
  ``loader`` section and the store's location (``loader.store``, else ``store.out_dir``); its
  other build sections are ignored by design (they are the build's);
* a build key on the command line (``--store.window_len 20``) or in a whole run config
  (``--config``) is an error naming the key and where it belongs.

Every file is checked against its own dataclass first, so an error names the file and the key
in it (``configs/model/x.yaml: n_pairs: expected an integer, got 'a'``); an override's error
names its flag (``command line: --train.lr: expected a number, got 'fast'``); an error that
only the whole tree shows (a check across keys) names the files and flags that made that
section.

The trainer saves the tree whole into ``<run>/config.yaml`` and into every checkpoint
(hyperparameter ``run_config``), storage-option secrets redacted
(:mod:`polar_data.config.storage_options`); ``--config <run>/config.yaml`` loads it back
unchanged but for those, which then come from the environment or a named profile.

Why not jsonargparse: it reads dataclasses and gives dotted overrides, but it treats a union of
dataclasses as subclass types (``class_path`` / ``init_args``), so our model YAMLs (``kind:``)
would not load as they are, ``--model FILE`` is refused for the union, and its errors do not
name the file. This module is a thin layer on the typed loader
:mod:`polar_data.config.typed_yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

from polar_data.config.data_config import (
    BUILD_SECTIONS,
    DATA_SECTIONS,
    DataConfig,
    LoaderConfig,
    StoreConfig,
)
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
    """Optimisation settings (``configs/train/*.yaml``); steps are optimizer steps. The
    defaults are the default recipe (``configs/train/cpu_demo.yaml``; why: docs/experiments.md,
    "The default recipe"): AdamW, a linear warm-up to ``lr``, then cosine decay to
    ``max_steps``."""

    lr: float = bounded(1e-3, "(0, 10]")  # peak learning rate of the shared front end
    weight_decay: float = bounded(1e-4, "[0, 10]")  # AdamW's decoupled decay (x lr)
    betas: tuple[float, float] = bounded((0.9, 0.999), "[0, 1)")  # Adam's moment decays
    warmup_steps: int = bounded(20, "[0, 1000000000]")  # linear warm-up from 0 to lr
    max_steps: int = bounded(900, STEPS)  # the step budget; the cosine schedule ends here
    max_epochs: int = bounded(1000, "[1, 1000000000]")  # the step budget usually ends first
    grad_clip: float = bounded(1.0, "[0, 1000000]")  # gradient norm clip (0: none)
    ema_decay: float | None = bounded(None, "(0, 1)")  # EMA of weights for evaluation
    seed: int = bounded(0, SEED_RANGE)
    val_every_steps: int = bounded(100, STEPS)  # validation, best.ckpt and last.ckpt
    log_every_steps: int = bounded(10, STEPS)
    precision: Precision = "32-true"  # on a GPU bf16-mixed runs the image path in bfloat16
    head_lr_mult: float = bounded(  # lr multiplier of the per-unit heads (readouts and
        30.0, "(0, 10000]")         # saccade-locked gains): many, and they start far off

    def __post_init__(self):
        check_fields(self)


DEFAULT_STORE = str(StoreConfig().out_dir)  # the store the default run trains on


@dataclass
class RunConfig:
    """What a training run reads: the store and its loader (``loader.store``: the store's
    folder or URL; None means :data:`DEFAULT_STORE`, filled in), ``model`` and ``train``."""

    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=PolarConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if isinstance(self.loader, LoaderConfig) and self.loader.store is None:
            self.loader = replace(self.loader, store=DEFAULT_STORE)


SECTIONS = ("loader", "model", "train")  # RunConfig's keys
CLI_SECTIONS = (*SECTIONS, *BUILD_SECTIONS)  # dotted flags train.py takes (build ones: refused)
BUILD_TOOL = "pipelines/build_shards.py"


def build_key_error(key: str, where: str) -> ConfigError:
    """The error for build setting ``key`` (dotted) given to training at ``where``."""
    if key.split(".", 1)[0] == "store" and key.split(".")[-1] == "out_dir":
        hint = "the store a run trains on is loader.store (--loader.store PATH)"
    else:
        hint = ("training reads what the build made (window length, clip length, bin rate, "
                "splits) from the store itself; set it when building the store")
    return ConfigError(f"{where}: {key} is a build setting ({BUILD_TOOL} --config / "
                       f"--{key}), not a training one: {hint}")


def _store_location(path: str | Path) -> dict:
    """The loader section training takes from data file ``path`` (checked whole as a
    DataConfig): its ``loader`` keys, with ``store`` = ``loader.store``, else
    ``store.out_dir``. The build sections are the build's (ignored by training)."""
    d = read_mapping(path)
    cfg = load_config(path, DataConfig)  # errors name this file and the dotted key
    loader = dict(d.get("loader") or {})
    loader["store"] = cfg.loader.store if cfg.loader.store is not None else str(
        cfg.store.out_dir)
    return loader


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
        if build := [k for k in d if k in BUILD_SECTIONS]:
            raise build_key_error(build[0], str(config))
        load_config(config, RunConfig)  # errors name this file and the dotted key
        take(d, str(config))
    if data is not None:
        take({"loader": _store_location(data)}, str(data))
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
    for key, _ in overrides:
        if key.split(".", 1)[0] in BUILD_SECTIONS:
            raise build_key_error(key, f"command line: --{key}")
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


def run_config_from_hparams(hparams: dict) -> RunConfig:
    """The tree saved in a checkpoint's hyperparameters (``run_config``)."""
    return from_dict(RunConfig, hparams["run_config"])


def write_run_config(cfg: RunConfig, path: str | Path) -> None:
    """``<run>/config.yaml``: the whole tree, loadable with ``--config``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_yaml(cfg))


__all__ = ["RunConfig", "TrainConfig", "load_run_config", "run_config_from_hparams",
           "write_run_config", "to_dict", "to_yaml", "SECTIONS", "CLI_SECTIONS",
           "BUILD_SECTIONS", "DATA_SECTIONS", "DEFAULT_STORE", "build_key_error"]
