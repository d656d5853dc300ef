"""One preallocated KV cache shared by both views (Orthrus §3: "O(1) cache overhead").

Layout: per layer, one key and one value tensor of shape (B, Hkv, S, D), S = capacity (separate
tensors per layer, so that training can keep one layer's keys for its backward pass while the
next layer writes its own).
Each row b of the batch has its own length L_b (`lengths`, a (B,) tensor on the cache's device):
its entries 0 … L_b-1 are valid. A forward over a block of T new tokens writes row b's K/V into
slots L_b … L_b+T-1 (both views do: attention then reads one contiguous range per row). The AR
view keeps them by advancing every length by T; the diffusion view leaves the lengths alone, so
its block is simply overwritten by the next write. Rolling back after a rejected draft is a
length change per row — no copy, nothing freed, nothing zeroed: slots at or past L_b are hidden
by the attention mask (or the kernel's `lengths`), never relied on being zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import OrthrusError


class KVCache:
    """Preallocated keys/values for `num_layers` layers and `batch_size` rows of at most `max_len` tokens each."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if max_len < 1:
            raise OrthrusError(f"KV cache capacity must be at least 1 token, got {max_len}")
        if batch_size < 1:
            raise OrthrusError(f"KV cache batch size must be at least 1, got {batch_size}")
        shape = (batch_size, num_kv_heads, max_len, head_dim)  # (B, Hkv, S, D)
        self._hold(tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)),  # one per layer
                   tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)),
                   torch.zeros(batch_size, dtype=torch.long, device=device))  # lengths (B,): L_b, valid entries of row b

    @classmethod
    def from_tensors(cls, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor], lengths: torch.Tensor) -> KVCache:
        """A cache made of existing tensors, no copy: per-layer keys and values (B, Hkv, S, D) and lengths (B,).
        (stepcache.py exports a decode step whose cache is a list of input tensors.)"""
        cache = cls.__new__(cls)
        cache._hold(tuple(k), tuple(v), lengths)
        return cache

    def _hold(self, k: tuple[torch.Tensor, ...], v: tuple[torch.Tensor, ...], lengths: torch.Tensor) -> None:
        """Takes per-layer keys and values (B, Hkv, S, D) and lengths (B,) as this cache's, with `write`'s index tensors."""
        self.k, self.v, self.lengths = k, v, lengths
        B, S = k[0].shape[0], k[0].shape[2]
        self._rows = torch.arange(B, device=lengths.device)[:, None]  # (B, 1): row index for the scatter in `write`
        self._offsets = torch.arange(S, device=lengths.device)  # (S,): 0 … S-1

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def nbytes(self) -> int:
        """Bytes held by the keys and values of every layer."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def slots(self, num_new: int) -> torch.Tensor:
        """(B, T) the slots (and positions) of a block of T new tokens: L_b … L_b+T-1 for row b."""
        return self.lengths[:, None] + self._offsets[:num_new]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores k, v (B, Hkv, T, D) in row b's slots L_b … L_b+T-1 of `layer`; returns that layer's whole
        keys and values (B, Hkv, S, D) — views, no copy; what is valid for each row is the caller's mask's business.
        The engine sizes the cache for every request (make_batch); a write past the capacity is torch's index error."""
        k_all, v_all = self.k[layer], self.v[layer]  # (B, Hkv, S, D)
        slots = self.slots(k.shape[2])  # (B, T)
        # Advanced indices on dims 0 and 2 put their (B, T) shape first: the target is (B, T, Hkv, D).
        k_all[self._rows, :, slots] = k.transpose(1, 2).to(k_all.dtype)
        v_all[self._rows, :, slots] = v.transpose(1, 2).to(v_all.dtype)
        return k_all, v_all

    def advance(self, num_new: int) -> None:
        """Keeps the last `num_new` written tokens of every row (the model calls it after an AR forward)."""
        self.lengths += num_new

    def rollback(self, lengths: torch.Tensor | int) -> None:
        """Keeps only the first lengths[b] entries of each row (after a rejected draft). A length change, no copy.

        A longer length would silently attend to entries never written, so the one guard of the hot path is
        here: checked on the CPU (a new length can only shrink a row); on a GPU, or while compiling, the check
        would stall it for a sync, so it is skipped there.
        """
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=self.lengths.device).expand_as(self.lengths)
        if self.lengths.device.type == "cpu" and not torch.compiler.is_compiling():
            if bool((lengths < 0).any() | (lengths > self.lengths).any()):
                raise OrthrusError(f"cannot roll the KV cache back to {lengths.tolist()}: it holds {self.lengths.tolist()} entries")
        self.lengths.copy_(lengths)

    def keys(self, layer: int, row: int = 0) -> torch.Tensor:
        """Valid keys of `layer` for one row, (Hkv, L_row, D)."""
        return self.k[layer][row, :, : int(self.lengths[row])]

    def values(self, layer: int, row: int = 0) -> torch.Tensor:
        """Valid values of `layer` for one row, (Hkv, L_row, D)."""
        return self.v[layer][row, :, : int(self.lengths[row])]
