"""Qwen3 with two attention views over one KV cache, in MLX: the Orthrus model.

Mirrors `orthrus_min/model.py` class for class and parameter name for parameter name, so the
same checkpoints load with the same strict name check and the two files read side by side:
RMSNorm -> RoPE -> attention (both views) -> MLP -> decoder layer -> model, then loading from
safetensors (`mx.load`; the config and checkpoint lookup are config.py's and checkpoint.py's).

The two views differ in exactly three things (see `Qwen3Attention.__call__`):
  * which projections make q, k, v and the output   (`*_proj` or `*_proj_diff`)
  * the mask inside the block of new tokens         (causal or bidirectional)
  * whether the block's K/V stay in the cache       (AR: yes; diffusion: no)

MLX is lazy: the forward only builds the computation; the decoders evaluate it when they need
tokens on the host. Shape vocabulary: B batch, T new tokens in this call, H query heads, Hkv KV
heads, D head_dim, L tokens already in the cache, C hidden size, V vocabulary.
"""

from __future__ import annotations

import os

import numpy as np

from ..checkpoint import check_finite, check_names, resolve_checkpoint, safetensors_files
from ..config import NO_DIFFUSION_VIEW, VIEWS, Qwen3Config
from ..errors import OrthrusError
from .backend import require_mlx, resolve_device, resolve_dtype

mx = require_mlx()  # a one-line OrthrusError naming the extra to install when MLX is missing
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from .kvcache import KVCache  # noqa: E402


# --------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, normalised in fp32 like the torch model's RMSNorm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32:
            return mx.fast.rms_norm(x, self.weight, self.eps)  # one fused op on the hot path
        # bf16 / fp16: normalise in fp32, round to x's dtype, then scale (the torch model's order of rounding).
        return self.weight * mx.fast.rms_norm(x.astype(mx.float32), None, self.eps).astype(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotate-half (non-interleaved) RoPE with the torch model's fp32 frequencies.

    The torch model keeps cos/sin tables of `position * inv_freq`; here `mx.fast.rope` computes
    the same angles on the fly from the same fp32 `inv_freq` (it takes their reciprocals, the
    wavelengths, as `freqs`), so no table of max_position_embeddings rows is held.
    """

    def __init__(self, config: Qwen3Config):
        super().__init__()
        D = config.head_dim
        exponents = np.arange(0, D, 2, dtype=np.int64).astype(np.float32) / np.float32(D)  # (D/2,)
        inv_freq = np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)  # (D/2,) fp32, as in the torch model
        self._wavelengths = mx.array(np.float32(1.0) / inv_freq)  # (D/2,); leading "_": not a parameter
        self.head_dim = D

    def __call__(self, x: mx.array, start: int) -> mx.array:
        """Rotates x (B, heads, T, D) by the angles of positions start … start+T-1."""
        return mx.fast.rope(x, self.head_dim, traditional=False, base=None, scale=1.0, offset=start, freqs=self._wavelengths)


def attention(q: mx.array, k: mx.array, v: mx.array, causal: bool) -> mx.array:
    """Softmax attention of a block of T queries over L cached keys followed by the block's own T keys.

    q: (B, H, T, D); k, v: (B, Hkv, L+T, D) (grouped-query attention is native, no repeat).
    The cached prefix is fully visible; inside the block the mask is causal (AR view) or absent
    (diffusion view: bidirectional). MLX's "causal" mask is aligned to the lower right: query i
    sees keys 0 … L+i, exactly the torch model's `tril(S - T)` mask. Returns (B, H, T, D).
    """
    mask = "causal" if causal and q.shape[2] > 1 else None
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)


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

    def project(self, x: mx.array, rope: RotaryEmbedding, start: int, view: str):
        """q (B, H, T, D), k and v (B, Hkv, T, D) of x (B, T, C) with the chosen view's projections, RoPE applied."""
        if view == "ar":
            q_proj, k_proj, v_proj, q_norm, k_norm = self.q_proj, self.k_proj, self.v_proj, self.q_norm, self.k_norm
        else:
            q_proj, k_proj, v_proj = self.q_proj_diff, self.k_proj_diff, self.v_proj_diff
            q_norm, k_norm = self.q_norm_diff, self.k_norm_diff
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = q_norm(q_proj(x).reshape(B, T, H, D)).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = k_norm(k_proj(x).reshape(B, T, Hkv, D)).transpose(0, 2, 1, 3)  # (B, Hkv, T, D)
        v = v_proj(x).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)  # (B, Hkv, T, D)
        return rope(q, start), rope(k, start), v

    def output(self, out: mx.array, view: str) -> mx.array:
        """The chosen view's output projection of attention output (B, H, T, D) -> (B, T, C)."""
        B, H, T, D = out.shape
        o_proj = self.o_proj if view == "ar" else self.o_proj_diff
        return o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, H * D))  # (B, T, C)

    def __call__(self, x: mx.array, rope: RotaryEmbedding, start: int, cache: KVCache | None, view: str) -> mx.array:
        """x (B, T, C) at positions L … L+T-1 -> (B, T, C); writes the block's K/V into cache slots L … L+T-1."""
        q, k, v = self.project(x, rope, start, view)  # the view picks the weights ...
        if cache is not None:
            # Both views put the block right after the prefix; only the AR view's stay (the model
            # advances the cache length after an AR forward), the diffusion view's are overwritten.
            k, v = cache.write(self.layer_idx, k, v)  # (B, Hkv, L+T, D)
        out = attention(q, k, v, causal=(view == "ar"))  # ... and the mask; (B, H, T, D)
        return self.output(out, view)  # (B, T, C)


class Qwen3MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Shared by both views."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Qwen3Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Qwen3MLP(config)

    def __call__(self, x, rope, start, cache, view):
        x = x + self.self_attn(self.input_layernorm(x), rope, start, cache, view)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    """Embeddings -> decoder layers -> final norm (HF's `model.` prefix)."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)


class Qwen3ForCausalLM(nn.Module):
    """The whole model: `model` (shared trunk) + `lm_head`; one forward for both views.

    A checkpoint with `model_type: orthrus` has the diffusion view; a plain Qwen3 one is AR-only.
    With tied embeddings there is no `lm_head` parameter: the logits use `embed_tokens`' matrix.
    `device` is the MLX device every forward runs on (set by `load_model`).
    """

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.device = mx.default_device()

    @property
    def dtype(self) -> mx.Dtype:
        return self.model.embed_tokens.weight.dtype

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        """A preallocated KV cache for `max_len` tokens of `batch_size` sequences, in the model's dtype."""
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_len, c.head_dim, dtype=self.dtype)

    def __call__(self, input_ids: mx.array, cache: KVCache | None = None, view: str = "ar", logits_to_keep: int = 0) -> mx.array:
        """Logits (B, T', V) for input_ids (B, T) at positions L … L+T-1, L = cache length (0 without a cache).

        view="ar": causal; with a cache, the T new K/V are appended (the cache length grows by T).
        view="diffusion": the draft pass — bidirectional inside the block, reads the cache, leaves
        its length unchanged. logits_to_keep=n > 0 computes logits for the last n positions only.
        """
        if view not in VIEWS:
            raise OrthrusError(f"view {view!r} is unknown; choose one of {VIEWS}")
        if view == "diffusion" and not self.config.has_diffusion_view:
            raise OrthrusError(NO_DIFFUSION_VIEW)
        B, T = input_ids.shape
        L = cache.length if cache is not None else 0
        if L + T > self.config.max_position_embeddings:
            raise OrthrusError(f"{L + T} positions exceed the model's context (max_position_embeddings={self.config.max_position_embeddings})")
        if cache is not None:
            cache.check_room(T)
        with mx.stream(self.device):
            x = self.model.embed_tokens(input_ids)  # (B, T, C)
            for layer in self.model.layers:
                x = layer(x, self.model.rotary_emb, L, cache, view)  # (B, T, C)
            x = self.model.norm(x)
            if logits_to_keep:
                x = x[:, -logits_to_keep:]  # (B, T', C)
            if self.config.tie_word_embeddings:
                logits = self.model.embed_tokens.as_linear(x)  # (B, T', V)
            else:
                logits = self.lm_head(x)  # (B, T', V)
        if cache is not None and view == "ar":
            cache.advance(T)
        return logits


# --------------------------------------------------------------------------- loading


def load_model(name_or_path: str | os.PathLike, dtype: str | None = "auto", device: str | None = "auto",
               check_weights: bool = True) -> Qwen3ForCausalLM:
    """Loads a Qwen3 or Orthrus checkpoint (folder or Hub id, as the torch `load_model`) into MLX for inference.

    The safetensors files are read with `mx.load` and checked against the model's parameters by
    name and shape (missing, unexpected and mis-shaped tensors are reported by name). dtype:
    "auto" (bfloat16 on the GPU, float32 on the CPU), float32, bfloat16 or float16; a bf16
    checkpoint asked for in bf16 stays bf16, no round trip. device: "auto", "cpu" or "gpu".
    check_weights: refuse a checkpoint with NaN or infinite weights, as the torch loader does.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = resolve_checkpoint(name_or_path)
    config = Qwen3Config.from_json(folder / "config.json")
    model = Qwen3ForCausalLM(config)  # MLX is lazy: its random initial weights are never computed
    expected = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}  # no lm_head when tied
    state, unexpected, misshaped = {}, [], []
    for file in safetensors_files(folder):
        if not file.exists():
            raise OrthrusError(f"{file}: shard listed in the index is missing")
        try:
            tensors = mx.load(str(file))
        except Exception as e:  # truncated or corrupt file
            raise OrthrusError(f"{file}: cannot read safetensors file ({type(e).__name__}: {e})") from None
        for name, tensor in tensors.items():
            if name not in expected:
                if not (name == "lm_head.weight" and config.tie_word_embeddings):
                    unexpected.append(name)
                continue
            if tuple(tensor.shape) != expected[name]:
                misshaped.append(f"{name} has shape {tuple(tensor.shape)}, expected {expected[name]}")
                continue
            state[name] = tensor if tensor.dtype == dt else tensor.astype(dt)
    missing = sorted(set(expected) - set(state) - {m.split(" ")[0] for m in misshaped})
    check_names(folder, missing, unexpected, misshaped)
    if check_weights:
        with mx.stream(dev):
            check_finite(folder, [name for name, t in state.items() if not mx.all(mx.isfinite(t)).item()])
    model.update(tree_unflatten(list(state.items())))  # names and shapes were checked above
    model.device = dev
    model.eval()
    model.freeze()
    mx.eval(model.parameters())  # read the weights now, not on the first forward
    return model


__all__ = ["Qwen3ForCausalLM", "load_model", "attention", "RMSNorm", "RotaryEmbedding", "Qwen3Attention"]
