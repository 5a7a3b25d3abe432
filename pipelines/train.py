#!/usr/bin/env python
"""Train an encoding model on a built store.

    python pipelines/train.py                                    # demo store, full Polar-V1
    python pipelines/train.py --data configs/data/demo.yaml --model configs/model/baseline.yaml
    python pipelines/train.py --resume runs/full/checkpoints/last.ckpt

Preemption: on SIGTERM (or SIGUSR1) the current batch finishes, ``last.ckpt`` is saved and the
process exits with status 0; requeue the job with ``--resume <run>/checkpoints/last.ckpt``.

On a cluster (Lightning DDP over nodes x GPUs, data streamed from WebDataset shards; set
``loader.store`` to the store's folder or s3:// URL and ``loader.kind: wds``):

    srun python pipelines/train.py --data configs/data/lab.yaml --model configs/model/full.yaml \
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

from polar_data.config import ConfigError, load_config
from polar_data.data_config import load_data_config
from polar_data.datamodule import PolarDataModule
from polar_data.schema import StoreError
from polar_model.build import required_window_len
from polar_model.config import load_model_config
from polar_model.lit_module import EncodingModule, TrainConfig
from polar_model.predictor import SaveDataFacts, data_facts
from polar_model.preemption import SaveLast
from polar_model.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]


def check_window(dm: PolarDataModule, model_cfg, model_path: Path) -> None:
    """Stop before training when the store's windows are too short for the model."""
    need = required_window_len(model_cfg)
    if dm.window_len < need:
        raise ValueError(
            f"store {dm.base} has window_len = {dm.window_len}, but {model_path} needs "
            f"window_len >= {need} (jepa_delta + min_context). Rebuild the store for this "
            f"model: python pipelines/build_shards.py --model-config {model_path} "
            "--out <new folder>"
        )


def spec_of(dm: PolarDataModule) -> DataSpec:
    info = dm.info
    return DataSpec(window_len=info.window_len, rate_hz=info.rate_hz, frame_hw=info.frame_hw,
                    ppd=info.ppd, n_units=info.n_units, mean_rates=info.mean_rates,
                    session_names=info.sessions)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "configs/data/demo.yaml")
    p.add_argument("--model", type=Path, default=ROOT / "configs/model/full.yaml")
    p.add_argument("--train", type=Path, default=ROOT / "configs/train/cpu_demo.yaml")
    p.add_argument("--out", type=Path, help="run folder (default runs/<model name>)")
    p.add_argument("--resume", type=Path, help="checkpoint to resume from (exact resume)")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


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
    a = parse_args(argv)
    # Our train loaders skip the batches a mid-epoch checkpoint already trained on
    # (PolarDataModule._done_in_epoch), so Lightning's "not resumable" warning is moot.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
    try:
        data_cfg = load_data_config(a.data)
        model_cfg = load_model_config(a.model)
        tc = load_config(a.train, TrainConfig)
        if a.max_steps is not None:
            tc.max_steps = a.max_steps
        dm = PolarDataModule(data_cfg)
        check_window(dm, model_cfg, a.model)
    except (ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    L.seed_everything(tc.seed, workers=True)
    out = a.out or ROOT / "runs" / a.model.stem
    module = EncodingModule.create(model_cfg, spec_of(dm), tc)
    trainer = make_trainer(tc, out, a)
    trainer.callbacks.append(SaveDataFacts(data_facts(dm.info)))  # for polar_model.load
    trainer.fit(module, datamodule=dm, ckpt_path=a.resume)
    best = trainer.checkpoint_callback.best_model_path
    score = trainer.checkpoint_callback.best_model_score
    if trainer.is_global_zero:
        print(f"best checkpoint: {best} (val/bps {float(score) if score is not None else 'n/a'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
