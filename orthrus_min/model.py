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
MAX_KERNEL_BLOCK = 64  # the Triton kernel takes blocks of at most this many queries; a longer prefill: see `attention`
MAX_POSITIONS = 2**20  # the longest context a config may ask for: the RoPE tables hold every position (1 GiB at head_dim 128)


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
        head_dim = d.get("head_dim") or d["hidden_size"] // num_heads
        positions = d.get("max_position_embeddings", 32768)
        if positions > MAX_POSITIONS:  # refused before the RoPE tables (cos and sin, fp32, positions x head_dim) exist
            gib = 2 * 4 * positions * head_dim / 2**30
            raise OrthrusError(f"config.json: max_position_embeddings={positions} is more than this implementation supports "
                               f"({MAX_POSITIONS} = 2**20 positions): its RoPE tables alone would take {gib:,.0f} GiB")
        known = {f for f in cls.__dataclass_fields__} | {"rope_parameters", "rope_scaling"}
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position_embeddings=positions,
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


# --------------------------------------------------------------------------- batch invariance

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


class Linear(nn.Linear):
    """nn.Linear without bias (same parameter, same checkpoint name) whose output rows do not depend on how many
    rows the input has, when batch-invariant (docs/ARCHITECTURE.md, "What exact means").

    In bf16 the CPU's matmul already gives each row the same bits alone or among others; in fp32 MKL computes
    products of 1 to 3 rows with other kernels than products of 4 or more, so an fp32 input of fewer than
    MIN_ROWS rows is padded with zero rows (what AR decoding of one sequence costs: 4 rows instead of 1).
    """

    batch_invariant: bool | None = None  # set by Qwen3ForCausalLM.set_batch_invariant

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
    block, in a batch, and over a cache of any capacity (docs/ARCHITECTURE.md, "What exact means").

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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, mask: torch.Tensor | None = None,
              lengths: torch.Tensor | None = None, backend: str = "torch", batch_invariant: bool = False) -> torch.Tensor:
    """Softmax attention of a block of T queries, q (B, H, T, D), over keys and values k, v (B, Hkv, S, D).

    mask (B or 1, 1, T, S) bool, True = visible: `block_mask` of a cache, or training's dual-pass mask.
    lengths (B,) without a mask: k, v are a cache whose row b holds L_b entries before the block;
    the visibility rule is `block_mask`'s (backend "triton": our kernel applies it itself, reading
    only the keys a row needs). Neither: L = S - T cached keys, then the block's own (S = T: the
    block alone), causal or all visible.
    batch_invariant: each query's result does not depend on T, B or S (`invariant_attention` on the
    torch backend; the Triton kernel always is, and takes a causal block longer than it allows as
    blocks of MAX_KERNEL_BLOCK queries). Otherwise PyTorch's SDPA (and SDPA for a long block).
    Returns (B, H, T, D).
    """
    B, T, S = q.shape[0], q.shape[2], k.shape[2]
    if mask is None and lengths is None and (S != T or batch_invariant):  # keys = a prefix, then the block: L = S - T
        lengths = torch.full((B,), S - T, device=q.device)
    if mask is None and lengths is not None:
        if backend == "triton" and (T <= MAX_KERNEL_BLOCK or (causal and batch_invariant)):
            from .triton_attn import block_attention

            if T <= MAX_KERNEL_BLOCK:
                return block_attention(q, k, v, causal=causal, lengths=lengths)
            # A long causal block as blocks of MAX_KERNEL_BLOCK queries: the block from query c on is a
            # block after L_b + c cached entries, and sees nothing of the queries after it.
            return torch.cat([block_attention(q[:, :, c : c + MAX_KERNEL_BLOCK], k, v, causal=True, lengths=lengths + c)
                              for c in range(0, T, MAX_KERNEL_BLOCK)], dim=2)  # (B, H, T, D)
        mask = block_mask(lengths, T, S, causal)  # (B, 1, T, S)
    if batch_invariant:
        return invariant_attention(q, k, v, mask)
    is_causal = mask is None and causal and T > 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)


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
        self.attn_backend = "torch"
        self.batch_invariant: bool | None = None  # see batch_invariant_now

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
        out = attention(q, k, v, causal=(view == "ar"), mask=mask, lengths=lengths, backend=self.attn_backend,
                        batch_invariant=batch_invariant_now(self.batch_invariant, q.dtype))  # ... and the mask
        return self.output(out, view)  # (B, T, C)


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
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attn_backend = "torch"
        self.batch_invariant: bool | None = None  # None: auto (see batch_invariant_now)

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

    def set_batch_invariant(self, setting: bool | None) -> None:
        """Whether every token's logits must not depend on the block, the batch or the cache capacity it is
        computed with (docs/ARCHITECTURE.md, "What exact means"): True, False, or None (auto: when decoding in
        bf16 or fp16, see `batch_invariant_now`)."""
        if setting not in (True, False, None):
            raise OrthrusError(f"batch_invariant must be True, False or None (auto), got {setting!r}")
        self.batch_invariant = setting
        for module in self.modules():
            if isinstance(module, (Linear, Qwen3Attention)):
                module.batch_invariant = setting

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
        # The kernel takes a long block only batch-invariantly and causal (in pieces, see `attention`); else the mask.
        invariant = batch_invariant_now(self.batch_invariant, self.dtype)
        kernel_takes_it = T <= MAX_KERNEL_BLOCK or (view == "ar" and invariant)
        if mask is None and cache is not None and (self.attn_backend == "torch" or not kernel_takes_it):
            mask = block_mask(cache.lengths, T, cache.capacity, causal=(view == "ar"))  # (B, 1, T, S), once for all layers
            if invariant:
                mask = additive_mask(mask)  # once for all layers, too
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
    """"auto"/None -> bfloat16 on CUDA, float32 on CPU; otherwise a name from DTYPES or one of their torch.dtypes."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise OrthrusError(f"dtype {dtype} is not supported: the model computes in torch.float32, torch.bfloat16 or torch.float16")
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise OrthrusError(f"dtype {dtype!r} is unknown; choose one of auto, float32, bfloat16, float16")
    return DTYPES[dtype]


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder, or a Hub id `org/name` downloaded (only the files we use) into the HF cache.

    With HF_HUB_OFFLINE=1 (or no network) a Hub id resolves from the cache alone.
    """
    if isinstance(name_or_path, str) and not name_or_path.strip():
        raise OrthrusError("the checkpoint name is empty: give a checkpoint folder or a Hub id like 'org/name'")
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
        check_finite(folder, [name for name, t in state.items() if not bool(torch.isfinite(t).all())])
    model.load_state_dict(state, strict=False, assign=True)  # names were checked above
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # re-tie: assign=True replaced the embedding
    model.model.rotary_emb.build(dev)
    model.eval().requires_grad_(False)
    if attn is None:
        attn = "triton" if dev.type == "cuda" and _triton_available() else "torch"
    model.set_attn_backend(attn)
    return model


def check_finite(folder: Path, broken: list[str]) -> None:
    """The one-line error for a checkpoint whose tensors `broken` hold NaN or inf (nothing when the list is empty)."""
    if broken:
        raise OrthrusError(f"{folder}: {len(broken)} tensor(s) hold NaN or infinite values ({', '.join(broken[:4])}"
                           f"{' …' if len(broken) > 4 else ''}): the checkpoint is corrupt or was saved after training "
                           "diverged (check_weights=False / --no-weight-check loads it anyway)")


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
