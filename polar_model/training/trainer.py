"""Train an encoding model on a built store (``pipelines/train.py`` is this module's ``main``).

    python pipelines/train.py                                    # demo store, full Polar-V1
    python pipelines/train.py --data configs/data/demo.yaml --model configs/model/baseline.yaml
    python pipelines/train.py --model.n_pairs 12 --train.lr 3e-3 --loader.batch_size 16
    python pipelines/train.py --print-config                     # the resolved tree, as YAML
    python pipelines/train.py --config runs/full/config.yaml     # a run's whole config again
    python pipelines/train.py --resume runs/full/checkpoints/last.ckpt

The run's config is one tree (data sections, ``model``, ``train``; see
:mod:`polar_model.training.run_config`): ``--data``, ``--model``, ``--train`` name the files
of its parts (defaults: configs/data/demo.yaml, configs/model/full.yaml,
configs/train/cpu_demo.yaml, unless ``--config`` gives a whole tree) and any key can be set
with its dotted name (``--<section>.<key> VALUE``, YAML values: ``null``, ``true``,
``[16, 32]``). The tree is written whole to ``<run>/config.yaml`` and into every checkpoint.

Preemption: on SIGTERM (or SIGUSR1) the current batch finishes, ``last.ckpt`` is saved and the
process exits with status 0; requeue the job with ``--resume <run>/checkpoints/last.ckpt``.

On a cluster (Lightning DDP over nodes x GPUs, data streamed from WebDataset shards; set
``loader.store`` to the store's folder or s3:// URL and ``loader.kind: wds``):

    srun python pipelines/train.py --data configs/data/lab.yaml --model configs/model/full.yaml \\
        --accelerator gpu --devices 4 --num-nodes 2 --strategy ddp

Exit status: 0 on success, 2 when the data cannot serve the model (e.g. the store's window is
shorter than the model's jepa_delta + min_context) or a config is wrong.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from polar_data.datamodule import PolarDataModule
from polar_data.schema import StoreError
from polar_data.typed_yaml import ConfigError, split_overrides, to_yaml

from . import REPO
from .data_glue import check_window, data_facts, spec_of
from .lit_module import EncodingModule
from .placement import place_readouts
from .predictor import SaveDataFacts
from .preemption import SaveLast
from .run_config import SECTIONS, RunConfig, TrainConfig, load_run_config, write_run_config

DEFAULTS = {"data": REPO / "configs/data/demo.yaml", "model": REPO / "configs/model/full.yaml",
            "train": REPO / "configs/train/cpu_demo.yaml"}


def parse_args(argv=None):
    """(argparse namespace, dotted overrides). ``--max-steps N`` is ``--train.max_steps N``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv, SECTIONS)
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path,
                   help="a whole run config (e.g. <run>/config.yaml); the part files below "
                        "then default to none")
    p.add_argument("--data", type=Path, help=f"data config (default {DEFAULTS['data']})")
    p.add_argument("--model", type=Path, help=f"model config (default {DEFAULTS['model']})")
    p.add_argument("--train", type=Path, help=f"train config (default {DEFAULTS['train']})")
    p.add_argument("--out", type=Path, help="run folder (default runs/<model name>)")
    p.add_argument("--resume", type=Path, help="checkpoint to resume from (exact resume)")
    p.add_argument("--max-steps", type=int, help="same as --train.max_steps")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config tree as YAML and exit")
    a = p.parse_args(rest)
    if a.config is None:  # the default parts
        for k, v in DEFAULTS.items():
            setattr(a, k, getattr(a, k) or v)
    if a.max_steps is not None:
        overrides.append(("train.max_steps", str(a.max_steps)))
    return a, overrides


def resolve_config(a, overrides) -> RunConfig:
    """The run config from the parsed command line."""
    return load_run_config(a.config, a.data, a.model, a.train, overrides)


class SaveRunConfig(L.Callback):
    """Writes the run's whole config tree to ``<run>/config.yaml`` (global rank 0)."""

    def __init__(self, cfg: RunConfig, path: Path):
        self.cfg, self.path = cfg, path

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            write_run_config(self.cfg, self.path)


def make_trainer(tc: TrainConfig, out: Path, a) -> L.Trainer:
    callbacks = [ModelCheckpoint(dirpath=out / "checkpoints", filename="best",
                                 monitor="val/bps", mode="max", save_top_k=1),
                 SaveLast(out / "checkpoints")]  # every validation, the end, SIGTERM/SIGUSR1
    if tc.ema_decay is not None:
        callbacks.append(EMAWeightAveraging(decay=tc.ema_decay))
    devices = int(a.devices) if str(a.devices).isdigit() else a.devices
    strategy = a.strategy
    if strategy == "ddp":  # each batch uses one session's readout: the others sit unused
        strategy = DDPStrategy(find_unused_parameters=True)
    return L.Trainer(
        default_root_dir=out, max_steps=tc.max_steps, max_epochs=tc.max_epochs,
        gradient_clip_val=tc.grad_clip, callbacks=callbacks,
        logger=[CSVLogger(out, name="logs", version=""),
                TensorBoardLogger(out, name="tb", version="")],
        val_check_interval=tc.val_every_steps, check_val_every_n_epoch=None,
        log_every_n_steps=tc.log_every_steps, precision=tc.precision,
        accelerator=a.accelerator, devices=devices, num_nodes=a.num_nodes,
        strategy=strategy, use_distributed_sampler=False,  # our loaders split by rank
        enable_progress_bar=not a.no_progress, num_sanity_val_steps=0,
    )


def main(argv=None) -> int:
    # Our train loaders skip the batches a mid-epoch checkpoint already trained on
    # (PolarDataModule._done_in_epoch), so Lightning's "not resumable" warning is moot.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
    try:
        a, overrides = parse_args(argv)
        cfg = resolve_config(a, overrides)
        if a.print_config:
            print(to_yaml(cfg), end="")
            return 0
        dm = PolarDataModule(cfg)
        check_window(dm.info, cfg.model, a.model or cfg.model.name)
    except (ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tc = cfg.train
    L.seed_everything(tc.seed, workers=True)
    out = a.out or REPO / "runs" / (a.model.stem if a.model is not None else cfg.model.name)
    module = EncodingModule.create(cfg.model, spec_of(dm.info), tc, run_config=cfg)
    if a.resume is None and cfg.model.readout_placement == "rf_maps":
        print(place_readouts(module.model, dm.info, progress=not a.no_progress), flush=True)
    trainer = make_trainer(tc, out, a)
    trainer.callbacks.append(SaveDataFacts(data_facts(dm.info)))  # for polar_model.load
    trainer.callbacks.append(SaveRunConfig(cfg, out / "config.yaml"))
    trainer.fit(module, datamodule=dm, ckpt_path=a.resume)
    best = trainer.checkpoint_callback.best_model_path
    score = trainer.checkpoint_callback.best_model_score
    if trainer.is_global_zero:
        print(f"best checkpoint: {best} (val/bps {float(score) if score is not None else 'n/a'})")
    return 0
