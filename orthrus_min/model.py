"""Qwen3 with two attention views over one KV cache: the Orthrus network.

Mirrors Hugging Face's `transformers/models/qwen3/modeling_qwen3.py` (module and
parameter names are the same, so checkpoints load with a strict name check) and
adds the diffusion view of Orthrus (arXiv 2605.12825, §3): a second set of
attention projections `*_proj_diff` / `*_norm_diff` per layer.

Read top to bottom: RMSNorm -> RoPE -> attention (which keys each query sees, and
how it is computed) -> the attention layer with both views -> MLP -> decoder layer
-> model -> the causal LM. The config is config.py's `Qwen3Config`; loading and
saving checkpoints is checkpoint.py.

The two views differ in exactly three things (see `Qwen3Attention.forward`):
  * which projections make q, k, v and the output   (`*_proj` or `*_proj_diff`)
  * the mask inside the block of new tokens         (causal or bidirectional)
  * whether the block's K/V stay in the cache       (AR: yes; diffusion: no)

Shape vocabulary: B batch, T new tokens in this call, H query heads, Hkv KV
heads, D head_dim, L tokens already in the cache, S cache slots (capacity),
C hidden size, V vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import NO_DIFFUSION_VIEW, VIEWS, Qwen3Config
from .errors import OrthrusError
from .invariant import Linear, additive_mask, batch_invariant_now, invariant_attention, set_batch_invariant
from .kvcache import KVCache

ATTN_BACKENDS = ("torch", "triton")


def building_on_meta() -> bool:
    """Whether modules are being built on the `meta` device (checkpoint.py, before reading every tensor into place).
    There nothing is initialised: torch's random init on `meta` imports the compiler (seconds, for nothing)."""
    return torch.get_default_device().type == "meta"


# --------------------------------------------------------------------------- norm and positions


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 like Hugging Face's Qwen3RMSNorm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, x.shape[-1:], self.weight, eps=self.eps)  # one fused op on the hot path
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotate-half RoPE for every position, computed once."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.max_positions = config.max_position_embeddings
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        if not building_on_meta():  # on `meta` the loader builds them once the device is known
            self.build(None)

    def build(self, device: torch.device | str | None) -> None:
        """(Re)computes the tables on `device` in fp32 (needed after building the model on `meta`)."""
        D = self.head_dim
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))  # (D/2,)
        positions = torch.arange(self.max_positions, device=device).float()  # (P,)
        freqs = torch.outer(positions, inv_freq)  # (P, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (P, D)
        self.cos, self.sin = angles.cos(), angles.sin()

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for position_ids (B, T), each (B, T, D) in `dtype`."""
        return self.cos[position_ids].to(dtype), self.sin[position_ids].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (non-interleaved RoPE)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x (B, heads, T, D) by the angles of its positions; cos/sin are (B, T, D) (or (T, D), shared by the batch)."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # (B, 1, T, D): the same angles for every head
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------- attention: who sees what, and how


def block_mask(lengths: torch.Tensor, T: int, S: int, causal: bool) -> torch.Tensor:
    """Which of S cache slots each of T block queries sees, per row: (B, 1, T, S) bool, True = visible.

    Row b's block sits in slots L_b … L_b+T-1 right after its L_b cached entries, so query i
    sees slots < L_b + i + 1 (causal: the prefix and the block up to itself) or < L_b + T
    (bidirectional: the prefix and the whole block). Slots past that — another row's longer
    history, rejected drafts, never-written memory — are hidden.
    """
    last = torch.arange(1, T + 1, device=lengths.device) if causal else torch.full((T,), T, device=lengths.device)  # (T,)
    limit = lengths[:, None] + last  # (B, T): slots below this are visible to query i
    return (torch.arange(S, device=lengths.device) < limit[:, :, None]).unsqueeze(1)  # (B, 1, T, S)


@dataclass(frozen=True)
class AttentionPlan:
    """How every layer of one forward attends (chosen once, by `plan_attention`; applied by `attention`)."""

    causal: bool  # inside the block: causal (AR view) or bidirectional (diffusion view)
    mask: torch.Tensor | None = None  # (B|1, 1, T, S): bool (True = visible), or additive scores when invariant
    lengths: torch.Tensor | None = None  # (B,) cached entries per row, for the kernel (None: S - T)
    kernel: Callable | None = None  # triton_attn.block_attention: it applies `block_mask`'s rule itself
    invariant: bool = False  # batch-invariant attention (invariant.py) instead of SDPA


def plan_attention(causal: bool, T: int, S: int, lengths: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   backend: str = "torch", invariant: bool = False, device: torch.device | None = None) -> AttentionPlan:
    """The one place that decides how a block of T queries attends to S keys.

    Which keys: `mask` (B|1, 1, T, S) if given (training's dual pass); else the cache's rule
    (`block_mask`) for rows that hold `lengths` (B,) entries before the block — without lengths
    and with S > T, S - T for every row; else (no cache) the block alone, causal or not.
    How: the Triton kernel when `backend` is "triton" and the keys follow the cache's rule (it
    reads only each row's keys; blocks of up to its MAX_BLOCK queries, or a causal block in pieces
    when batch-invariant); else `invariant_attention` when `invariant`; else PyTorch's SDPA.
    """
    if mask is None and (lengths is not None or S != T or invariant):  # the cache's rule
        if backend == "triton":
            from . import triton_attn  # on first use: Triton is optional, and reads TRITON_INTERPRET at import

            if T <= triton_attn.MAX_BLOCK or (causal and invariant):
                return AttentionPlan(causal, lengths=lengths, kernel=triton_attn.block_attention)
        if lengths is None:
            lengths = torch.full((1,), S - T, device=device)  # (1,): the same prefix for every row
        mask = block_mask(lengths, T, S, causal)  # (B|1, 1, T, S)
    if invariant:
        return AttentionPlan(causal, mask=additive_mask(mask), invariant=True)  # once for all layers
    return AttentionPlan(causal, mask=mask)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """Softmax attention of q (B, H, T, D) over k, v (B, Hkv, S, D) as `plan` says -> (B, H, T, D)."""
    if plan.kernel is not None:
        return plan.kernel(q, k, v, plan.causal, plan.lengths)
    if plan.invariant:
        return invariant_attention(q, k, v, plan.mask)
    is_causal = plan.mask is None and plan.causal and q.shape[2] > 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, is_causal=is_causal, enable_gqa=True)


class Qwen3Attention(nn.Module):
    """Grouped-query attention with per-head q/k RMSNorm; with a diffusion view when the config has one."""

    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        C, H, Hkv, D = config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = Linear(C, H * D)
        self.k_proj = Linear(C, Hkv * D)
        self.v_proj = Linear(C, Hkv * D)
        self.o_proj = Linear(H * D, C)
        self.q_norm = RMSNorm(D, config.rms_norm_eps)
        self.k_norm = RMSNorm(D, config.rms_norm_eps)
        if config.has_diffusion_view:  # Orthrus: the diffusion view's own attention weights
            self.q_proj_diff = Linear(C, H * D)
            self.k_proj_diff = Linear(C, Hkv * D)
            self.v_proj_diff = Linear(C, Hkv * D)
            self.o_proj_diff = Linear(H * D, C)
            self.q_norm_diff = RMSNorm(D, config.rms_norm_eps)
            self.k_norm_diff = RMSNorm(D, config.rms_norm_eps)

    def add_diffusion_view_from_ar(self) -> None:
        """Creates the `*_diff` projections and norms as copies of their AR twins (the paper's initialisation)."""
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            setattr(self, f"{name}_diff", copy.deepcopy(getattr(self, name)))  # same weights, dtype and device

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: str):
        """q (B, H, T, D), k and v (B, Hkv, T, D) of x (B, T, C) with the chosen view's projections, RoPE applied."""
        if view == "ar":
            q_proj, k_proj, v_proj, q_norm, k_norm = self.q_proj, self.k_proj, self.v_proj, self.q_norm, self.k_norm
        else:
            q_proj, k_proj, v_proj = self.q_proj_diff, self.k_proj_diff, self.v_proj_diff
            q_norm, k_norm = self.q_norm_diff, self.k_norm_diff
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = q_norm(q_proj(x).view(B, T, H, D)).transpose(1, 2)  # (B, H, T, D)
        k = k_norm(k_proj(x).view(B, T, Hkv, D)).transpose(1, 2)  # (B, Hkv, T, D)
        v = v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, out: torch.Tensor, view: str) -> torch.Tensor:
        """The chosen view's output projection of attention output (B, H, T, D) -> (B, T, C)."""
        B, H, T, D = out.shape
        o_proj = self.o_proj if view == "ar" else self.o_proj_diff
        return o_proj(out.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, view: str,
                plan: AttentionPlan) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, writes the block's K/V into each row's slots L_b … L_b+T-1."""
        q, k, v = self.project(x, cos, sin, view)  # the view picks the weights ...
        if cache is not None:
            # Both views put the block right after each row's prefix; only the AR view's stay (the model
            # advances the cache lengths after an AR forward), the diffusion view's are overwritten later.
            k, v = cache.write(self.layer_idx, k, v)  # (B, Hkv, S, D): the whole cache of this layer
        out = attention(q, k, v, plan)  # ... and the mask (the plan is causal for the AR view only)
        return self.output(out, view)  # (B, T, C)


# --------------------------------------------------------------------------- MLP, layer, model


class Qwen3MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Shared by both views."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Qwen3Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Qwen3MLP(config)

    def forward(self, x, cos, sin, cache, view, plan):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, view, plan)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    """Embeddings -> decoder layers -> final norm (HF's `model.` prefix): the trunk both views share."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        V, C = config.vocab_size, config.hidden_size
        self.embed_tokens = nn.Embedding(V, C, _weight=torch.empty(V, C) if building_on_meta() else None)  # (V, C)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.attn_backend = "torch"  # "torch" (SDPA) or "triton" (our kernel): Qwen3ForCausalLM.set_attn_backend
        self.batch_invariant: bool | None = None  # None: auto (see invariant.batch_invariant_now)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, view: str = "ar",
                position_ids: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) after the final norm, for a block input_ids (B, T): see Qwen3ForCausalLM.forward."""
        T = input_ids.shape[1]
        if position_ids is None:
            position_ids = cache.slots(T) if cache is not None else torch.arange(T, device=input_ids.device)[None]  # (B|1, T)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rotary_emb(position_ids, x.dtype)  # (B|1, T, D) each
        S, lengths = (cache.capacity, cache.lengths) if cache is not None else (T, None)
        invariant = batch_invariant_now(self.batch_invariant, x.dtype)
        plan = plan_attention(view == "ar", T, S, lengths, attn_mask, self.attn_backend, invariant, x.device)  # for every layer
        for layer in self.layers:
            x = layer(x, cos, sin, cache, view, plan)  # (B, T, C)
        if cache is not None and view == "ar":
            cache.advance(T)
        return self.norm(x)  # (B, T, C)


class Qwen3ForCausalLM(nn.Module):
    """The whole model: `model` (shared trunk) + `lm_head`; one forward for both views.

    A checkpoint with `model_type: orthrus` has the diffusion view; a plain Qwen3 one is AR-only.
    """

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def attn_backend(self) -> str:
        return self.model.attn_backend

    def set_attn_backend(self, backend: str) -> None:
        """Chooses the attention implementation: "torch" (SDPA) or "triton" (our kernel), see `plan_attention`."""
        if backend not in ATTN_BACKENDS:
            raise OrthrusError(f"attention backend {backend!r} is unknown; choose one of {ATTN_BACKENDS}")
        self.model.attn_backend = backend

    def set_batch_invariant(self, setting: bool | None) -> None:
        """True, False or None (auto): see invariant.py's `set_batch_invariant`."""
        set_batch_invariant(self, setting)

    def set_weight_layout(self) -> None:
        """Stores every weight in the memory layout its matmul reads fastest here (checkpoint.py calls it after loading).
        Values, shapes and names stay: each is the (out, in) matrix of `nn.Linear`. On a CPU in fp32 it is kept
        transposed in memory (column-major), so `x @ weight.T` reads a contiguous (in, out) matrix, which MKL's GEMM
        does faster for a decode step's few rows: 7-15% less CPU time per Orthrus iteration (K = 8), 5-9% per AR
        token, the same tokens (shipped model, one thread). Elsewhere row-major (CPU bf16 GEMMs: 5-8x slower so)."""
        column_major = self.device.type == "cpu" and self.dtype == torch.float32
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):  # the tied lm_head shares the embedding's tensor
                w = module.weight.data  # (out, in); (V, C) for the embedding
                module.weight.data = w.t().contiguous().t() if column_major else w.contiguous()

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        """A preallocated KV cache for `batch_size` rows of up to `max_len` tokens, in the model's dtype and device.

        max_len is at most the model's context, so every cache slot has a position the model knows.
        """
        c = self.config
        if max_len > c.max_position_embeddings:
            raise OrthrusError(f"a KV cache of {max_len} tokens exceeds the model's context of {c.max_position_embeddings} tokens")
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_len, c.head_dim, dtype=self.dtype, device=self.device)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, view: str = "ar",
                position_ids: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                logits_to_keep: int = 0, logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T', V) for a block of tokens input_ids (B, T); one forward for both views.

        With a cache, row b's block sits at positions L_b … L_b+T-1 (L_b = cache.lengths[b]) and
        sees its own cached entries plus the block; without one, positions 0 … T-1 and the block only.
        view="ar": causal inside the block; with a cache, every row's length then grows by T.
        view="diffusion": the draft pass — bidirectional inside the block, reads the cache, leaves
        its lengths unchanged.
        position_ids (B or 1, T) and attn_mask (B or 1, 1, T, S) bool override the positions and the
        visibility rule (training's dual-pass forward; S = cache capacity, or T without a cache).
        logits_to_keep: n > 0 keeps the last n positions (T' = n); logits_at (B,): one position per row (T' = 1).
        The forward has fixed shapes and no host syncs, so torch.compile captures it whole.
        """
        if view not in VIEWS:
            raise OrthrusError(f"view {view!r} is unknown; choose one of {VIEWS}")
        if view == "diffusion" and not self.config.has_diffusion_view:
            raise OrthrusError(NO_DIFFUSION_VIEW)
        x = self.model(input_ids, cache, view, position_ids, attn_mask)  # (B, T, C)
        if logits_at is not None:
            B, _, C = x.shape
            x = x.gather(1, logits_at.view(B, 1, 1).expand(B, 1, C))  # (B, 1, C): one position per row
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, T', C)
        return self.lm_head(x)  # (B, T', V)


# --------------------------------------------------------------------------- adding a diffusion view


@torch.no_grad()
def init_diffusion_view(model: Qwen3ForCausalLM, block_size: int = 32, *, mask_token_id: int) -> Qwen3ForCausalLM:
    """Turns an AR-only Qwen3 into an Orthrus model, in place, and returns it.

    Every layer gets `{q,k,v,o}_proj_diff` and `{q,k}_norm_diff`, initialised as copies of the
    AR weights (the paper's starting point for training, §3); the config becomes
    `model_type: orthrus` with `block_size` (K) and `mask_token_id`. Untrained, the view
    drafts poorly but decoding stays exact: the AR view verifies every token.
    """
    config = model.config
    if config.has_diffusion_view:
        raise OrthrusError("this model already has a diffusion view (model_type 'orthrus')")
    if block_size < 1:
        raise OrthrusError(f"block_size must be >= 1, got {block_size}")
    if not 0 <= mask_token_id < config.vocab_size:
        raise OrthrusError(f"mask_token_id={mask_token_id} is outside the vocabulary (0 … {config.vocab_size - 1})")
    for layer in model.model.layers:
        layer.self_attn.add_diffusion_view_from_ar()
    model.config = replace(config, model_type="orthrus", block_size=block_size, mask_token_id=mask_token_id)
    return model


__all__ = ["Qwen3ForCausalLM", "Qwen3Model", "Qwen3DecoderLayer", "Qwen3Attention", "Qwen3MLP", "RMSNorm", "RotaryEmbedding",
           "apply_rope", "rotate_half", "block_mask", "AttentionPlan", "plan_attention", "attention", "init_diffusion_view",
           "ATTN_BACKENDS"]
