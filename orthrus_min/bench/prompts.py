"""Benchmark prompts: the prompt file, its encoding, and long prompts for the context sweep.

Used by `python -m orthrus_min.bench orthrus` and `all` (decode.py).

Prompt files (`--prompts FILE`) are JSONL, one object per line (blank lines are skipped):

    {"id": "fib", "prompt": "def fibonacci(n):\\n"}
    {"prompt": "Write a Python function that reverses a linked list.", "chat": true}

"prompt" (required) is the text; "id" (optional) names it in the report; "chat": true
(optional) renders it as a user turn with the checkpoint's chat template, and
"enable_thinking" (optional, true or false) is passed on to the template. Default:
`heldout_prompts.jsonl` in the model folder, else the shipped model's held-out prompts.
"""

from __future__ import annotations

from pathlib import Path

from ..prompts import Prompt, encode_prompt


def default_prompts_file(folder: Path) -> Path:
    """The model folder's heldout_prompts.jsonl, else the shipped model's."""
    from ..model import DEFAULT_MODEL

    own = folder / "heldout_prompts.jsonl"
    return own if own.exists() else DEFAULT_MODEL / "heldout_prompts.jsonl"


def long_prompt(prompts: list[Prompt], i: int, length: int, tokenizer) -> tuple[list[int], bool]:
    """Prompt i preceded by the other prompts' text (in file order from i+1, wrapping) -> (ids, filler_repeated).

    About `length` tokens (exactly, for a raw prompt): the text's last tokens, so prompt i ends it.
    filler_repeated: the other prompts were too short and had to be used more than once.
    """
    others = [p.text for p in prompts[i + 1:] + prompts[:i]] or [prompts[i].text]
    overhead = len(encode_prompt(prompts[i], tokenizer)) - len(tokenizer.encode(prompts[i].text))  # the chat template's tokens
    want = max(1, length - overhead)
    sizes = [len(tokenizer.encode(t)) + 1 for t in others]  # about what each adds (plus a newline)
    filler, ids = [], tokenizer.encode(prompts[i].text)
    estimate = len(ids)
    while len(ids) < want:
        while estimate < want:  # the nearest neighbour (prompt i+1) goes right before the prompt, the next before it, …
            filler.insert(0, others[len(filler) % len(others)])
            estimate += sizes[(len(filler) - 1) % len(others)]
        ids = tokenizer.encode("\n".join(filler + [prompts[i].text]))
        estimate = len(ids)  # still short (BPE merged across the joins): add more
    repeated = len(filler) > len(others)
    ids = ids[-want:]
    if prompts[i].chat:
        ids = encode_prompt(prompts[i], tokenizer, tokenizer.decode(ids))
    return ids, repeated
