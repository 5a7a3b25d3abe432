"""Checkpoints a preempted cluster job can resume from exactly.

:class:`SaveLast` keeps ``<run>/checkpoints/last.ckpt`` current: written at the end of every
validation (improved or not), at the end of training, and when the job is told to stop:

* SIGTERM (what SLURM and most schedulers send before they kill a job): Lightning's signal
  connector notes it, finishes the current batch and raises ``SIGTERMException``; this
  callback then saves ``last.ckpt`` and the process exits cleanly (status 0).
* SIGUSR1 outside SLURM is handled the same way. Under SLURM with auto-requeue
  (``#SBATCH --signal=SIGUSR1@90``), Lightning itself saves its ``hpc_ckpt`` and requeues.

Lightning writes checkpoints atomically (to a temporary file, then renamed), so a kill in the
middle of a save leaves the previous ``last.ckpt`` intact. Resume with
``pipelines/train.py --resume <run>/checkpoints/last.ckpt``: the loaders skip the batches of
the epoch already trained, so the resumed run reaches the uninterrupted run's weights.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

LAST = "last.ckpt"


class SaveLast(L.Callback):
    """Write ``dirpath/last.ckpt`` at every validation, at the end, and on SIGTERM/SIGUSR1."""

    def __init__(self, dirpath: str | Path):
        self.path = Path(dirpath) / LAST

    def on_train_start(self, trainer, pl_module):
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
        previous = getattr(self, "_previous", None)
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)
            self._previous = None

    def teardown(self, trainer, pl_module, stage):
        self._restore()

    def _save(self, trainer):
        trainer.save_checkpoint(self.path)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer)
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):
            self._save(trainer)
        self._restore()
