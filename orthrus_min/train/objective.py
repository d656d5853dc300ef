"""The training objectives: next-token cross-entropy (pretraining) and the dual-pass distillation (Orthrus §4).

Both run the model's own forward — the same embedding, layers, attention and head as decoding —
with positions and a visibility mask passed in (`Qwen3ForCausalLM.forward`'s `position_ids` and
`attn_mask`). Packed rows (several documents per row, packing.py) get positions restarting at
each document and a block-diagonal causal mask: no token sees another document.

The dual pass: the AR view reads a row causally (the frozen teacher, no gradient) and leaves its
keys and values in a KV cache exactly as at inference; then one diffusion forward over all anchor
blocks [x_s, MASK, …, MASK] reads that cache. Its mask lets the block anchored at s see the AR
keys of its own document before s — the cache at decode time — and its own block, both ways.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..kvcache import KVCache
from ..model import Qwen3ForCausalLM


class TrainingCache(KVCache):
    """The dual pass's KV cache. The AR pass (no gradient) stores its keys and values in place, as decoding does.
    The diffusion pass, which needs gradients, gets the cached keys with its block appended as a new
    tensor, and the cache itself is left unchanged: autograd never sees a saved tensor change under it, and
    activation checkpointing may run a layer twice. Every row holds the same number of entries here."""

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_grad_enabled():
            return super().write(layer, k, v)
        L = self.filled  # (a Python int: no host sync)
        k_all = torch.cat([self.k[layer][:, :, :L], k.to(self.k[layer].dtype)], dim=2)  # (B, Hkv, L+T, D)
        v_all = torch.cat([self.v[layer][:, :, :L], v.to(self.v[layer].dtype)], dim=2)
        return k_all, v_all

    filled: int = 0


def block_starts(seq_len: int, block_size: int, offset: int) -> torch.Tensor:
    """Start positions s of the blocks [s, s+K) that fit in a sequence when the first starts at `offset`."""
    return torch.arange(offset, seq_len - block_size + 1, block_size)  # (nb,)


def causal_document_mask(doc: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """(B, 1, N, S) bool: query t sees key u <= t of the same document; S = capacity (extra slots hidden) or N."""
    B, N = doc.shape
    t = torch.arange(N, device=doc.device)
    mask = (t[None, :, None] >= t[None, None, :]) & (doc[:, :, None] == doc[:, None, :])  # (B, N, N)
    if capacity is not None and capacity > N:
        mask = F.pad(mask, (0, capacity - N))  # (B, N, S)
    return mask[:, None]


def dual_forward(model: Qwen3ForCausalLM, ids: torch.Tensor, block_size: int, offset: int = 0, *,
                 starts: torch.Tensor | None = None, doc: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                 forward=None):
    """One forward over an AR sequence and its diffusion copy, cut into blocks (the paper's dual-pass mask).

    ids (B, N): the AR view reads them causally (frozen teacher, no gradient), writing their K/V to
    a cache exactly as at inference. The diffusion copy has one block [x_s, MASK, …, MASK] at
    positions s … s+K-1 for every anchor s, all in one diffusion forward over that cache; the mask
    lets a diffusion query of the block anchored at s see the AR keys at positions < s and the
    diffusion keys of its own block only — exactly what it sees at inference, where the AR keys
    are the cache. The same model forward, layers and attention as decoding, only with the
    positions and the mask passed in.

    Anchors: `starts` (nb,) shared by the rows or (B, nb) per row; default every K-th position from
    `offset` (`block_starts`). Packed rows: `doc` (B, N) names each token's document and `pos` (B, N)
    its position inside it; a block then sees only its own document's earlier keys, at positions
    pos[s] … pos[s]+K-1. `forward` calls the model (a DistributedDataParallel wrapper; default model).
    Returns (teacher logits (B, N, V), diffusion logits (B, M, V), starts), M = nb × K;
    diffusion logit j*K + i is the draft for position starts[j] + 1 + i.
    """
    forward = forward or model
    if pos is not None and doc is None:
        doc = torch.zeros_like(ids)
    K = block_size
    B, N = ids.shape
    device = ids.device
    if starts is None:
        starts = block_starts(N, K, offset).to(device)  # (nb,)
    row_starts = starts.expand(B, -1) if starts.dim() == 1 else starts  # (B, nb)
    M = row_starts.shape[1] * K
    block_of = torch.arange(M, device=device) // K  # (M,)
    index = torch.arange(M, device=device) % K  # (M,)
    anchor = row_starts[:, block_of]  # (B, M): the anchor s of each diffusion slot
    diff_ids = torch.full((B, M), model.config.mask_token_id, dtype=ids.dtype, device=device)  # (B, M)
    diff_ids[:, ::K] = ids.gather(1, row_starts)  # each block opens with its real token x_s
    keys = torch.arange(N, device=device)  # (N,)
    sees_ar = keys[None, None, :] < anchor[:, :, None]  # (B, M, N): AR keys before the block
    if doc is not None:
        sees_ar = sees_ar & (doc[:, None, :] == doc.gather(1, anchor)[:, :, None])  # ... of the block's own document
    sees_diff = (block_of[:, None] == block_of[None, :]).expand(B, M, M)  # (B, M, M): own block, both directions
    diff_mask = torch.cat([sees_ar, sees_diff], dim=2)[:, None]  # (B, 1, M, N+M) over the cache's slots
    if pos is None:
        diff_pos = anchor + index  # (B, M): s … s+K-1
        ar_pos, ar_mask = None, None  # the AR pass as at inference: positions 0 … N-1, causal
    else:
        diff_pos = pos.gather(1, anchor) + index  # (B, M): positions inside the document
        ar_pos, ar_mask = pos, causal_document_mask(doc, N + M)  # (B, N), (B, 1, N, N+M)

    c = model.config
    cache = TrainingCache(c.num_hidden_layers, B, c.num_key_value_heads, N + M, c.head_dim, dtype=model.dtype, device=device)
    with torch.no_grad():  # the AR stream: the frozen teacher, and the keys/values the diffusion queries read
        teacher = forward(ids, cache, position_ids=ar_pos, attn_mask=ar_mask)  # (B, N, V)
    cache.filled = N
    student = forward(diff_ids, cache, view="diffusion", position_ids=diff_pos, attn_mask=diff_mask)  # (B, M, V)
    return teacher, student, starts


def block_weights(starts: torch.Tensor, block_size: int, loss: torch.Tensor, doc: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, nb, K-1) which drafts of each block are trained: index i drafts position s+1+i, which must exist,
    lie in the anchor's document and carry loss; padding anchors (valid False) train nothing."""
    B, N = loss.shape
    target = starts[:, :, None] + 1 + torch.arange(block_size - 1, device=starts.device)  # (B, nb, K-1)
    inside = target < N
    t = target.clamp(max=N - 1).flatten(1)  # (B, nb*(K-1))
    same_doc = doc.gather(1, t) == doc.gather(1, starts).repeat_interleave(block_size - 1, dim=1)
    w = inside & (loss.gather(1, t) & same_doc).view_as(target)
    return w if valid is None else w & valid[:, :, None]


def distill_loss(teacher: torch.Tensor, student: torch.Tensor, ids: torch.Tensor, starts: torch.Tensor, block_size: int,
                 kind: str = "kl", position_decay: float = 1.0, weights: torch.Tensor | None = None,
                 normalizer: float | None = None) -> torch.Tensor:
    """Weighted mean over block indices 0 … K-2 of KL(teacher ‖ diffusion view), or of cross-entropy to the data.

    The diffusion logit at block index i of the block starting at s drafts position s+1+i; its
    teacher is the AR logit at position s+i (which predicts the same position).
    starts (nb,) or (B, nb); weights (B, nb, K-1) bool or float (default: all 1) select what is trained.
    position_decay=g < 1 weights index i by g**i: a draft at index i counts only when every
    earlier one is accepted, so near indices matter most for the acceptance length. 1 = the
    paper's uniform mean. normalizer: divide the weighted sum by this instead of the sum of
    weights (the loop passes the weight of the whole global batch, so that micro-batches and
    processes add up to the same gradient as one big batch).
    """
    K = block_size
    B, N = ids.shape
    row_starts = starts.expand(B, -1) if starts.dim() == 1 else starts  # (B, nb)
    nb = row_starts.shape[1]
    idx = (row_starts[:, :, None] + torch.arange(K - 1, device=ids.device)).flatten(1).clamp(max=N - 1)  # (B, nb*(K-1))
    keep = (torch.arange(student.shape[1], device=ids.device) % K) < K - 1  # (M,): drop each block's last index
    s = student[:, keep].float()  # (B, nb*(K-1), V)
    if kind == "ce":
        target = ids.gather(1, (idx + 1).clamp(max=N - 1))  # (B, nb*(K-1))
        per_token = F.cross_entropy(s.flatten(0, 1), target.flatten(), reduction="none").view(s.shape[:2])
    else:
        t = teacher.gather(1, idx[:, :, None].expand(-1, -1, teacher.shape[-1]))  # (B, nb*(K-1), V)
        log_p = t.float().log_softmax(-1)
        per_token = (log_p.exp() * (log_p - s.log_softmax(-1))).sum(-1)  # (B, nb*(K-1))
    decay = position_decay ** torch.arange(K - 1, device=s.device, dtype=s.dtype)  # (K-1,)
    w = decay.repeat(nb)[None].expand(B, -1)  # (B, nb*(K-1))
    if weights is not None:
        w = w * weights.flatten(1).to(s.dtype)
    total = (per_token * w).sum()
    return total / (w.sum() if normalizer is None else normalizer)


def distill_weight(weights: torch.Tensor, block_size: int, position_decay: float) -> float:
    """The sum of a micro-batch's loss weights (block weights times position decay): its share of the normalizer."""
    decay = position_decay ** torch.arange(block_size - 1, dtype=torch.float64)
    return float((weights.double() * decay).sum())


def next_token_weights(loss: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """(B, N-1) bool: position t is trained to predict t+1 when both lie in one document and t+1 carries loss."""
    return loss[:, 1:] & (doc[:, 1:] == doc[:, :-1])


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """Cross-entropy of logits[:, t] against ids[:, t+1], weighted (B, N-1); divided by `normalizer` or the weight sum."""
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    w = weights.flatten().to(per_token.dtype)
    return (per_token * w).sum() / (w.sum() if normalizer is None else normalizer)


def enable_activation_checkpointing(model: Qwen3ForCausalLM) -> None:
    """Recomputes each decoder layer in the backward pass instead of keeping its activations (when gradients
    are on): memory for one layer's activations instead of all of them, for about one more forward."""
    for layer in model.model.layers:
        inner = layer.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False)
            return _inner(*args)

        layer.forward = forward


__all__ = ["TrainingCache", "block_starts", "dual_forward", "causal_document_mask", "block_weights", "distill_loss",
           "distill_weight", "next_token_weights", "next_token_loss", "enable_activation_checkpointing"]
