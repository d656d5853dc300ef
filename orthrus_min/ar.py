"""Plain autoregressive decoding with the AR view: prefill the prompts, then one token per forward.

This is the baseline Orthrus must reproduce exactly (greedy) or in distribution (sampling), and
the loop `consensus.py` speeds up. Both run on the engine (`engine.py`): a batch of prompts of
any lengths, each row with its own cache length, budget and EOS; one row alone is the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batch import Generation, make_batch, result
from .engine import Compiler, DecodeState, Step, TokenCallback, commit, decode, eos_tensor
from .kvcache import KVCache
from .model import Qwen3ForCausalLM
from .sampling import SamplingParams, pick_tokens


def ar_step(model: Qwen3ForCausalLM, cache: KVCache, state: DecodeState, sampling: SamplingParams,
            eos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One AR forward for every row: x_p in, the next token out. Returns (run (B, 1), kept (B,))."""
    p = cache.lengths.clone()  # (B,): the position of x_p in each row
    logits = model(state.x_p[:, None], cache)  # (B, 1, V); every row's cache grows by one
    token = pick_tokens(logits, sampling, state.seeds, p[:, None] + 1)  # (B, 1): the token at position p + 1
    kept = commit(cache, state, p, token, torch.ones_like(p), eos)  # (B,): 1, or 0 for a finished row
    return token, kept


@torch.inference_mode()
def generate_ar(model: Qwen3ForCausalLM, prompts, max_new_tokens: int | Sequence[int] = 128,
                sampling: SamplingParams = SamplingParams(), eos_token_id: int | Sequence[int] | None = None,
                on_tokens: TokenCallback | None = None, ignore_eos: bool = False, compile_mode: str | Compiler | None = None,
                seeds: Sequence[int] | None = None) -> Generation | list[Generation]:
    """Decodes up to `max_new_tokens` tokens after each prompt, one AR forward per token.

    prompts: one list of token ids (returns one Generation) or a list of them (returns one per
    prompt, in order); max_new_tokens: one budget or one per prompt. A row stops at the first id
    in `eos_token_id` (default: the config's; it is emitted) unless `ignore_eos`. `on_tokens(row,
    tokens)` is called with each row's new tokens. compile_mode: None (eager), a torch.compile
    mode for the step, or a `Compiler` held by the caller. seeds: one sampling seed per prompt (default: `sampling.seed` for every row).
    """
    step = Step(ar_step, forwards=1)
    batch = make_batch(model.config, prompts, max_new_tokens, step.extra_slots)
    eos = eos_tensor(model, eos_token_id, ignore_eos)
    generations = decode(model, batch, step, sampling, eos, on_tokens=on_tokens, seeds=seeds, compile_mode=compile_mode)
    return result(batch, generations)


__all__ = ["generate_ar", "ar_step"]
