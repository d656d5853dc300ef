"""Prompt files: JSONL, one request per line — read by `generate --prompt-file` and by the benchmarks.

    {"id": "fib", "prompt": "def fibonacci(n):\\n"}
    {"prompt": "Reverse a linked list in Python.", "chat": true, "enable_thinking": false, "max_new_tokens": 256}

"prompt" (required, non-empty) is the text. Optional: "id" (names the request in the output;
default `FILENAME:LINE`), "chat" (true: render the prompt as a user turn with the checkpoint's chat
template), "system" (with chat: a system message), "enable_thinking" (with chat: passed to the
template), "max_new_tokens" and "seed" (this request's own budget and sampling seed). Blank
lines are skipped; anything else that is not such an object is an error naming its line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import OrthrusError


@dataclass
class Prompt:
    """One request of a prompt file."""

    id: str
    text: str
    chat: bool = False
    system: str | None = None
    enable_thinking: bool | None = None
    max_new_tokens: int | None = None
    seed: int | None = None


FIELD_TYPES = {"chat": bool, "enable_thinking": bool, "system": str, "max_new_tokens": int, "seed": int}


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """The prompts of a JSONL file, or of standard input when path is "-"."""
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        if str(path) == "-":
            text = sys.stdin.buffer.read().decode("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise OrthrusError(f"{name}: cannot read prompt file ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError as e:
        raise OrthrusError(f"{name}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    prompts = parse_prompt_lines(text.splitlines(), name)
    if not prompts:
        raise OrthrusError(f"{name}: no prompts (a prompt file is JSONL: one {{\"prompt\": …}} object per line)")
    return prompts


def parse_prompt_lines(lines: list[str], name: str) -> list[Prompt]:
    """Prompts of JSONL lines; an error names `name:line` and what is wrong there."""
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise OrthrusError(f"{where}: not a JSON object ({e.msg}); a prompt file is JSONL, one "
                               "{\"prompt\": …} object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
            raise OrthrusError(f'{where}: expected an object with a non-empty string "prompt"')
        for key, kind in FIELD_TYPES.items():
            value = record.get(key)
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise OrthrusError(f'{where}: "{key}" must be {"true or false" if kind is bool else kind.__name__}, got {json.dumps(value)}')
        if record.get("max_new_tokens") is not None and record["max_new_tokens"] < 1:
            raise OrthrusError(f'{where}: "max_new_tokens" must be >= 1, got {record["max_new_tokens"]}')
        if record.get("seed") is not None and not 0 <= record["seed"] < 2**63:
            raise OrthrusError(f'{where}: "seed" must be in 0 … 2**63-1, got {record["seed"]}')
        prompts.append(Prompt(str(record.get("id", f"{Path(name).name}:{number}")), record["prompt"], bool(record.get("chat", False)),
                              record.get("system"), record.get("enable_thinking"), record.get("max_new_tokens"),
                              record.get("seed")))
    return prompts


def encode_prompt(prompt: Prompt, tokenizer, text: str | None = None) -> list[int]:
    """Token ids of the prompt (or of `text` in its place), rendered with the chat template when it asks for it."""
    text = prompt.text if text is None else text
    if prompt.chat:
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=prompt.enable_thinking)
    return tokenizer.encode(text)


__all__ = ["Prompt", "read_prompt_file", "parse_prompt_lines", "encode_prompt"]
