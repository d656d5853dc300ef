"""Held-out measurements: next-token loss (pretraining) and greedy acceptance length (distillation).

The acceptance length τ — tokens committed per draft-verify iteration — is measured by the
consensus decoder itself (`generate_orthrus`), on held-out prompts: the quantity decoding speed
follows. With several processes each decodes its share of the prompts and the sums are reduced.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model import Qwen3ForCausalLM
from .corpus import DocArrays
from .sources import random_windows


@torch.no_grad()
def heldout_loss(model: Qwen3ForCausalLM, tokens: np.ndarray, seq_len: int, batches: int = 4, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy on fixed held-out windows of a token stream."""
    rng = np.random.default_rng(1234)
    losses = []
    for _ in range(batches):
        x = random_windows(tokens, batch_size, seq_len + 1, rng).to(model.device)  # (B, T+1)
        logits = model(x[:, :-1])  # (B, T, V)
        losses.append(F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten()).item())
    return float(np.mean(losses))


def heldout_prompts(tokens: np.ndarray, count: int, prompt_len: int, seed: int = 0) -> list[list[int]]:
    """Fixed prompts: `count` windows of a held-out token stream."""
    rng = np.random.default_rng(seed)
    return [w.tolist() for w in random_windows(tokens, count, prompt_len, rng)]


def eval_prompts(heldout: list[DocArrays], count: int, prompt_len: int, max_prompt_len: int, seed: int = 0) -> list[list[int]]:
    """Held-out prompts for the acceptance length.

    Chat sources: the prompt of held-out conversations (every token before the first trained
    one), those of at most `max_prompt_len` tokens, in a seeded order. Text only: `count`
    windows of `prompt_len` tokens of the held-out text, as `heldout_prompts`.
    """
    if count == 0:
        return []
    chats = [d for d in heldout if d.mask is not None and len(d)]
    if chats:
        prompts = []
        for docs in chats:
            for i in range(len(docs)):
                trained = np.flatnonzero(docs.mask_of(i))
                if len(trained) and 1 <= trained[0] <= max_prompt_len:
                    prompts.append(docs.tokens_of(i, 0, int(trained[0])).tolist())
        order = np.random.default_rng(seed).permutation(len(prompts))
        return [prompts[i] for i in order[:count]]
    stream = np.concatenate([np.asarray(d.stream()) for d in heldout]) if heldout else np.zeros(0, np.uint32)
    return heldout_prompts(stream, count, prompt_len, seed)


def acceptance_length(model: Qwen3ForCausalLM, prompts: list[list[int]], max_new_tokens: int, block_size: int) -> float:
    """Mean greedy acceptance length (tokens committed per draft-verify iteration), as the consensus decoder reports it."""
    total, count = acceptance_sums(model, prompts, max_new_tokens, block_size)
    return total / count if count else float("nan")


def acceptance_sums(model: Qwen3ForCausalLM, prompts: list[list[int]], max_new_tokens: int, block_size: int,
                    batch_size: int = 16) -> tuple[float, int]:
    """(sum of acceptance lengths, number of iterations) of greedy Orthrus decoding of `prompts`, batched."""
    from ..consensus import generate_orthrus

    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        for g in generate_orthrus(model, prompts[i : i + batch_size], max_new_tokens, block_size=block_size, ignore_eos=True):
            total += sum(g.accepted)
            count += len(g.accepted)
    return total, count


__all__ = ["heldout_loss", "heldout_prompts", "eval_prompts", "acceptance_length", "acceptance_sums"]
