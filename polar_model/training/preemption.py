"""Checkpoints a preempted cluster job can resume from exactly.

:class:`SaveLast` keeps ``<run>/checkpoints/last.ckpt`` current: written at the end of every
validation (improved or not), at the end of training, and when the job is told to stop:

* SIGTERM (what SLURM and most schedulers send before they kill a job): Lightning's signal
  connector notes it, finishes the current batch and raises ``SIGTERMException``; this
  callback then saves ``last.ckpt`` and the process exits cleanly (status 0).
* SIGUSR1 outside SLURM is handled the same way. Under SLURM with auto-requeue
  (``#SBATCH --signal=SIGUSR1@90``), Lightning itself saves its ``hpc_ckpt`` and requeues.

* Any other exception in the training loop (a store that vanished, a non-finite loss, Ctrl-C):
  ``last.ckpt`` is saved at the last completed optimizer step (resumable: the failed batch is
  trained again), the exception gets a note naming it (also printed) and the run fails.
  Under DDP with several processes this save is skipped (it would wait for ranks that did
  not fail) and the note says so; the last validation's ``last.ckpt`` stays.

:class:`ValidateAtEnd` runs a validation after the last training batch of a run (max steps or
max epochs reached) when none is due at that step, so ``best.ckpt`` exists and the printed
score is real even for a run shorter than ``val_every_steps``.

Lightning writes checkpoints atomically (to a temporary file, then renamed), so a kill in the
middle of a save leaves the previous ``last.ckpt`` intact. Resume with
``pipelines/train.py --resume <run>/checkpoints/last.ckpt``: the loaders skip the batches of
the epoch already trained, so the resumed run reaches the uninterrupted run's weights.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

LAST = "last.ckpt"


class SaveLast(L.Callback):
    """Write ``dirpath/last.ckpt`` at every validation, at the end, and on SIGTERM/SIGUSR1."""

    def __init__(self, dirpath: str | Path):
        self.path = Path(dirpath) / LAST
        self._training = False      # inside the training loop
        self._previous = None       # the SIGUSR1 handler this callback replaced
        self._saved_step = None     # the optimizer step of the last save

    def on_train_start(self, trainer, pl_module):
        self._training = True
        # after Lightning's signal connector has registered (its teardown restores what it
        # found then, so this handler does not outlive the run)
        env = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        if not slurm_requeue and hasattr(signal, "SIGUSR1"):
            connector = trainer._signal_connector

            def stop(signum, frame):  # same path as SIGTERM: finish the batch, save, exit
                connector.received_sigterm = True

            self._previous = signal.signal(signal.SIGUSR1, stop)

    def _restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    def teardown(self, trainer, pl_module, stage):
        self._restore()

    def _save(self, trainer):
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: resumable
        self._saved_step = trainer.global_step

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer)
        self._training = False
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):
            self._save(trainer)
        elif self._training:
            self._save_after_failure(trainer, exception)
        self._training = False
        self._restore()

    def _save_after_failure(self, trainer, exception: BaseException) -> None:
        """``last.ckpt`` after an exception in the loop, and a note on the exception."""
        where = f"training failed at step {trainer.global_step}"
        if trainer.world_size > 1:
            note = (f"{where}; no checkpoint saved after the failure under DDP (the other "
                    f"ranks are not at a save); {self.path} is the last validation's")
        elif self._saved_step == trainer.global_step:
            # nothing trained since the last save (e.g. at the validation of this step):
            # that checkpoint is the exact one, keep it
            note = (f"{where}; {self.path} was saved at that step: resume with "
                    f"pipelines/train.py --resume {self.path}")
        else:
            try:
                _forget_unfinished_batch(trainer)
                self._save(trainer)
            except Exception as e:  # the disk or the store may be what failed: keep the
                # first error, say that no checkpoint came of it
                note = f"{where}; saving {self.path} failed too ({type(e).__name__}: {e})"
            else:
                note = (f"{where}; saved {self.path}: resume with "
                        f"pipelines/train.py --resume {self.path}")
        exception.add_note(note)
        if trainer.is_global_zero:
            print(f"error: {note}", file=sys.stderr, flush=True)


def _forget_unfinished_batch(trainer) -> None:
    """The batch an exception interrupted before its optimizer step was not trained: set its
    progress counters back to the last completed batch, so the checkpoint reads as saved
    after that batch (as at the end of training) and a resume trains the interrupted batch
    again, logging the same step numbers (Lightning counts a half-done batch as stepped)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    if progress.total.processed < progress.total.ready:
        for p in (progress.total, progress.current):
            p.ready = p.started = p.processed = p.completed


class ValidateAtEnd(L.Callback):
    """After the run's last training batch (``max_steps`` reached, or the last batch of the
    last epoch), ask Lightning to stop, which runs a validation at that step unless one is
    running anyway (Lightning validates when a stop is requested), so the best-model
    checkpoint and its score always exist at the end."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last_step = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        epochs = trainer.max_epochs
        last_epoch = (epochs not in (None, -1) and trainer.current_epoch + 1 >= epochs
                      and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        if last_step or last_epoch:
            trainer.should_stop = True
