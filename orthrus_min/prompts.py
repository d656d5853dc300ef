"""Prompt files: JSONL, one request per line — read by `generate --prompt-file` and by the benchmarks
(`bench orthrus|all --prompts`); and plain-text prompt files, read verbatim by `generate --prompt-text-file`.

    {"id": "fib", "prompt": "def fibonacci(n):\\n"}
    {"prompt": "Reverse a linked list in Python.", "chat": true, "enable_thinking": false, "max_new_tokens": 256}

"prompt" (required, non-empty) is the text. Optional: "id" (a string or a number; names the
request in the output; default `FILENAME:LINE`), "chat" (true: render the prompt as a user turn
with the checkpoint's chat template; default: the command line's --chat), "system" and
"enable_thinking" (only with chat: a system message, and the template's switch), "max_new_tokens"
and "seed" (this request's own budget and sampling seed). Any other key is an error naming its
line (sampling settings such as "temperature" are the run's: give them as flags). Blank lines
are skipped; anything else that is not such an object is an error naming its line. Text must be
valid Unicode (a lone surrogate such as "\\udcff" is an error). The benchmarks' default prompt
file is `heldout_prompts.jsonl` in the model folder, else the shipped model's; they give every
prompt the run's own --max-new-tokens and --seed.

Reading is bounded (reading.py), so that `--prompt-file - < /dev/zero` ends with an error instead
of filling memory: a prompt file holds at most MAX_FILE_BYTES, a line at most MAX_LINE_BYTES, and
a plain-text prompt at most MAX_LINE_BYTES. Reading stops at Ctrl-C.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import OrthrusError
from .reading import read_jsonl, read_text, source_name

MAX_FILE_BYTES = 256 * 2**20  # the most a prompt file (or standard input) may hold
MAX_LINE_BYTES = 4 * 2**20  # the longest line of a prompt file, and the largest plain-text prompt (~1M tokens)


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


FIELD_TYPES = {"chat": bool, "system": str, "enable_thinking": bool, "max_new_tokens": int, "seed": int}
KEYS = ("id", "prompt", *FIELD_TYPES)


def read_prompt_text(path: str | Path) -> str:
    """A plain-text prompt, verbatim (trailing newlines kept): the whole file, or standard input when path is "-"."""
    text = read_text(path, "prompt file", MAX_LINE_BYTES, holds="a prompt")
    if not text:
        raise OrthrusError(f"{source_name(path)}: the prompt file is empty")
    return text


def read_prompt_file(path: str | Path, chat: bool = False) -> list[Prompt]:
    """The prompts of a JSONL file, or of standard input when path is "-"; chat: the default for lines without "chat"."""
    name = source_name(path)
    prompts = [prompt_of(record, f"{name}:{number}", f"{Path(name).name}:{number}", chat)
               for number, record in read_jsonl(path, "prompt file", MAX_FILE_BYTES, MAX_LINE_BYTES)]
    if not prompts:
        raise OrthrusError(f"{name}: no prompts (a prompt file is JSONL: one {{\"prompt\": …}} object per line)")
    return prompts


def prompt_of(record: dict, where: str, default_id: str, chat: bool = False) -> Prompt:
    """The request of one line's object (read by reading.read_jsonl); an error names `where` (FILE:LINE) and what is
    wrong there. chat: the default for a line without "chat"."""
    if not isinstance(record.get("prompt"), str) or not record["prompt"]:
        raise OrthrusError(f'{where}: expected an object with a non-empty string "prompt"')
    unknown = [key for key in record if key not in KEYS]
    if unknown:
        raise OrthrusError(f'{where}: unknown key "{unknown[0]}" (a line may have {", ".join(KEYS)}; sampling settings '
                           "are the run's flags)")
    for key, kind in FIELD_TYPES.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise OrthrusError(f'{where}: "{key}" must be {"true or false" if kind is bool else kind.__name__}, got {json.dumps(value)}')
    rid = record.get("id", default_id)
    if isinstance(rid, bool) or not isinstance(rid, (str, int, float)) or (isinstance(rid, float) and not math.isfinite(rid)):
        raise OrthrusError(f'{where}: "id" must be a string or a number, got {json.dumps(rid)[:80]}')
    if record.get("max_new_tokens") is not None and record["max_new_tokens"] < 1:
        raise OrthrusError(f'{where}: "max_new_tokens" must be >= 1, got {record["max_new_tokens"]}')
    if record.get("seed") is not None and not 0 <= record["seed"] < 2**63:
        raise OrthrusError(f'{where}: "seed" must be in 0 … 2**63-1, got {record["seed"]}')
    line_chat = record["chat"] if record.get("chat") is not None else chat
    for key in ("system", "enable_thinking"):
        if record.get(key) is not None and not line_chat:
            raise OrthrusError(f'{where}: "{key}" applies to chat prompts; add "chat": true (or run with --chat)')
    return Prompt(str(rid), record["prompt"], line_chat, record.get("system"), record.get("enable_thinking"),
                  record.get("max_new_tokens"), record.get("seed"))


def chat_messages(text: str, system: str | None = None) -> list[dict]:
    """A prompt as a conversation: one user turn, after a system message when one is given."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def encode_prompt(prompt: Prompt, tokenizer, text: str | None = None) -> list[int]:
    """Token ids of the prompt (or of `text` in its place), rendered with the chat template when it asks for it."""
    text = prompt.text if text is None else text
    if prompt.chat:
        text = tokenizer.apply_chat_template(chat_messages(text, prompt.system), enable_thinking=prompt.enable_thinking)
    return tokenizer.encode(text)


def default_prompts_file(folder: Path) -> Path:
    """The benchmarks' prompts of a checkpoint: its folder's heldout_prompts.jsonl, else the shipped model's."""
    from .checkpoint import DEFAULT_MODEL

    own = Path(folder) / "heldout_prompts.jsonl"
    return own if own.exists() else DEFAULT_MODEL / "heldout_prompts.jsonl"


__all__ = ["Prompt", "read_prompt_file", "read_prompt_text", "prompt_of", "chat_messages", "encode_prompt",
           "default_prompts_file", "MAX_FILE_BYTES", "MAX_LINE_BYTES"]
