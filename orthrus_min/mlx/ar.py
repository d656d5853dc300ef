"""Plain autoregressive decoding with the AR view, in MLX (mirrors `orthrus_min/ar.py`).

Prefill the prompt, then one token per forward. The token at sequence position t (the first
one after a prompt of P tokens is at position P) is the argmax, or a draw with the uniform
number of (seed, t, TOKEN). Returns the torch side's `Generation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..batch import Generation, eos_ids, make_batch
from .backend import require_mlx
from .model import Qwen3ForCausalLM
from .sampling import SamplingParams, pick_token, row_seed

mx = require_mlx()

TokenCallback = Callable[[int, list[int]], None]  # on_tokens(row, tokens): row is 0 (batch size 1)


def generate_ar(model: Qwen3ForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int = 128,
                sampling: SamplingParams = SamplingParams(), eos_token_id: int | Sequence[int] | None = None,
                on_tokens: TokenCallback | None = None, ignore_eos: bool = False) -> Generation:
    """Decodes up to `max_new_tokens` tokens after `prompt_ids`, one AR forward per token.

    Stops at the first id in `eos_token_id` (default: the config's; it is emitted) unless
    `ignore_eos`. `on_tokens(0, [token])` is called with each new token.
    """
    prompt_ids = make_batch(model.config, prompt_ids, max_new_tokens).prompts[0]  # checked, as the torch decoders check it
    eos = set(eos_ids(model.config, eos_token_id, ignore_eos))
    seed = None if sampling.greedy else row_seed(sampling)
    P = len(prompt_ids)
    with mx.stream(model.device):
        cache = model.new_cache(P + max_new_tokens)
        t0 = time.perf_counter()
        logits = model(mx.array([list(prompt_ids)]), cache, logits_to_keep=1)  # (1, 1, V): prefill fills the cache with the prompt
        token = pick_token(logits[0, -1], sampling, seed, position=P)  # (): the token at position P
        mx.eval(token, cache.state)
        tokens = [token.item()]
        t1 = time.perf_counter()
        out = Generation(tokens, "length", prefill_s=t1 - t0)
        if on_tokens:
            on_tokens(0, tokens[-1:])
        while tokens[-1] not in eos and len(tokens) < max_new_tokens:
            logits = model(token.reshape(1, 1), cache)  # (1, 1, V)
            token = pick_token(logits[0, -1], sampling, seed, position=P + len(tokens))
            mx.eval(token, cache.state)
            tokens.append(token.item())
            out.num_forwards += 1
            if on_tokens:
                on_tokens(0, tokens[-1:])
    out.finish_reason = "eos" if tokens[-1] in eos else "length"
    out.decode_s = time.perf_counter() - t1
    return out


__all__ = ["generate_ar", "TokenCallback"]
