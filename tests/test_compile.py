"""Compiled decoding (torch.compile, CPU inductor) gives exactly the eager tokens.

Each step is compiled whole (fullgraph=True: a graph break would raise), once per shape; the
tests keep to tiny models and few shapes, since every new shape costs a compile (seconds here).
"""

from __future__ import annotations

import json

import pytest

from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import DEFAULT_MODEL, load_model
from orthrus_min.consensus import generate_orthrus
from orthrus_min.engine import CAPACITY_BUCKET
from orthrus_min.sampling import SamplingParams
from orthrus_min.tokenizer import Tokenizer
from orthrus_helpers import capture_caches, make_orthrus


@pytest.fixture(scope="module")
def shipped():
    model, tok = load_model(DEFAULT_MODEL, device="cpu"), Tokenizer(DEFAULT_MODEL)
    lines = (DEFAULT_MODEL / "heldout_prompts.jsonl").read_text().splitlines()[:3]
    return model, [tok.encode(json.loads(line)["prompt"]) for line in lines]


def test_compiled_orthrus_equals_eager_on_the_shipped_model(shipped):
    model, prompts = shipped
    caches = capture_caches(model)
    for prompt in prompts:  # one compile: batch 1, K = 8, and the three prompts share a capacity bucket
        eager = generate_orthrus(model, prompt, 48, block_size=8, ignore_eos=True)
        compiled = generate_orthrus(model, prompt, 48, block_size=8, ignore_eos=True, compile_mode="default")
        assert compiled.tokens == eager.tokens and compiled.accepted == eager.accepted
    assert {c.capacity for c in caches[1::2]} == {CAPACITY_BUCKET}  # compiled caches are rounded up to a bucket
    assert [c.capacity for c in caches[0::2]] == [len(p) + 48 + 8 for p in prompts]  # eager ones are exact


def test_compiled_batches_equal_eager_on_a_tiny_model():
    """A batch of ragged rows: Orthrus sampled (the whole rule, random numbers included, in the graph) and AR greedy."""
    _, model = make_orthrus(9, "perturbed", block_size=8, eos_token_id=None)
    prompts = [[5, 6, 7], list(range(30, 90)), [300] * 11]
    budgets = [20, 9, 30]
    for decode, sampling in ((generate_orthrus, SamplingParams(temperature=0.9, top_k=20, seed=5)), (generate_ar, SamplingParams())):
        eager = decode(model, prompts, budgets, sampling, ignore_eos=True)
        compiled = decode(model, prompts, budgets, sampling, ignore_eos=True, compile_mode="default")
        assert [g.tokens for g in compiled] == [g.tokens for g in eager], decode.__name__


def test_compiled_triton_backend_equals_eager():
    """The kernel is one opaque operator inside the compiled step (here in Triton's interpreter)."""
    _, model = make_orthrus(10, "random", block_size=4, eos_token_id=None, num_hidden_layers=1)
    model.set_attn_backend("triton")
    eager = generate_orthrus(model, [[1, 2, 3], [4] * 9], 6, block_size=4, ignore_eos=True)
    compiled = generate_orthrus(model, [[1, 2, 3], [4] * 9], 6, block_size=4, ignore_eos=True, compile_mode="default")
    assert [g.tokens for g in compiled] == [g.tokens for g in eager]
    model.set_attn_backend("torch")
    assert [g.tokens for g in generate_orthrus(model, [[1, 2, 3], [4] * 9], 6, block_size=4, ignore_eos=True)] == \
        [g.tokens for g in eager]


def test_unknown_compile_mode_is_a_clear_error():
    from orthrus_min import OrthrusError

    _, model = make_orthrus(9, "random", block_size=8)
    with pytest.raises(OrthrusError, match="compile mode 'fast' is unknown"):
        generate_ar(model, [1, 2], 4, compile_mode="fast")
