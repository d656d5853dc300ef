"""Orthrus decoding: the diffusion view drafts a block, the AR view verifies it, both over one KV cache.

Paper §3 (arXiv 2605.12825); docs/ARCHITECTURE.md, "The method". One iteration, with `x_p` the newest token (emitted,
but not yet in the cache, which holds positions 0 … p-1):

    draft   diffusion pass over [x_p, MASK, …, MASK]   (K tokens, positions p … p+K-1)
            -> d_1 … d_{K-1}; nothing stays in the cache
    verify  AR pass over [x_p, d_1, …, d_{K-1}]        -> AR logits for positions p+1 … p+K;
            the cache now holds K more entries
    accept  keep the drafts the AR view agrees with (n of them), plus one token of its own
    roll    back the cache to p + 1 + n entries: x_p and the accepted drafts. The token of
            the AR view's own (the bonus) is not in the cache yet: it is the next x_p.

Greedy, the output is exactly the AR view's greedy output; sampling, it has exactly the
distribution of AR sampling (the speculative-sampling rule, `speculative_accept`).
Each iteration costs two forwards over K tokens and commits between 1 and K tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .ar import Generation, TokenCallback, check_request, eos_ids_of
from .errors import OrthrusError
from .model import Qwen3Config, Qwen3ForCausalLM, require_diffusion_view
from .sampling import SamplingParams, pick_token, sample_from, warp_probs


class ConsensusCheckError(RuntimeError):
    """`check=True` found a committed token that is not the AR view's choice: a decoder bug."""


def resolve_block_size(config: Qwen3Config, block_size: int | None) -> int:
    """K for this run: `block_size` if given (1 … the config's `block_size`), else the config's."""
    configured = config.block_size
    if block_size is None:
        if configured is None:
            raise OrthrusError("config.json has no block_size: pass a block size (--block-size K)")
        return configured
    if block_size < 1:
        raise OrthrusError(f"block size must be >= 1, got {block_size}")
    if configured is not None and block_size > configured:
        raise OrthrusError(f"block size {block_size} is larger than the checkpoint's block_size {configured} "
                           f"(the diffusion view was trained for blocks of at most {configured} tokens)")
    return block_size


def cache_capacity(num_prompt: int, max_new_tokens: int, block_size: int) -> int:
    """Slots Orthrus decoding allocates: the AR decoder's (prompt + new tokens) plus one block."""
    return num_prompt + max_new_tokens + block_size


def greedy_accept(draft: torch.Tensor, ar_logits: torch.Tensor) -> tuple[int, int]:
    """Greedy consensus. draft (K-1,), ar_logits (K, V) from the verify pass -> (n accepted, bonus token).

    Rule: accept the longest prefix d_1 … d_n with d_{i+1} == argmax(AR_i); the bonus is
    argmax(AR_n), the AR view's token right after the accepted run.
    """
    choice = ar_logits.argmax(-1)  # (K,): the AR view's token for positions p+1 … p+K
    agree = draft == choice[:-1]  # (K-1,)
    n = int(agree.long().cumprod(0).sum())  # length of the all-agreeing prefix
    return n, int(choice[n])


def speculative_accept(draft_tokens: torch.Tensor, q_probs: torch.Tensor, p_probs: torch.Tensor,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The lossless speculative-sampling rule, for one draft or a batch of them.

    draft_tokens (…, K-1): d_{i+1} drawn from q_probs (…, K-1, V), the diffusion view's warped
    distribution at block index i; p_probs (…, K, V): the AR view's warped distribution at
    index i (for position p+1+i), computed with the drafts as input.
    Returns (num_accepted (…,), next_token (…,)): the output is d_1 … d_n, then next_token.
    """
    d = draft_tokens.unsqueeze(-1)  # (…, K-1, 1)
    p_of_draft = p_probs[..., :-1, :].gather(-1, d).squeeze(-1)  # (…, K-1)
    q_of_draft = q_probs.gather(-1, d).squeeze(-1)  # (…, K-1)
    u = torch.rand(q_of_draft.shape, generator=generator, device=q_of_draft.device)  # (…, K-1), uniform [0, 1)
    # Rule: accept d_{i+1} with probability min(1, p(d)/q(d)), i.e. when u * q(d) < p(d); stop at the first rejection.
    accepted = u * q_of_draft < p_of_draft  # (…, K-1)
    num_accepted = accepted.long().cumprod(-1).sum(-1)  # (…,)
    # Then sample from normalize(max(0, p - q)) at the first rejected index, or from p at index K-1
    # when every draft was accepted — the same formula, with a row of q = 0 appended for that index.
    q_padded = F.pad(q_probs, (0, 0, 0, 1))  # (…, K, V)
    at = num_accepted[..., None, None].expand(*num_accepted.shape, 1, p_probs.shape[-1])  # (…, 1, V)
    p_next = p_probs.gather(-2, at).squeeze(-2)  # (…, V)
    residual = (p_next - q_padded.gather(-2, at).squeeze(-2)).clamp_min(0)  # (…, V)
    # Rejection implies p > q somewhere, so the residual has mass; rounding can leave ~0, then p is the answer.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_next)
    next_token = sample_from(residual / residual.sum(-1, keepdim=True), generator)  # (…,)
    return num_accepted, next_token


def cut_run(run: list[int], eos: set[int], room: int) -> list[int]:
    """The part of an accepted run to emit: at most `room` tokens, ending at the first EOS (included)."""
    run = run[:room]
    for i, token in enumerate(run):
        if token in eos:
            return run[: i + 1]
    return run


def check_run(run: list[int], ar_logits: torch.Tensor, p_probs: torch.Tensor | None) -> None:
    """`check=True`: every committed token must be the verifier's choice in the same iteration.

    Greedy (p_probs None): run[i] == argmax of the verify logits at index i. Sampling: the AR
    view's warped distribution at index i gives run[i] a non-zero probability.
    """
    for i, token in enumerate(run):
        if p_probs is None:
            choice = int(ar_logits[i].argmax())
            if token != choice:
                raise ConsensusCheckError(f"check failed: committed token {token} at block index {i} is not the "
                                          f"AR view's argmax {choice} in the same verify pass")
        elif not p_probs[i, token] > 0:
            raise ConsensusCheckError(f"check failed: committed token {token} at block index {i} has probability 0 "
                                      f"under the AR view's (warped) distribution in the same verify pass")


@torch.inference_mode()
def generate_orthrus(model: Qwen3ForCausalLM, prompt_ids: Sequence[int], max_new_tokens: int = 128,
                     sampling: SamplingParams = SamplingParams(), block_size: int | None = None,
                     eos_token_id: int | Sequence[int] | None = None, on_tokens: TokenCallback | None = None,
                     ignore_eos: bool = False, check: bool = False) -> Generation:
    """Decodes up to `max_new_tokens` tokens after `prompt_ids` by draft -> verify -> accept -> roll back.

    block_size: K, tokens per diffusion pass (default: the config's). Stops at the first id in
    `eos_token_id` (default: the config's; it is emitted) unless `ignore_eos`. `on_tokens` is
    called with each committed run. `check`: assert that every committed token is the AR
    view's choice in the same verify pass (raises ConsensusCheckError otherwise).
    Returns a `Generation` whose `accepted` lists the tokens committed per iteration.
    """
    require_diffusion_view(model.config)
    K = resolve_block_size(model.config, block_size)
    check_request(model, prompt_ids, max_new_tokens, extra_slots=K)
    eos = set() if ignore_eos else eos_ids_of(model, eos_token_id)
    generator = None if sampling.greedy else sampling.generator(model.device)
    cache = model.new_cache(cache_capacity(len(prompt_ids), max_new_tokens, K))  # the AR cache plus one block
    device, mask_id = model.device, model.config.mask_token_id

    t0 = time.perf_counter()
    logits = model(torch.tensor([list(prompt_ids)], device=device), cache, logits_to_keep=1)  # (1, 1, V): prefill
    tokens = [int(pick_token(logits[0, -1], sampling, generator))]  # x_p of the first iteration
    t1 = time.perf_counter()
    out = Generation(tokens, "length", prefill_s=t1 - t0)
    if on_tokens:
        on_tokens(tokens[-1:])
    while tokens[-1] not in eos and len(tokens) < max_new_tokens:
        p = cache.length  # position of x_p = tokens[-1]; the cache holds positions 0 … p-1

        # 1. Draft: the diffusion view reads the cache and fills the K-1 masks in one pass, writing nothing.
        block = torch.full((1, K), mask_id, device=device)  # (1, K): [x_p, MASK, …, MASK]
        block[0, 0] = tokens[-1]
        draft_logits = model(block, cache, view="diffusion")[0, :-1]  # (K-1, V): drafts for positions p+1 … p+K-1
        if sampling.greedy:
            draft = draft_logits.argmax(-1)  # (K-1,)
        else:
            q_probs = warp_probs(draft_logits, sampling)  # (K-1, V)
            draft = sample_from(q_probs, generator)  # (K-1,)

        # 2. Verify: the ordinary causal AR pass over [x_p, d_1 … d_{K-1}]; the cache grows by K.
        block[0, 1:] = draft
        ar_logits = model(block, cache)[0]  # (K, V): the AR view's logits for positions p+1 … p+K

        # 3. Accept: n drafts and one token of the AR view's own.
        p_probs = None
        if sampling.greedy:
            # Greedy: the longest prefix with d_{i+1} == argmax(AR_i), then the bonus argmax(AR_n).
            n, next_token = greedy_accept(draft, ar_logits)
        else:
            # Sampling: accept d with probability min(1, p(d)/q(d)); on the first rejection sample from
            # normalize(max(0, p - q)); after a fully accepted draft sample from p at the last index.
            p_probs = warp_probs(ar_logits, sampling)  # (K, V)
            n, next_token = (int(t) for t in speculative_accept(draft, q_probs, p_probs, generator))
        run = cut_run(draft[:n].tolist() + [next_token], eos, max_new_tokens - len(tokens))
        if check:
            check_run(run, ar_logits, p_probs)

        # 4. Roll back: keep x_p and the accepted drafts of the run (their K/V came from the AR view with
        # the right inputs); the rejected drafts' entries are dropped. The run's last token is the next x_p.
        cache.rollback(p + len(run))
        tokens += run
        out.accepted.append(len(run))
        out.num_forwards += 2
        if check and cache.length != len(prompt_ids) + len(tokens) - 1:
            raise ConsensusCheckError(f"check failed: the cache holds {cache.length} entries, expected prompt + "
                                      f"committed tokens - 1 = {len(prompt_ids) + len(tokens) - 1}")
        if on_tokens:
            on_tokens(run)
    out.finish_reason = "eos" if tokens[-1] in eos else "length"
    out.decode_s = time.perf_counter() - t1
    return out


__all__ = ["generate_orthrus", "speculative_accept", "greedy_accept", "resolve_block_size", "cache_capacity",
           "ConsensusCheckError"]
