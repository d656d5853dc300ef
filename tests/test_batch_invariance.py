"""Batch invariance (docs/ARCHITECTURE.md, "What exact means"): a token's logits do not depend, bit for bit, on the
block, the batch or the cache capacity they are computed with — so Orthrus's greedy output is AR greedy decoding's
in bf16 too, and every row of a batch is that prompt decoded alone.

Torch path in bf16 (on by default when decoding) and fp32 (`set_batch_invariant(True)`); the Triton kernel under
the interpreter in fp32; on a GPU, the kernel and the whole model in bf16.
"""

from __future__ import annotations

import functools

import pytest
import torch

from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import DEFAULT_MODEL, load_model
from orthrus_min.consensus import generate_orthrus
from orthrus_helpers import make_orthrus

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@functools.cache
def tiny(dtype: str, backend: str = "torch", device: str = "cpu"):
    """A tiny Orthrus model (vocab 320, 2 layers, GQA 4/2, head_dim 64), batch-invariant; shared: do not modify."""
    model = make_orthrus(3, "perturbed", block_size=32, head_dim=64)[1].to(device=device, dtype=DTYPES[dtype])
    model.model.rotary_emb.build(device)  # the RoPE tables stay fp32
    model.set_attn_backend(backend)
    model.set_batch_invariant(True)
    return model


def prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(6, 320, (n,), generator=g).tolist() for n in lengths]


@torch.inference_mode()
def prefill(model, rows: list[list[int]], capacity: int):
    """A cache holding each row's prompt (right-padded, one forward, as the engine's prefill)."""
    cache = model.new_cache(capacity, len(rows))
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=model.device)
    model(ids, cache)
    cache.rollback(torch.tensor([len(r) for r in rows], device=model.device))
    return cache


@torch.inference_mode()
def one_at_a_time(model, prompt: list[int], tokens: list[int], capacity: int) -> torch.Tensor:
    """Logits (n, V) of `tokens` fed one per forward after `prompt`: as AR decoding computes them."""
    cache = prefill(model, [prompt], capacity)
    return torch.cat([model(torch.tensor([[t]], device=model.device), cache)[0] for t in tokens])


@torch.inference_mode()
def in_a_block(model, rows: list[list[int]], blocks: list[list[int]], capacity: int, view: str = "ar") -> torch.Tensor:
    """Logits (B, T, V) of each row's block of T tokens in one forward over a batch: as a verify (or draft) pass."""
    cache = prefill(model, rows, capacity)
    return model(torch.tensor(blocks, device=model.device), cache, view=view)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("T", [2, 3, 8, 32])
def test_a_token_gives_the_same_logits_alone_in_a_block_and_in_a_batch(dtype, T):
    model = tiny(dtype)
    rows = prompts([40, 7, 90])
    blocks = [r[:T] for r in prompts([T] * 3, seed=1)]
    alone = one_at_a_time(model, rows[0], blocks[0], capacity=40 + T)  # the smallest cache it fits in
    batched = in_a_block(model, rows, blocks, capacity=200)  # next to a shorter and a longer row, in a larger cache
    assert alone.dtype == DTYPES[dtype]
    assert torch.equal(batched[0], alone)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_a_draft_block_gives_the_same_logits_alone_and_in_a_batch(dtype):
    model = tiny(dtype)
    rows = prompts([40, 7, 90])
    blocks = [[r[-1]] + [5] * 7 for r in rows]  # [x_p, MASK, …]: the diffusion view's draft block
    alone = in_a_block(model, rows[:1], blocks[:1], capacity=48, view="diffusion")
    batched = in_a_block(model, rows, blocks, capacity=300, view="diffusion")
    assert torch.equal(batched[:1], alone)


def test_fp32_by_default_keeps_the_fused_kernels():
    """`auto` turns batch invariance on for bf16/fp16 decoding only: in fp32 it would slow AR decoding down."""
    from orthrus_min.invariant import batch_invariant_now

    with torch.inference_mode():
        assert batch_invariant_now(None, torch.bfloat16) and batch_invariant_now(None, torch.float16)
        assert not batch_invariant_now(None, torch.float32)
        assert batch_invariant_now(True, torch.float32)
    assert not batch_invariant_now(None, torch.bfloat16)  # training and plain calls: the fused kernels


@pytest.mark.parametrize("K", [2, 4, 8, 16, 32])
def test_bf16_orthrus_greedy_equals_ar_and_batched_rows_equal_alone(K):
    model = tiny("bf16")
    rows = prompts([12, 50, 3])
    ar = [generate_ar(model, p, 40, ignore_eos=True).tokens for p in rows]
    assert [generate_orthrus(model, p, 40, block_size=K, ignore_eos=True).tokens for p in rows] == ar
    assert [g.tokens for g in generate_orthrus(model, rows, 40, block_size=K, ignore_eos=True)] == ar
    assert [g.tokens for g in generate_ar(model, rows, 40, ignore_eos=True)] == ar


PROMPT_ID = "python3.11/cgi.py:924"


def test_shipped_model_in_bf16_orthrus_equals_ar():
    """A held-out prompt whose bf16 Orthrus output left AR's at its 12th token (K = 4 and 32) without batch invariance."""
    from orthrus_min.prompts import encode_prompt, read_prompt_file
    from orthrus_min.tokenizer import Tokenizer

    model = load_model(DEFAULT_MODEL, dtype="bfloat16", device="cpu")  # batch invariance: auto, on for bf16
    prompt = next(p for p in read_prompt_file(DEFAULT_MODEL / "heldout_prompts.jsonl") if p.id == PROMPT_ID)
    ids = encode_prompt(prompt, Tokenizer(DEFAULT_MODEL))
    ar = generate_ar(model, ids, 24, ignore_eos=True).tokens
    assert generate_orthrus(model, ids, 24, block_size=32, ignore_eos=True).tokens == ar


# --------------------------------------------------------------------------- the Triton kernel


@pytest.mark.parametrize("T", [1, 8])
def test_triton_backend_interpreted_fp32_alone_in_a_block_and_in_a_batch(T):
    """The kernel under Triton's interpreter (fp32), in the whole model; prompts longer than one kernel block (64
    queries) are prefilled in blocks of 64, so a row's prefill does not depend on its batch-mates' lengths either."""
    pytest.importorskip("triton")
    from orthrus_min.triton_attn import MAX_BLOCK

    model = tiny("fp32", "triton")
    rows = prompts([MAX_BLOCK + 6, 9])
    blocks = [r[:T] for r in prompts([T] * 2, seed=1)]
    alone = one_at_a_time(model, rows[0], blocks[0], capacity=len(rows[0]) + T)
    batched = in_a_block(model, rows[::-1], blocks[::-1], capacity=150)  # the row second, next to a shorter prompt
    assert torch.equal(batched[1], alone)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 on the GPU's Triton kernel (bench gpu runs it)")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bf16_on_gpu_alone_in_a_block_and_in_a_batch(backend):
    """bf16 on a GPU, whole model: the kernel (or the torch path) and cuBLAS's matmuls must give a token the same
    bits alone and inside a block; this is what decides the GPU's identical-output rate."""
    model = tiny("bf16", backend, "cuda")
    rows = prompts([40, 7, 90])
    blocks = [r[:8] for r in prompts([8] * 3, seed=1)]
    alone = one_at_a_time(model, rows[0], blocks[0], capacity=48)
    batched = in_a_block(model, rows, blocks, capacity=200)
    assert torch.equal(batched[0], alone)
