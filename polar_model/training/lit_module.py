"""Lightning module: any model config, masked Poisson NLL (+ lambda_jepa x JEPA), BPS logging.

Batches follow :mod:`polar_data.loaders.batches` (window or clip mode, one session per
batch). Loaders hand over uint8 frames; ``PolarDataModule.on_after_batch_transfer`` normalises them
(:func:`polar_data.loaders.batches.normalise_stim`, the store's pixel statistics) once Lightning has
moved the batch to the module's device, so ``forward`` / ``training_step`` see float32 frames.
The JEPA teacher is updated by EMA after each optimizer step (never inside forward).
A non-finite loss raises ``FloatingPointError`` naming the batch's session: never skipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import lightning as L
import torch

from polar_data.config.typed_yaml import to_dict
from polar_data.loaders.batches import (
    DFS,
    END,
    EYEPOS,
    ROBS,
    STIM,
    TRUE_RATE,
    Batch,
    as_clip,
    session_of,
)
from polar_model.config import PolarConfig
from polar_model.losses import masked_poisson_nll
from polar_model.metrics import BPSAccumulator
from polar_model.models import build_model
from polar_model.spec import DataSpec
from polar_model.training.run_config import RunConfig, TrainConfig, run_config_from_hparams


def _grad_norm(loss: torch.Tensor, params: list) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    sq = sum(float(g.pow(2).sum()) for g in grads if g is not None)
    return math.sqrt(sq)


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    x = x[~torch.isnan(x)]
    return x.mean() if x.numel() else torch.tensor(math.nan)


class EncodingModule(L.LightningModule):
    """Wraps an EncodingModel for training and evaluation.

    Its hyperparameters (what a checkpoint carries of the settings, each once):

        run_config: the run's whole config tree as a dict (``RunConfig``: loader, model,
            train; storage-option secrets redacted), see
            :func:`.run_config.run_config_from_hparams`;
        spec: the :class:`~polar_model.spec.DataSpec` fields as a dict (from the store).

    ``model_cfg`` and ``train_cfg`` are the tree's ``model`` and ``train`` sections.
    """

    def __init__(self, run_config: dict, spec: dict):
        super().__init__()
        self.save_hyperparameters()
        tree = run_config_from_hparams(self.hparams)
        self.model_cfg, self.train_cfg = tree.model, tree.train
        self.spec = DataSpec(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in spec.items()})
        self.model = build_model(self.model_cfg, self.spec)
        self.lambda_jepa = (self.model_cfg.lambda_jepa
                            if isinstance(self.model_cfg, PolarConfig) else 0.0)
        self._jepa_scale = 1.0   # from the last gradient-ratio measurement (not saved)
        self._val = None

    @classmethod
    def create(cls, model_cfg, spec: DataSpec, train_cfg: TrainConfig,
               run_config: RunConfig | None = None) -> EncodingModule:
        """From typed configs: ``run_config`` (the run's whole tree; default: the defaults)
        gives the loader section, ``model_cfg`` and ``train_cfg`` the model and train ones."""
        tree = to_dict(run_config if run_config is not None else RunConfig())
        return cls({**tree, "model": to_dict(model_cfg), "train": to_dict(train_cfg)},
                   to_dict(asdict(spec)))

    def forward(self, batch: Batch):
        """``batch`` with normalised frames (:func:`polar_data.loaders.batches.normalise_stim`)."""
        if batch[STIM].dtype == torch.uint8:
            raise TypeError("forward takes normalised float frames; a loader batch (uint8) "
                            "goes through polar_data.loaders.batches.normalise_stim first "
                            "(fit with PolarDataModule, which does it after the device transfer)")
        return self.model(batch[STIM], batch[EYEPOS], session_of(batch), end=batch[END])

    @staticmethod
    def targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """robs, dfs as [B, L, N] in both modes."""
        return as_clip(batch, ROBS), as_clip(batch, DFS)

    def jepa_weight(self, nll: torch.Tensor, jepa: torch.Tensor) -> float:
        """The JEPA loss weight at this step: ``lambda_jepa``, ramped over
        ``jepa_warmup_steps``, times a scale that keeps the JEPA gradient on the shared
        front-end parameters at most ``jepa_max_grad_ratio`` x the Poisson NLL's (measured
        every ``jepa_balance_every`` steps; both gradients by ``torch.autograd.grad``)."""
        cfg = self.model_cfg  # a PolarConfig with JEPA: only such a model has a JEPA loss
        w = self.lambda_jepa
        warm = cfg.jepa_warmup_steps
        step = self.global_step if self._trainer is not None else 0
        if warm:
            w *= min(1.0, (step + 1) / warm)
        ratio = cfg.jepa_max_grad_ratio
        if ratio is None or w == 0 or cfg.jepa_stop_grad:
            return w
        if step % max(1, cfg.jepa_balance_every) == 0 and self.training:
            shared = self.model.shared_parameters()
            gn = _grad_norm(nll, shared)
            gj = _grad_norm(jepa, shared)
            self._jepa_scale = min(1.0, ratio * gn / max(w * gj, 1e-12))
        return w * self._jepa_scale

    def _loss(self, batch: Batch, stage: str):
        out = self(batch)
        robs, dfs = self.targets(batch)
        session = self.spec.session_names[session_of(batch)]
        try:
            nll = masked_poisson_nll(out.log_rate, robs, dfs)
        except FloatingPointError:
            nll = torch.tensor(math.nan)
        loss = nll
        if out.jepa_loss is not None:
            w = self.jepa_weight(nll, out.jepa_loss) if torch.isfinite(nll) else 0.0
            self._last_jepa_weight = w
            loss = nll + w * out.jepa_loss
        if out.penalty is not None:  # the model's own regulariser (the shifter's)
            loss = loss + out.penalty
        where = f"a batch of session {session!r} (bins ending {batch[END][:4].tolist()}...)"
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite {stage} loss ({loss.item()}) on {where}: check the inputs and the "
                "learning rate; batches are never skipped silently"
            )
        self._last_batch = where
        return out, nll, loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """A finite loss can still give an inf or NaN gradient; gradient clipping would then
        turn every parameter into NaN and the next batch would be blamed. Stop here instead,
        naming the step, the batch and the parameters."""
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if not grads or torch.stack([torch.isfinite(g).all() for _, g in grads]).all():
            return  # one device sync per step, not one per parameter
        bad = [n for n, g in grads if not torch.isfinite(g).all()]
        if bad:
            raise FloatingPointError(
                f"non-finite gradient at step {self.global_step} on "
                f"{getattr(self, '_last_batch', 'a batch')} in {len(bad)} parameters "
                f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); the loss was finite"
            )

    def training_step(self, batch, batch_idx):
        out, nll, loss = self._loss(batch, "train")
        n = batch[ROBS].shape[0]
        self.log("train/nll", nll, batch_size=n)
        if out.jepa_loss is not None:
            self.log("train/jepa", out.jepa_loss, batch_size=n)
            self.log("train/jepa_weight", float(self._last_jepa_weight), batch_size=n)
        if out.penalty is not None:
            self.log("train/shift_penalty", out.penalty, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["jepa_scale"] = self._jepa_scale  # exact resume between measurements

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._jepa_scale = checkpoint.get("jepa_scale", 1.0)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.model.update_teacher()  # JEPA EMA teacher: after the step, outside forward

    def on_fit_start(self):
        self._t0 = time.perf_counter()

    def on_validation_epoch_start(self):
        self._val = [BPSAccumulator(n, self.device) for n in self.spec.n_units]
        self._oracle = [BPSAccumulator(n, self.device) for n in self.spec.n_units]

    def validation_step(self, batch, batch_idx):
        out, nll, _ = self._loss(batch, "val")
        robs, dfs = self.targets(batch)
        s = session_of(batch)
        self._val[s].update(out.log_rate.exp(), robs, dfs)
        if TRUE_RATE in batch:  # demo stores: the ground truth on the same targets
            self._oracle[s].update(as_clip(batch, TRUE_RATE), robs, dfs)
        self.log("val/nll", nll, batch_size=batch[ROBS].shape[0], sync_dist=True)

    def on_validation_epoch_end(self):
        per_unit, oracle = [], []
        for name, acc, orc in zip(self.spec.session_names, self._val, self._oracle):
            if self.trainer.world_size > 1:
                acc.stats = self.all_gather(acc.stats).sum(0)
                orc.stats = self.all_gather(orc.stats).sum(0)
            bps = acc.bps()
            per_unit.append(bps)
            if orc.stats[2].sum() > 0:
                oracle.append(orc.bps())
            self.log(f"val_bps/{name}", _nanmean(bps).float(), rank_zero_only=True)
        allu = torch.cat(per_unit)
        mean = _nanmean(allu).float()
        self.log("val/bps", mean, prog_bar=True, rank_zero_only=True)
        self.log("val/bps_clamped", _nanmean(allu.clamp_min(0)).float(), rank_zero_only=True)
        line = f"step {self.global_step}"
        if getattr(self, "_t0", None) is not None:
            minutes = (time.perf_counter() - self._t0) / 60
            self.log("time/minutes", minutes, rank_zero_only=True)
            line += f", {minutes:.1f} min"
        line += f": val BPS {float(mean):.4f}"
        if len(oracle) == len(per_unit):
            orc = _nanmean(torch.cat(oracle)).float()
            self.log("val/oracle_bps", orc, rank_zero_only=True)
            self.log("val/fraction_of_oracle", mean / orc, rank_zero_only=True)
            line += f", oracle {float(orc):.4f}, fraction of oracle {float(mean / orc):.3f}"
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            print(line, flush=True)

    def configure_optimizers(self):
        tc = self.train_cfg
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # weight matrices and the readouts' feature weights only: never positions,
            # mask widths, correlations or frequencies (decay would pull them to 0)
            decay = p.ndim >= 2 and name.endswith("weight")
            head = name.startswith(("saccade_gain.", "readouts."))
            groups.setdefault((decay, head), []).append(p)
        opt = torch.optim.AdamW(
            [{"params": ps, "weight_decay": tc.weight_decay if decay else 0.0,
              "lr": tc.lr * (tc.head_lr_mult if head else 1.0)}
             for (decay, head), ps in groups.items()], lr=tc.lr, betas=tc.betas)

        def schedule(step: int) -> float:
            if step < tc.warmup_steps:
                return (step + 1) / max(1, tc.warmup_steps)
            progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
