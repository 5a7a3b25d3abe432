#!/usr/bin/env python
"""Evaluate checkpoints on a store's val and test splits and write a report folder: see
``polar_model.training.report`` (or ``python pipelines/evaluate.py --help``).

    python pipelines/evaluate.py runs/full/checkpoints/best.ckpt runs/baseline/checkpoints/best.ckpt
    python pipelines/evaluate.py runs/*/checkpoints/best.ckpt --out reports/demo
"""

import sys

from polar_model.training.report import main

if __name__ == "__main__":
    sys.exit(main())
