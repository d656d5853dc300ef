"""The Triton block-attention kernel against its PyTorch reference, and inside the whole model.

On a machine without CUDA the kernel runs in Triton's interpreter (fp32 only: the interpreter
gets `tl.dot` on bf16 wrong); the cases below are a covering subset of the sweep — every prefix
length, block size, GQA group, mask and head_dim appears, in a few combinations — because the
interpreter is slow. On a GPU the same cases run compiled, plus bf16/fp16 ones.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before orthrus_min.triton_attn is first imported
pytest.importorskip("triton")

from orthrus_min import triton_attn  # noqa: E402
from orthrus_min.config import Qwen3Config  # noqa: E402
from orthrus_min.errors import OrthrusError  # noqa: E402
from orthrus_min.kvcache import KVCache  # noqa: E402
from orthrus_min.model import Qwen3ForCausalLM  # noqa: E402
from orthrus_min.triton_attn import block_attention, reference_block_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5  # max abs error, fp32


def make_qkv(B: int, H: int, Hkv: int, T: int, S: int, D: int, dtype=torch.float32, seed: int = 0):
    """q as the model makes it (a (B, T, H, D) tensor transposed) and k, v as strided views of a
    larger (layers, B, Hkv, capacity, D) cache, as `KVCache.write` returns them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g).to(DEVICE, dtype).transpose(1, 2)  # (B, H, T, D)
    cache = torch.randn(2, 3, B, Hkv, S + 7, D, generator=g).to(DEVICE, dtype)  # (k|v, layers, B, Hkv, capacity, D)
    return q, cache[0, 1, :, :, :S], cache[1, 1, :, :, :S]  # (B, H, T, D), (B, Hkv, S, D) x2


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# (L, T, G, causal, D, keys_per_split): every L in {0, 1, 7, 129, 1000}, T in {1, 2, 16, 32}, G in {1, 2, 4, 8},
# both masks, D in {64, 128}, and the split-KV combine three times with smaller splits (once with splits in which
# some queries see no key, once with splits that are not a whole number of key tiles).
KERNEL_CASES = [
    (0, 1, 1, True, 64, None),
    (0, 16, 2, False, 128, None),
    (1, 2, 4, True, 64, None),
    (1, 32, 8, False, 64, None),  # 256 packed rows: two row tiles per KV head
    (7, 16, 1, True, 128, None),
    (7, 1, 8, False, 64, None),
    (129, 32, 2, True, 64, None),
    (129, 2, 1, False, 128, None),
    (1000, 32, 4, True, 128, None),
    (1000, 16, 8, False, 64, None),
    (1000, 1, 2, False, 64, 384),  # 3 splits
    (129, 16, 4, True, 128, 50),  # 3 splits of 50 keys: not whole tiles of 32
    (0, 32, 1, True, 64, 16),  # 2 splits: queries 0 … 15 see no key of the second
]


def case_id(case) -> str:
    L, T, G, causal, D, split = case
    return f"L{L}-K{T}-G{G}-{'causal' if causal else 'bidir'}-D{D}" + (f"-split{split}" if split else "")


@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
def test_kernel_matches_reference(case):
    L, T, G, causal, D, split = case
    B, Hkv = 2, 2
    q, k, v = make_qkv(B, G * Hkv, Hkv, T, L + T, D, seed=L + T + G)
    out = block_attention(q, k, v, causal, keys_per_split=split)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert max_err(out, reference_block_attention(q, k, v, causal)) <= TOL


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("split", [None, 50], ids=["default-split", "split50"])
def test_ragged_batch(causal, split):
    """Rows with different prefix lengths; slots past a row's L+T hold NaN and must never be read."""
    lengths = [1000, 7, 129, 0] if split is None else [100, 0, 37]  # split50: row 0's last split has block keys only,
    T, G, Hkv, D = 16 if split is None else 32, 2, 1, 64  # row 1's second and third splits have none of its keys
    B, S = len(lengths), max(lengths) + T
    q, k, v = make_qkv(B, G * Hkv, Hkv, T, S, D, seed=B)
    for b, Lb in enumerate(lengths):
        k[b, :, Lb + T :] = float("nan")
        v[b, :, Lb + T :] = float("nan")
    lens = torch.tensor(lengths, device=DEVICE)
    out = block_attention(q, k, v, causal, lengths=lens, keys_per_split=split)
    assert not out.isnan().any()
    ref = reference_block_attention(q, k.nan_to_num(), v.nan_to_num(), causal, lengths=lens)
    assert max_err(out, ref) <= TOL


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_lengths_equal_to_default_give_the_same_result(dtype):
    q, k, v = make_qkv(2, 4, 2, 5, 40, 64)
    lens = torch.full((2,), 35, dtype=dtype, device=DEVICE)
    assert torch.equal(block_attention(q, k, v, True, lengths=lens), block_attention(q, k, v, True))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("lengths", [None, [9, 0, 30]], ids=["same-L", "ragged"])
def test_reference_matches_sdpa(causal, lengths):
    """The reference against SDPA with an explicit boolean mask, one row at a time."""
    T, H, Hkv, D = 6, 8, 2, 32
    S = 30 + T
    q, k, v = make_qkv(3, H, Hkv, T, S, D)
    lens = torch.tensor(lengths, device=DEVICE) if lengths else None
    ref = reference_block_attention(q, k, v, causal, lengths=lens)
    for b in range(3):
        Lb = lengths[b] if lengths else S - T
        mask = torch.ones(T, Lb + T, dtype=torch.bool, device=DEVICE)  # (T, Lb+T)
        if causal:
            mask = mask.tril(Lb)  # query i sees keys <= Lb+i
        kb, vb = k[b : b + 1, :, : Lb + T], v[b : b + 1, :, : Lb + T]
        expected = F.scaled_dot_product_attention(q[b : b + 1], kb, vb, attn_mask=mask, enable_gqa=True)
        assert max_err(ref[b : b + 1], expected) <= TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16/fp16 only on a GPU (the interpreter computes bf16 tl.dot wrongly)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", [(4096, 32, 2, True, 128, None), (4096, 32, 4, False, 128, None),
                                  (63, 7, 8, True, 256, None), (1000, 16, 1, False, 16, 200)], ids=case_id)
def test_kernel_half_precision_on_gpu(case, dtype):
    L, T, G, causal, D, split = case
    q, k, v = make_qkv(1, G * 8, 8, T, L + T, D, dtype=dtype)
    out = block_attention(q, k, v, causal, keys_per_split=split)
    ref = reference_block_attention(q.float(), k.float(), v.float(), causal)
    assert out.dtype == dtype and max_err(out, ref) <= 2e-2


# --------------------------------------------------------------------------- whole model


def tiny_orthrus(seed: int = 0) -> Qwen3ForCausalLM:
    """A tiny random Orthrus model (AR + diffusion view), fp32, built from our own config."""
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                         model_type="orthrus", block_size=8, mask_token_id=96)
    model = Qwen3ForCausalLM(config).to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)  # sharper attention and logits than the default init
    return model


@torch.no_grad()
def test_model_logits_triton_equal_torch():
    """Prefill, an AR verify step, a diffusion draft, a long (T > 64, SDPA fallback) chunk, another AR step."""
    model = tiny_orthrus()
    steps = [("ar", 20), ("ar", 5), ("diffusion", 8), ("ar", 70), ("ar", 3)]
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(0, 97, (2, T), generator=g).to(DEVICE) for _, T in steps]
    logits, caches = {}, {}
    for backend in ("torch", "triton"):
        model.set_attn_backend(backend)
        cache = model.new_cache(128, batch_size=2)
        logits[backend] = [model(ids, cache=cache, view=view) for (view, _), ids in zip(steps, inputs)]
        caches[backend] = cache
    for (view, T), a, b in zip(steps, logits["torch"], logits["triton"]):
        assert max_err(a, b) <= TOL, f"{view} step of {T} tokens"
    assert caches["triton"].lengths.tolist() == caches["torch"].lengths.tolist() == [20 + 5 + 70 + 3] * 2
    for k_triton, k_torch in zip(caches["triton"].k, caches["torch"].k):
        assert max_err(k_triton[:, :, :98], k_torch[:, :, :98]) <= TOL


# --------------------------------------------------------------------------- what the kernel assumes of its inputs


def _bad_inputs(name: str):
    q, k, v = make_qkv(2, 4, 2, 3, 10, 16)
    lengths, causal = None, True
    if name == "q-not-4d":
        q = q[0]
    elif name == "kv-shapes-differ":
        v = v[:, :, :9]
    elif name == "heads-not-multiple":
        q = torch.randn(2, 3, 3, 16, device=DEVICE)
    elif name == "bidirectional-block-too-long":
        (q, k, v), causal = make_qkv(1, 2, 2, 65, 70, 16), False
    elif name == "fewer-keys-than-block":
        k, v = k[:, :, :2], v[:, :, :2]
    elif name == "head-dim-48":
        q, k, v = make_qkv(1, 2, 2, 3, 10, 48)
    elif name == "dtype-float64":
        q, k, v = q.double(), k.double(), v.double()
    elif name == "dtypes-differ":
        k = k.half()
    elif name == "last-dim-strided":
        q = torch.randn(2, 4, 16, 3, device=DEVICE).transpose(-1, -2)  # (B, H, T, D) with D stride 3
    elif name == "lengths-shape":
        lengths = torch.tensor([7], device=DEVICE)
    elif name == "lengths-float":
        lengths = torch.tensor([7.0, 7.0], device=DEVICE)
    return q, k, v, lengths, causal


INPUT_ERRORS = {  # inputs that would read out of bounds or give a wrong result: an assert, before the launch
    "q-not-4d": (ValueError, r"not enough values to unpack \(expected 4, got 3\)"),
    "kv-shapes-differ": (AssertionError, r"k \(2, 2, 10, 16\) and v \(2, 2, 9, 16\) must be \(B, Hkv, S, D\)"),
    "heads-not-multiple": (AssertionError, r"3 query heads is not a multiple of 2 KV heads"),
    "bidirectional-block-too-long": (AssertionError, r"T=65 queries: the kernel takes 1 to 64"),
    "fewer-keys-than-block": (AssertionError, r"T=3 queries: the kernel takes 1 to 64, at most S=2"),
    "head-dim-48": (AssertionError, r"head_dim D=48: the kernel takes a power of two from 16 to 256"),
    "dtype-float64": (AssertionError, r"dtypes torch.float64, torch.float64, torch.float64"),
    "dtypes-differ": (AssertionError, r"dtypes torch.float32, torch.float16, torch.float32"),
    "last-dim-strided": (AssertionError, r"q, k, v must have stride 1 in their last dim"),
    "lengths-shape": (AssertionError, r"lengths must be a \(2,\) int32/int64 tensor"),
    "lengths-float": (AssertionError, r"lengths must be a \(2,\) int32/int64 tensor"),
}


@pytest.mark.parametrize("name", list(INPUT_ERRORS))
def test_inputs_the_kernel_cannot_take(name):
    q, k, v, lengths, causal = _bad_inputs(name)
    error, message = INPUT_ERRORS[name]
    with pytest.raises(error, match=message):
        block_attention(q, k, v, causal, lengths=lengths)


def test_keys_per_split_must_be_positive():
    q, k, v = make_qkv(1, 2, 2, 3, 10, 16)
    with pytest.raises(AssertionError, match="keys_per_split must be >= 1, got 0"):
        block_attention(q, k, v, True, keys_per_split=0)


def test_lengths_out_of_range_are_clamped_never_read_past():
    """A length's value is not checked (that would be a host sync on a GPU): the kernel clamps it into 0 … S-T."""
    q, k, v = make_qkv(2, 4, 2, 3, 10, 16)
    clamped = block_attention(q, k, v, True, lengths=torch.tensor([7, 7], device=DEVICE))
    assert torch.equal(block_attention(q, k, v, True, lengths=torch.tensor([7, 8], device=DEVICE)), clamped)
    assert torch.equal(block_attention(q, k, v, True, lengths=torch.tensor([-5, 0], device=DEVICE)),
                       block_attention(q, k, v, True, lengths=torch.tensor([0, 0], device=DEVICE)))


def test_a_long_causal_block_runs_in_pieces():
    """T > MAX_BLOCK, causal (a long prefill): blocks of MAX_BLOCK queries, each after the queries before it."""
    B, H, Hkv, T, L, D = 2, 2, 1, triton_attn.MAX_BLOCK + 6, 5, 16
    q, k, v = make_qkv(B, H, Hkv, T, L + T, D, seed=5)
    lengths = torch.tensor([L, 2], device=DEVICE)
    out = block_attention(q, k, v, True, lengths=lengths)
    assert out.shape == q.shape and max_err(out, reference_block_attention(q, k, v, True, lengths=lengths)) <= TOL


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU-without-interpreter message")
def test_cpu_without_interpreter_says_how_to_enable_it(monkeypatch):
    monkeypatch.setattr(triton_attn, "_kernel_is_interpreted", lambda: False)
    q, k, v = make_qkv(1, 2, 2, 3, 10, 16)
    with pytest.raises(OrthrusError, match="set TRITON_INTERPRET=1 before orthrus_min.triton_attn is imported"):
        block_attention(q, k, v, True)


def test_kvcache_views_are_what_the_kernel_reads():
    """The layout contract with kvcache.py: a layer's k, v as `KVCache.write` returns them (the whole layer,
    rows of different lengths) go to the kernel as they are, with the cache's lengths."""
    cache = KVCache(2, 2, 2, 40, 16, device=DEVICE)  # 2 layers, B = 2, Hkv = 2, capacity 40, D = 16
    _, k_prefix, v_prefix = make_qkv(2, 4, 2, 9, 9, 16, seed=1)
    cache.write(1, k_prefix, v_prefix)
    cache.advance(9)  # an AR forward kept 9 tokens in both rows ...
    cache.rollback(torch.tensor([6, 9], device=DEVICE))  # ... and row 0 rolled back to 6
    q, k_block, v_block = make_qkv(2, 4, 2, 4, 4, 16, seed=2)
    k, v = cache.write(1, k_block, v_block)  # (2, 2, 40, 16): the whole layer
    assert k.shape == (2, 2, 40, 16) and k.data_ptr() == cache.k[1].data_ptr()
    for causal in (True, False):
        got = block_attention(q, k, v, causal, lengths=cache.lengths)
        assert max_err(got, reference_block_attention(q, k, v, causal, lengths=cache.lengths)) <= TOL


# --------------------------------------------------------------------------- benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for machines without a GPU")
def test_bench_attn_without_gpu_exits_2(capsys):
    from orthrus_min.bench.cli import main

    assert main(["attn"]) == 2
    assert "bench attn needs a CUDA GPU" in capsys.readouterr().err


def test_launch_config_depends_on_dtype_and_head_dim_only():
    """Batch invariance: the tile shapes and the split size never follow T, B, S or the GPU's size."""
    def config(B, T, S, D=128, dtype=torch.bfloat16):
        q = torch.empty(B, 16, T, D, dtype=dtype, device="meta")
        return triton_attn.choose_config(q, torch.empty(B, 8, S, D, dtype=dtype, device="meta"))

    configs = {config(B, T, S) for B, T, S in ((1, 1, 100), (1, 32, 100), (16, 7, 100), (1, 32, 40000))}
    assert configs == {triton_attn.LaunchConfig(128, 64, 8, 3, triton_attn.KEYS_PER_SPLIT)}
    # fp32 with D = 256: rows of 1 KiB get smaller tiles
    assert config(1, 3, 10, D=256, dtype=torch.float32) == triton_attn.LaunchConfig(64, 16, 4, 2, triton_attn.KEYS_PER_SPLIT)


@pytest.mark.parametrize("split", [None, 48], ids=["default-split", "split48"])
def test_a_query_gives_the_same_bits_alone_in_a_block_in_a_batch(split):
    """Batch invariance (docs/ARCHITECTURE.md, "What exact means"): the AR view's query at position p gives the same
    bits alone (T = 1, as AR decoding computes it), as the last query of a verify block of T, next to rows of other
    lengths, and over caches of other capacities (so over another number of splits)."""
    assert_query_invariance(split, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot on a GPU (bench gpu runs it)")
@pytest.mark.parametrize("split", [None, 48], ids=["default-split", "split48"])
def test_a_bf16_query_gives_the_same_bits_alone_and_in_a_block_on_gpu(split):
    """The same with the GPU's bf16 tl.dot, whose rows must not depend on where they sit in the tile."""
    assert_query_invariance(split, torch.bfloat16)


def assert_query_invariance(split: int | None, dtype: torch.dtype) -> None:
    p, G, Hkv, D = 150, 2, 2, 64
    q, k, v = make_qkv(3, G * Hkv, Hkv, 32, 300, D, dtype=dtype, seed=3)  # (3, H, 32, D), (3, Hkv, 300, D) x2
    for T in (1, 3, 32):
        alone = block_attention(q[:1, :, T - 1 : T], k[:1, :, : p + 1], v[:1, :, : p + 1], True,
                                lengths=torch.tensor([p], device=DEVICE), keys_per_split=split)
        lengths = torch.tensor([p - T + 1, 7, 300 - T], device=DEVICE)  # the block's last query sits at position p
        block = block_attention(q[:, :, :T], k, v, True, lengths=lengths, keys_per_split=split)
        assert torch.equal(block[0, :, T - 1], alone[0, :, 0]), f"T={T}"


def test_a_draft_block_gives_the_same_bits_alone_and_in_a_batch():
    """The diffusion view's block (bidirectional): the same bits alone over a cache of its own size and in a batch."""
    L, T, G, Hkv, D = 150, 8, 2, 2, 64
    q, k, v = make_qkv(3, G * Hkv, Hkv, T, 300, D, seed=4)
    alone = block_attention(q[:1], k[:1, :, : L + T], v[:1, :, : L + T], False, lengths=torch.tensor([L], device=DEVICE),
                            keys_per_split=48)
    batch = block_attention(q, k, v, False, lengths=torch.tensor([L, 0, 250], device=DEVICE), keys_per_split=48)
    assert torch.equal(batch[:1], alone)
