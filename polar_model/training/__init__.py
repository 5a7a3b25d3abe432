"""The training layer: everything that knows both the data (``polar_data``) and the models
(the rest of ``polar_model``).

* :mod:`.run_config` - the one typed config tree of a run (loader, model, train) and
  its loader with dotted command-line overrides;
* :mod:`.datamodule` - the Lightning DataModule over a built store;
* :mod:`.store_facts` - store facts -> :class:`polar_model.spec.DataSpec`, the data facts a
  checkpoint carries and how two stores differ;
* :mod:`.checkpoints` - reading checkpoints safely (tensors only) and checking them against
  the store at hand;
* :mod:`.placement` - readout positions placed from spike-triggered averages before fitting;
* :mod:`.lit_module` - the Lightning module (loss, BPS logging, optimiser);
* :mod:`.trainer` - the Lightning trainer and ``pipelines/train.py``'s ``main``;
* :mod:`.preemption` - ``last.ckpt`` on signals; :mod:`.predictor` - ``polar_model.load``;
* :mod:`.evaluation` / :mod:`.report` - split predictions, scores and the report folder
  (``pipelines/evaluate.py``); :mod:`.runs` - reading a run folder's logged curves.

Nothing outside this package in ``polar_model`` imports ``polar_data`` (except the generic
YAML -> dataclass loader :mod:`polar_data.config.typed_yaml`; ``tests/test_layers.py``).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: default configs/ and runs/
