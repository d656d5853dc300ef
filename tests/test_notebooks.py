"""The teaching notebooks run top to bottom: each is executed with nbclient and no cell may raise.

The notebooks live in `notebooks/` with their outputs committed; this test re-executes them in
memory (nothing is written back), with the notebook folder as the working directory.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_qwen3_from_scratch",
    "02_one_cache_two_views",
    "03_consensus_decoding",
    "04_triton_block_attention",
    "05_training_the_diffusion_view",
]


@pytest.mark.parametrize("name", NOTEBOOKS, ids=NOTEBOOKS)
def test_notebook_executes(name):
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    assert path.exists(), f"{path} is missing"
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
