"""What a run folder's logs say (``<run>/logs/metrics.csv`` of the CSV logger)."""

from __future__ import annotations

import csv
from pathlib import Path


def validation_curve(run: Path) -> list[dict]:
    """Every logged validation row of a run (step, minutes, val/bps, fraction of oracle), in
    order; [] when the run has no log yet."""
    log = Path(run) / "logs" / "metrics.csv"
    if not log.is_file():
        return []
    with log.open() as f:
        return [r for r in csv.DictReader(f) if r.get("val/bps")]


def final_validation(run: Path) -> dict | None:
    """The last logged validation metrics of a run, or None if it has none."""
    rows = validation_curve(run)
    return rows[-1] if rows else None
