"""Input files: the one JSONL reader, the one JSON-object reader, and bounded reading of a file or standard input.

Every door reads through these — `generate` and the benchmarks (prompt files, prompts.py), `train`
(JSONL data, the regenerate stage's prompts), `load` (the checkpoint's JSON files) — so a mistake
reads the same everywhere: one line that names the file, and in a JSONL file the line.

A JSONL file holds one JSON object per line; blank lines are skipped. Each line must be UTF-8
(`FILE:LINE: not valid UTF-8 (byte 0xff at column 4)`), valid JSON, an object with no key given
twice, and every string in it valid Unicode: a JSON escape of a lone surrogate ("\\udcff") is not
text, and the error names the field (`FILE:LINE: "prompt" is not valid Unicode: …`).

Reading may be bounded (prompt files, which may be standard input): more than `max_bytes` in all,
or a line of more than `max_line_bytes`, is an error as soon as it is passed, so that
`--prompt-file - < /dev/zero` ends instead of filling memory. A wait for input (a pipe, a terminal)
is cut every 0.2 s, so Ctrl-C always ends a read.
"""

from __future__ import annotations

import json
import os
import re
import select
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import OrthrusError, check_text

CHUNK = 2**20  # bytes read at a time
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a D800-DFFF escape: only a line with one can hold a lone surrogate


def mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def source_name(path: str | Path) -> str:
    """How messages name a path: "<stdin>" for "-"."""
    return "<stdin>" if str(path) == "-" else str(path)


# --------------------------------------------------------------------------- bytes, bounded


def read_chunks(fd: int) -> Iterator[bytes]:
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


def file_chunks(path: str | Path, kind: str, max_bytes: int | None = None, holds: str | None = None) -> Iterator[bytes]:
    """The bytes of a file, or of standard input when path is "-", a chunk at a time; one-line errors name the file
    as a `kind` ("prompt file"). More than max_bytes: an error saying it is the most that `holds` (default: a `kind`)
    may hold."""
    name = source_name(path)
    if str(path) != "-" and Path(path).is_dir():
        raise OrthrusError(f"{name}: is a folder, not a {kind}")
    total = 0
    try:
        if str(path) == "-":
            if sys.stdin is None:
                raise OrthrusError(f"{name}: cannot read {kind} (standard input is closed)")
            fd, close = sys.stdin.fileno(), False
        else:
            fd, close = os.open(path, os.O_RDONLY), True
        try:
            for chunk in read_chunks(fd):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise OrthrusError(f"{name}: more than {mib(max_bytes)}, the most that {holds or 'a ' + kind} may hold")
                yield chunk
        finally:
            if close:
                os.close(fd)
    except OSError as e:
        raise OrthrusError(f"{name}: cannot read {kind} ({e.strerror or type(e).__name__})") from None


def read_text(path: str | Path, kind: str, max_bytes: int, holds: str | None = None) -> str:
    """The whole UTF-8 text of a file (or of standard input when path is "-"), at most max_bytes."""
    data = b"".join(file_chunks(path, kind, max_bytes, holds))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise OrthrusError(f"{source_name(path)}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def file_lines(path: str | Path, kind: str, max_bytes: int | None = None,
               max_line_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, the line's bytes without its newline) for every line of a file or standard input.

    A line longer than max_line_bytes is an error as soon as that many bytes of it are read.
    """
    number, parts, length = 1, [], 0  # the line being read: its pieces so far, their length
    for chunk in file_chunks(path, kind, max_bytes):
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            parts.append(piece)
            length += len(piece)
            if max_line_bytes is not None and length > max_line_bytes:
                raise OrthrusError(f"{source_name(path)}: line {number} is longer than {mib(max_line_bytes)}, the longest "
                                   f"line a {kind} may have (is it a JSONL file?)")
            if end < 0:
                break
            yield number, b"".join(parts)
            number, parts, length, start = number + 1, [], 0, end + 1
    if length:  # a last line without a newline
        yield number, b"".join(parts)


# --------------------------------------------------------------------------- JSON


def unique_keys(pairs: list[tuple[str, object]], where: str) -> dict:
    """A JSON object's pairs as a dict; a key given twice is an error (json.loads would keep the last silently)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        key = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise OrthrusError(f'{where}: the key "{key}" is given twice')
    return record


def check_strings(value, where: str, name: str = "") -> None:
    """A one-line error at the first string in a parsed JSON value (keys too) that is not valid Unicode, named by its
    place in the value: "prompt", "messages"[0]["content"]."""
    if isinstance(value, str):
        check_text(value, f"{where}: {name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{where}: a key of {name or 'the object'}")
            check_strings(item, where, f'{name}["{key}"]' if name else f'"{key}"')
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_strings(item, where, f"{name}[{i}]")


def read_jsonl(path: str | Path, kind: str = "JSONL file", max_bytes: int | None = None,
               max_line_bytes: int | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file, or of standard input when path is "-".

    kind names the file in messages ("prompt file"); max_bytes, max_line_bytes: the bounds, if any.
    """
    name = source_name(path)
    for number, raw in file_lines(path, kind, max_bytes, max_line_bytes):
        where = f"{name}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise OrthrusError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=lambda pairs: unique_keys(pairs, where))
        except json.JSONDecodeError as e:
            raise OrthrusError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); a {kind} holds one JSON object "
                               "per line") from None
        if not isinstance(row, dict):
            raise OrthrusError(f"{where}: expected a JSON object, got a {type(row).__name__}")
        if SURROGATE_ESCAPE.search(raw):
            check_strings(row, where)
        yield number, row


def read_json(path: str | Path):
    """The value a JSON file holds, with one-line errors for a file that cannot be read or is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OrthrusError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise OrthrusError(f"{path}: cannot read it ({e.strerror})") from None


def read_json_object(path: str | Path) -> dict:
    """A JSON file that must hold an object, with one-line errors for anything else."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise OrthrusError(f"{path}: expected a JSON object, got a {type(value).__name__}")
    return value


__all__ = ["read_jsonl", "read_json", "read_json_object", "read_text", "file_chunks", "file_lines", "read_chunks", "source_name",
           "check_strings", "CHUNK"]
