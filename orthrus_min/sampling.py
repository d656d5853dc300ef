"""Turning logits into tokens: greedy, or sampling after temperature / top-k / top-p warping.

The same warping is applied to both views in Orthrus sampling (docs/ARCHITECTURE.md, "Sampling"), so the
speculative-sampling rule compares two distributions that went through identical
processing. Mirrors Hugging Face's TemperatureLogitsWarper, TopKLogitsWarper and
TopPLogitsWarper (`transformers/generation/logits_process.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import OrthrusError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature=0 means greedy (argmax); top_k=0 and top_p=1 mean no filtering."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise OrthrusError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise OrthrusError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise OrthrusError(f"top_k must be >= 0 (0 = no top-k filter), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device | str) -> torch.Generator:
        """A torch.Generator on `device`, seeded with `seed` (or from the global RNG when seed is None)."""
        g = torch.Generator(device=device)
        g.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return g


def warp_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities (…, V) in fp32 after temperature, then top-k, then top-p (nucleus) filtering."""
    logits = logits.float() / params.temperature  # (…, V)
    V = logits.shape[-1]
    if 0 < params.top_k < V:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # (…, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (…, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)  # (…, V)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the top one always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= params.top_p  # (…, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample_from(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of probs (…, V) -> (…,), drawn with `generator`."""
    flat = probs.reshape(-1, probs.shape[-1])  # (N, V)
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """The next token for logits (…, V): argmax when greedy, else a sample of the warped distribution."""
    if params.greedy:
        return logits.argmax(-1)
    return sample_from(warp_probs(logits, params), generator)
