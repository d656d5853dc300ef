"""Qwen3 with two attention views over one KV cache: the Orthrus model.

Mirrors Hugging Face's `transformers/models/qwen3/modeling_qwen3.py` (module and
parameter names are the same, so checkpoints load with a strict name check) and
adds the diffusion view of Orthrus (arXiv 2605.12825, §3): a second set of
attention projections `*_proj_diff` / `*_norm_diff` per layer.

Read top to bottom: config -> RMSNorm -> RoPE -> attention (both views) -> MLP
-> decoder layer -> model -> loading from safetensors.

The two views differ in exactly three things (see `Qwen3Attention.forward`):
  * which projections make q, k, v and the output   (`*_proj` or `*_proj_diff`)
  * the mask inside the block of new tokens         (causal or bidirectional)
  * whether the block's K/V stay in the cache       (AR: yes; diffusion: no)

Shape vocabulary: B batch, T new tokens in this call, H query heads, Hkv KV
heads, D head_dim, L tokens already in the cache, C hidden size, V vocabulary.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import OrthrusError
from .kvcache import KVCache

VIEWS = ("ar", "diffusion")
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "orthrus-stdlib-tiny"  # the small model shipped with the package
ATTN_BACKENDS = ("torch", "triton")
MAX_KERNEL_BLOCK = 64  # the Triton kernel takes blocks of at most this many queries; a longer prefill uses SDPA


# --------------------------------------------------------------------------- config


@dataclass
class Qwen3Config:
    """The fields of a Qwen3 / Orthrus `config.json` that the model uses."""

    vocab_size: int
    hidden_size: int  # C
    intermediate_size: int  # MLP width
    num_hidden_layers: int
    num_attention_heads: int  # H
    num_key_value_heads: int  # Hkv; H % Hkv == 0 (grouped-query attention)
    head_dim: int  # D; Qwen3 sets it explicitly (0.6B: C=1024, H=16, D=128)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    eos_token_id: tuple[int, ...] = ()
    model_type: str = "qwen3"  # "qwen3" (AR only) or "orthrus" (AR + diffusion view)
    block_size: int | None = None  # Orthrus: K, tokens drafted per diffusion pass
    mask_token_id: int | None = None  # Orthrus: the [MASK] filling the draft block
    extra: dict = field(default_factory=dict, repr=False)  # every other field, kept for saving

    @property
    def has_diffusion_view(self) -> bool:
        return self.model_type == "orthrus"

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen3Config":
        """Reads a `config.json` dict; unsupported features and wrong types raise `OrthrusError` naming the field."""
        if not isinstance(d, dict):
            raise OrthrusError(f"config.json: expected a JSON object, got a {type(d).__name__}")
        d = dict(d)
        check_config_types(d)
        model_type = d.get("model_type")
        if model_type not in ("qwen3", "orthrus"):
            raise OrthrusError(f"config.json: model_type is {model_type!r}; expected 'qwen3' or 'orthrus'")
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        for name in required:
            if d.get(name) is None:
                raise OrthrusError(f"config.json: required field '{name}' is missing")
        if d.get("attention_bias"):
            raise OrthrusError("config.json: attention_bias=true is not supported (Qwen3 has no attention bias)")
        if d.get("hidden_act", "silu") != "silu":
            raise OrthrusError(f"config.json: hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
        if d.get("use_sliding_window"):
            raise OrthrusError("config.json: use_sliding_window=true is not supported (full attention only)")
        layer_types = d.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            raise OrthrusError(f"config.json: layer_types {sorted(set(layer_types))} is not supported (full_attention only)")

        # RoPE base: `rope_theta` (older files) or `rope_parameters.rope_theta` (newer ones).
        rope_theta = d.get("rope_theta", 10000.0)
        for key in ("rope_parameters", "rope_scaling"):
            params = d.get(key)
            if not params:
                continue
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type != "default":
                raise OrthrusError(f"config.json: {key}.rope_type={rope_type!r} is not supported (only 'default' RoPE)")
            rope_theta = params.get("rope_theta", rope_theta)

        eos = d.get("eos_token_id")
        eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
        num_heads = d["num_attention_heads"]
        num_kv_heads = d.get("num_key_value_heads") or num_heads
        if num_heads % num_kv_heads:
            raise OrthrusError(f"config.json: num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv_heads}")
        known = {f for f in cls.__dataclass_fields__} | {"rope_parameters", "rope_scaling"}
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // num_heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            eos_token_id=eos,
            model_type=model_type,
            block_size=d.get("block_size"),
            mask_token_id=d.get("mask_token_id"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Qwen3Config":
        """Reads `config.json` from a file path."""
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise OrthrusError(f"{path}: config.json not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OrthrusError(f"{path}: not valid JSON ({e})") from None
        except OSError as e:
            raise OrthrusError(f"{path}: cannot read config.json ({e.strerror})") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        """The config as a `config.json` dict in the Hugging Face layout (Orthrus fields only when present)."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update(self.extra)
        d["eos_token_id"] = list(self.eos_token_id) if len(self.eos_token_id) != 1 else self.eos_token_id[0]
        d["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.block_size is None:
            d.pop("block_size")
        if self.mask_token_id is None:
            d.pop("mask_token_id")
        return d


INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "block_size")  # each >= 1 when present
FLOAT_FIELDS = ("rms_norm_eps", "rope_theta")  # each > 0 when present


def check_config_types(d: dict) -> None:
    """One-line errors for fields of the wrong type or range (a string where a number belongs, say)."""
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    for name in INT_FIELDS:
        x = d.get(name)
        if x is not None and not (is_int(x) and x >= 1):
            raise OrthrusError(f"config.json: field '{name}' must be an integer >= 1, got {x!r}")
    for name in FLOAT_FIELDS:
        x = d.get(name)
        if x is not None and not (isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0):
            raise OrthrusError(f"config.json: field '{name}' must be a number > 0, got {x!r}")
    mask = d.get("mask_token_id")
    if mask is not None and not (is_int(mask) and mask >= 0):
        raise OrthrusError(f"config.json: field 'mask_token_id' must be an integer >= 0, got {mask!r}")
    eos = d.get("eos_token_id")
    if eos is not None and not (is_int(eos) or (isinstance(eos, list) and all(is_int(e) for e in eos))):
        raise OrthrusError(f"config.json: field 'eos_token_id' must be an integer or a list of integers, got {eos!r}")
    if not isinstance(d.get("tie_word_embeddings", False), bool):
        raise OrthrusError(f"config.json: field 'tie_word_embeddings' must be true or false, got {d['tie_word_embeddings']!r}")
    for name in ("rope_parameters", "rope_scaling"):
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise OrthrusError(f"config.json: field '{name}' must be an object, got {d[name]!r}")
    if d.get("layer_types") is not None and not isinstance(d["layer_types"], list):
        raise OrthrusError(f"config.json: field 'layer_types' must be a list, got {d['layer_types']!r}")


# --------------------------------------------------------------------------- layers


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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, mask: torch.Tensor | None = None,
              lengths: torch.Tensor | None = None, backend: str = "torch") -> torch.Tensor:
    """Softmax attention of a block of T queries, q (B, H, T, D), over keys and values k, v (B, Hkv, S, D).

    mask (B or 1, 1, T, S) bool, True = visible: `block_mask` of a cache, or training's dual-pass mask.
    lengths (B,) without a mask: k, v are a cache whose row b holds L_b entries before the block;
    the visibility rule is `block_mask`'s (backend "triton": our kernel applies it itself, reading
    only the keys a row needs). Neither: L = S - T cached keys, then the block's own (S = T: the
    block alone), causal or all visible.
    Returns (B, H, T, D).
    """
    if mask is None and lengths is None and k.shape[2] != q.shape[2]:  # keys = a prefix, then the block: L = S - T for every row
        lengths = torch.full((q.shape[0],), k.shape[2] - q.shape[2], device=q.device)
    if mask is None and lengths is not None:
        if backend == "triton":
            from .triton_attn import block_attention

            return block_attention(q, k, v, causal=causal, lengths=lengths)
        mask = block_mask(lengths, q.shape[2], k.shape[2], causal)  # (B, 1, T, S)
    is_causal = mask is None and causal and q.shape[2] > 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)


class Qwen3Attention(nn.Module):
    """Grouped-query attention with per-head q/k RMSNorm; with a diffusion view when the config has one."""

    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        C, H, Hkv, D = config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, Hkv * D, bias=False)
        self.v_proj = nn.Linear(C, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        self.q_norm = RMSNorm(D, config.rms_norm_eps)
        self.k_norm = RMSNorm(D, config.rms_norm_eps)
        if config.has_diffusion_view:  # Orthrus: the diffusion view's own attention weights
            self.q_proj_diff = nn.Linear(C, H * D, bias=False)
            self.k_proj_diff = nn.Linear(C, Hkv * D, bias=False)
            self.v_proj_diff = nn.Linear(C, Hkv * D, bias=False)
            self.o_proj_diff = nn.Linear(H * D, C, bias=False)
            self.q_norm_diff = RMSNorm(D, config.rms_norm_eps)
            self.k_norm_diff = RMSNorm(D, config.rms_norm_eps)
        self.attn_backend = "torch"

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
                mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, writes the block's K/V into each row's slots L_b … L_b+T-1."""
        q, k, v = self.project(x, cos, sin, view)  # the view picks the weights ...
        lengths = None
        if cache is not None:
            # Both views put the block right after each row's prefix; only the AR view's stay (the model
            # advances the cache lengths after an AR forward), the diffusion view's are overwritten later.
            k, v = cache.write(self.layer_idx, k, v)  # (B, Hkv, S, D): the whole cache of this layer
            lengths = cache.lengths
        out = attention(q, k, v, causal=(view == "ar"), mask=mask, lengths=lengths, backend=self.attn_backend)  # ... and the mask
        return self.output(out, view)  # (B, T, C)


class Qwen3MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Shared by both views."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

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

    def forward(self, x, cos, sin, cache, view, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, view, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    """Embeddings -> decoder layers -> final norm (HF's `model.` prefix)."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)


class Qwen3ForCausalLM(nn.Module):
    """The whole model: `model` (shared trunk) + `lm_head`; one forward for both views.

    A checkpoint with `model_type: orthrus` has the diffusion view; a plain Qwen3 one is AR-only.
    """

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attn_backend = "torch"

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def set_attn_backend(self, backend: str) -> None:
        """Chooses the attention implementation of every layer: "torch" (SDPA) or "triton" (our kernel)."""
        if backend not in ATTN_BACKENDS:
            raise OrthrusError(f"attention backend {backend!r} is unknown; choose one of {ATTN_BACKENDS}")
        self.attn_backend = backend  # the model builds the SDPA mask only for the torch backend (and long prefills)
        for layer in self.model.layers:
            layer.self_attn.attn_backend = backend

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
                logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        """Logits (B, T', V) for a block of tokens input_ids (B, T); one forward for both views.

        With a cache, row b's block sits at positions L_b … L_b+T-1 (L_b = cache.lengths[b]) and
        sees its own cached entries plus the block; without one, positions 0 … T-1 and the block only.
        view="ar": causal inside the block; with a cache, every row's length then grows by T.
        view="diffusion": the draft pass — bidirectional inside the block, reads the cache, leaves
        its lengths unchanged.
        position_ids (B or 1, T) and attn_mask (B or 1, 1, T, S) bool override the positions and the
        visibility rule (training's dual-pass forward; S = cache capacity, or T without a cache).
        logits_to_keep: an int n > 0 keeps the last n positions; a (B,) tensor keeps one index per row.
        The forward has fixed shapes and no host syncs, so torch.compile captures it whole.
        """
        if view not in VIEWS:
            raise OrthrusError(f"view {view!r} is unknown; choose one of {VIEWS}")
        if view == "diffusion" and not self.config.has_diffusion_view:
            raise OrthrusError(NO_DIFFUSION_VIEW)
        B, T = input_ids.shape
        if cache is None and T > self.config.max_position_embeddings:
            raise OrthrusError(f"{T} positions exceed the model's context (max_position_embeddings={self.config.max_position_embeddings})")
        if cache is not None and cache.lengths.device.type == "cpu" and not torch.compiler.is_compiling():
            cache.check_room(T)  # a clear error instead of an index error (free on the CPU; would stall a GPU)
        if position_ids is None:
            position_ids = cache.slots(T) if cache is not None else torch.arange(T, device=input_ids.device)[None]  # (B|1, T)
        mask = attn_mask
        if mask is None and cache is not None and (self.attn_backend == "torch" or T > MAX_KERNEL_BLOCK):
            mask = block_mask(cache.lengths, T, cache.capacity, causal=(view == "ar"))  # (B, 1, T, S), once for all layers
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)  # (B|1, T, D) each
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache, view, mask)  # (B, T, C)
        if isinstance(logits_to_keep, torch.Tensor):
            x = x.gather(1, logits_to_keep.view(B, 1, 1).expand(B, 1, x.shape[-1]))  # (B, 1, C): one position per row
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, T', C)
        logits = self.lm_head(self.model.norm(x))  # (B, T', V)
        if cache is not None and view == "ar":
            cache.advance(T)
        return logits


# --------------------------------------------------------------------------- the diffusion view: checking for one, adding one

NO_DIFFUSION_VIEW = ("this checkpoint has no diffusion view (model_type 'qwen3', an AR-only Qwen3): decode it with --mode ar "
                     "(generate_ar), or add one with orthrus_min.model.init_diffusion_view(model, block_size, mask_token_id) and train it")


def require_diffusion_view(config: Qwen3Config) -> None:
    """Raises a one-line `OrthrusError` unless the config can draft: a diffusion view and a valid `mask_token_id`."""
    if not config.has_diffusion_view:
        raise OrthrusError(NO_DIFFUSION_VIEW)
    if config.mask_token_id is None:
        raise OrthrusError("config.json has model_type 'orthrus' but no mask_token_id: the diffusion view fills its draft "
                           "block with that token; add the id it was trained with to config.json")
    if not 0 <= config.mask_token_id < config.vocab_size:
        raise OrthrusError(f"config.json: mask_token_id={config.mask_token_id} is outside the vocabulary (0 … {config.vocab_size - 1})")


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


# --------------------------------------------------------------------------- loading

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
CHECKPOINT_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                       "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> cuda if available else cpu; checks that the asked device exists."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise OrthrusError(f"device {device!r} is not a valid torch device (try 'cpu', 'cuda' or 'cuda:0')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OrthrusError(f"device {device!r} asked for, but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise OrthrusError(f"device {device!r} is not supported (use 'cpu' or 'cuda')")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto"/None -> bfloat16 on CUDA, float32 on CPU; otherwise a name from DTYPES or a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise OrthrusError(f"dtype {dtype!r} is unknown; choose one of auto, float32, bfloat16, float16")
    return DTYPES[dtype]


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder, or a Hub id `org/name` downloaded (only the files we use) into the HF cache.

    With HF_HUB_OFFLINE=1 (or no network) a Hub id resolves from the cache alone.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise OrthrusError(f"{name}: is a file; --model wants a checkpoint folder or a Hub id like 'org/name'")
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise OrthrusError(f"{name}: no such checkpoint folder (and not a Hub id of the form 'org/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=CHECKPOINT_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, network error: all mean "cannot get it"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OrthrusError(f"{name}: not a local folder, and could not get it from the Hugging Face Hub or its cache ({type(e).__name__}: {reason})") from None


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: the shards listed in `model.safetensors.index.json`, or `model.safetensors`."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise OrthrusError(f"{index}: not a valid safetensors index ({e})") from None
        return [folder / f for f in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise OrthrusError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def load_model(name_or_path: str | os.PathLike, dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto",
               attn: str | None = None, check_weights: bool = True) -> Qwen3ForCausalLM:
    """Loads a Qwen3 or Orthrus checkpoint (folder or Hub id) for inference.

    The model is built on the `meta` device and every tensor is read from the safetensors
    files straight into its parameter (converted to `dtype` on `device`), so no second full
    copy is ever held. Missing, unexpected and mis-shaped tensors are reported by name.
    attn: "torch" or "triton"; None picks triton on CUDA when it is installed, torch otherwise.
    check_weights: refuse a checkpoint with NaN or infinite weights (one pass over the weights
    where they were loaded; pass False to skip it).
    """
    from safetensors import safe_open

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = resolve_checkpoint(name_or_path)
    config = Qwen3Config.from_json(folder / "config.json")
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    expected = {name: p.shape for name, p in model.named_parameters()}  # tied lm_head is not listed
    state, unexpected, misshaped = {}, [], []
    for file in safetensors_files(folder):
        if not file.exists():
            raise OrthrusError(f"{file}: shard listed in the index is missing")
        try:
            with safe_open(file, framework="pt", device=str(dev)) as f:
                for name in f.keys():
                    if name not in expected:
                        if not (name == "lm_head.weight" and config.tie_word_embeddings):
                            unexpected.append(name)
                        continue
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != tuple(expected[name]):
                        misshaped.append(f"{name} has shape {shape}, expected {tuple(expected[name])}")
                        continue
                    state[name] = f.get_tensor(name).to(dt)
        except OrthrusError:
            raise
        except Exception as e:  # truncated or corrupt file
            raise OrthrusError(f"{file}: cannot read safetensors file ({type(e).__name__}: {e})") from None
    missing = sorted(set(expected) - set(state) - {n.split(" ")[0] for n in misshaped})
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:8])}{' …' if len(unexpected) > 8 else ''}")
    if misshaped:
        problems.append("wrong shapes: " + "; ".join(misshaped[:8]))
    if problems:
        raise OrthrusError(f"{folder}: checkpoint does not match config.json — " + " | ".join(problems))
    if check_weights:
        broken = [name for name, t in state.items() if not bool(torch.isfinite(t).all())]
        if broken:
            raise OrthrusError(f"{folder}: {len(broken)} tensor(s) hold NaN or infinite values ({', '.join(broken[:4])}"
                               f"{' …' if len(broken) > 4 else ''}): the checkpoint is corrupt or was saved after training "
                               "diverged (check_weights=False / --no-weight-check loads it anyway)")
    model.load_state_dict(state, strict=False, assign=True)  # names were checked above
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # re-tie: assign=True replaced the embedding
    model.model.rotary_emb.build(dev)
    model.eval().requires_grad_(False)
    if attn is None:
        attn = "triton" if dev.type == "cuda" and _triton_available() else "torch"
    model.set_attn_backend(attn)
    return model


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def save_model(model: Qwen3ForCausalLM, folder: str | os.PathLike) -> None:
    """Writes `config.json` and `model.safetensors` in the Hugging Face / Orthrus layout."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def num_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["Qwen3Config", "Qwen3ForCausalLM", "load_model", "save_model", "init_diffusion_view", "require_diffusion_view", "attention", "apply_rope", "RMSNorm",
           "RotaryEmbedding", "block_mask", "resolve_device", "resolve_dtype", "resolve_checkpoint", "DTYPES", "num_parameters"]
