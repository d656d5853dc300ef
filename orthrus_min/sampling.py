"""Turning logits into tokens: greedy, or sampling after temperature / top-k / top-p warping.

The same warping is applied to both views in Orthrus sampling (docs/ARCHITECTURE.md, "Sampling"),
so the speculative-sampling rule compares two distributions that went through identical
processing. The warpers mirror Hugging Face's TemperatureLogitsWarper, TopKLogitsWarper and
TopPLogitsWarper (`transformers/generation/logits_process.py`).

Randomness is counter-based: every uniform number is a hash of (seed, position, stream), where
`position` is the sequence position of the token being decided and `stream` says which decision
it is (draft, accept, token). So a row's samples depend only on its own seed and tokens — not on
its batch-mates, the batch size, the device, or how many numbers other code drew — and a
compiled step needs no generator state. Counter-based generators (Salmon et al., 2011, "Parallel
random numbers: as easy as 1, 2, 3") work this way; ours is a small 32-bit integer hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import OrthrusError, check_int, check_number

# Streams: which decision a uniform number is for (see `uniforms`).
DRAFT, ACCEPT, TOKEN = 0, 1, 2  # draft d at a position; accept-or-reject it; the AR view's own token there
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature=0 means greedy (argmax); top_k=0 and top_p=1 mean no filtering.

    seed: the seed of every row's random stream (None: a fresh random seed per row).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        """Checks every field (TypeError for a wrong type, OrthrusError for a bad value) and stores plain Python numbers."""
        temperature, top_p = check_number(self.temperature, "temperature"), check_number(self.top_p, "top_p")
        top_k = check_int(self.top_k, "top_k")
        if not 0 <= temperature < float("inf"):
            raise OrthrusError(f"temperature must be >= 0 and finite (0 = greedy), got {self.temperature}")
        if not 0 < top_p <= 1:
            raise OrthrusError(f"top_p must be in (0, 1], got {self.top_p}")
        if top_k < 0:
            raise OrthrusError(f"top_k must be >= 0 (0 = no top-k filter), got {self.top_k}")
        seed = None if self.seed is None else check_seed(self.seed, "seed")
        for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("seed", seed)):
            object.__setattr__(self, name, value)  # frozen: np.int64(5) is stored as 5

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def row_seeds(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """(B,) int64 seeds: `seed` for every row, or fresh random ones (from torch's global RNG) when seed is None."""
        if self.seed is not None:
            return torch.full((batch_size,), self.seed, dtype=torch.long, device=device)
        return torch.randint(0, MAX_SEED, (batch_size,), dtype=torch.long).to(device)


def check_seed(value, name: str) -> int:
    """A sampling seed as an int in 0 … 2**63-1, or a one-line TypeError / OrthrusError naming `name`."""
    return check_int(value, name, 0, MAX_SEED, "2**63-1")


# --------------------------------------------------------------------------- counter-based uniforms

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), with every intermediate below 2**49 (no int64 overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix with full avalanche (the "lowbias32" constants): int64 in [0, 2**32) -> same range."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seeds: torch.Tensor, positions: torch.Tensor, stream: int | tuple[int, ...]) -> torch.Tensor:
    """Uniform numbers in [0, 1), float64 with 53 random bits: one per (row seed, position, stream).

    seeds (B,) int64 in 0 … 2**63-1; positions (B, N) int64 -> (B, N) for one stream, or (S, B, N)
    for a tuple of S streams. The same (seed, position, stream) always gives the same number, on
    any device and in any batch.
    """
    seeds = seeds[:, None]  # (B, 1)
    h = hash32(hash32(seeds & MASK32) ^ ((seeds >> 32) & MASK32))  # (B, 1): the seed, folded to 32 bits
    h = hash32(h ^ (positions & MASK32))  # (B, N)
    if not isinstance(stream, int):
        h = h.expand(len(stream), *h.shape)  # (S, B, N)
        stream = torch.tensor(stream, device=h.device).view(-1, 1, 1)  # (S, 1, 1)
    hi = hash32(h ^ (2 * stream))  # two 32-bit words per number ...
    lo = hash32(h ^ (2 * stream + 1))
    return ((hi << 21) | (lo >> 11)).double() / 2.0**53  # ... 32 + 21 = 53 bits, exact in float64


# --------------------------------------------------------------------------- warping and drawing


def warp_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities (…, V) in fp32 after temperature, then top-k, then top-p (nucleus) filtering."""
    logits = logits.float() / params.temperature  # (…, V)
    V = logits.shape[-1]
    if 0 < params.top_k < V:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # (…, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (…, V)
        sorted_probs = sorted_logits.softmax(-1)  # (…, V)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the top one always stays.
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p  # (…, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample_from(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the token whose interval of the cumulative distribution holds u.

    probs (…, V) non-negative, need not sum to 1; u (…) uniform in [0, 1) -> token ids (…,).
    Tokens of probability 0 own an empty interval, so they are never drawn.
    """
    cdf = probs.double().cumsum(-1)  # (…, V), float64 so that tiny probabilities keep their share
    total = cdf[..., -1:]  # (…, 1)
    x = torch.minimum(u.unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))  # (…, 1): below the total
    return torch.searchsorted(cdf, x, right=True).squeeze(-1)  # (…,): first token with cdf > x


def pick_tokens(logits: torch.Tensor, params: SamplingParams, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The tokens for logits (B, N, V) at sequence positions (B, N): argmax when greedy, else a warped draw (stream TOKEN)."""
    if params.greedy:
        return logits.argmax(-1)  # (B, N)
    return sample_from(warp_probs(logits, params), uniforms(seeds, positions, TOKEN))  # (B, N)


__all__ = ["SamplingParams", "check_seed", "warp_probs", "sample_from", "pick_tokens", "uniforms", "hash32", "DRAFT", "ACCEPT", "TOKEN"]
