"""Prompt files: JSONL, one request per line — read by `generate --prompt-file` and by the benchmarks;
and plain-text prompt files, read verbatim by `generate --prompt-text-file`.

    {"id": "fib", "prompt": "def fibonacci(n):\\n"}
    {"prompt": "Reverse a linked list in Python.", "chat": true, "enable_thinking": false, "max_new_tokens": 256}

"prompt" (required, non-empty) is the text. Optional: "id" (a string or a number; names the
request in the output; default `FILENAME:LINE`), "chat" (true: render the prompt as a user turn
with the checkpoint's chat template; default: the command line's --chat), "system" and
"enable_thinking" (only with chat: a system message, and the template's switch), "max_new_tokens"
and "seed" (this request's own budget and sampling seed). Any other key is an error naming its
line (sampling settings such as "temperature" are the run's: give them as flags). Blank lines
are skipped; anything else that is not such an object is an error naming its line. Text must be
valid Unicode (a lone surrogate such as "\\udcff" is an error).

Reading is bounded, so that `--prompt-file - < /dev/zero` ends with an error instead of filling
memory: a prompt file holds at most MAX_FILE_BYTES, a line at most MAX_LINE_BYTES, and a
plain-text prompt at most MAX_LINE_BYTES. Reading stops at Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import select
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import OrthrusError, check_text

MAX_FILE_BYTES = 256 * 2**20  # the most a prompt file (or standard input) may hold
MAX_LINE_BYTES = 4 * 2**20  # the longest line of a prompt file, and the largest plain-text prompt (~1M tokens)
CHUNK = 2**20  # bytes read at a time (at most MAX_LINE_BYTES)


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


def mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def read_bounded(path: str | Path, name: str, limit: int, line_limit: int | None = None) -> str:
    """The UTF-8 text of a file (or of standard input when path is "-"), read a chunk at a time.

    More than `limit` bytes, or a line of more than `line_limit` bytes, is a one-line error that
    names the limit, raised as soon as it is passed (an endless stream ends there).
    """
    total, line_start, lines, chunks = 0, 0, 1, []
    try:
        if str(path) == "-":
            if sys.stdin is None:
                raise OrthrusError(f"{name}: cannot read prompt file (standard input is closed)")
            fd, close = sys.stdin.fileno(), False
        else:
            fd, close = os.open(path, os.O_RDONLY), True
        try:
            for chunk in read_chunks(fd):
                chunks.append(chunk)
                if line_limit is not None:  # (a line that starts in this chunk is shorter than CHUNK <= line_limit)
                    first = chunk.find(b"\n")
                    if total + (first if first >= 0 else len(chunk)) - line_start > line_limit:
                        raise OrthrusError(f"{name}: line {lines} is longer than {mib(line_limit)}, the longest line a prompt "
                                           "file may have (is it a JSONL file?)")
                    if first >= 0:
                        lines += chunk.count(b"\n")
                        line_start = total + chunk.rfind(b"\n") + 1
                total += len(chunk)
                if total > limit:
                    raise OrthrusError(f"{name}: more than {mib(limit)}, the most that {'a prompt file' if line_limit else 'a prompt'} "
                                       "may hold")
        finally:
            if close:
                os.close(fd)
    except OSError as e:
        raise OrthrusError(f"{name}: cannot read prompt file ({e.strerror or type(e).__name__})") from None
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise OrthrusError(f"{name}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def read_chunks(fd: int):
    """The bytes of file descriptor `fd` until its end, CHUNK at a time.

    A wait for input (a pipe, a terminal) is cut every 0.2 s: a Ctrl-C that lands just before a
    blocking read would otherwise be noticed only when input comes; this way it always ends the read.
    """
    while True:
        try:
            while not select.select([fd], [], [], 0.2)[0]:
                pass  # nothing yet: Python checks for Ctrl-C here, between waits
        except (OSError, ValueError):  # a descriptor select cannot watch (Windows): read and block
            pass
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return
        yield chunk


def read_prompt_text(path: str | Path) -> str:
    """A plain-text prompt, verbatim (trailing newlines kept): the whole file, or standard input when path is "-"."""
    name = "<stdin>" if str(path) == "-" else str(path)
    if str(path) != "-" and Path(path).is_dir():
        raise OrthrusError(f"{name}: is a folder, not a prompt file")
    text = read_bounded(path, name, MAX_LINE_BYTES)
    if not text:
        raise OrthrusError(f"{name}: the prompt file is empty")
    return text


def read_prompt_file(path: str | Path, chat: bool = False) -> list[Prompt]:
    """The prompts of a JSONL file, or of standard input when path is "-"; chat: the default for lines without "chat"."""
    name = "<stdin>" if str(path) == "-" else str(path)
    if str(path) != "-" and Path(path).is_dir():
        raise OrthrusError(f"{name}: is a folder, not a prompt file")
    text = read_bounded(path, name, MAX_FILE_BYTES, MAX_LINE_BYTES)
    prompts = parse_prompt_lines(text.splitlines(), name, chat)
    if not prompts:
        raise OrthrusError(f"{name}: no prompts (a prompt file is JSONL: one {{\"prompt\": …}} object per line)")
    return prompts


def parse_prompt_lines(lines: list[str], name: str, chat: bool = False) -> list[Prompt]:
    """Prompts of JSONL lines; an error names `name:line` and what is wrong there. chat: the default for lines without "chat"."""
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line, object_pairs_hook=lambda pairs: unique_keys(pairs, where))
        except json.JSONDecodeError as e:
            raise OrthrusError(f"{where}: not a JSON object ({e.msg}); a prompt file is JSONL, one "
                               "{\"prompt\": …} object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
            raise OrthrusError(f'{where}: expected an object with a non-empty string "prompt"')
        unknown = [key for key in record if key not in KEYS]
        if unknown:
            raise OrthrusError(f'{where}: unknown key "{unknown[0]}" (a line may have {", ".join(KEYS)}; sampling settings '
                               "are the run's flags)")
        for key, kind in FIELD_TYPES.items():
            value = record.get(key)
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise OrthrusError(f'{where}: "{key}" must be {"true or false" if kind is bool else kind.__name__}, got {json.dumps(value)}')
        rid = record.get("id", f"{Path(name).name}:{number}")
        if isinstance(rid, bool) or not isinstance(rid, (str, int, float)) or (isinstance(rid, float) and not math.isfinite(rid)):
            raise OrthrusError(f'{where}: "id" must be a string or a number, got {json.dumps(rid)[:80]}')
        for key in ("prompt", "system", "id"):
            if isinstance(record.get(key), str):
                check_text(record[key], f'{where}: "{key}"')
        if record.get("max_new_tokens") is not None and record["max_new_tokens"] < 1:
            raise OrthrusError(f'{where}: "max_new_tokens" must be >= 1, got {record["max_new_tokens"]}')
        if record.get("seed") is not None and not 0 <= record["seed"] < 2**63:
            raise OrthrusError(f'{where}: "seed" must be in 0 … 2**63-1, got {record["seed"]}')
        line_chat = record["chat"] if record.get("chat") is not None else chat
        for key in ("system", "enable_thinking"):
            if record.get(key) is not None and not line_chat:
                raise OrthrusError(f'{where}: "{key}" applies to chat prompts; add "chat": true (or run with --chat)')
        prompts.append(Prompt(str(rid), record["prompt"], line_chat, record.get("system"), record.get("enable_thinking"),
                              record.get("max_new_tokens"), record.get("seed")))
    return prompts


def unique_keys(pairs: list[tuple[str, object]], where: str) -> dict:
    """A JSON object's pairs as a dict; a key given twice is an error (json.loads would keep the last silently)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        key = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise OrthrusError(f'{where}: the key "{key}" is given twice')
    return record


def encode_prompt(prompt: Prompt, tokenizer, text: str | None = None) -> list[int]:
    """Token ids of the prompt (or of `text` in its place), rendered with the chat template when it asks for it."""
    text = prompt.text if text is None else text
    if prompt.chat:
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=prompt.enable_thinking)
    return tokenizer.encode(text)


__all__ = ["Prompt", "read_prompt_file", "read_prompt_text", "read_bounded", "parse_prompt_lines", "encode_prompt",
           "MAX_FILE_BYTES", "MAX_LINE_BYTES"]
