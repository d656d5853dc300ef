"""Turning logits into tokens in MLX: greedy, or an inverse-CDF draw after temperature / top-k / top-p.

Mirrors the torch sampler (`orthrus_min/sampling.py`): the same `SamplingParams`, the same
warping (the same for both views, so the speculative-sampling rule compares two distributions
that went through identical processing), and the same counter-based randomness: every uniform
number is a hash of (seed, sequence position, stream), `stream` saying which decision it is
(DRAFT a token, ACCEPT or reject it, the AR view's own TOKEN). A seed gives the same numbers
on either backend, so both draw the same tokens from the same distributions.

Precision, a deliberate choice: MLX's Metal GPU has no float64. The uniforms are a few numbers
per iteration, so they are hashed on the host with numpy (uint64 integers, float64 results,
exactly the torch sampler's bits). On the device, the cumulative sum of an inverse-CDF draw and
the acceptance test `u * q(d) < p(d)` run in float64 on the CPU (as on the torch side) and in
float32 on the GPU, where a token whose probability is below about 1e-7 of the running sum can
lose its share of the CDF: a bias far below what any sampling test can see.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..sampling import ACCEPT, DRAFT, MAX_SEED, TOKEN, SamplingParams  # the torch sampler's streams and seed range
from .backend import require_mlx, wide_float

mx = require_mlx()


def row_seed(params: SamplingParams) -> int:
    """The seed of this generation's random stream: `params.seed`, or a fresh one from torch's global RNG when None."""
    if params.seed is None:
        import torch

        return int(torch.randint(0, MAX_SEED, ()).item())
    return params.seed  # SamplingParams checked its range


# --------------------------------------------------------------------------- counter-based uniforms, on the host

MASK32 = np.uint64(0xFFFFFFFF)


def hash32(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer mix with full avalanche (the "lowbias32" constants): uint64 in [0, 2**32) -> same range.

    Products of two 32-bit numbers fit in uint64, so `(x * c) & MASK32` is the exact product mod 2**32.
    """
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & MASK32
    return x ^ (x >> np.uint64(16))


def uniforms(seed: int, positions: Sequence[int] | np.ndarray, stream: int) -> np.ndarray:
    """Uniform numbers in [0, 1), float64 with 53 random bits: one per sequence position, for `stream`.

    seed in 0 … 2**63-1; positions (N,) -> (N,). The same (seed, position, stream) always gives
    the same number, bit for bit the torch sampler's `uniforms`.
    """
    s = np.uint64(seed)
    h = hash32(hash32(s & MASK32) ^ ((s >> np.uint64(32)) & MASK32))  # the seed, folded to 32 bits
    h = hash32(h ^ (np.asarray(positions, dtype=np.int64).astype(np.uint64) & MASK32))  # (N,)
    hi = hash32(h ^ np.uint64(2 * stream))  # (N,): two 32-bit words per number ...
    lo = hash32(h ^ np.uint64(2 * stream + 1))
    return ((hi << np.uint64(21)) | (lo >> np.uint64(11))).astype(np.float64) / 2.0**53  # ... 32 + 21 = 53 bits


def to_device(u: np.ndarray) -> mx.array:
    """Host uniforms (…,) as an MLX array in the widest float of the current device (float64 on CPU, float32 on GPU)."""
    return mx.array(u.astype(np.float64 if wide_float() == mx.float64 else np.float32))


# --------------------------------------------------------------------------- warping and drawing


def warp_probs(logits: mx.array, params: SamplingParams) -> mx.array:
    """Probabilities (…, V) in fp32 after temperature, then top-k, then top-p (nucleus) filtering."""
    logits = logits.astype(mx.float32) / params.temperature  # (…, V)
    V = logits.shape[-1]
    if 0 < params.top_k < V:
        kth = mx.min(mx.topk(logits, params.top_k, axis=-1), axis=-1, keepdims=True)  # (…, 1): the k-th largest logit
        logits = mx.where(logits < kth, -mx.inf, logits)
    if params.top_p < 1:
        order = mx.argsort(-logits, axis=-1)  # (…, V): most likely first
        sorted_probs = mx.softmax(mx.take_along_axis(logits, order, axis=-1), axis=-1)  # (…, V)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the top one always stays.
        drop_sorted = (mx.cumsum(sorted_probs, axis=-1) - sorted_probs) >= params.top_p  # (…, V)
        drop = mx.put_along_axis(mx.zeros(drop_sorted.shape, dtype=mx.bool_), order, drop_sorted, axis=-1)  # (…, V)
        logits = mx.where(drop, -mx.inf, logits)
    return mx.softmax(logits, axis=-1)


def sample_from(probs: mx.array, u: mx.array) -> mx.array:
    """Inverse-CDF draw: the token whose interval of the cumulative distribution holds u.

    probs (…, V) non-negative, need not sum to 1; u (…) uniform in [0, 1) -> token ids (…,).
    Tokens of probability 0 own an empty interval, so they are never drawn.
    """
    V = probs.shape[-1]
    wide = wide_float()
    cdf = mx.cumsum(probs.astype(wide), axis=-1)  # (…, V): float64 on the CPU, float32 on the GPU
    x = u.astype(wide)[..., None] * cdf[..., -1:]  # (…, 1): u of the way through the total mass
    token = mx.sum(cdf <= x, axis=-1)  # (…,): the first token with cdf > x
    # x rounds up to the total only through rounding (u near 1 in float32): then the last token with mass.
    last = mx.max(mx.where(probs > 0, mx.arange(V), 0), axis=-1)  # (…,)
    return mx.minimum(token, last)


def pick_token(logits: mx.array, params: SamplingParams, seed: int | None, position: int) -> mx.array:
    """The token at sequence `position` for logits (V,): argmax when greedy, else a warped draw (stream TOKEN)."""
    if params.greedy:
        return mx.argmax(logits, axis=-1)
    return sample_from(warp_probs(logits, params), to_device(uniforms(seed, [position], TOKEN))[0])


__all__ = ["SamplingParams", "warp_probs", "sample_from", "pick_token", "uniforms", "hash32", "row_seed", "to_device",
           "DRAFT", "ACCEPT", "TOKEN"]
