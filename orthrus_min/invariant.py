"""Batch invariance: a token's logits do not depend, bit for bit, on the block, the batch or the cache capacity
they are computed with (docs/ARCHITECTURE.md, "What exact means").

Without it, Orthrus in bf16 is not exactly AR decoding: a verify pass computes a token inside a block
of K, AR decoding computes it alone, and a matmul or a softmax may add the same numbers in another
order for another shape. Two pieces make every shape give every row the same arithmetic:
  * `Linear`: the projections, whose fp32 CPU matmul treats 1-3 rows differently from 4 or more;
  * `invariant_attention`: attention with matmuls of shapes that do not follow T, B or S.
(The Triton kernel, triton_attn.py, is batch-invariant by construction.) `batch_invariant_now`
says when they are on; `set_batch_invariant` sets it for a whole model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import OrthrusError

MIN_ROWS = 4  # batch-invariant matmuls have at least this many rows (MKL's fp32 GEMM computes 1-3 rows differently)
MIN_KEYS = 16  # ... and at least this many columns (and 1-11 columns differently)
KEY_TILE = 128  # batch-invariant attention: keys per tile of values, so that every matmul over keys has one shape


def batch_invariant_now(setting: bool | None, dtype: torch.dtype) -> bool:
    """Whether a forward in `dtype` runs batch-invariantly: `setting` (a module's `batch_invariant`) when it is True
    or False. None ("auto", the default): when decoding in bf16 or fp16, where it costs little and greedy output
    needs it; not in fp32, where it would slow AR decoding down (docs/ARCHITECTURE.md, "What exact means").
    Decoding is a forward under torch.inference_mode (where the decoders run; training and plain calls keep the
    fused kernels) or a compiled one (only the decoders' steps are compiled; dynamo cannot ask for inference mode)."""
    if setting is None:
        return dtype != torch.float32 and (torch.compiler.is_compiling() or torch.is_inference_mode_enabled())
    return setting


def set_batch_invariant(model: nn.Module, setting: bool | None) -> None:
    """Whether every token's logits of `model` must not depend on the block, the batch or the cache capacity it is
    computed with: True, False, or None (auto: when decoding in bf16 or fp16, see `batch_invariant_now`). Sets it
    on every module that has the setting (the `Linear` layers and the model's attention)."""
    if setting not in (True, False, None):
        raise OrthrusError(f"batch_invariant must be True, False or None (auto), got {setting!r}")
    for module in model.modules():
        if hasattr(module, "batch_invariant"):
            module.batch_invariant = setting


class Linear(nn.Linear):
    """nn.Linear without bias (same parameter, same checkpoint name) whose output rows do not depend on how many
    rows the input has, when batch-invariant.

    In bf16 the CPU's matmul already gives each row the same bits alone or among others; in fp32 MKL computes
    products of 1 to 3 rows with other kernels than products of 4 or more, so an fp32 input of fewer than
    MIN_ROWS rows is padded with zero rows (what AR decoding of one sequence costs: 4 rows instead of 1).
    """

    batch_invariant: bool | None = None  # set by set_batch_invariant

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or not batch_invariant_now(self.batch_invariant, x.dtype):
            return F.linear(x, self.weight)
        rows = x.numel() // x.shape[-1]
        flat = x.reshape(rows, x.shape[-1])  # one matrix of all the rows: a strided (B, T, in) input would be B products of T rows
        if rows < MIN_ROWS:
            flat = F.pad(flat, (0, 0, 0, MIN_ROWS - rows))  # (MIN_ROWS, in)
        return F.linear(flat, self.weight)[:rows].view(*x.shape[:-1], self.out_features)


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """A visibility mask as fp32 scores to add: 0 where visible (True), -inf where hidden; a float mask as it is."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))


def invariant_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention whose arithmetic for each query does not depend on the block size T, the batch B or
    the number of key slots S: a query gives the same bits alone (AR decoding), inside a verify or draft
    block, in a batch, and over a cache of any capacity.

    q (B, H, T, D), k and v (B, Hkv, S, D), mask (B or 1, 1, T, S): bool (True = visible) or
    `additive_mask`'s scores. Computed in fp32, with every matmul of a shape that does not change:
      * per row and KV head, the G = H / Hkv query heads are packed as rows r = g * T + i, at least
        MIN_ROWS of them: scores = (rows, D) @ (D, S), one row per query whatever the number of rows
        (and the same column for a key whatever S, from MIN_KEYS keys on);
      * softmax over the keys: a per-row reduction, to which hidden keys add exact zeros;
      * values in tiles of KEY_TILE keys (the last one padded): partial outputs (rows, KEY_TILE) @
        (KEY_TILE, D), added in key order by `cumsum` (a sequential sum; `sum` picks its order from
        the tensor's shape). Trailing tiles of hidden keys (a larger capacity) add exact zeros.
    Returns (B, H, T, D) in q's dtype.
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    M = G * T  # packed query rows per (row, KV head)
    rows = max(M, MIN_ROWS)
    mask = additive_mask(mask)  # (B|1, 1, T, S)
    qg = F.pad(q.reshape(B, Hkv, M, D).float(), (0, 0, 0, rows - M))  # (B, Hkv, rows, D)
    k, v = k.float(), v.float()
    if S < MIN_KEYS:  # a tiny cache: pad it with hidden keys
        k, v = F.pad(k, (0, 0, 0, MIN_KEYS - S)), F.pad(v, (0, 0, 0, MIN_KEYS - S))
        mask, S = F.pad(mask, (0, MIN_KEYS - S), value=float("-inf")), MIN_KEYS
    pad = -S % KEY_TILE
    n = (S + pad) // KEY_TILE  # key tiles
    scores = qg @ k.transpose(-1, -2)  # (B, Hkv, rows, S)
    logits = torch.add(mask[:, :, None], scores[:, :, :M].view(B, Hkv, G, T, S), alpha=D**-0.5)  # (B, Hkv, G, T, S)
    probs = torch.softmax(logits, dim=-1).view(B, Hkv, M, S)
    if pad or rows > M:
        probs, v = F.pad(probs, (0, pad, 0, rows - M)), F.pad(v, (0, 0, 0, pad))  # (B, Hkv, rows, n * KEY_TILE), (B, Hkv, n * KEY_TILE, D)
    tiles = probs.view(B, Hkv, rows, n, KEY_TILE).transpose(2, 3) @ v.view(B, Hkv, n, KEY_TILE, D)  # (B, Hkv, n, rows, D)
    out = tiles.cumsum(2)[:, :, -1, :M]  # (B, Hkv, M, D): the tiles' sum, in key order
    return out.reshape(B, H, T, D).to(q.dtype)


__all__ = ["batch_invariant_now", "set_batch_invariant", "Linear", "additive_mask", "invariant_attention",
           "MIN_ROWS", "MIN_KEYS", "KEY_TILE"]
