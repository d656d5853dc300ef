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

`orthrus_step` is one iteration for a whole batch: every row drafts, verifies and accepts in the
same two forwards of shape (B, K), and rolls back to its own length (rows accept different
numbers of tokens). It has fixed shapes and no host syncs, so it compiles into one graph; the
engine (`engine.py`) runs it in the one decode loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .batch import Generation, make_batch, result
from .blocksize import BlockSizeChooser, remember_step_costs, step_costs
from .config import auto_candidates, require_diffusion_view, resolve_block_size
from .engine import Compiler, DecodeState, Step, TokenCallback, commit, compiler, decode, eos_tensor
from .errors import ConsensusCheckError
from .kvcache import KVCache
from .model import Qwen3ForCausalLM
from .sampling import ACCEPT, DRAFT, TOKEN, SamplingParams, sample_from, uniforms, warp_probs


def greedy_accept(draft: torch.Tensor, ar_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy consensus. draft (B, K-1), ar_logits (B, K, V) from the verify pass -> (n accepted (B,), bonus token (B,)).

    Rule: accept the longest prefix d_1 … d_n with d_{i+1} == argmax(AR_i); the bonus is
    argmax(AR_n), the AR view's token right after the accepted run.
    """
    choice = ar_logits.argmax(-1)  # (B, K): the AR view's token for positions p+1 … p+K
    agree = draft == choice[:, :-1]  # (B, K-1)
    n = agree.long().cumprod(-1).sum(-1)  # (B,): length of the all-agreeing prefix
    return n, choice.gather(1, n[:, None])[:, 0]


def speculative_accept(draft_tokens: torch.Tensor, q_probs: torch.Tensor, p_probs: torch.Tensor,
                       u_accept: torch.Tensor, u_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lossless speculative-sampling rule, for a batch of drafts.

    draft_tokens (B, K-1): d_{i+1} drawn from q_probs (B, K-1, V), the diffusion view's warped
    distribution at block index i; p_probs (B, K, V): the AR view's warped distribution at
    index i (for position p+1+i), computed with the drafts as input. u_accept (B, K-1) and
    u_token (B, K): uniform numbers in [0, 1) for the accept decisions and for the token drawn
    at each index. Returns (num_accepted (B,), next_token (B,)): the output is d_1 … d_n, then next_token.
    """
    d = draft_tokens.unsqueeze(-1)  # (B, K-1, 1)
    p_of_draft = p_probs[:, :-1].gather(-1, d).squeeze(-1)  # (B, K-1)
    q_of_draft = q_probs.gather(-1, d).squeeze(-1)  # (B, K-1)
    # Rule: accept d_{i+1} with probability min(1, p(d)/q(d)), i.e. when u * q(d) < p(d); stop at the first rejection.
    accepted = u_accept * q_of_draft < p_of_draft  # (B, K-1)
    n = accepted.long().cumprod(-1).sum(-1)  # (B,)
    # Then draw from normalize(max(0, p - q)) at the first rejected index, or from p at index K-1
    # when every draft was accepted — the same formula, with a row of q = 0 appended for that index.
    at = n[:, None, None].expand(-1, 1, p_probs.shape[-1])  # (B, 1, V)
    p_next = p_probs.gather(1, at).squeeze(1)  # (B, V)
    residual = (p_next - F.pad(q_probs, (0, 0, 0, 1)).gather(1, at).squeeze(1)).clamp_min(0)  # (B, V)
    # Rejection implies p > q somewhere, so the residual has mass; rounding can leave ~0, then p is the answer.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_next)
    return n, sample_from(residual, u_token.gather(1, n[:, None])[:, 0])


def orthrus_step(model: Qwen3ForCausalLM, cache: KVCache, state: DecodeState, sampling: SamplingParams,
                 eos: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One draft -> verify -> accept -> roll back iteration for every row of the batch.

    Returns (run (B, K), kept (B,), verified (B,)): row b's new tokens are run[b, :kept[b]];
    verified[b] says that each of them is the AR view's choice in the same verify pass — a few
    elementwise ops beside two forwards, read on the host only when the caller asks (`check`).
    """
    K, B = block_size, state.x_p.shape[0]
    p = cache.lengths.clone()  # (B,): position of x_p; each row's cache holds positions 0 … p-1
    positions = p[:, None] + torch.arange(1, K + 1, device=p.device)  # (B, K): p+1 … p+K, what the block predicts

    # 1. Draft: the diffusion view reads the cache and fills the K-1 masks in one pass, writing nothing.
    block = torch.full((B, K), model.config.mask_token_id, device=p.device)  # (B, K): [x_p, MASK, …, MASK]
    block[:, 0] = state.x_p
    draft_logits = model(block, cache, view="diffusion")[:, :-1]  # (B, K-1, V): drafts for positions p+1 … p+K-1
    if sampling.greedy:
        draft = draft_logits.argmax(-1)  # (B, K-1)
    else:
        u_draft, u_accept, u_token = uniforms(state.seeds, positions, (DRAFT, ACCEPT, TOKEN))  # (B, K) each
        q_probs = warp_probs(draft_logits, sampling)  # (B, K-1, V)
        draft = sample_from(q_probs, u_draft[:, :-1])  # (B, K-1)

    # 2. Verify: the ordinary causal AR pass over [x_p, d_1 … d_{K-1}]; every row's cache grows by K.
    block = torch.cat([state.x_p[:, None], draft], dim=1)  # (B, K)
    ar_logits = model(block, cache)  # (B, K, V): the AR view's logits for positions p+1 … p+K

    # 3. Accept: n drafts and one token of the AR view's own.
    if sampling.greedy:
        # Greedy: the longest prefix with d_{i+1} == argmax(AR_i), then the bonus argmax(AR_n).
        n, next_token = greedy_accept(draft, ar_logits)
    else:
        # Sampling: accept d with probability min(1, p(d)/q(d)); on the first rejection draw from
        # normalize(max(0, p - q)); after a fully accepted draft draw from p at the last index.
        p_probs = warp_probs(ar_logits, sampling)  # (B, K, V)
        n, next_token = speculative_accept(draft, q_probs, p_probs, u_accept[:, :-1], u_token)
    run = F.pad(draft, (0, 1)).scatter(1, n[:, None], next_token[:, None])  # (B, K): d_1 … d_n, next, (unused)

    # 4. Roll back: keep x_p and the accepted drafts (their K/V came from the AR view with the right
    # inputs), cut at EOS and at the budget; the run's last token is the next x_p, outside the cache.
    kept = commit(cache, state, p, run, n + 1, eos)  # (B,)

    # What `check` reads on the host: is every kept token one the AR view could have chosen?
    in_run = torch.arange(K, device=p.device) < kept[:, None]  # (B, K)
    if sampling.greedy:
        chosen = run == ar_logits.argmax(-1)  # (B, K): the AR view's argmax at each index
    else:
        chosen = p_probs.gather(-1, run[:, :, None])[:, :, 0] > 0  # (B, K): a token the AR view could draw
    return run, kept, (chosen | ~in_run).all(-1)


def check_rows(sampling: SamplingParams):
    """check=True, on the host after each step: every committed token was the verifier's choice (the
    step's `verified` flag), and every row's cache holds its prompt + committed tokens - 1 entries
    (x_p, the newest token, is not in it)."""
    choice = "argmax" if sampling.greedy else "distribution"

    def check(lengths: list[int], flags: list[list[int]], batch, out: list[Generation]) -> None:
        for b, (verified,) in enumerate(flags):
            if not verified:
                what = "argmax" if choice == "argmax" else "distribution: it has probability 0 under the AR view's warped distribution"
                raise ConsensusCheckError(f"check failed (row {b}): a committed token is not the AR view's {what} "
                                          "in the same verify pass")
            expected = len(batch.prompts[b]) + len(out[b].tokens) - 1
            if lengths[b] != expected:
                raise ConsensusCheckError(f"check failed (row {b}): the cache holds {lengths[b]} entries, expected prompt + "
                                          f"committed tokens - 1 = {expected}")

    return check


@torch.inference_mode()
def generate_orthrus(model: Qwen3ForCausalLM, prompts, max_new_tokens: int | Sequence[int] = 128,
                     sampling: SamplingParams = SamplingParams(), block_size: int | str | BlockSizeChooser | None = None,
                     eos_token_id: int | Sequence[int] | None = None, on_tokens: TokenCallback | None = None,
                     ignore_eos: bool = False, check: bool = False, compile_mode: str | Compiler | None = None,
                     seeds: Sequence[int] | None = None) -> Generation | list[Generation]:
    """Decodes up to `max_new_tokens` tokens after each prompt by draft -> verify -> accept -> roll back.

    prompts: one list of token ids (returns one Generation) or a list of them (returns one per
    prompt, in order); max_new_tokens: one budget or one per prompt. block_size: K, tokens per
    diffusion pass (default: the config's); "auto" chooses K before every step for speed
    (`blocksize.py`; compiled, it keeps one K per batch size, the same run after run until the acceptance seen
    says another is clearly faster: `Compiler.block_size`, `BlockSizeChooser.worth_switching`), or pass
    a BlockSizeChooser to reuse its cost estimates. A row stops at the first id in `eos_token_id`
    (default: the config's; it is emitted) unless `ignore_eos`. `on_tokens(row, tokens)` is called
    with each row's committed run. `check`: assert that every committed token is the AR view's
    choice in the same verify pass (raises ConsensusCheckError otherwise). compile_mode: None
    (eager), a torch.compile mode for the step, or a `Compiler` held by the caller. seeds: one
    sampling seed per prompt. Each Generation's `accepted` lists the tokens committed per iteration.
    """
    require_diffusion_view(model.config)
    chooser = block_size if isinstance(block_size, BlockSizeChooser) else None
    K = resolve_block_size(model.config, None if chooser else block_size)
    largest = max(chooser.candidates) if chooser else max(auto_candidates(model.config)) if K == "auto" else K
    batch = make_batch(model.config, prompts, max_new_tokens, extra_slots=largest)
    if K == "auto":  # price each candidate K on this machine, at this batch size (measured once, then remembered)
        candidates = auto_candidates(model.config)
        chooser = BlockSizeChooser(candidates, step_costs(model, candidates, len(batch.prompts)))
    runner = compiler(compile_mode)
    if chooser is not None and runner.mode is not None:  # compiled: one K (each new K is a compile), the same run after run
        chooser.keep(runner.block_size(model, len(batch.prompts), chooser.best))
    step = Step(orthrus_step, {} if chooser else dict(block_size=K), forwards=2, extra_slots=largest, record_runs=True,
                check=check_rows(sampling) if check else None, tuner=chooser)
    eos = eos_tensor(model, eos_token_id, ignore_eos)
    generations = decode(model, batch, step, sampling, eos, on_tokens=on_tokens, seeds=seeds, compile_mode=runner)
    if chooser is not None and runner.mode is None:  # the eager steps' costs, for the next run on this machine
        remember_step_costs(model, len(batch.prompts), chooser.costs)
    if chooser is not None and runner.mode is not None and (faster := chooser.worth_switching()) is not None:
        runner.remember_block_size(model, len(batch.prompts), faster)  # for the next run, which compiles it once
    for g in generations:  # the block size of each of the row's iterations
        g.block_sizes = chooser.used[: len(g.accepted)] if chooser else [K] * len(g.accepted)
    return result(batch, generations)


__all__ = ["generate_orthrus", "orthrus_step", "speculative_accept", "greedy_accept"]
