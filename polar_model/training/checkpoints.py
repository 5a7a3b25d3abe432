"""Reading checkpoints safely, and the checks before one is resumed or evaluated.

A checkpoint is a pickle: loading it with ``weights_only=False`` would run whatever code a
crafted file carries. Every checkpoint of this package is read with ``weights_only=True``
(tensors, containers and plain values only; ours hold nothing else, so no type has to be
allowed with ``torch.serialization.add_safe_globals``), and Lightning is asked to do the same
(``trainer.fit(weights_only=True)``, ``load_from_checkpoint(weights_only=True)``). A refused,
empty, truncated or foreign file is a :class:`CheckpointError` naming the file and why.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from polar_model.training.store_facts import spec_facts, store_differences

DATA_FACTS = "data_facts"
# what torch.load raises on bytes that are not a checkpoint (truncated zip, garbage pickle)
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError,
               IndexError, TypeError, AttributeError, OSError)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and why."""


def _refusal(e: Exception) -> str | None:
    """What the weights-only unpickler refused (``GLOBAL io.open``), or None when ``e`` is
    not a refusal."""
    text = str(e)
    if "Weights only load failed" not in text:
        return None
    m = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global|\.?\n|$)",
                  text)
    return m.group(1).strip() if m else "an object that is not plain data"


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint at ``path`` as a dict, read with ``weights_only=True`` on the CPU.

    Raises CheckpointError naming the file when it is missing, empty, truncated or corrupt,
    holds anything other than tensors and plain data (nothing of it is run), or is not a
    Lightning checkpoint of this project (no ``state_dict`` / ``hyper_parameters``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes; a save that "
                              "never finished?): use another checkpoint of the run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as e:
        refused = _refusal(e)
        if refused is not None:
            raise CheckpointError(
                f"{path}: refused: the file holds more than tensors and plain data "
                f"({refused}); unpickling it could run code, so it was not loaded. "
                "pipelines/train.py never writes such objects: the file was altered or "
                "comes from elsewhere") from None
        lines = str(e).strip().splitlines() or [type(e).__name__]
        first = lines[0].split(". ")[0][:200]
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{first})") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a checkpoint of pipelines/train.py (no state_dict "
                              "and hyper_parameters)")
    return ckpt


def load_module(path: str | Path, ckpt: dict | None = None):
    """The :class:`.lit_module.EncodingModule` of a checkpoint (CPU, eval mode), after
    :func:`read_checkpoint` has checked the file (``ckpt``: its result, if already read)."""
    from polar_model.training.lit_module import EncodingModule

    if ckpt is None:
        read_checkpoint(path)
    try:
        module = EncodingModule.load_from_checkpoint(str(path), map_location="cpu",
                                                     weights_only=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:  # hyperparameters and
        first = (str(e).strip().splitlines() or [""])[0][:300]   # weights that disagree
        raise CheckpointError(f"{path}: the checkpoint's model cannot be rebuilt from its "
                              f"own hyperparameters ({type(e).__name__}: {first})") from None
    return module.eval()


def saved_facts(path: str | Path, ckpt: dict) -> dict:
    """The data facts of the store a checkpoint was trained on, as
    :func:`.store_facts.data_facts` gives them: its spec's (hyperparameter ``spec``) joined with
    its ``data_facts`` (what the spec lacks). CheckpointError naming the file when it lacks
    them (pipelines/train.py writes both into every checkpoint)."""
    spec = ckpt["hyper_parameters"].get("spec")
    facts = ckpt.get(DATA_FACTS)
    if not isinstance(spec, dict) or not isinstance(facts, dict):
        raise CheckpointError(f"{path}: the checkpoint lacks its data facts ('spec' and "
                              f"{DATA_FACTS!r}, written by pipelines/train.py): retrain")
    return {**spec_facts(spec), **facts}


def check_same_store(path: str | Path, ckpt: dict, now: dict, store: str,
                     allow_new_store: bool = False) -> list[str]:
    """The ways the store at hand (``now``: its data facts, ``store``: its location) differs
    from the one the checkpoint was trained on; raises CheckpointError naming them unless
    ``allow_new_store``."""
    diffs = store_differences(saved_facts(path, ckpt), now)
    if diffs and not allow_new_store:
        raise CheckpointError(
            f"{path} was trained on another store than {store}: " + "; ".join(diffs)
            + ". Use the store it was trained on (the same sources, settings and split "
            "seed), or pass --allow-new-store to fine-tune on this one (same model shape "
            "only)")
    return diffs


def check_shapes(path: str | Path, ckpt: dict, module: torch.nn.Module) -> None:
    """Raise CheckpointError when the checkpoint's weights do not fit ``module`` (the model
    built for the store and config at hand), listing the parameters that differ, instead of
    a ``load_state_dict`` traceback."""
    have = ckpt["state_dict"]
    want = module.state_dict()
    lines = [f"{k} missing from the checkpoint" for k in want if k not in have]
    lines += [f"{k} not in this model" for k in have if k not in want]
    lines += [f"{k}: {list(have[k].shape)} in the checkpoint, {list(v.shape)} here"
              for k, v in want.items()
              if k in have and hasattr(have[k], "shape") and have[k].shape != v.shape]
    if lines:
        more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
        raise CheckpointError(
            f"{path}: its weights do not fit the model for this store and config: "
            + "; ".join(lines[:5]) + more + ". Resume with the model config and a store with "
            "the sessions and unit counts it was trained on")
