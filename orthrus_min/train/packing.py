"""Rows of `--seq-len` tokens packed from documents, their order per epoch, and the position in that order.

Documents longer than a row are cut into row-sized pieces (pieces of fewer than 2 tokens train
nothing and are dropped). An epoch draws each source's pieces in proportion to the mix weights
(every piece once when no mix is given; a heavier source's pieces repeat, a lighter one's are a
random subset), shuffles them, and packs them first-fit into rows, keeping a few rows open so
short pieces fill the gaps. A row records which piece each token came from: training gives each
piece its own positions (0, 1, …) and lets a token attend only to earlier tokens of its own
piece (docs/ARCHITECTURE.md, "Training").

Every random choice — the epoch's order here, a row's anchor blocks and a step's block size in
distill.py — is a pure function of (seed, epoch, row) or (seed, step). So the data of a run is
fixed by its seed alone: any number of processes, any split into micro-batches and any resume see
the same rows, and the only data state to save is where the run is (epoch, row index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OrthrusError
from .corpus import DocArrays

OPEN_ROWS = 8  # rows kept open for first-fit packing


@dataclass
class Pool:
    """The training documents of one mix component (a source, or the self-distillation sequences)."""

    name: str
    docs: DocArrays
    weight: float | None = None  # share of the epoch's pieces; None: every piece once


def pieces_of(docs: DocArrays, seq_len: int) -> np.ndarray:
    """(P, 3) int64 [document, start, end): each document cut into pieces of at most `seq_len` tokens, each >= 2."""
    lengths = docs.lengths
    counts = -(-lengths // seq_len)  # pieces per document
    doc = np.repeat(np.arange(len(lengths)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    start = (np.arange(len(doc)) - first) * seq_len
    end = np.minimum(start + seq_len, lengths[doc])
    keep = end - start >= 2
    return np.stack([doc[keep], start[keep], end[keep]], axis=1).astype(np.int64)


def pack(lengths: np.ndarray, seq_len: int, open_rows: int = OPEN_ROWS) -> list[list[int]]:
    """Packs items of the given lengths (each <= seq_len), in order, first-fit into rows; returns item indices per row."""
    rows: list[list[int]] = []
    live: list[list] = []  # [room left, item indices]
    for i, length in enumerate(lengths.tolist()):
        for row in live:
            if row[0] >= length:
                row[0] -= length
                row[1].append(i)
                if row[0] < 2:
                    live.remove(row)
                    rows.append(row[1])
                break
        else:
            live.append([seq_len - length, [i]])
            if live[-1][0] < 2:
                rows.append(live.pop()[1])
            elif len(live) > open_rows:
                rows.append(live.pop(0)[1])
    rows += [row[1] for row in live]
    return rows


@dataclass
class EpochPlan:
    """One epoch's rows: row r holds pieces[row_ptr[r]:row_ptr[r+1]], each [pool, document, start, end)."""

    pieces: np.ndarray  # (P, 4) int64
    row_ptr: np.ndarray  # (R+1,) int64

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def row(self, r: int) -> np.ndarray:
        return self.pieces[self.row_ptr[r] : self.row_ptr[r + 1]]


def mix_counts(natural: list[int], weights: list[float | None]) -> list[int]:
    """Pieces per pool in one epoch: the natural count, or the pool's weight share of all pieces."""
    if all(w is None for w in weights):
        return list(natural)
    total, wsum = sum(natural), sum(w for w in weights if w is not None)
    return [n if w is None else int(round(w / wsum * total)) for n, w in zip(natural, weights)]


def plan_epoch(pools: list[Pool], seq_len: int, seed: int, epoch: int, shuffle: bool = True) -> EpochPlan:
    """The rows of `epoch`: each pool's pieces drawn by the mix, shuffled (seed, epoch), packed first-fit."""
    chosen = []
    natural = [pieces_of(p.docs, seq_len) for p in pools]
    for i, (pool, pieces, n) in enumerate(zip(pools, natural, mix_counts([len(x) for x in natural], [p.weight for p in pools]))):
        if n == 0:
            continue
        if len(pieces) == 0:
            raise OrthrusError(f"the data source {pool.name} has no training document of at least 2 tokens")
        rng = np.random.default_rng([seed, epoch, i, 1])
        reps, rest = divmod(n, len(pieces))
        index = np.concatenate([np.arange(len(pieces))] * reps + [np.sort(rng.choice(len(pieces), rest, replace=False))])
        chosen.append(np.concatenate([np.full((len(index), 1), i), pieces[index]], axis=1))
    if not chosen:
        raise OrthrusError("the training data has no document of at least 2 tokens")
    pieces = np.concatenate(chosen)
    if shuffle:
        pieces = pieces[np.random.default_rng([seed, epoch, 2]).permutation(len(pieces))]
    rows = pack(pieces[:, 3] - pieces[:, 2], seq_len)
    order = np.asarray([i for row in rows for i in row], dtype=np.int64)
    row_ptr = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
    return EpochPlan(pieces[order], row_ptr)


class RowStream:
    """The run's rows in order, epoch after epoch; its state is (epoch, index of the next row)."""

    def __init__(self, pools: list[Pool], seq_len: int, seed: int):
        self.pools, self.seq_len, self.seed = pools, seq_len, seed
        self.epoch, self.index = 0, 0
        self._plans: dict[int, EpochPlan] = {}

    def plan(self, epoch: int) -> EpochPlan:
        """The rows of `epoch` (kept for the current and next epoch only)."""
        if epoch not in self._plans:
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
            self._plans[epoch] = plan_epoch(self.pools, self.seq_len, self.seed, epoch)
        return self._plans[epoch]

    def take(self, n: int) -> list[tuple[int, int]]:
        """The next n rows as (epoch, row index); moves the position past them."""
        refs = []
        while len(refs) < n:
            plan = self.plan(self.epoch)
            k = min(n - len(refs), len(plan) - self.index)
            refs += [(self.epoch, r) for r in range(self.index, self.index + k)]
            self.index += k
            if self.index == len(plan):
                self.epoch, self.index = self.epoch + 1, 0
        return refs

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def row(self, ref: tuple[int, int]) -> np.ndarray:
        """The pieces of one row."""
        return self.plan(ref[0]).row(ref[1])


@dataclass
class Rows:
    """A batch of packed rows as tensors, all (B, N): token ids, the piece of each token (padding: one piece of
    its own), the position inside its piece, and whether the token is real and carries loss."""

    ids: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    loss: torch.Tensor  # bool: a trained token (as a prediction target)
    real: torch.Tensor  # bool: not padding
    refs: list[tuple[int, int]]

    @property
    def single_document(self) -> bool:
        """True when every row is one unpadded piece (then the plain causal mask and positions are right)."""
        return bool((self.doc == 0).all())


def make_rows(pools: list[Pool], pieces_per_row: list[np.ndarray], seq_len: int, pad_id: int,
              refs: list[tuple[int, int]] | None = None) -> Rows:
    """Tensors of rows given as arrays of [pool, document, start, end) pieces, right-padded to seq_len."""
    B, N = len(pieces_per_row), seq_len
    ids = np.full((B, N), pad_id, dtype=np.int64)
    doc = np.zeros((B, N), dtype=np.int64)
    pos = np.zeros((B, N), dtype=np.int64)
    loss = np.zeros((B, N), dtype=bool)
    real = np.zeros((B, N), dtype=bool)
    for b, pieces in enumerate(pieces_per_row):
        t = 0
        for j, (pool, d, start, end) in enumerate(pieces.tolist()):
            n = end - start
            docs = pools[pool].docs
            ids[b, t : t + n] = docs.tokens_of(d, start, end)
            loss[b, t : t + n] = docs.mask_of(d, start, end)
            doc[b, t : t + n] = j
            pos[b, t : t + n] = np.arange(n)
            t += n
        real[b, :t] = True
        doc[b, t:] = len(pieces)
        pos[b, t:] = np.arange(N - t)
    as_t = torch.from_numpy
    return Rows(as_t(ids), as_t(doc), as_t(pos), as_t(loss & real), as_t(real), refs or [])


def rows_of(stream: RowStream, refs: list[tuple[int, int]], pad_id: int) -> Rows:
    """The tensors of the rows `refs` of a stream."""
    return make_rows(stream.pools, [stream.row(r) for r in refs], stream.seq_len, pad_id, refs)


def split_for_rank(refs: list, rank: int, world: int, micro_batch: int) -> list[list]:
    """This process's share of a step's rows (a contiguous slice), cut into micro-batches of `micro_batch` rows."""
    per_rank = len(refs) // world
    mine = refs[rank * per_rank : (rank + 1) * per_rank]
    return [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]


__all__ = ["Pool", "pieces_of", "pack", "EpochPlan", "plan_epoch", "mix_counts", "RowStream", "Rows", "make_rows", "rows_of",
           "split_for_rank"]
