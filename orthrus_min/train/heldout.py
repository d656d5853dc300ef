"""The `prompts` stage: prompts cut from held-out files, written as a prompt file (JSONL, orthrus_min/prompts.py) for
evaluation and the benchmarks."""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import OrthrusError
from .sources import read_text


def make_prompts(files: list[Path], count: int, num_lines: int = 12, seed: int = 0) -> list[dict]:
    """`count` distinct prompts of `num_lines` consecutive lines, cut at line starts inside held-out files (JSONL records).

    The files take turns; each turn draws a random start in its file. A start whose text was drawn already is replaced
    by a random unused start of the same file, and a file whose starts are used up leaves the turns. When the files hold
    fewer distinct prompts than `count`, a one-line error says how many they hold.
    """
    rng = random.Random(seed)
    lines = {f: read_text(f).splitlines(keepends=True) for f in files}
    candidates = [f for f in files if len(lines[f]) > 3 * num_lines]
    if not candidates:
        raise OrthrusError(f"no held-out file has more than {3 * num_lines} lines to cut prompts from; lower --lines")
    used: dict[Path, set[int]] = {f: set() for f in candidates}
    free: dict[Path, list[int]] = {}  # a file's unused starts, listed at its first repeat

    def text_at(f: Path, start: int) -> str:
        return "".join(lines[f][start : start + num_lines])

    def unused_start(f: Path) -> int | None:
        pool = free.setdefault(f, [s for s in range(num_lines, len(lines[f]) - num_lines) if s not in used[f]])
        while pool:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            start = pool.pop()
            if start not in used[f]:
                return start
        return None

    seen, prompts, turn = set(), [], 0
    while len(prompts) < count and candidates:
        f = candidates[turn % len(candidates)]
        start = rng.randrange(num_lines, len(lines[f]) - num_lines)
        while start is not None and (start in used[f] or text_at(f, start) in seen):  # drawn before
            used[f].add(start)
            start = unused_start(f)
        if start is None:
            candidates.remove(f)  # every start of this file is used: the other files take the turns
            continue
        used[f].add(start)
        seen.add(text_at(f, start))
        prompts.append({"id": f"{f.parent.name}/{f.name}:{start + 1}", "prompt": text_at(f, start)})
        turn += 1
    if len(prompts) < count:
        raise OrthrusError(f"--count {count}: the {len(files)} held-out files hold only {len(prompts):,} distinct prompts of "
                           f"{num_lines} lines; lower --count or --lines, or add --data")
    return prompts


__all__ = ["make_prompts"]
