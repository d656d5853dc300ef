"""The teaching notebooks run top to bottom, and say what they are meant to show.

The notebooks live in `notebooks/` with their outputs committed. `test_notebook_runs` re-executes
each one in memory (nothing is written back), with the notebook folder as the working directory and
this checkout first on the kernel's PYTHONPATH, then checks its fresh outputs: no cell raised, nothing
went to stderr, no absolute path of this machine was printed, every `check: …` line the notebook prints
says True, and the facts each notebook exists to demonstrate are there (see CHECKS and the per-notebook
numeric checks). `test_committed_outputs` checks the committed files: executed in order, top to bottom,
with the same hygiene.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = [
    "01_qwen3_from_scratch",
    "02_one_cache_two_views",
    "03_consensus_decoding",
    "04_triton_block_attention",
    "05_training_the_diffusion_view",
]

# Lines each notebook must print (each notebook prints its checks as `check: <what>: True`).
CHECKS = {
    "01_qwen3_from_scratch": [
        "check: Orthrus text == AR text: True",
        "check: logits equal Transformers' within 1e-5: True",
        "check: generate_ar == Transformers generate: True",
    ],
    "02_one_cache_two_views": [
        "check: the diffusion pass leaves the cache unchanged (lengths and valid entries): True",
        "check: attention sees exactly block_mask, both views, both rows: True",
        "ar: first position sees the last block token: False; logits depend on the cache: True",
        "diffusion: first position sees the last block token: True; logits depend on the cache: True",
    ],
    "03_consensus_decoding": [
        "check: one iteration by hand == AR greedy: True",
        "check: Orthrus greedy == AR greedy on 25 decodes: True",
        "check: Orthrus sampling follows p within sampling noise: True",
        "check: every batch row equals decoding it alone (greedy): True",
        "check: every batch row equals decoding it alone (sampled, same seed): True",
    ],
    "04_triton_block_attention": [
        "check: the kernel matches the reference within 1e-5: True",
        "check: the triton backend matches the torch backend in the model within 1e-3: True",
    ],
    "05_training_the_diffusion_view": [
        "check: every base weight unchanged: True",
        "check: Orthrus greedy == AR greedy on 3 held-out prompts: True",
    ],
}

WHERE_AM_I = "import orthrus_min\nprint('orthrus_min imported from', orthrus_min.__file__)"


def machine_paths() -> list[str]:
    """Absolute paths of this machine that a reader should never see in a committed notebook."""
    return [str(ROOT), str(Path.home()), tempfile.gettempdir(), "site-packages"]


def code_outputs(notebook) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def output_text(outputs) -> str:
    """Everything the cells printed or displayed as text, in order."""
    parts = []
    for o in outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", ""))
            parts.append(o.get("data", {}).get("text/markdown", ""))
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
    return "\n".join(parts)


def check_hygiene(name: str, outputs) -> str:
    """No errors, no stderr, no machine paths; returns the text output."""
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{name}: a cell wrote to stderr (a warning?): {stderr[0][:300]}"
    text = output_text(outputs)
    for path in machine_paths():
        assert path not in text, f"{name}: an output shows a path of this machine ({path})"
    return text


def number(pattern: str, text: str, name: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"{name}: no output line matches {pattern!r}"
    return [float(g) for g in match.groups()]


def check_facts(name: str, text: str) -> None:
    """The lines the notebook must print, every `check:` line True, and its numbers in range."""
    for line in CHECKS[name]:
        assert line in text, f"{name}: expected the line {line!r} in the outputs"
    for line in text.splitlines():
        if line.startswith("check:"):
            assert "False" not in line, f"{name}: {line}"
    if name == "01_qwen3_from_scratch":
        tau, tokens_per_second = number(r"(\d+\.\d+) tokens per iteration, (\d+) tokens/s", text, name)
        assert 1.0 <= tau <= 32.0, f"{name}: τ = {tau} is outside 1 … K"
        assert tokens_per_second > 0
    elif name == "03_consensus_decoding":
        taus = re.findall(r"K=\s*(\d+): τ = (\d+\.\d+)", text)
        assert len(taus) >= 3, f"{name}: the τ-by-block-size table is missing"
        for k, tau in taus:
            assert 1.0 <= float(tau) <= int(k), f"{name}: τ = {tau} at K = {k} is outside 1 … K"
        assert max(float(t) for _, t in taus) > 2.0, f"{name}: the shipped model should accept drafts (τ > 2 at some K)"
    elif name == "04_triton_block_attention":
        (worst,) = number(r"worst max abs difference (\S+)\)", text, name)
        assert worst < 1e-5
    elif name == "05_training_the_diffusion_view":
        (gap,) = number(r"max \|training − inference\| logits = (\S+)", text, name)
        assert gap < 1e-4, f"{name}: training and inference draft logits differ by {gap}"
        before, after, steps, K = number(r"check: held-out τ (\d+\.\d+) before -> (\d+\.\d+) after (\d+) steps \(at most (\d+)\)",
                                         text, name)
        assert 1.0 <= before < after <= K, f"{name}: training should raise the held-out τ (1 ≤ {before} < {after} ≤ {K})"


@pytest.mark.parametrize("name", NOTEBOOKS, ids=NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    assert path.exists(), f"{path} is missing"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(WHERE_AM_I))  # run against this checkout, not an installed copy
    # The kernel (and any command a notebook runs) imports orthrus_min from this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    where = notebook.cells.pop()
    imported_from = output_text(where.outputs)
    assert str(ROOT / "orthrus_min") in imported_from, f"{name}: the kernel imported another orthrus_min ({imported_from.strip()})"
    text = check_hygiene(name, code_outputs(notebook))
    check_facts(name, text)


@pytest.mark.parametrize("name", NOTEBOOKS, ids=NOTEBOOKS)
def test_committed_outputs(name):
    """The committed notebook was executed top to bottom, and its outputs pass the same checks."""
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: not executed top to bottom in one run (execution counts {counts})"
    text = check_hygiene(name, code_outputs(notebook))
    check_facts(name, text)
    markdown = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    assert "What you will learn" in markdown[0], f"{name}: should open with what you will learn"
    assert "Read on in the code" in markdown[-1], f"{name}: should end with where to read on in the code"
