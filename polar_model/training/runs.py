"""Where a run folder's logs are and what they say: ``<run>/logs/metrics.csv``, written by the
trainer's CSV logger (:func:`csv_logger`) and read by :func:`metrics_path` everywhere else."""

from __future__ import annotations

import csv
from pathlib import Path

LOG_DIR = "logs"  # <run>/logs/: the CSV logger's folder (Lightning names its file metrics.csv)
METRICS = "metrics.csv"


def metrics_path(run: str | Path) -> Path:
    """``<run>/logs/metrics.csv``: every logged metric of the run at ``run``, one row a log."""
    return Path(run) / LOG_DIR / METRICS


def csv_logger(run: str | Path):
    """The trainer's CSV logger, writing :func:`metrics_path` of ``run``."""
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(run, name=LOG_DIR, version="")  # <run>/logs/ + Lightning's metrics.csv


def validation_curve(run: Path) -> list[dict]:
    """Every logged validation row of a run (step, minutes, val/bps, fraction of oracle), in
    order; [] when the run has no log yet."""
    log = metrics_path(run)
    if not log.is_file():
        return []
    with log.open() as f:
        return [r for r in csv.DictReader(f) if r.get("val/bps")]


def final_validation(run: Path) -> dict | None:
    """The last logged validation metrics of a run, or None if it has none."""
    rows = validation_curve(run)
    return rows[-1] if rows else None
