"""Plain autoregressive decoding with the AR view: prefill the prompt, then one token per forward.

This is the baseline Orthrus must reproduce exactly (greedy) or in distribution
(sampling), and the loop `consensus.py` speeds up. Its result type, `Generation`,
is shared by both decoders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import OrthrusError
from .model import Qwen3ForCausalLM
from .sampling import SamplingParams, pick_token

TokenCallback = Callable[[list[int]], None]


@dataclass
class Generation:
    """What a decoder produced: new token ids (prompt excluded) and how it got there."""

    tokens: list[int]
    finish_reason: str  # "eos" or "length"
    num_forwards: int = 0  # model forwards after the prefill (AR: one per token; Orthrus: two per iteration)
    prefill_s: float = 0.0  # time to first token
    decode_s: float = 0.0  # everything after the first token
    accepted: list[int] = field(default_factory=list)  # Orthrus: tokens committed per iteration (τ samples)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens over total wall-clock time (prefill included)."""
        total = self.prefill_s + self.decode_s
        return len(self.tokens) / total if total > 0 else float("inf")

    @property
    def tokens_per_forward(self) -> float:
        """Tokens committed per model forward after the prefill (AR: about 1)."""
        return (len(self.tokens) - 1) / self.num_forwards if self.num_forwards else 0.0


def check_request(model: Qwen3ForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int, extra_slots: int = 0) -> None:
    """Clear errors for an empty prompt, max_new_tokens < 1, or a request beyond the model's context."""
    if len(prompt_ids) == 0:
        raise OrthrusError("the prompt is empty: give at least one token")
    if max_new_tokens < 1:
        raise OrthrusError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    limit = model.config.max_position_embeddings
    if len(prompt_ids) + max_new_tokens + extra_slots > limit:
        raise OrthrusError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens})"
                           f"{f' + one block ({extra_slots})' if extra_slots else ''} exceeds the model's context of {limit} tokens")


def eos_ids_of(model: Qwen3ForCausalLM, eos_token_id: int | Sequence[int] | None) -> set[int]:
    """The set of ids that end generation: the argument if given, else the config's `eos_token_id`."""
    if eos_token_id is None:
        return set(model.config.eos_token_id)
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


@torch.inference_mode()
def generate_ar(model: Qwen3ForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int = 128,
                sampling: SamplingParams = SamplingParams(), eos_token_id: int | Sequence[int] | None = None,
                on_tokens: TokenCallback | None = None, ignore_eos: bool = False) -> Generation:
    """Decodes up to `max_new_tokens` tokens after `prompt_ids`, one AR forward per token.

    Stops at the first id in `eos_token_id` (default: the config's; it is emitted) unless
    `ignore_eos`. `on_tokens` is called with each new token as a one-element list.
    """
    check_request(model, prompt_ids, max_new_tokens)
    eos = set() if ignore_eos else eos_ids_of(model, eos_token_id)
    generator = None if sampling.greedy else sampling.generator(model.device)
    cache = model.new_cache(len(prompt_ids) + max_new_tokens)
    ids = torch.tensor([list(prompt_ids)], device=model.device)  # (1, P)

    t0 = time.perf_counter()
    logits = model(ids, cache, logits_to_keep=1)  # (1, 1, V): prefill fills the cache with the prompt
    token = pick_token(logits[0, -1], sampling, generator)  # ()
    tokens = [int(token)]
    t1 = time.perf_counter()
    out = Generation(tokens, "length", prefill_s=t1 - t0)
    if on_tokens:
        on_tokens(tokens[-1:])
    while tokens[-1] not in eos and len(tokens) < max_new_tokens:
        logits = model(token.view(1, 1), cache)  # (1, 1, V)
        token = pick_token(logits[0, -1], sampling, generator)
        tokens.append(int(token))
        out.num_forwards += 1
        if on_tokens:
            on_tokens(tokens[-1:])
    out.finish_reason = "eos" if tokens[-1] in eos else "length"
    out.decode_s = time.perf_counter() - t1
    return out
