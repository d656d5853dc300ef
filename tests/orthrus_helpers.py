"""Helpers for the Orthrus tests: tiny models with a diffusion view, and the Transformers references of docs/ARCHITECTURE.md, "References".

Every model is built in memory from a tiny random Transformers Qwen3 (see conftest.make_hf_model).
"""

from __future__ import annotations

import copy

import torch

from conftest import make_hf_model
from orthrus_min.config import Qwen3Config
from orthrus_min.model import Qwen3ForCausalLM, init_diffusion_view

DIFF_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")


def ours_from_hf(hf_model) -> Qwen3ForCausalLM:
    """Our fp32 model with the same weights as a Transformers Qwen3ForCausalLM (a strict name check)."""
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(hf_model.config.to_dict())).eval().requires_grad_(False)
    model.load_state_dict(hf_model.state_dict(), strict=True)
    return model


@torch.no_grad()
def set_diffusion_weights(model: Qwen3ForCausalLM, kind: str, seed: int = 0) -> None:
    """kind: "copied" (as init_diffusion_view leaves them), "perturbed" (copies plus small noise) or "random"."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "_diff" not in name or kind == "copied":
            continue
        noise = torch.randn(p.shape, generator=g)
        if kind == "perturbed":
            p.add_(noise * (0.02 if p.dim() == 2 else 0.1))
        elif kind == "random":
            p.copy_(noise * 0.08 if p.dim() == 2 else 1 + 0.3 * noise)
        else:
            raise ValueError(kind)


def make_orthrus(seed: int = 0, diffusion: str = "random", block_size: int = 32, mask_token_id: int = 5, **overrides):
    """(Transformers AR reference, our Orthrus model): same AR weights, a diffusion view of the given kind."""
    hf = make_hf_model(seed, **overrides)
    model = init_diffusion_view(ours_from_hf(hf), block_size, mask_token_id=mask_token_id)
    set_diffusion_weights(model, diffusion, seed=seed + 1000)
    return hf, model


def orthrus_checkpoint(folder, seed: int = 5, diffusion: str = "copied", block_size: int = 8, mask_token_id: int = 3,
                       **overrides):
    """Saves a tiny Orthrus checkpoint (`make_orthrus`) with a tokenizer and the Qwen3 chat template into `folder`."""
    from conftest import make_tokenizer_files
    from orthrus_min.checkpoint import save_model

    _, model = make_orthrus(seed, diffusion, block_size=block_size, mask_token_id=mask_token_id, **overrides)
    save_model(model, folder)
    make_tokenizer_files(folder)
    return folder


def hf_diffusion_twin(hf_model, model: Qwen3ForCausalLM):
    """A Transformers Qwen3ForCausalLM whose attention weights are our model's `*_diff` ones (all else shared)."""
    twin = copy.deepcopy(hf_model)
    state = model.state_dict()
    with torch.no_grad():
        for i, layer in enumerate(twin.model.layers):
            for name in DIFF_NAMES:
                getattr(layer.self_attn, name).weight.copy_(state[f"model.layers.{i}.self_attn.{name}_diff.weight"])
    return twin


@torch.no_grad()
def hf_draft_logits(hf_model, twin, prefix: torch.Tensor, block: torch.Tensor, bidirectional: bool = True) -> torch.Tensor:
    """The reference for the draft pass (docs/ARCHITECTURE.md, "References"): `twin` over `block` (1, K) at positions P … P+K-1, reading a
    Transformers DynamicCache that holds the AR view's K/V of `prefix` (1, P), with a 4-D float mask of
    zeros (everything visible). bidirectional=False uses Transformers' own causal mask instead."""
    P, K = prefix.shape[1], block.shape[1]
    past = hf_model(prefix, use_cache=True).past_key_values if P else None  # DynamicCache of the AR view
    mask = torch.zeros(1, 1, K, P + K) if bidirectional else None  # (B, 1, K, P+K): 0 = visible
    positions = torch.arange(P, P + K)[None]  # (1, K)
    return twin(block, past_key_values=past, attention_mask=mask, position_ids=positions, use_cache=True).logits


def capture_caches(model: Qwen3ForCausalLM) -> list:
    """Makes `model.new_cache` record every cache it allocates; returns the list they are appended to."""
    caches = []
    allocate = model.new_cache

    def recording_new_cache(*args, **kwargs):
        caches.append(allocate(*args, **kwargs))
        return caches[-1]

    model.new_cache = recording_new_cache
    return caches
