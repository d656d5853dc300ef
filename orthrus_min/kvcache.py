"""One preallocated KV cache shared by both views (Orthrus §3: "O(1) cache overhead").

Layout: keys and values of every layer in two tensors (num_layers, B, Hkv, S, D),
S = capacity. `length` (L) entries are valid. A forward over T new tokens writes
their K/V into slots L … L+T-1 (both views do: the kernel then reads one contiguous
range). The AR view keeps them by advancing `length`; the diffusion view leaves
`length` alone, so its block is simply overwritten by the next write. Rolling
back after a rejected draft is a length change — no copy, nothing freed.
"""

from __future__ import annotations

import torch

from .errors import OrthrusError


class KVCache:
    """Preallocated keys/values for `num_layers` layers and `batch_size` sequences of at most `max_len` tokens."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if max_len < 1:
            raise OrthrusError(f"KV cache capacity must be at least 1 token, got {max_len}")
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)  # (layers, B, Hkv, S, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # L: valid entries, the same for every sequence of the batch
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)  # per-layer views (B, Hkv, S, D), made once

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def nbytes(self) -> int:
        """Bytes held by the keys and values."""
        return self.k.numel() * self.k.element_size() * 2

    def check_room(self, num_new: int) -> None:
        """Raises a clear error when `num_new` more tokens would not fit."""
        if self.length + num_new > self.capacity:
            raise OrthrusError(f"KV cache is full: {self.length} cached + {num_new} new tokens > capacity {self.capacity}")

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores k, v (B, Hkv, T, D) in slots L … L+T-1 of `layer`; returns that layer's keys and values for slots 0 … L+T-1."""
        end = self.length + k.shape[2]
        k_all, v_all = self.k_layers[layer], self.v_layers[layer]  # (B, Hkv, S, D)
        k_all[:, :, self.length : end] = k
        v_all[:, :, self.length : end] = v
        return k_all[:, :, :end], v_all[:, :, :end]  # (B, Hkv, L+T, D) views, no copy

    def advance(self, num_new: int) -> None:
        """Commits the last `num_new` written tokens (called by the model after an AR forward)."""
        self.check_room(num_new)
        self.length += num_new

    def rollback(self, length: int) -> None:
        """Keeps only the first `length` entries (after a rejected draft). A length change, no copy."""
        if not 0 <= length <= self.length:
            raise OrthrusError(f"cannot roll the KV cache back to {length}: it holds {self.length} entries")
        self.length = length

    def keys(self, layer: int) -> torch.Tensor:
        """Valid keys of `layer`, (B, Hkv, L, D)."""
        return self.k[layer, :, :, : self.length]

    def values(self, layer: int) -> torch.Tensor:
        """Valid values of `layer`, (B, Hkv, L, D)."""
        return self.v[layer, :, :, : self.length]
