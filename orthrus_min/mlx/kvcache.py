"""One preallocated KV cache shared by both views, in MLX (mirrors `orthrus_min/kvcache.py`).

Layout: per layer, keys and values of shape (B, Hkv, S, D), S = capacity, all allocated once.
`length` (L) entries are valid. A forward over T new tokens writes their K/V into slots
L … L+T-1 (both views do, so attention reads one contiguous range). The AR view keeps them by
advancing `length`; the diffusion view leaves `length` alone, so its block is simply
overwritten by the next write. Rolling back after a rejected draft is a length change.

Why one array per layer and not the torch side's single (layers, B, Hkv, S, D) tensor: MLX
arrays have no writable views, so a write is a slice update of the array it names. Per layer,
that update touches one layer's buffer, which MLX updates in place when nothing else holds it.
"""

from __future__ import annotations

from ..errors import OrthrusError
from .backend import require_mlx

mx = require_mlx()


class KVCache:
    """Preallocated keys/values for `num_layers` layers and `batch_size` sequences of at most `max_len` tokens."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: mx.Dtype = mx.float32):
        if max_len < 1:
            raise OrthrusError(f"KV cache capacity must be at least 1 token, got {max_len}")
        shape = (batch_size, num_kv_heads, max_len, head_dim)  # (B, Hkv, S, D)
        self.k = [mx.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.v = [mx.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        mx.eval(self.k, self.v)  # allocate now, not inside the first forward
        self.length = 0  # L: valid entries, the same for every sequence of the batch

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    @property
    def state(self) -> list[mx.array]:
        """Every layer's keys and values: what the decoders evaluate together with the logits."""
        return self.k + self.v

    def nbytes(self) -> int:
        """Bytes held by the keys and values."""
        return sum(a.nbytes for a in self.state)

    def check_room(self, num_new: int) -> None:
        """Raises a clear error when `num_new` more tokens would not fit."""
        if self.length + num_new > self.capacity:
            raise OrthrusError(f"KV cache is full: {self.length} cached + {num_new} new tokens > capacity {self.capacity}")

    def write(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Stores k, v (B, Hkv, T, D) in slots L … L+T-1 of `layer`; returns that layer's keys and values for slots 0 … L+T-1."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length : end] = k  # (B, Hkv, S, D), slots L … L+T-1 replaced
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, Hkv, L+T, D)

    def advance(self, num_new: int) -> None:
        """Commits the last `num_new` written tokens (called by the model after an AR forward)."""
        self.check_room(num_new)
        self.length += num_new

    def rollback(self, length: int) -> None:
        """Keeps only the first `length` entries (after a rejected draft). A length change, no copy."""
        if not 0 <= length <= self.length:
            raise OrthrusError(f"cannot roll the KV cache back to {length}: it holds {self.length} entries")
        self.length = length

    def keys(self, layer: int) -> mx.array:
        """Valid keys of `layer`, (B, Hkv, L, D)."""
        return self.k[layer][:, :, : self.length]

    def values(self, layer: int) -> mx.array:
        """Valid values of `layer`, (B, Hkv, L, D)."""
        return self.v[layer][:, :, : self.length]
