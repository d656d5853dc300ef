"""Tokenized documents, cached on disk under a key of the data and the tokenizer that made them.

Every source is tokenized once into flat arrays — all documents' tokens back to back, the
document offsets, and (for JSONL sources) a loss mask — split into train and held-out. The
cache folder's name carries a SHA-256 of everything the tokens depend on: the format version,
the tokenizer (tokenizer.json, chat template, end-of-text id), every file's name and content,
the held-out percentage and the thinking setting of the chat template. A changed file or
tokenizer gives a new folder, never a stale one. A folder is built under a temporary name and
renamed into place when complete, so a run killed while tokenizing leaves no half-written
cache behind, only a `.tmp-*` folder that the next build removes. Arrays are read back with
`np.memmap`: many processes share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OrthrusError
from ..files import WriteFailed, io_reason
from ..reading import read_json_object
from .chat import chat_tokens
from .sources import Document, Source, iter_documents

CACHE_FORMAT = 2  # bump when the arrays' meaning changes
TEXT_BATCH = 256  # documents per `encode_batch`


@dataclass
class DocArrays:
    """Documents as flat arrays: tokens (uint32), offsets (n+1, int64), loss mask (uint8, or None = every token)."""

    tokens: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(n,) tokens per document."""
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def tokens_of(self, i: int, start: int = 0, end: int | None = None) -> np.ndarray:
        """Tokens start … end-1 of document i."""
        a = int(self.offsets[i])
        b = int(self.offsets[i + 1]) if end is None else a + end
        return np.asarray(self.tokens[a + start : b])

    def mask_of(self, i: int, start: int = 0, end: int | None = None) -> np.ndarray:
        """Loss mask (bool) of tokens start … end-1 of document i (all True for text)."""
        a = int(self.offsets[i])
        b = int(self.offsets[i + 1]) if end is None else a + end
        if self.mask is None:
            return np.ones(b - a - start, dtype=bool)
        return np.asarray(self.mask[a + start : b]).astype(bool)

    def stream(self) -> np.ndarray:
        """Every document's tokens back to back (a view, no copy)."""
        return self.tokens[: self.num_tokens]


@dataclass
class TokenizedSource:
    """One source's documents after tokenization: train and held-out, and the key of its cache folder."""

    source: Source
    key: str
    train: DocArrays
    heldout: DocArrays

    @property
    def is_chat(self) -> bool:
        return self.train.mask is not None


# --------------------------------------------------------------------------- keys


def sha256_file(path: Path, h=None):
    """Feeds a file's bytes into a SHA-256 (a new one unless `h` is given) and returns it."""
    h = h or hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise OrthrusError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    return h


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what tokenization depends on: tokenizer.json, the chat template, the end-of-text id."""
    h = sha256_file(Path(tokenizer.folder) / "tokenizer.json")
    h.update(repr((tokenizer.chat_template, end_of_text_id(tokenizer))).encode())
    return h.hexdigest()


def source_key(source: Source, tokenizer_hash: str, heldout_percent: float, enable_thinking: bool | None) -> str:
    """The cache key of one source: format, tokenizer, each file's relative name and bytes, split and template settings."""
    h = hashlib.sha256(repr((CACHE_FORMAT, tokenizer_hash, source.kind, float(heldout_percent), enable_thinking)).encode())
    root = Path(os.path.commonpath([str(f.parent) for f in source.files])) if source.files else Path(".")
    for f in source.files:
        name = f.relative_to(root) if f.is_relative_to(root) else f.name
        h.update(f"\0{name}\0".encode())
        sha256_file(f, h)
    return h.hexdigest()


def end_of_text_id(tokenizer) -> int | None:
    """The id appended after each text document: `<|endoftext|>`, else the tokenizer's eos_token, else none."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    if eot is None and isinstance(tokenizer.config.get("eos_token"), str):
        eot = tokenizer.token_to_id(tokenizer.config["eos_token"])
    return eot


# --------------------------------------------------------------------------- building


class _ArrayWriter:
    """Appends one split's documents to raw files: tokens, offsets and (optionally) the loss mask."""

    def __init__(self, folder: Path, split: str, with_mask: bool):
        self.tokens = open(folder / f"{split}.tokens", "wb")
        self.mask = open(folder / f"{split}.mask", "wb") if with_mask else None
        self.offsets = [0]

    def add(self, ids: list[int], mask: list[int] | None) -> None:
        np.asarray(ids, dtype=np.uint32).tofile(self.tokens)
        if self.mask is not None:
            np.asarray(mask if mask is not None else [1] * len(ids), dtype=np.uint8).tofile(self.mask)
        self.offsets.append(self.offsets[-1] + len(ids))

    def close(self, folder: Path, split: str) -> int:
        for f in (self.tokens, self.mask):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        np.asarray(self.offsets, dtype=np.int64).tofile(folder / f"{split}.offsets")
        return len(self.offsets) - 1


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_source(source: Source, tokenizer, heldout_percent: float, enable_thinking: bool | None, folder: Path) -> dict:
    """Tokenizes every document of `source` into `folder` (train.* and heldout.* files); returns the counts."""
    eot = end_of_text_id(tokenizer)
    with_mask = source.kind == "jsonl"
    writers = {split: _ArrayWriter(folder, split, with_mask) for split in ("train", "heldout")}
    chats = 0
    for batch in _batched(iter_documents(source, heldout_percent), TEXT_BATCH):
        texts = [doc.text for _, doc in batch if doc.messages is None]
        encoded = iter(tokenizer.tok.encode_batch(texts)) if texts else iter(())
        for heldout, doc in batch:
            if doc.messages is None:
                ids, mask = next(encoded).ids + ([eot] if eot is not None else []), None
            else:
                ids, mask = chat_tokens(tokenizer, doc.messages, enable_thinking, doc.where)
                chats += 1
            writers["heldout" if heldout else "train"].add(ids, mask)
    counts = {split: w.close(folder, split) for split, w in writers.items()}
    return {"documents": counts, "chats": chats}


def _read_split(folder: Path, split: str, with_mask: bool) -> DocArrays:
    offsets = np.fromfile(folder / f"{split}.offsets", dtype=np.int64)
    n = int(offsets[-1])
    tokens = np.memmap(folder / f"{split}.tokens", dtype=np.uint32, mode="r") if n else np.zeros(0, np.uint32)
    mask = None
    if with_mask:
        mask = np.memmap(folder / f"{split}.mask", dtype=np.uint8, mode="r") if n else np.zeros(0, np.uint8)
    if len(tokens) != n or (mask is not None and len(mask) != n):
        raise ValueError("array sizes do not match the offsets")
    return DocArrays(tokens, offsets, mask)


def read_cache(folder: Path) -> tuple[DocArrays, DocArrays] | None:
    """The cached (train, held-out) arrays of a complete cache folder, or None if it is missing or unreadable."""
    try:
        meta = read_json_object(folder / "meta.json")
        return tuple(_read_split(folder, split, meta["mask"]) for split in ("train", "heldout"))
    except (OSError, ValueError, KeyError, IndexError):
        return None


def tokenize_source(source: Source, tokenizer, heldout_percent: float, enable_thinking: bool | None, cache_root: Path,
                    tokenizer_hash: str | None = None, build: bool = True, log=print) -> TokenizedSource:
    """One source's tokens: from its cache folder under `cache_root` when present, else tokenized and cached.

    build=False (ranks other than 0) never writes: the folder must already be there.
    """
    key = source_key(source, tokenizer_hash or tokenizer_fingerprint(tokenizer), heldout_percent, enable_thinking)
    folder = cache_root / f"{source.name}-{key[:16]}"
    cached = read_cache(folder)
    if cached is None and build:
        log(f"tokenizing {source.spec} ({len(source.files)} file{'s' if len(source.files) != 1 else ''}) -> {folder}")
        tmp = cache_root / f".tmp-{folder.name}-{os.getpid()}"
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
            if folder.exists():  # unreadable: a damaged cache, rebuilt from scratch
                shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            counts = build_source(source, tokenizer, heldout_percent, enable_thinking, tmp)
            meta = {"format": CACHE_FORMAT, "key": key, "source": source.spec, "mask": source.kind == "jsonl", **counts}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            os.rename(tmp, folder)
        except OSError as e:
            raise WriteFailed(f"cannot write the token cache {folder} ({io_reason(e)})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        cached = read_cache(folder)
    if cached is None:
        raise OrthrusError(f"the token cache {folder} is missing or unreadable")
    return TokenizedSource(source, key, *cached)


def remove_stale_builds(cache_root: Path) -> None:
    """Deletes `.tmp-*` folders that killed runs left behind (only the process that builds calls this)."""
    if cache_root.is_dir():
        for tmp in cache_root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def concatenate(arrays: list[DocArrays]) -> DocArrays:
    """Several DocArrays as one (copies; for small data such as held-out sets)."""
    tokens = np.concatenate([np.asarray(a.stream()) for a in arrays]) if arrays else np.zeros(0, np.uint32)
    lengths = np.concatenate([a.lengths for a in arrays]) if arrays else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    mask = None
    if any(a.mask is not None for a in arrays):
        mask = np.concatenate([np.asarray(a.mask[: a.num_tokens]) if a.mask is not None else np.ones(a.num_tokens, np.uint8)
                               for a in arrays])
    return DocArrays(tokens, offsets, mask)


def documents_from_lists(docs: list[list[int]], masks: list[list[int]] | None = None) -> DocArrays:
    """DocArrays of token lists (self-distillation sequences, tests)."""
    lengths = [len(d) for d in docs]
    tokens = np.asarray([t for d in docs for t in d], dtype=np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    mask = None if masks is None else np.asarray([m for ms in masks for m in ms], dtype=np.uint8)
    return DocArrays(tokens, offsets, mask)


__all__ = ["DocArrays", "TokenizedSource", "tokenize_source", "tokenizer_fingerprint", "source_key", "end_of_text_id",
           "read_cache", "remove_stale_builds", "concatenate", "documents_from_lists", "Document"]
