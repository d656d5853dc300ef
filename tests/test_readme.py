"""The README's Python example runs verbatim on the shipped model (extracted from the README, not copied here)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_section_blocks() -> list[str]:
    """The ```python blocks of the README's "## Python" section, up to its first subsection."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Python\n"):]
    section = section[: re.search(r"\n##+ ", section[1:]).start() + 1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_example_runs_verbatim(capsys):
    blocks = python_section_blocks()
    assert len(blocks) == 1 and "from orthrus_min import load" in blocks[0]
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 — our own README
    out = namespace["out"]
    printed = capsys.readouterr().out
    assert out.text and printed.startswith(out.text)
    assert 1 <= out.acceptance_mean <= 32 and out.tokens_per_second > 0 and len(out.token_ids) == 128
    assert f"{out.acceptance_mean:.2f} tokens per iteration" in printed
    assert [len(c.token_ids) for c in namespace["batch"]] == [16, 32]
    assert not namespace["sampled"].sampling.greedy and namespace["sampled"].sampling.seed == 1
    assert namespace["ar"].token_ids == out.token_ids and "same tokens as AR: True; speedup " in printed  # lossless
