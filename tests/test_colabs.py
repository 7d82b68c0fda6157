"""Every notebook in colabs/ runs top to bottom in a fresh kernel (small sizes), so none can rot."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))


def test_there_are_notebooks_with_cleared_outputs():
    assert len(NOTEBOOKS) >= 6
    first = nbformat.read(NOTEBOOKS[0], as_version=4)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        # How to run it in Colab, and one install cell, the same in every notebook: it installs
        # from GJE_JAX_SOURCE or an uploaded wheel (no made-up repository URL).
        assert "In Colab" in nb.cells[0].source and "github.com" not in nb.cells[0].source, path
        assert nb.cells[1].source == first.cells[1].source and "GJE_JAX_SOURCE" in nb.cells[1].source, path
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path}: outputs not cleared"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("GJE_COLAB_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # One CPU device in the kernel (the test session forces 4 for the sharding tests).
    monkeypatch.setenv("XLA_FLAGS", xla_flags())
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
