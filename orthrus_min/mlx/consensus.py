"""Orthrus decoding in MLX: the diffusion view drafts a block, the AR view verifies it, both over one KV cache.

Mirrors `orthrus_min/consensus.py` (paper §3, arXiv 2605.12825). One iteration, with `x_p` the
newest token (emitted, but not yet in the cache, which holds positions 0 … p-1):

    draft   diffusion pass over [x_p, MASK, …, MASK]   (K tokens, positions p … p+K-1)
            -> d_1 … d_{K-1}; nothing stays in the cache
    verify  AR pass over [x_p, d_1, …, d_{K-1}]        -> AR logits for positions p+1 … p+K;
            the cache now holds K more entries
    accept  keep the drafts the AR view agrees with (n of them), plus one token of its own
    roll    back the cache to p + 1 + n entries.

Greedy, the output is exactly the AR view's greedy output; sampling, it has exactly the
distribution of AR sampling (`speculative_accept`). Randomness is counter-based as in
`orthrus_min/mlx/sampling.py`: d_{i+1} (position p+1+i) is drawn with (seed, p+1+i, DRAFT),
accepted with (seed, p+1+i, ACCEPT), and the AR view's own token after n accepted drafts is
drawn with (seed, p+1+n, TOKEN). The draft and verify passes are built lazily and evaluated
once per iteration: the drafts never travel to the host before the verify pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..batch import Generation, eos_ids, make_batch
from ..config import cache_capacity, require_diffusion_view, resolve_block_size
from ..errors import ConsensusCheckError
from .ar import TokenCallback
from .backend import require_mlx
from .model import Qwen3ForCausalLM
from .sampling import ACCEPT, DRAFT, TOKEN, SamplingParams, pick_token, row_seed, sample_from, to_device, uniforms, warp_probs

mx = require_mlx()


def greedy_accept(draft: np.ndarray, ar_choice: np.ndarray) -> tuple[int, int]:
    """Greedy consensus. draft (K-1,), ar_choice (K,) = argmax of the verify logits -> (n accepted, bonus token).

    Rule: accept the longest prefix d_1 … d_n with d_{i+1} == argmax(AR_i); the bonus is
    argmax(AR_n), the AR view's token right after the accepted run.
    """
    agree = draft == ar_choice[:-1]  # (K-1,)
    n = int(np.cumprod(agree).sum())  # length of the all-agreeing prefix
    return n, int(ar_choice[n])


def speculative_accept(draft_tokens: mx.array, q_probs: mx.array, p_probs: mx.array, u_accept: mx.array,
                       u_token: mx.array) -> tuple[mx.array, mx.array]:
    """The lossless speculative-sampling rule, for one draft or a batch of them.

    draft_tokens (…, K-1): d_{i+1} drawn from q_probs (…, K-1, V), the diffusion view's warped
    distribution at block index i; p_probs (…, K, V): the AR view's warped distribution at index i
    (for position p+1+i), computed with the drafts as input. u_accept (…, K-1): the ACCEPT
    uniforms of positions p+1 … p+K-1; u_token (…, K): the TOKEN uniforms of positions p+1 … p+K.
    Returns (num_accepted (…,), next_token (…,)): the output is d_1 … d_n, then next_token.
    """
    d = draft_tokens[..., None]  # (…, K-1, 1)
    p_of_draft = mx.take_along_axis(p_probs[..., :-1, :], d, axis=-1)[..., 0]  # (…, K-1)
    q_of_draft = mx.take_along_axis(q_probs, d, axis=-1)[..., 0]  # (…, K-1)
    # Rule: accept d_{i+1} with probability min(1, p(d)/q(d)), i.e. when u * q(d) < p(d); stop at the first rejection.
    accepted = u_accept * q_of_draft.astype(u_accept.dtype) < p_of_draft.astype(u_accept.dtype)  # (…, K-1)
    num_accepted = mx.sum(mx.cumprod(accepted.astype(mx.int32), axis=-1), axis=-1)  # (…,)
    # Then sample from normalize(max(0, p - q)) at the first rejected index, or from p at index K-1
    # when every draft was accepted — the same formula, with a row of q = 0 appended for that index.
    zeros = mx.zeros((*q_probs.shape[:-2], 1, q_probs.shape[-1]), dtype=q_probs.dtype)  # (…, 1, V)
    q_padded = mx.concatenate([q_probs, zeros], axis=-2)  # (…, K, V)
    at = num_accepted[..., None, None]  # (…, 1, 1)
    p_next = mx.take_along_axis(p_probs, at, axis=-2)[..., 0, :]  # (…, V)
    residual = mx.maximum(p_next - mx.take_along_axis(q_padded, at, axis=-2)[..., 0, :], 0)  # (…, V)
    # Rejection implies p > q somewhere, so the residual has mass; rounding can leave ~0, then p is the answer.
    residual = mx.where(mx.sum(residual, axis=-1, keepdims=True) > 0, residual, p_next)
    u = mx.take_along_axis(u_token, num_accepted[..., None], axis=-1)[..., 0]  # (…,): the uniform of position p+1+n
    return num_accepted, sample_from(residual, u)  # sample_from normalises


def check_run(run: list[int], ar_logits: mx.array, p_probs: mx.array | None) -> None:
    """`check=True`: every committed token must be the verifier's choice in the same iteration.

    Greedy (p_probs None): run[i] == argmax of the verify logits (K, V) at index i. Sampling:
    the AR view's warped distribution at index i gives run[i] a non-zero probability.
    """
    index = mx.arange(len(run))
    if p_probs is None:
        choices = np.array(mx.argmax(ar_logits[: len(run)], axis=-1)).tolist()  # (len(run),)
        for i, (token, choice) in enumerate(zip(run, choices)):
            if token != choice:
                raise ConsensusCheckError(f"check failed: committed token {token} at block index {i} is not the "
                                          f"AR view's argmax {choice} in the same verify pass")
        return
    probs = np.array(p_probs[index, mx.array(run)]).tolist()  # (len(run),): p_i(run[i])
    for i, (token, prob) in enumerate(zip(run, probs)):
        if not prob > 0:
            raise ConsensusCheckError(f"check failed: committed token {token} at block index {i} has probability 0 "
                                      f"under the AR view's (warped) distribution in the same verify pass")


def cut_run(run: list[int], eos: set[int], room: int) -> list[int]:
    """The part of an accepted run to emit: at most `room` tokens, ending at the first EOS (included)."""
    run = run[:room]
    for i, token in enumerate(run):
        if token in eos:
            return run[: i + 1]
    return run


def generate_orthrus(model: Qwen3ForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int = 128,
                     sampling: SamplingParams = SamplingParams(), block_size: int | None = None,
                     eos_token_id: int | Sequence[int] | None = None, on_tokens: TokenCallback | None = None,
                     ignore_eos: bool = False, check: bool = False) -> Generation:
    """Decodes up to `max_new_tokens` tokens after `prompt_ids` by draft -> verify -> accept -> roll back.

    block_size: K, tokens per diffusion pass (default: the config's). Stops at the first id in
    `eos_token_id` (default: the config's; it is emitted) unless `ignore_eos`. `on_tokens(0, run)`
    is called with each committed run. `check`: assert that every committed token is the AR
    view's choice in the same verify pass (raises ConsensusCheckError otherwise).
    Returns a `Generation` whose `accepted` lists the tokens committed per iteration.
    """
    require_diffusion_view(model.config)
    K = resolve_block_size(model.config, block_size)
    prompt_ids = make_batch(model.config, prompt_ids, max_new_tokens, extra_slots=K).prompts[0]  # checked as on the torch side
    eos = set(eos_ids(model.config, eos_token_id, ignore_eos))
    seed = None if sampling.greedy else row_seed(sampling)
    P, mask_id = len(prompt_ids), model.config.mask_token_id
    with mx.stream(model.device):
        cache = model.new_cache(cache_capacity(P, max_new_tokens, K))  # the AR cache plus one block
        masks = mx.full((K - 1,), mask_id, dtype=mx.int32)  # (K-1,)

        t0 = time.perf_counter()
        logits = model(mx.array([list(prompt_ids)]), cache, logits_to_keep=1)  # (1, 1, V): prefill
        first = pick_token(logits[0, -1], sampling, seed, position=P)  # (): x_p of the first iteration, at position P
        mx.eval(first, cache.state)
        tokens = [first.item()]
        t1 = time.perf_counter()
        out = Generation(tokens, "length", prefill_s=t1 - t0)
        if on_tokens:
            on_tokens(0, tokens[-1:])
        while tokens[-1] not in eos and len(tokens) < max_new_tokens:
            p = cache.length  # position of x_p = tokens[-1]; the cache holds positions 0 … p-1
            x_p = mx.array([tokens[-1]], dtype=mx.int32)  # (1,)
            positions = np.arange(p + 1, p + K)  # (K-1,): the drafts' positions p+1 … p+K-1

            # 1. Draft: the diffusion view reads the cache and fills the K-1 masks in one pass, writing nothing.
            block = mx.concatenate([x_p, masks])[None]  # (1, K): [x_p, MASK, …, MASK]
            draft_logits = model(block, cache, view="diffusion")[0, :-1]  # (K-1, V): drafts for positions p+1 … p+K-1
            if K == 1:  # nothing to draft (MLX will not argmax an empty array): the iteration is one AR step
                draft, q_probs = mx.zeros((0,), dtype=mx.int32), mx.zeros(draft_logits.shape, dtype=mx.float32)
            elif sampling.greedy:
                draft = mx.argmax(draft_logits, axis=-1).astype(mx.int32)  # (K-1,)
            else:
                q_probs = warp_probs(draft_logits, sampling)  # (K-1, V)
                draft = sample_from(q_probs, to_device(uniforms(seed, positions, DRAFT))).astype(mx.int32)  # (K-1,)

            # 2. Verify: the ordinary causal AR pass over [x_p, d_1 … d_{K-1}]; the cache grows by K.
            ar_logits = model(mx.concatenate([x_p, draft])[None], cache)[0]  # (K, V): the AR view's logits for positions p+1 … p+K

            # 3. Accept: n drafts and one token of the AR view's own.
            p_probs = None
            if sampling.greedy:
                # Greedy: the longest prefix with d_{i+1} == argmax(AR_i), then the bonus argmax(AR_n).
                choice = mx.argmax(ar_logits, axis=-1)  # (K,)
                mx.eval(draft, choice, cache.state)  # the one evaluation of this iteration
                n, next_token = greedy_accept(np.array(draft), np.array(choice))
            else:
                # Sampling: accept d with probability min(1, p(d)/q(d)); on the first rejection sample from
                # normalize(max(0, p - q)); after a fully accepted draft sample from p at the last index.
                p_probs = warp_probs(ar_logits, sampling)  # (K, V)
                u_accept = to_device(uniforms(seed, positions, ACCEPT))  # (K-1,)
                u_token = to_device(uniforms(seed, np.arange(p + 1, p + K + 1), TOKEN))  # (K,): positions p+1 … p+K
                num_accepted, next_tok = speculative_accept(draft, q_probs, p_probs, u_accept, u_token)
                mx.eval(draft, num_accepted, next_tok, cache.state)  # the one evaluation of this iteration
                n, next_token = num_accepted.item(), next_tok.item()
            run = cut_run(np.array(draft)[:n].tolist() + [next_token], eos, max_new_tokens - len(tokens))
            if check:
                check_run(run, ar_logits, p_probs)

            # 4. Roll back: keep x_p and the accepted drafts of the run (their K/V came from the AR view with
            # the right inputs); the rejected drafts' entries are dropped. The run's last token is the next x_p.
            cache.rollback(p + len(run))
            tokens += run
            out.accepted.append(len(run))
            out.num_forwards += 2
            if check and cache.length != P + len(tokens) - 1:
                raise ConsensusCheckError(f"check failed: the cache holds {cache.length} entries, expected prompt + "
                                          f"committed tokens - 1 = {P + len(tokens) - 1}")
            if on_tokens:
                on_tokens(0, run)
    out.finish_reason = "eos" if tokens[-1] in eos else "length"
    out.decode_s = time.perf_counter() - t1
    return out


__all__ = ["generate_orthrus", "speculative_accept", "greedy_accept", "check_run"]
