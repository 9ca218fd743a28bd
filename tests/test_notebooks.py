"""Every notebook in notebooks/ runs from top to bottom without an error, and is stored executed.

The notebooks are executed in memory (the stored outputs are not rewritten) with the python3
kernel, which jupyter_client starts with this interpreter. Executing them is the integration tier
(``-m slow``, about 3 minutes on 2 cores); that they are stored executed is checked by default.
"""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [pytest.param(p, id=p.name) for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))]
CELL_TIMEOUT_S = 900  # generous: a busy 2-core machine can be several times slower than an idle one


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_is_stored_executed(path):
    """Users read the stored outputs, so every code cell must have been run (in order)."""
    nb = nbformat.read(path, as_version=4)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts and None not in counts, f"{path.name}: some code cells were never executed"
    assert counts == sorted(counts), f"{path.name}: cells were executed out of order {counts}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored outputs hold an error: {errors[0].get('ename')}"


@pytest.mark.slow  # the integration tier: about 3 minutes on 2 cores (python -m pytest -m slow)
@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_runs_without_error(path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
