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
    "06_the_engine",
]

# Lines each notebook must print (each notebook prints its checks as `check: <what>: True`).
CHECKS = {
    "01_qwen3_from_scratch": [
        "check: Orthrus text == AR text: True",
        "check: embeddings == Transformers' embeddings: True",
        "check: RMSNorm == Transformers' Qwen3RMSNorm within 1e-5: True",
        "check: RotaryEmbedding and apply_rope == Transformers' within 1e-5: True",
        "check: Qwen3Attention (AR view) == Transformers' Qwen3Attention within 1e-5: True",
        "check: Qwen3MLP == Transformers' Qwen3MLP within 1e-5: True",
        "check: Qwen3DecoderLayer == Transformers' Qwen3DecoderLayer within 1e-5: True",
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
        "check: every green token is the diffusion view's draft, every yellow bonus overrules a draft: True",
        "check: Orthrus greedy == AR greedy on 25 decodes: True",
        "check: an EOS committed mid-block stops Orthrus exactly where it stops AR: True",
        "check: the rejected mass 1 − Σ min(p,q) == Σ max(0, p − q), the residual's normaliser: True",
        "check: min(p,q) + rejected mass × residual == p on the 5-token example: True",
        "check: speculative_accept commits p on the 5-token example (200,000 trials, chi-square p-value > 0.001): True",
        "check: all drafts accepted -> the bonus follows p at the last index (chi-square p-value > 0.001): True",
        "check: Orthrus sampling follows p within sampling noise: True",
        "check: the first iteration exercised every branch (0, 1 and 2 drafts accepted): True",
        "check: the first three tokens (two drafted positions) follow the exact AR joint within sampling noise: True",
        "check: every batch row equals decoding it alone (greedy): True",
        "check: every batch row equals decoding it alone (sampled, same seed): True",
        "check: block_size='auto' gives the AR greedy tokens: True",
    ],
    "04_triton_block_attention": [
        "check: the short row's empty splits write lse = -inf (weight 0) and zeros, and the result matches the reference: True",
        "check: the kernel matches the reference within 1e-5: True",
        "check: the triton backend matches the torch backend in the model within 1e-3: True",
    ],
    "05_training_the_diffusion_view": [
        "check: kl_to_ar equals the package's distill_loss on the same batch (within 1e-6): True",
        "check: each block sees exactly its own document's keys before its anchor, and its own block: True",
        "equals drafting from its document alone: True",
        "check: every base weight unchanged: True",
        "check: Orthrus greedy == AR greedy on 3 held-out prompts: True",
    ],
    "06_the_engine": [
        "check: commit cuts at the EOS, at the budget, and keeps nothing for a done row: True",
        "check: every row of the batch equals AR greedy decoding of its prompt alone: True",
        "check: row 0 stops at its EOS, row 1 at its budget, at different steps: True",
        "check: a finished row keeps nothing and its length stays put: True",
        "check: the loop reads once per step (to_host), plus once after the prefill: True",
        "check: eager == compiled tokens: True",
        "check: under a CUDA-graph mode every decode of a shape reuses one cache and state: True",
        "while the shape never changed: 1 compile for the whole section 5",
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
        # Each class is shown before its check, with the view switch of Qwen3Attention on screen.
        for shown in ("RMSNorm", "RotaryEmbedding", "apply_rope", "Qwen3Attention", "attention", "Qwen3MLP",
                      "Qwen3DecoderLayer", "Qwen3Model", "Qwen3ForCausalLM.forward"):
            assert re.search(rf"^# orthrus_min/model\.py, line \d+: {re.escape(shown)}$", text, re.M), f"{name}: {shown} is not shown"
        assert 'if view == "ar":' in text and "self.q_proj_diff" in text, f"{name}: the view switch of Qwen3Attention is not shown"
    elif name == "03_consensus_decoding":
        taus = re.findall(r"K=\s*(\d+): τ = (\d+\.\d+)", text)
        assert len(taus) >= 3, f"{name}: the τ-by-block-size table is missing"
        for k, tau in taus:
            assert 1.0 <= float(tau) <= int(k), f"{name}: τ = {tau} at K = {k} is outside 1 … K"
        assert max(float(t) for _, t in taus) > 2.0, f"{name}: the shipped model should accept drafts (τ > 2 at some K)"
        # The derivation's numbers, token by token: p, q, min(1, p/q), min(p, q), max(0, p − q), residual, committed.
        rows = [[float(x) for x in r] for r in re.findall(r"^  [A-E]" + r"\s+(\d\.\d{3})" * 7 + "$", text, re.M)]
        assert len(rows) == 5, f"{name}: the 5-token table of the derivation is missing"
        rejected = sum(max(0.0, p - q) for p, q, *_ in rows)
        for p, q, accept, both, excess, residual, committed in rows:
            assert abs(accept - min(1.0, p / q)) < 2e-3 and abs(both - min(p, q)) < 2e-3 and abs(excess - max(0.0, p - q)) < 2e-3
            assert abs(residual - max(0.0, p - q) / rejected) < 2e-3 and abs(committed - p) < 2e-3, f"{name}: {p, q, residual, committed}"
        assert re.search(r"⟦[^⟧⟨]+⟧⟨[^⟩⟦]+⟩", text), f"{name}: the plain rendering of drafts and bonus tokens is missing"
        orthrus_stop, ar_stop = number(r"Orthrus stops after (\d+) tokens \(eos;.*AR after (\d+) \(eos\)", text, name)
        assert orthrus_stop == ar_stop
        # The cost table: speedup = τ / break-even, and each "pays" verdict follows from the printed ratios.
        for tau, break_even, speedup in re.findall(r"τ = (\d+\.\d+), c\(K\) = \S+ ms = break-even τ (\d+\.\d+), speedup (\d+\.\d+)x", text):
            assert abs(float(speedup) - float(tau) / float(break_even)) < 0.02, f"{name}: {tau} / {break_even} != {speedup}"
        verdicts = re.findall(r"τ ×(\d+\.\d+), c\(K\) ×(\d+\.\d+): the larger block (pays|does not pay)", text)
        assert len(verdicts) == len(taus) - 1, f"{name}: the verdicts on larger blocks are missing"
        for grows, costs_more, verdict in verdicts:
            if grows != costs_more:
                assert (verdict == "pays") == (float(grows) > float(costs_more)), f"{name}: τ ×{grows}, c ×{costs_more}: {verdict}"
    elif name == "04_triton_block_attention":
        (worst,) = number(r"worst max abs difference (\S+)\)", text, name)
        assert worst < 1e-5
        # The kernel's pieces are printed next to each idea.
        for piece in ("m_safe = tl.where(m_new == float(\"-inf\"), 0.0, m_new)", "for start_n in range(start, prefix_end, BLOCK_N):",
                      "g = rows // T", "grid = (B * Hkv", "if SPLIT:", "acc += w * tl.load(part_ptr + s * stride_ps)"):
            assert piece in text, f"{name}: the kernel line {piece!r} is not shown"
        # The split counts: splits = ceil(S / keys per split), and the cases differ.
        cases = re.findall(r"^Qwen3-\S+ +\| +(\d+) \| +(\d+) \| +(\d+) \| +(\d+) \| +(\d+) \| +(\d+) \|", text, re.M)
        (per_split,) = number(r"splits of (\d+) keys\)", text, name)
        assert len(cases) >= 4 and len({c[4] for c in cases}) >= 3, f"{name}: the split-count cases should differ: {cases}"
        for B, T, S, tiles, splits, programs in ([int(x) for x in c] for c in cases):
            assert splits == -(-S // int(per_split)) and programs == B * 8 * tiles * splits, f"{name}: {B, T, S, tiles, splits, programs}"
        short = re.search(r"^row 1: lse per split \[(.*)\], combine weights \[(.*)\]$", text, re.M)
        assert short and "-inf" in short[1] and "0.0" in short[2], f"{name}: the short row should have an empty split"
    elif name == "05_training_the_diffusion_view":
        package, ours = number(r"package's distill_loss: (\d+\.\d+), kl_to_ar: (\d+\.\d+)", text, name)
        assert abs(package - ours) < 1e-5
        (gap,) = number(r"max \|training − inference\| logits = (\S+)", text, name)
        assert gap < 1e-4, f"{name}: training and inference draft logits differ by {gap}"
        before, after, steps, K = number(r"check: held-out τ (\d+\.\d+) before -> (\d+\.\d+) after (\d+) steps \(at most (\d+)\)",
                                         text, name)
        assert 1.0 <= before < after <= K, f"{name}: training should raise the held-out τ (1 ≤ {before} < {after} ≤ {K})"
    elif name == "06_the_engine":
        finished = re.findall(r"^ +(\d) \| +(eos|length) \| +(\d+) \| (\d+)$", text, re.M)
        assert [(row, reason) for row, reason, _, _ in finished] == [("0", "eos"), ("1", "length"), ("2", "length")], finished
        assert len({step for *_, step in finished}) == 3, f"{name}: the rows should finish at different steps: {finished}"
        t1, t8, t32 = number(r"t\(1\) = (\d+\.\d+) ms, t\(8\) = (\d+\.\d+) ms, t\(32\) = (\d+\.\d+) ms", text, name)
        assert min(t1, t8, t32) > 0
        evens = re.findall(r"break-even τ\(K=(\d+)\) = .* = \((\d+\.\d+) \+ (\d+\.\d+)\) / (\d+\.\d+) = (\d+\.\d+)", text)
        assert [k for k, *_ in evens] == ["8", "32"], f"{name}: the break-even τ lines are missing"
        break_even = {}
        for k, draft, verify, one, value in evens:
            by_hand = (float(draft) + float(verify)) / float(one)  # from the printed (rounded) times
            assert abs(float(value) - by_hand) < 0.01 + 0.01 * by_hand and float(value) > 1.0, f"{name}: K={k}"
            break_even[k] = float(value)
        costs = re.findall(r"^ ?(\d+) \| +(\d+\.\d+) \| +(\d+\.\d+) \| +(\d+\.\d+)x \| +(\d+\.\d+)x$", text, re.M)
        assert [k for k, *_ in costs] == ["8", "32"], f"{name}: the τ / break-even table is missing"
        for k, tau, even, predicted, measured in costs:
            assert 1.0 <= float(tau) <= int(k) and abs(float(even) - break_even[k]) < 0.011, f"{name}: K={k}"
            assert abs(float(predicted) - float(tau) / float(even)) < 0.02 and float(measured) > 0, f"{name}: K={k}"


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
