"""The tutorial notebook runs top to bottom and shows what it promises (notebooks/tutorial.ipynb).

It is executed in a fresh ``python3`` kernel (ipykernel's own kernelspec, installed into the
virtual environment with the ``dev`` extra; jupyter_client starts it with this interpreter), in
a temporary working folder, so everything it writes stays there.
"""

import math
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"


def _text(cell) -> str:
    """Everything a code cell printed (stdout, stderr, text results)."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected, found {len(cells)}"
    return cells[0]


def test_the_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, c.source[:60]


@pytest.mark.slow  # builds a store, trains 40 steps, evaluates, predicts: 1-3 min on 2 cores
def test_the_tutorial_runs_and_shows_scores_plots_and_predictions(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a cell that raises fails the test, naming the cell and its traceback

    m = re.search(r"val bits/spike (\S+) \(oracle (\S+)\)", _text(_tagged(nb, "evaluate")))
    assert m, _text(_tagged(nb, "evaluate"))[-2000:]
    bps, oracle = float(m.group(1)), float(m.group(2))
    assert math.isfinite(bps) and oracle > 0, (bps, oracle)

    m = re.search(r"predicted rate: float32 \((\d+), (\d+)\)", _text(_tagged(nb, "predict")))
    assert m, _text(_tagged(nb, "predict"))[-2000:]
    T, N = int(m.group(1)), int(m.group(2))
    assert T > 16 and 6 <= N <= 8, (T, N)  # one trial of a demo session; its 6-8 units

    pictures = [c for c in nb.cells if c.cell_type == "code"
                for out in c.outputs if "image/png" in out.get("data", {})]
    assert len(pictures) >= 5  # the report's plots, the trial and the predicted rate
    written = {p.name for p in (tmp_path / "tutorial").iterdir()}
    assert {"data.yaml", "store", "run", "report"} <= written
