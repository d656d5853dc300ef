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

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import OrthrusError


@dataclass
class Prompt:
    """One line of a prompt file."""

    id: str
    text: str
    chat: bool = False
    enable_thinking: bool | None = None


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a JSONL file: one {"prompt": str, "id"?: str, "chat"?: bool, "enable_thinking"?: bool} per line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise OrthrusError(f"{path}: cannot read prompt file ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError as e:
        raise OrthrusError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise OrthrusError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
            raise OrthrusError(f'{path}:{number}: expected an object with a non-empty string "prompt"')
        for key in ("chat", "enable_thinking"):
            if record.get(key) is not None and not isinstance(record[key], bool):
                raise OrthrusError(f'{path}:{number}: "{key}" must be true or false, got {json.dumps(record[key])}')
        prompts.append(Prompt(str(record.get("id", f"{Path(path).name}:{number}")), record["prompt"], bool(record.get("chat", False)),
                              record.get("enable_thinking")))
    if not prompts:
        raise OrthrusError(f"{path}: no prompts")
    return prompts


def default_prompts_file(folder: Path) -> Path:
    """The model folder's heldout_prompts.jsonl, else the shipped model's."""
    from ..model import DEFAULT_MODEL

    own = folder / "heldout_prompts.jsonl"
    return own if own.exists() else DEFAULT_MODEL / "heldout_prompts.jsonl"


def encode_prompt(prompt: Prompt, tokenizer, text: str | None = None) -> list[int]:
    """Token ids of the prompt (or of `text` in its place), rendered with the chat template when it asks for it."""
    text = prompt.text if text is None else text
    if prompt.chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             enable_thinking=prompt.enable_thinking)
    return tokenizer.encode(text)


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
