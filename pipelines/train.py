#!/usr/bin/env python
"""Train an encoding model on a built store: see ``polar_model.training.trainer`` (or
``python pipelines/train.py --help``).

    python pipelines/train.py                                    # demo store, full Polar-V1
    python pipelines/train.py --model configs/model/baseline.yaml --train.lr 3e-3
    python pipelines/train.py --print-config                     # the resolved config tree
"""

import sys

from polar_model.training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
