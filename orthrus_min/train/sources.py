"""Training data as documents: what `--data` names, read and split into train / held-out.

A `--data` entry (a *source*) is one of
  * `stdlib`: the `.py` files of this interpreter's standard library (no tests, no site-packages);
  * a folder: its files matching `--pattern` (searched recursively);
  * a `.jsonl` file: one JSON object per line, either `{"text": "…"}` or `{"messages": [{"role": …,
    "content": …}, …]}` (a chat, rendered later with the tokenizer's chat template); other keys
    (an "id", metadata) are ignored;
  * any other file: one text document.
Each file of a text source is a document; each line of a JSONL file is one. Text is UTF-8: in a text
file undecodable bytes are replaced (U+FFFD); a JSONL file is read as every door reads one
(orthrus_min/reading.py: a line that is not UTF-8 or not a JSON object is an error naming it). Binary files (a NUL byte in the first 8 KiB, as git and grep decide) are not text: a folder's
are skipped with one warning line, a binary file named by `--data` is an error. Documents are split
into train and held-out by a stable hash: of the file's folder and name (text files, as before),
of the file name and line number (JSONL rows). Mistakes name the file and line.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import OrthrusError
from ..files import kind_of
from ..reading import read_jsonl
from ..request import check_messages


@dataclass
class Source:
    """One `--data` entry: its spelling on the command line, its kind, and its files."""

    spec: str
    kind: str  # "text" (files, each a document) or "jsonl" (rows, each a document)
    files: list[Path]

    @property
    def name(self) -> str:
        """A short, file-name-safe label (used in cache folder names and messages)."""
        stem = "stdlib" if self.spec == "stdlib" else Path(self.spec.rstrip("/")).name or "data"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:40]


@dataclass
class Document:
    """One training document: plain text, or a chat (`messages`); `where` names it in errors ("file:line")."""

    where: str
    text: str | None = None
    messages: list[dict] | None = None


# --------------------------------------------------------------------------- finding files


def stdlib_files(pattern: str = "*.py") -> list[Path]:
    """This Python's standard library files matching `pattern`, without site-packages and test folders."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [f for f in sorted(root.rglob(pattern)) if not {"site-packages", "test", "tests"} & set(f.relative_to(root).parts)]


def is_binary(path: Path) -> bool:
    """Whether a file looks binary: a NUL byte in its first 8 KiB (unreadable files are left to the reader's error)."""
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(8192)
    except OSError:
        return False


def resolve_sources(specs: list[str], pattern: str = "*.py", warn=None) -> list[Source]:
    """The sources named by `--data`, each with its files; a one-line error for a missing or empty one.

    warn(message): told about binary files skipped in folders (default: a line on stderr)."""
    warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
    sources = []
    for spec in specs:
        path = Path(spec)
        skipped = []
        if spec == "stdlib":
            files = stdlib_files(pattern)
            kind = "text"
        elif path.is_dir():
            found = [f for f in sorted(path.rglob(pattern)) if f.is_file()]
            binary = [is_binary(f) for f in found]
            skipped = [f for f, b in zip(found, binary) if b]
            files = [f for f, b in zip(found, binary) if not b]
            kind = "text"
        elif path.is_file():
            files = [path]
            kind = "jsonl" if path.suffix == ".jsonl" else "text"
            if kind == "text" and is_binary(path):
                raise OrthrusError(f"--data {spec}: a binary file (a NUL byte in its first 8 KiB), not text")
        elif os.path.lexists(path):
            raise OrthrusError(f"--data {spec}: is {kind_of(path)}; give files or folders")
        else:
            raise OrthrusError(f"--data {spec}: no such file or folder")
        if skipped:
            warn(f"warning: --data {spec}: skipped {len(skipped)} binary file{'s' if len(skipped) != 1 else ''} (a NUL byte "
                 f"in the first 8 KiB), e.g. {skipped[0]}")
        if not files:
            extra = f" that are text ({len(skipped)} binary skipped)" if skipped else ""
            raise OrthrusError(f"--data {spec}: no files matching {pattern!r}{extra} (set --pattern)")
        sources.append(Source(spec, kind, files))
    if not sources:
        raise OrthrusError("--data names no source")
    return sources


def corpus_files(sources: list[str], pattern: str = "*.py", warn=None) -> list[Path]:
    """Text files named by `sources`: files, folders (searched for `pattern`), or "stdlib" (this Python's standard library)."""
    return [f for source in resolve_sources(sources, pattern, warn) for f in source.files]


# --------------------------------------------------------------------------- the train / held-out split


def is_heldout(path: Path, percent: float) -> bool:
    """A stable train / held-out split by file: the hash of the file name and its parent folder."""
    return _hash_below(f"{path.parent.name}/{path.name}", percent)


def _hash_below(key: str, percent: float) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10_000 < percent * 100


def split_files(files: list[Path], heldout_percent: float) -> tuple[list[Path], list[Path]]:
    """(train files, held-out files); an error when one side is empty."""
    heldout = [f for f in files if is_heldout(f, heldout_percent)]
    train = [f for f in files if not is_heldout(f, heldout_percent)]
    if not train or not heldout:
        raise OrthrusError(f"the train / held-out split of {len(files)} files left one side empty; use more files "
                           "or change --heldout-percent")
    return train, heldout


def read_text(path: Path) -> str:
    """A text file's content (undecodable bytes replaced); a one-line error when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise OrthrusError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


# --------------------------------------------------------------------------- reading documents


def jsonl_document(row: dict, where: str) -> Document:
    """The document of one JSONL row: {"text": …} or {"messages": […]}."""
    if "messages" in row:
        return Document(where, messages=check_messages(row["messages"], where))
    if isinstance(row.get("text"), str):
        return Document(where, text=row["text"])
    raise OrthrusError(f"{where}: expected {{\"text\": \"…\"}} or {{\"messages\": […]}}, got keys {sorted(row)}")


def iter_documents(source: Source, heldout_percent: float) -> Iterator[tuple[bool, Document]]:
    """(is held out, document) for every document of `source`, in a fixed order."""
    for path in source.files:
        if source.kind == "text":
            yield is_heldout(path, heldout_percent), Document(str(path), text=read_text(path))
        else:
            for number, row in read_jsonl(path):
                yield _hash_below(f"{path.name}:{number}", heldout_percent), jsonl_document(row, f"{path}:{number}")


# --------------------------------------------------------------------------- plain token streams (notebook 05)


def tokenize_files(tokenizer, files: list[Path]) -> np.ndarray:
    """All files' tokens, each file followed by <|endoftext|>, as one uint16/uint32 array."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tokenizer.tok.encode_batch([read_text(f) for f in files]):
        ids.extend(enc.ids)
        if eot is not None:
            ids.append(eot)
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
    return np.asarray(ids, dtype=dtype)


def random_windows(tokens: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """`batch_size` random windows of `seq_len` tokens from a token stream -> (B, T) int64."""
    if len(tokens) <= seq_len + 1:
        raise OrthrusError(f"{len(tokens)} tokens are too few for windows of {seq_len}")
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + seq_len]) for s in starts]).astype(np.int64))


__all__ = ["Source", "Document", "is_binary", "resolve_sources", "corpus_files", "is_heldout", "split_files", "read_text",
           "iter_documents", "tokenize_files", "random_windows", "stdlib_files"]
