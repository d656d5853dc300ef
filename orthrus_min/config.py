"""What a checkpoint's `config.json` says, checked: `Qwen3Config`, whether it can draft, and the block size K of a run.

The model (model.py) is built from a `Qwen3Config`; everything that can be wrong with a config —
a missing field, a string where a number belongs, a feature this implementation does not have
(sliding windows, scaled RoPE, attention bias) — is a one-line `OrthrusError` here, naming the
field, before any tensor exists. Nothing here imports torch: the MLX backend reads the same config.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import OrthrusError
from .reading import read_json

VIEWS = ("ar", "diffusion")  # the two views of an Orthrus model; a Qwen3 ("qwen3") checkpoint has only the first
MAX_POSITIONS = 2**20  # the longest context a config may ask for: the RoPE tables hold every position (1 GiB at head_dim 128)
# Block sizes `block_size="auto"` tries (those up to the checkpoint's block_size). Not 2: an iteration at K = 2 commits
# at most 2 tokens for two forwards over 2 tokens, never faster than AR's two forwards over 1 (one run here chose it
# after a few rejections at the start of a text and spent 20 iterations there).
CANDIDATES = (4, 8, 16, 32)
INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "block_size")  # each >= 1 when present
FLOAT_FIELDS = ("rms_norm_eps", "rope_theta")  # each > 0 when present
NO_DIFFUSION_VIEW = ("this checkpoint has no diffusion view (model_type 'qwen3', an AR-only Qwen3): decode it with --mode ar "
                     "(generate_ar), or add one with orthrus_min.model.init_diffusion_view(model, block_size, mask_token_id) and train it")


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
        if not Path(path).exists():
            raise OrthrusError(f"{path}: config.json not found")
        return cls.from_dict(read_json(path))

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


# --------------------------------------------------------------------------- the diffusion view and its block size


def require_diffusion_view(config: Qwen3Config) -> None:
    """Raises a one-line `OrthrusError` unless the config can draft: a diffusion view and a valid `mask_token_id`."""
    if not config.has_diffusion_view:
        raise OrthrusError(NO_DIFFUSION_VIEW)
    if config.mask_token_id is None:
        raise OrthrusError("config.json has model_type 'orthrus' but no mask_token_id: the diffusion view fills its draft "
                           "block with that token; add the id it was trained with to config.json")
    if not 0 <= config.mask_token_id < config.vocab_size:
        raise OrthrusError(f"config.json: mask_token_id={config.mask_token_id} is outside the vocabulary (0 … {config.vocab_size - 1})")


def resolve_block_size(config: Qwen3Config, block_size: int | str | None) -> int | str:
    """K for this run: `block_size` if given (1 … the config's `block_size`, or "auto"), else the config's."""
    configured = config.block_size
    if block_size is None:
        if configured is None:
            raise OrthrusError("config.json has no block_size: pass a block size (--block-size K)")
        return configured
    if block_size == "auto":
        if configured is None:
            raise OrthrusError("config.json has no block_size, so 'auto' has no largest block to choose up to: pass --block-size K")
        return block_size
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise OrthrusError(f"block size must be an int >= 1 or 'auto', got {block_size!r}")
    if configured is not None and block_size > configured:
        raise OrthrusError(f"block size {block_size} is larger than the checkpoint's block_size {configured} "
                           f"(the diffusion view was trained for blocks of at most {configured} tokens)")
    return block_size


def auto_candidates(config: Qwen3Config) -> list[int]:
    """The block sizes `auto` chooses from: powers of two up to the checkpoint's block_size (and that size itself)."""
    return sorted({K for K in CANDIDATES if K <= config.block_size} | {config.block_size})


def cache_capacity(num_prompt: int, max_new_tokens: int, block_size: int) -> int:
    """Slots Orthrus decoding needs per row: the AR decoder's (prompt + new tokens) plus one block."""
    return num_prompt + max_new_tokens + block_size


__all__ = ["Qwen3Config", "check_config_types", "require_diffusion_view", "resolve_block_size", "auto_candidates",
           "cache_capacity", "VIEWS", "MAX_POSITIONS", "CANDIDATES", "NO_DIFFUSION_VIEW"]
