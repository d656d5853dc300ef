"""Held-out prompt files for evaluation and benchmarks (the `prompts` stage)."""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import OrthrusError
from .sources import read_text


def make_prompts(files: list[Path], count: int, num_lines: int = 12, seed: int = 0) -> list[dict]:
    """`count` prompts of `num_lines` consecutive lines, cut at line starts inside held-out files (JSONL records)."""
    rng = random.Random(seed)
    prompts = []
    candidates = [f for f in files if len(read_text(f).splitlines()) > 3 * num_lines]
    if not candidates:
        raise OrthrusError(f"no held-out file has more than {3 * num_lines} lines to cut prompts from; lower --lines")
    for i in range(count):
        f = candidates[i % len(candidates)]
        lines = read_text(f).splitlines(keepends=True)
        start = rng.randrange(num_lines, len(lines) - num_lines)
        text = "".join(lines[start : start + num_lines])
        prompts.append({"id": f"{f.parent.name}/{f.name}:{start + 1}", "prompt": text})
    return prompts


__all__ = ["make_prompts"]
