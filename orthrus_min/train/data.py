"""A stage's data, ready to train on: sources tokenized (once, by rank 0), mixed into pools, held-out sets apart.

The mix: `--mix 5,3,2` gives each `--data` source that share of an epoch's pieces (packing.py);
without it every piece appears once per epoch. `--self-distill N` adds a pool of N sequences
written by the base model itself, with the share `--self-distill-fraction` (the other sources
share the rest in their mix, or in proportion to their size).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OrthrusError
from ..files import write_atomically
from .corpus import DocArrays, TokenizedSource, remove_stale_builds, source_key, tokenize_source, tokenizer_fingerprint
from .dist import Dist
from .packing import Pool, pieces_of
from .sources import Source, resolve_sources


@dataclass
class StageData:
    """The sources of a stage, their cache keys, and (after `load`) their tokens."""

    sources: list[Source]
    keys: list[str]
    tokenizer_hash: str
    tokenized: list[TokenizedSource] | None = None

    @property
    def heldout(self) -> list[DocArrays]:
        return [t.heldout for t in self.tokenized]


def describe_sources(specs: list[str], pattern: str, tokenizer, heldout_percent: float, enable_thinking: bool | None,
                     mix: list[float] | None, warn=None) -> StageData:
    """Finds the sources and computes their cache keys (reads every file once; tokenizes nothing). warn: told about
    skipped binary files."""
    sources = resolve_sources(specs, pattern, warn)
    if mix is not None and len(mix) != len(sources):
        raise OrthrusError(f"--mix has {len(mix)} weights for {len(sources)} --data sources; give one per source")
    tok_hash = tokenizer_fingerprint(tokenizer)
    keys = [source_key(s, tok_hash, heldout_percent, enable_thinking) for s in sources]
    return StageData(sources, keys, tok_hash)


def load(data: StageData, tokenizer, heldout_percent: float, enable_thinking: bool | None, cache_root: Path, dist: Dist,
         say=print) -> StageData:
    """Tokenizes the sources that are not cached yet (rank 0), then every process reads the caches."""
    if dist.is_main:
        remove_stale_builds(cache_root)
        data.tokenized = [tokenize_source(s, tokenizer, heldout_percent, enable_thinking, cache_root, data.tokenizer_hash,
                                          build=True, log=say) for s in data.sources]
    dist.barrier()
    if not dist.is_main:
        data.tokenized = [tokenize_source(s, tokenizer, heldout_percent, enable_thinking, cache_root, data.tokenizer_hash,
                                          build=False) for s in data.sources]
    if sum(len(t.train) for t in data.tokenized) == 0:
        raise OrthrusError("every document went to the held-out split; lower --heldout-percent or add data")
    return data


def training_pools(data: StageData, seq_len: int, mix: list[float] | None, extra: DocArrays | None = None,
                   extra_fraction: float = 0.0) -> list[Pool]:
    """The pools of the training mix: one per source (weights from --mix), plus the self-distillation pool."""
    pools = [Pool(t.source.spec, t.train, None if mix is None else float(w))
             for t, w in zip(data.tokenized, mix or [None] * len(data.tokenized))]
    if extra is None:
        return pools
    natural = [len(pieces_of(p.docs, seq_len)) for p in pools]
    shares = [p.weight for p in pools] if mix is not None else natural
    total = sum(shares)
    for p, share in zip(pools, shares):
        p.weight = (1 - extra_fraction) * share / total if total else 0.0
    return pools + [Pool("self-distillation", extra, extra_fraction)]


def self_distill_key(model_hash: str, data_keys: list[str], count: int, prompt_len: int, seq_len: int, seed: int) -> str:
    """The cache key of --self-distill sequences: the model, the data, and how they were made."""
    return hashlib.sha256(repr((model_hash, data_keys, count, prompt_len, seq_len, seed)).encode()).hexdigest()


def self_distill_docs(path: Path, make, dist: Dist) -> DocArrays:
    """The self-distillation sequences cached at `path` (.npy, (S, seq_len)); rank 0 makes them when missing."""
    if dist.is_main and not path.exists():
        sequences = make().numpy().astype(np.uint32)  # (S, seq_len)
        write_atomically(path, lambda f: np.save(f, sequences), "--out")  # a full disk: one line, no half file
    dist.barrier()
    array = np.load(path, mmap_mode="r")
    S, T = array.shape
    return DocArrays(array.reshape(-1), np.arange(0, S * T + 1, T, dtype=np.int64), None)


FINGERPRINT_SAMPLES = 16  # 64 KiB samples per weight file


def model_fingerprint(folder: Path) -> str:
    """An identity of a checkpoint folder that costs about 1 MiB of reading per weight file: config.json, and each
    safetensors file's name, size, header and 16 samples of 64 KiB spread over it (other weights differ in them)."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for i in range(FINGERPRINT_SAMPLES):
                fh.seek(size * i // FINGERPRINT_SAMPLES)
                h.update(fh.read(1 << 16))
    return h.hexdigest()


__all__ = ["StageData", "describe_sources", "load", "training_pools", "self_distill_key", "self_distill_docs", "model_fingerprint"]
