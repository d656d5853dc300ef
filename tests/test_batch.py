"""Batched decoding: every row of a batch decodes exactly as that prompt does alone (fp32).

Rows differ in prompt length (by up to 100 tokens), token budget, and where they meet an EOS;
the same holds for sampling, where each row has its own seed: its counter-based random stream
does not depend on its batch-mates.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthrus_min import OrthrusError
from orthrus_min.ar import generate_ar
from orthrus_min.consensus import generate_orthrus
from orthrus_min.sampling import SamplingParams
from orthrus_helpers import make_orthrus


@functools.cache
def model(diffusion: str):
    """A tiny Orthrus model (vocab 320, 2 layers, block_size 32); shared: do not modify."""
    return make_orthrus(7, diffusion, block_size=32, eos_token_id=None)[1]


rows = st.lists(st.tuples(st.integers(1, 101), st.integers(1, 24), st.integers(0, 10_000)), min_size=1, max_size=4)


def make_prompts(spec, seed: int) -> tuple[list[list[int]], list[int]]:
    """Prompts of the given lengths (random ids) and per-row budgets from hypothesis' (length, budget, _) rows."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 320, (n,), generator=g).tolist() for n, _, _ in spec], [m for _, m, _ in spec]


def eos_ids(alone: list[list[int]], picks: list[int]) -> list[int]:
    """EOS ids taken from the rows' own EOS-free outputs, so that rows stop at different steps (or not at all)."""
    tokens = [t for out in alone for t in out]
    return sorted({tokens[p % len(tokens)] for p in picks[:2]})


def decode(method, m, prompts, budgets, **kw):
    if method == "ar":
        return generate_ar(m, prompts, budgets, **kw)
    return generate_orthrus(m, prompts, budgets, **kw)


@pytest.mark.parametrize("method, diffusion", [("ar", "random"), ("orthrus", "random"), ("orthrus", "copied")])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=rows, K=st.integers(1, 32), seed=st.integers(0, 100), use_eos=st.booleans())
def test_greedy_rows_equal_decoding_alone(method, diffusion, spec, K, seed, use_eos):
    m = model(diffusion)
    prompts, budgets = make_prompts(spec, seed)
    kw = {} if method == "ar" else dict(block_size=K)
    free = [decode(method, m, p, n, ignore_eos=True, **kw).tokens for p, n in zip(prompts, budgets)]
    eos = eos_ids(free, [r for _, _, r in spec]) if use_eos else []
    alone = [decode(method, m, p, n, eos_token_id=eos, **kw) for p, n in zip(prompts, budgets)]

    batch = decode(method, m, prompts, budgets, eos_token_id=eos, check=True, **kw) if method == "orthrus" else \
        decode(method, m, prompts, budgets, eos_token_id=eos)

    assert [g.tokens for g in batch] == [g.tokens for g in alone]
    assert [g.finish_reason for g in batch] == [g.finish_reason for g in alone]
    assert [g.accepted for g in batch] == [g.accepted for g in alone]  # the same iterations, row by row


@pytest.mark.parametrize("method", ["ar", "orthrus"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=rows, K=st.integers(2, 32), seed=st.integers(0, 100), temperature=st.sampled_from([0.6, 1.0, 1.5]),
       top_k=st.sampled_from([0, 5]), top_p=st.sampled_from([1.0, 0.9]))
def test_sampled_rows_equal_decoding_alone_with_the_same_seed(method, spec, K, seed, temperature, top_k, top_p):
    m = model("perturbed" if method == "orthrus" else "random")
    prompts, budgets = make_prompts(spec, seed)
    seeds = [s for _, _, s in spec]
    kw = {} if method == "ar" else dict(block_size=K)
    sampling = SamplingParams(temperature, top_k, top_p)
    alone = [decode(method, m, p, n, sampling=SamplingParams(temperature, top_k, top_p, seed=s), ignore_eos=True, **kw)
             for p, n, s in zip(prompts, budgets, seeds)]

    batch = decode(method, m, prompts, budgets, sampling=sampling, seeds=seeds, ignore_eos=True, **kw)

    assert [g.tokens for g in batch] == [g.tokens for g in alone]


def test_a_finished_row_stops_emitting_while_others_go_on():
    m = model("copied")
    seen = {0: [], 1: []}
    out = generate_orthrus(m, [[5, 6, 7], list(range(40, 80))], [3, 40], block_size=8, ignore_eos=True,
                           on_tokens=lambda row, tokens: seen[row].extend(tokens))
    assert [len(g.tokens) for g in out] == [3, 40] and seen == {0: out[0].tokens, 1: out[1].tokens}
    assert out[0].num_forwards < out[1].num_forwards  # row 0 stopped being counted when it finished
    assert out[0].decode_s < out[1].decode_s


def test_same_seed_same_prompt_same_sample_in_any_row():
    m = model("perturbed")
    sampling = SamplingParams(temperature=1.0, seed=42)
    out = generate_orthrus(m, [[1, 2, 3], [9] * 50, [1, 2, 3]], 20, sampling, block_size=4, ignore_eos=True)
    assert out[0].tokens == out[2].tokens == generate_orthrus(m, [1, 2, 3], 20, sampling, block_size=4, ignore_eos=True).tokens
    assert out[1].tokens != out[0].tokens


@pytest.mark.parametrize("prompts, budgets, message", [
    ([], 4, "the prompt is empty"),
    ([[1, 2], []], 4, "prompt 1: the prompt is empty"),
    ([[1, 2], [3, 400]], 4, r"prompt 1: token id 400 is outside the model's vocabulary \(0 … 319\)"),
    ([[1, 2], [3]], [4, 0], "prompt 1: max_new_tokens must be an int >= 1, got 0"),
    ([[1, 2], [3]], [4], "max_new_tokens has 1 entries for 2 prompts"),
    ([[1, 2], [3] * 2001], 40, r"prompt 1: prompt \(2001 tokens\) \+ max_new_tokens \(40\) \+ one block \(8\) exceeds the model's context of 2048"),
    ([[1, 2], [3, "a"]], 4, "prompt 1: token ids must be ints, got str"),
], ids=["empty-prompt", "empty-row", "bad-id", "bad-budget", "budgets-length", "context", "not-int"])
def test_bad_batches_are_one_line_errors(prompts, budgets, message):
    with pytest.raises(OrthrusError, match=message):
        generate_orthrus(model("random"), prompts, budgets, block_size=8)
