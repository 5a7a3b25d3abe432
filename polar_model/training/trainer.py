"""Train an encoding model on a built store (``pipelines/train.py`` is this module's ``main``).

    python pipelines/train.py                                    # demo store, full Polar-V1
    python pipelines/train.py --data configs/data/demo.yaml --model configs/model/baseline.yaml
    python pipelines/train.py --model.n_pairs 12 --train.lr 3e-3 --loader.batch_size 16
    python pipelines/train.py --print-config                     # the resolved tree, as YAML
    python pipelines/train.py --config runs/full/config.yaml     # a run's whole config again
    python pipelines/train.py --resume runs/full/checkpoints/last.ckpt

The run's config is one tree of what training reads (``loader``, with the store's location
``loader.store``; ``model``; ``train``; see :mod:`polar_model.training.run_config`):
``--data``, ``--model``, ``--train`` name the files of its parts (defaults:
configs/data/demo.yaml, configs/model/full.yaml, configs/train/cpu_demo.yaml, unless
``--config`` gives a whole tree) and any key can be set with its dotted name
(``--<section>.<key> VALUE``, YAML values: ``null``, ``true``, ``[16, 32]``). Of a data file
training reads the loader section and the store's location (``loader.store``, else
``store.out_dir``); a build setting on the command line (``--store.window_len 20``) is an
error naming where it belongs (``pipelines/build_shards.py``): the window length and the
other facts of a build are read from the store. The tree is written whole to
``<run>/config.yaml`` and into every checkpoint (storage-option secrets redacted, see Safety
below).

Preemption: on SIGTERM (or SIGUSR1) the current batch finishes, ``last.ckpt`` is saved and the
process exits with status 0; requeue the job with ``--resume <run>/checkpoints/last.ckpt``.

On a cluster (Lightning DDP over nodes x GPUs, data streamed from WebDataset shards; set
``loader.store`` to the store's folder or s3:// URL and ``loader.kind: wds``):

    srun python pipelines/train.py --data configs/data/lab.yaml --model configs/model/full.yaml \\
        --accelerator gpu --devices 4 --num-nodes 2 --strategy ddp

Safety:

* ``--resume`` reads the checkpoint with ``weights_only=True`` (a file carrying code is
  refused, naming it) and refuses a store other than the one the run was trained on (other
  sessions, unit ids, split seed or fractions, trials per split, source files: each named);
  ``--allow-new-store`` fine-tunes on another store of the same model shape, and the new
  checkpoints list the earlier stores under ``data_facts["previous_stores"]``. A checkpoint
  carries each setting once: hyperparameters ``run_config`` (the tree) and ``spec`` (the
  store's facts that shape the model), and ``data_facts`` (what the spec lacks).
* Storage options are redacted in everything the run writes (``config.yaml``,
  ``hparams.yaml``, TensorBoard events, checkpoints): give credentials through the
  environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) or a
  named profile (``storage_options: {profile: NAME}``); ``--config <run>/config.yaml`` drops
  the placeholders, so a resumed run reaches the store with the environment's credentials.
* One training per run folder: a second one into the same ``--out`` is refused while the
  first runs (a ``flock`` on ``<run>/.build.lock.train``, dropped by the kernel when a process
  dies, so a killed run leaves no stale lock).
* A run always ends with a checkpoint: after the last step a validation runs if none ran at
  that step (so ``best.ckpt`` exists and the printed score is real); an exception in the loop
  saves ``last.ckpt`` (resumable) and the run fails, naming it.

Exit status: 0 on success, 2 when the data cannot serve the model (e.g. the store's window is
shorter than the model's jepa_delta + min_context, or the train split holds fewer samples than
one batch), a config is wrong, the checkpoint to resume is refused, or the run folder is in
use; an exception during training propagates (non-zero) after ``last.ckpt`` is saved.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from polar_data.config.storage_options import config_secrets, redact_config, usable_config
from polar_data.config.typed_yaml import ConfigError, split_overrides, to_yaml
from polar_data.schema import StoreError
from polar_data.store.build_lock import LOCK_NAME, BuildLocked, folder_lock
from polar_model.training import REPO
from polar_model.training.checkpoints import (
    check_same_store,
    check_shapes,
    read_checkpoint,
    saved_facts,
)
from polar_model.training.datamodule import PolarDataModule
from polar_model.training.lit_module import EncodingModule
from polar_model.training.placement import place_readouts
from polar_model.training.predictor import SaveDataFacts
from polar_model.training.preemption import SaveLast, ValidateAtEnd
from polar_model.training.run_config import (
    CLI_SECTIONS,
    RunConfig,
    TrainConfig,
    load_run_config,
    write_run_config,
)
from polar_model.training.runs import csv_logger
from polar_model.training.store_facts import (
    data_facts,
    identity_of,
    spec_of,
    store_identity,
)
from polar_model.window_rule import WindowTooShort

RUN_LOCK = LOCK_NAME + ".train"  # <run>/.build.lock.train: one training per run folder

DEFAULTS = {"data": REPO / "configs/data/demo.yaml", "model": REPO / "configs/model/full.yaml",
            "train": REPO / "configs/train/cpu_demo.yaml"}


def parse_args(argv=None):
    """(argparse namespace, dotted overrides). ``--max-steps N`` is ``--train.max_steps N``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv, CLI_SECTIONS)  # build keys: refused by name
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
    p.add_argument("--allow-new-store", action="store_true",
                   help="with --resume: continue training on a store other than the "
                        "checkpoint's (same model shape; recorded in the new checkpoints)")
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
    """The run config from the parsed command line, with the storage options it may use
    (a run folder's redacted placeholders dropped: credentials come from the environment)."""
    return usable_config(load_run_config(a.config, a.data, a.model, a.train, overrides))


@contextmanager
def run_folder_lock(out: Path):
    """Hold ``out`` for this training (global rank 0 only: the other ranks of a DDP job are
    this run); raises :class:`polar_data.store.build_lock.BuildLocked` naming the folder and the
    process that holds it. The kernel drops the lock when the holder dies."""
    if rank_zero_only.rank != 0:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out / RUN_LOCK, True, "training run, pipelines/train.py", out,
                     busy="used by another training run"):
        yield


def check_batches(dm: PolarDataModule) -> None:
    """Stop before training when the train split cannot fill one batch (the Zarr loader's
    batches hold one session and drop a short last one: Lightning would train nothing and
    exit 0). The streaming loader refuses this itself (StoreError)."""
    loader = dm.train_dataloader()
    if len(loader) > 0 or not hasattr(loader.dataset, "index"):
        return
    lc = dm.cfg.loader
    sessions = np.asarray(loader.dataset.index)[:, 0]
    largest = int(np.bincount(sessions).max()) if len(sessions) else 0
    raise ConfigError(
        f"loader.batch_size = {lc.batch_size}: the train split of {dm.base} holds "
        f"{len(sessions)} {lc.mode}s ({largest} in its largest session; a batch holds one "
        "session), so not one batch would be trained: use a loader.batch_size of at most "
        f"{largest}" + ("" if largest else " (or a store with a train split)"))


def check_resume(a, module: EncodingModule, facts: dict, base: str) -> dict:
    """Before ``--resume``: read the checkpoint safely, refuse another store (unless
    ``--allow-new-store``) and weights that do not fit ``module``; returns the data facts
    the new checkpoints carry (``previous_stores`` extended when the store changed)."""
    ckpt = read_checkpoint(a.resume)
    diffs = check_same_store(a.resume, ckpt, facts, base, a.allow_new_store)
    check_shapes(a.resume, ckpt, module)
    saved = saved_facts(a.resume, ckpt)
    previous = list(saved.get("previous_stores", []))
    if diffs:
        print(f"fine-tuning on another store than {a.resume}'s: " + "; ".join(diffs),
              flush=True)
        previous.append(identity_of(saved))
    return {**facts, "previous_stores": previous}


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
    callbacks.append(ValidateAtEnd())  # best.ckpt and a real score, whenever the run ends
    return L.Trainer(
        default_root_dir=out, max_steps=tc.max_steps, max_epochs=tc.max_epochs,
        gradient_clip_val=tc.grad_clip, callbacks=callbacks,
        logger=[csv_logger(out),
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
            print(to_yaml(redact_config(cfg)), end="")
            return 0
        if a.allow_new_store and a.resume is None:
            raise ConfigError("--allow-new-store goes with --resume CKPT")
        dm = PolarDataModule(cfg)
        check_batches(dm)
        facts = data_facts(dm.info, store_identity(dm.info, cfg.loader.storage_options))
        module = build_module(cfg, dm, a.model)  # the one window check of a training
    except (ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tc = cfg.train
    out = a.out or REPO / "runs" / (a.model.stem if a.model is not None else cfg.model.name)
    if secrets := config_secrets(cfg):
        print(f"note: {', '.join(secrets)} redacted in what {out} records; a resumed run "
              "takes credentials from the environment (AWS_*) or a profile", file=sys.stderr)
    try:
        with run_folder_lock(out):
            return _train(a, cfg, tc, dm, module, facts, out)
    except BuildLocked as e:
        print(f"error: run folder {out}: {e}", file=sys.stderr)
        return 2


def build_module(cfg: RunConfig, dm: PolarDataModule, model_file: Path | None
                 ) -> EncodingModule:
    """The module to train, seeded with ``train.seed`` (the model's initial weights follow
    it). Building the model checks the store's window length once
    (:func:`polar_model.window_rule.check_window_len`); a store too short for the model is a
    :class:`~polar_model.window_rule.WindowTooShort` naming the store and the model file."""
    L.seed_everything(cfg.train.seed, workers=True)
    written = redact_config(cfg)  # what config.yaml, hparams.yaml, tb and checkpoints hold
    try:
        return EncodingModule.create(cfg.model, spec_of(dm.info), cfg.train,
                                     run_config=written)
    except WindowTooShort as e:
        raise e.naming(f"store {dm.base}", str(model_file or cfg.model.name)) from None


def _train(a, cfg: RunConfig, tc: TrainConfig, dm: PolarDataModule, module: EncodingModule,
           facts: dict, out: Path) -> int:
    """Build the trainer and fit ``module`` (``main`` holds the run folder)."""
    written = redact_config(cfg)
    if a.resume is not None:
        try:
            facts = check_resume(a, module, facts, dm.base)
        except ValueError as e:  # CheckpointError: refused, unreadable, other store or shape
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        trainer = make_trainer(tc, out, a)
    except (ValueError, TypeError, MisconfigurationException) as e:
        print(f"error: trainer settings (train.precision, --accelerator, --devices, "
              f"--num-nodes, --strategy): {e}", file=sys.stderr)
        return 2
    if a.resume is None and cfg.model.readout_placement == "rf_maps":
        print(place_readouts(module.model, dm.info, progress=not a.no_progress), flush=True)
    trainer.callbacks.append(SaveDataFacts(facts))  # for polar_model.load and --resume
    trainer.callbacks.append(SaveRunConfig(written, out / "config.yaml"))
    trainer.fit(module, datamodule=dm, ckpt_path=a.resume, weights_only=True)
    best = trainer.checkpoint_callback.best_model_path
    score = trainer.checkpoint_callback.best_model_score
    if trainer.is_global_zero:
        print(f"best checkpoint: {best} (val/bps {float(score) if score is not None else 'n/a'})")
    return 0
