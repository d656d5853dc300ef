"""The MLX backend (`orthrus_min/mlx/`) against the torch model and decoders it mirrors.

* both views' logits equal the torch model's in fp32 (tiny random configs: GQA, MQA, head_dim
  not hidden/heads, tied and untied embeddings; prefixes of 0, 1 and 130 tokens), and checkpoints
  written by Transformers (one file or sharded) load with the same strict name check;
* greedy Orthrus and AR output equal the torch decoders' token for token: the shipped model's
  16 held-out prompts, and random tiny models (hypothesis);
* sampling: the counter-based uniforms are the torch sampler's bit for bit; the speculative
  rule passes a chi-square test against AR sampling's exact distribution of the next three
  tokens, three broken rules fail it, and the whole decoder passes it too;
* `check=True`, streaming `on_tokens(row, tokens)`, the cache after roll back, bf16, and one
  test per bad input with its one-line error.

MLX is optional: without it the module is skipped (`pip install "orthrus-min[mlx]"`).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

mx = pytest.importorskip("mlx.core", reason='MLX is not installed: pip install "orthrus-min[mlx]" (mlx[cpu] on Linux, mlx on macOS)')

import orthrus_min.mlx.consensus as mlx_consensus  # noqa: E402
import orthrus_min.mlx.sampling as mlx_sampling  # noqa: E402
from conftest import save_checkpoint  # noqa: E402
from orthrus_helpers import make_orthrus  # noqa: E402
from orthrus_min import OrthrusError  # noqa: E402
from orthrus_min.ar import generate_ar as torch_generate_ar  # noqa: E402
from orthrus_min.checkpoint import DEFAULT_MODEL, save_model  # noqa: E402
from orthrus_min.checkpoint import load_model as torch_load_model  # noqa: E402
from orthrus_min.consensus import generate_orthrus as torch_generate_orthrus  # noqa: E402
from orthrus_min.errors import ConsensusCheckError  # noqa: E402
from orthrus_min.mlx import check_backend_args, generate_ar, generate_orthrus, load_model  # noqa: E402
from orthrus_min.mlx.consensus import speculative_accept  # noqa: E402
from orthrus_min.mlx.sampling import ACCEPT, DRAFT, TOKEN, sample_from, to_device, uniforms, warp_probs  # noqa: E402
from orthrus_min.sampling import SamplingParams  # noqa: E402
from orthrus_min.sampling import warp_probs as torch_warp_probs  # noqa: E402
from orthrus_min.tokenizer import Tokenizer  # noqa: E402

CONFIGS = {  # tiny Qwen3 shapes beside conftest.tiny_config (hidden 64, 4 heads)
    "gqa2-headdim32": dict(head_dim=32),  # head_dim != hidden / heads = 16
    "mqa-tied-3layers": dict(num_key_value_heads=1, tie_word_embeddings=True, num_hidden_layers=3, rope_theta=1e6),
    "gqa3-tied-headdim24": dict(num_attention_heads=6, num_key_value_heads=2, head_dim=24, tie_word_embeddings=True),
}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """twins(config, seed, diffusion) -> (torch Orthrus model, the same checkpoint loaded in MLX, fp32), built once."""
    built = {}

    def get(config: str, seed: int = 0, diffusion: str = "random"):
        key = (config, seed, diffusion)
        if key not in built:
            _, model = make_orthrus(seed, diffusion, block_size=8, **CONFIGS[config])
            folder = tmp_path_factory.mktemp("mlx_twin")
            save_model(model, folder)
            built[key] = model, load_model(folder, dtype="float32", device="cpu")
        return built[key]

    return get


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def np_of(x) -> np.ndarray:
    """An MLX array or a torch tensor as numpy."""
    return np.array(x) if isinstance(x, mx.array) else x.detach().numpy()


# --------------------------------------------------------------------------- the model: logits equal torch's


@pytest.mark.parametrize("view", ["ar", "diffusion"])
@pytest.mark.parametrize("prefix_len", [0, 1, 130])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_logits_match_torch(twins, config, prefix_len, view):
    """A prefix through the AR view, a block of 6 through `view`, then 3 more AR tokens: every logit as torch's."""
    tm, mm = twins(config)
    g = torch.Generator().manual_seed(prefix_len)
    prefix, block, after = (torch.randint(0, 320, (1, n), generator=g) for n in (prefix_len, 6, 3))
    tc, mc = tm.new_cache(prefix_len + 9), mm.new_cache(prefix_len + 9)
    errors = []
    for ids, v in ((prefix, "ar"), (block, view), (after, "ar")):
        if ids.shape[1] == 0:
            continue
        ref = tm(ids, tc, view=v)  # (1, T, V)
        ours = mm(mx.array(ids.numpy()), mc, view=v)
        assert ours.shape == tuple(ref.shape) and ours.dtype == mx.float32
        errors.append(rel_err(np_of(ours), np_of(ref)))
        assert tc.lengths.tolist() == [mc.length]  # the AR view appends its block, the diffusion view does not
    assert max(errors) <= 1e-4, errors  # measured: at most 4.3e-7
    L = int(tc.lengths[0])
    assert rel_err(np.array(mc.keys(1))[0], np_of(tc.keys(1))) <= 1e-4 and mc.keys(1).shape == (1, tm.config.num_key_value_heads, L, tm.config.head_dim)


def test_forward_without_cache_and_logits_to_keep(twins):
    tm, mm = twins("gqa2-headdim32")
    ids = torch.randint(0, 320, (3, 40), generator=torch.Generator().manual_seed(1))  # a batch of 3, no cache
    for view, keep in (("ar", 0), ("ar", 5), ("diffusion", 0)):
        ref = tm(ids, view=view, logits_to_keep=keep)
        ours = mm(mx.array(ids.numpy()), view=view, logits_to_keep=keep)
        assert ours.shape == tuple(ref.shape) and rel_err(np.array(ours), np_of(ref)) <= 1e-4


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("shards", [False, True], ids=["one-file", "sharded"])
def test_transformers_checkpoints_load(tmp_path, tied, shards):
    """An AR-only checkpoint written by Transformers' save_pretrained (one file, or shards with an index) loads in MLX."""
    hf = save_checkpoint(tmp_path, seed=2, tokenizer=False, tie_word_embeddings=tied)
    if shards:
        for f in tmp_path.glob("*.safetensors"):
            f.unlink()
        hf.save_pretrained(tmp_path, max_shard_size="50KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    ids = torch.randint(0, 320, (1, 25), generator=torch.Generator().manual_seed(0))
    ref = hf(ids).logits
    mm = load_model(tmp_path, dtype="float32", device="cpu")
    assert rel_err(np.array(mm(mx.array(ids.numpy()))), np_of(ref)) <= 1e-4
    assert ("lm_head" in mm) is not tied  # tied: the logits use embed_tokens' matrix, no lm_head parameter


# --------------------------------------------------------------------------- greedy decoding equals torch's


@pytest.fixture(scope="module")
def shipped():
    """The shipped model in fp32 on both backends, and its held-out prompts as token ids."""
    tok = Tokenizer(DEFAULT_MODEL)
    lines = (DEFAULT_MODEL / "heldout_prompts.jsonl").read_text().splitlines()
    prompts = [tok.encode(json.loads(line)["prompt"]) for line in lines if line.strip()]
    return torch_load_model(DEFAULT_MODEL, dtype="float32", device="cpu"), load_model(DEFAULT_MODEL, dtype="float32", device="cpu"), prompts


def test_greedy_orthrus_equals_torch_on_heldout_prompts(shipped):
    """4 held-out prompts x 32 tokens at K = 8: the same tokens and the same accepted run lengths as the torch decoder.
    (Four, not all sixteen: MLX's Linux CPU wheel runs its matmuls on a reference BLAS, about 10x slower than torch.)"""
    tm, mm, prompts = shipped
    assert len(prompts) == 16
    runs = []
    for ids in prompts[:4]:
        ref = torch_generate_orthrus(tm, ids, 32, block_size=8, ignore_eos=True)
        ours = generate_orthrus(mm, ids, 32, block_size=8, ignore_eos=True)
        assert ours.tokens == ref.tokens and ours.accepted == ref.accepted and ours.num_forwards == ref.num_forwards
        runs += ours.accepted
    assert np.mean(runs) > 2.5  # the shipped diffusion view drafts well (measured: 3.35)


def test_sampled_outputs_equal_torch_given_a_seed(shipped):
    """Counter-based random numbers: with the same seed both backends draw the same tokens (2 prompts, Orthrus and AR)."""
    tm, mm, prompts = shipped
    for seed, ids in enumerate(prompts[:2]):
        params = SamplingParams(temperature=0.8, top_k=40, seed=seed)
        assert generate_orthrus(mm, ids, 24, params, block_size=8, ignore_eos=True).tokens == \
            torch_generate_orthrus(tm, ids, 24, params, block_size=8, ignore_eos=True).tokens
        assert generate_ar(mm, ids, 16, params, ignore_eos=True).tokens == torch_generate_ar(tm, ids, 16, params, ignore_eos=True).tokens


def test_greedy_ar_equals_torch_on_heldout_prompts(shipped):
    tm, mm, prompts = shipped
    for ids in prompts[4:6]:
        ref = torch_generate_ar(tm, ids, 16, ignore_eos=True)
        ours = generate_ar(mm, ids, 16, ignore_eos=True)
        assert ours.tokens == ref.tokens and ours.num_forwards == ref.num_forwards == 15


@settings(max_examples=8, deadline=None)
@given(config=st.sampled_from(sorted(CONFIGS)), diffusion=st.sampled_from(["random", "perturbed"]),
       prompt=st.lists(st.integers(0, 319), min_size=1, max_size=20), K=st.sampled_from([1, 2, 3, 8]),
       max_new_tokens=st.integers(1, 30), eos_at=st.none() | st.integers(0, 29))
def test_greedy_decoders_equal_torch_on_random_models(twins, config, diffusion, prompt, K, max_new_tokens, eos_at):
    tm, mm = twins(config, diffusion=diffusion)
    eos = None
    if eos_at is not None:  # an EOS the model will produce
        eos = torch_generate_ar(tm, prompt, max_new_tokens, ignore_eos=True).tokens[min(eos_at, max_new_tokens - 1)]
    ignore = eos is None
    ref = torch_generate_orthrus(tm, prompt, max_new_tokens, block_size=K, eos_token_id=eos, ignore_eos=ignore)
    ours = generate_orthrus(mm, prompt, max_new_tokens, block_size=K, eos_token_id=eos, ignore_eos=ignore, check=True)
    assert (ours.tokens, ours.accepted, ours.finish_reason) == (ref.tokens, ref.accepted, ref.finish_reason)
    ours_ar = generate_ar(mm, prompt, max_new_tokens, eos_token_id=eos, ignore_eos=ignore)
    assert (ours_ar.tokens, ours_ar.finish_reason) == (ref.tokens, ref.finish_reason)


def test_roll_back_leaves_the_cache_as_ar_decoding_would(twins):
    """After every iteration the cache holds prompt + committed tokens - 1 entries, with the K/V of an AR pass over them."""
    _, mm = twins("gqa2-headdim32", diffusion="perturbed")
    caches, allocate = [], mm.new_cache
    mm.new_cache = lambda *a, **k: caches.append(allocate(*a, **k)) or caches[-1]
    prompt, committed, lengths = list(range(100, 120)), [], []

    def compare_with_ar(row, run):
        assert row == 0
        committed.extend(run)
        L = len(prompt) + len(committed) - 1
        assert caches[0].length == L
        reference = allocate(L)
        mm(mx.array([prompt + committed[:-1]]), reference)
        for layer in range(mm.config.num_hidden_layers):
            assert rel_err(np.array(caches[0].keys(layer)), np.array(reference.keys(layer))) <= 1e-5
            assert rel_err(np.array(caches[0].values(layer)), np.array(reference.values(layer))) <= 1e-5
        lengths.append(len(run))

    try:
        out = generate_orthrus(mm, prompt, 30, SamplingParams(temperature=0.8, top_k=20, seed=3), ignore_eos=True,
                               on_tokens=compare_with_ar)
    finally:
        del mm.new_cache
    assert lengths == [1] + out.accepted and max(out.accepted) > 1 and min(out.accepted) == 1


def test_streaming_callback_gets_row_and_runs(twins):
    """on_tokens(row, tokens): row 0, and the runs concatenate to the output (both decoders)."""
    _, mm = twins("mqa-tied-3layers", diffusion="perturbed")
    for decode in (generate_ar, generate_orthrus):
        seen = []
        out = decode(mm, [7, 8, 9], 25, ignore_eos=True, on_tokens=lambda row, tokens: seen.append((row, list(tokens))))
        assert {row for row, _ in seen} == {0} and [t for _, run in seen for t in run] == out.tokens
        assert len(out.tokens) == 25 and out.finish_reason == "length"
        if decode is generate_orthrus:
            assert [len(run) for _, run in seen] == [1] + out.accepted


# --------------------------------------------------------------------------- sampling: the counter-based draws


def test_uniforms_are_the_torch_samplers_bits():
    """Reference values of the torch sampler's uniforms(seed, position, stream), and, when present, the function itself."""
    expected = {  # (seed, position, stream): value
        (0, 0, DRAFT): 9.507616915982453e-11, (0, 1, DRAFT): 0.34749278189188515, (0, 100000, DRAFT): 0.7428073305607699,
        (7, 6, DRAFT): 0.886118197171462, (7, 0, ACCEPT): 0.8824607996707656, (2**63 - 1, 6, ACCEPT): 0.5604448468171783,
        (123456789012345, 1, ACCEPT): 0.32255322772795225, (0, 0, TOKEN): 0.84958450900401,
        (7, 100000, TOKEN): 0.02439858206877088, (2**63 - 1, 6, TOKEN): 0.9121218672153156,
        (123456789012345, 100000, TOKEN): 0.2860868965471596,
    }
    for (seed, position, stream), value in expected.items():
        assert uniforms(seed, [position], stream)[0] == value
    import orthrus_min.sampling as torch_sampling

    if hasattr(torch_sampling, "uniforms"):  # the torch sampler with counter-based randomness
        seeds = torch.tensor([0, 1, 99, 2**40 + 3, 2**63 - 1])
        positions = torch.arange(0, 5000, 7).expand(len(seeds), -1)
        for stream in (DRAFT, ACCEPT, TOKEN):
            ref = torch_sampling.uniforms(seeds, positions, stream).numpy()
            ours = np.stack([uniforms(int(s), positions[0].numpy(), stream) for s in seeds])
            assert (ours == ref).all()


def test_sample_from_is_the_inverse_cdf():
    probs = mx.array([[0.0, 0.25, 0.0, 0.75, 0.0]] * 7)  # (7, V)
    u = np.array([0.0, 0.2499, 0.25, 0.6, 0.9999, np.nextafter(1.0, 0.0), 1.0 - 1e-9])
    assert np.array(sample_from(probs, to_device(u))).tolist() == [1, 1, 3, 3, 3, 3, 3]
    # float32 uniforms (the GPU's) can round to 1.0: the draw still lands on the last token with mass, never past it.
    assert np.array(sample_from(probs, mx.array(u.astype(np.float32)))).tolist() == [1, 1, 3, 3, 3, 3, 3]
    unnormalised = mx.array([[2.0, 0.0, 6.0]])  # probs need not sum to 1
    assert np.array(sample_from(unnormalised, to_device(np.array([0.26])))).tolist() == [2]


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_k=7),
                                    SamplingParams(temperature=1.0, top_p=0.8), SamplingParams(temperature=0.5, top_k=40, top_p=0.9)],
                         ids=["temperature", "top-k", "top-p", "all"])
def test_warp_probs_equals_torch(params):
    logits = torch.randn(4, 320, generator=torch.Generator().manual_seed(0)) * 3
    ref = torch_warp_probs(logits, params).numpy()
    ours = np.array(warp_probs(mx.array(logits.numpy()), params))
    assert np.abs(ours - ref).max() <= 1e-6 and ((ours > 0) == (ref > 0)).all()


def reference_ar_sample(tm, prompt: list[int], n: int, params: SamplingParams) -> list[int]:
    """AR sampling written out: torch logits, torch warping, and an inverse-CDF draw in float64 with uniforms(seed, t, TOKEN)."""
    ids = list(prompt)
    for _ in range(n):
        probs = torch_warp_probs(tm(torch.tensor([ids]), logits_to_keep=1)[0, -1], params).double().numpy()  # (V,)
        x = uniforms(params.seed, [len(ids)], TOKEN)[0] * probs.sum()
        ids.append(int(np.searchsorted(np.cumsum(probs), x, side="right")))
    return ids[len(prompt):]


def test_sampled_tokens_follow_the_counter_based_rule(twins):
    """The token at position t is the inverse-CDF draw of (seed, t, TOKEN): AR sampling, and Orthrus at K = 1 (no drafts)."""
    tm, mm = twins("gqa2-headdim32", diffusion="perturbed")
    for seed in (0, 5):
        params = SamplingParams(temperature=0.9, top_k=50, seed=seed)
        expected = reference_ar_sample(tm, [4, 5, 6], 12, params)
        assert generate_ar(mm, [4, 5, 6], 12, params, ignore_eos=True).tokens == expected
        assert generate_orthrus(mm, [4, 5, 6], 12, params, block_size=1, ignore_eos=True).tokens == expected
    runs = {tuple(generate_orthrus(mm, [4, 5, 6], 12, SamplingParams(1.0, seed=s), ignore_eos=True).tokens) for s in (1, 1, 2)}
    assert len(runs) == 2  # a seed repeats its output; another seed gives another one


# --------------------------------------------------------------------------- sampling is lossless: chi-square tests

from test_sampling_lossless import CONTEXT, MASK, SETTINGS, V  # noqa: E402  the torch test's setting, on MLX
from test_sampling_lossless import chi_square as torch_chi_square  # noqa: E402


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory):
    """A 16-token Orthrus model in MLX; diffusion weights near the AR ones, so drafts are accepted often but not always."""
    _, model = make_orthrus(seed=11, diffusion="perturbed", block_size=4, mask_token_id=MASK, vocab_size=V, eos_token_id=None)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # sharper distributions than the flat random ones
    folder = tmp_path_factory.mktemp("tiny_vocab")
    save_model(model, folder)
    mm = load_model(folder, dtype="float32", device="cpu")
    mm.conditionals = {}  # AR conditionals per SamplingParams, computed once (see ar_conditionals)
    return mm


def ar_probs_after(model, continuations: np.ndarray, sampling: SamplingParams) -> np.ndarray:
    """The MLX AR view's warped distribution of the token after CONTEXT + each row of continuations (N, n) -> (N, V), float64."""
    ids = np.concatenate([np.tile(CONTEXT, (len(continuations), 1)), continuations], axis=1)  # (N, C+n)
    return np.array(warp_probs(model(mx.array(ids), logits_to_keep=1)[:, -1], sampling)).astype(np.float64)


def ar_conditionals(model, sampling: SamplingParams):
    """AR sampling's p(t1) (V,), p(t2 | t1) (V, V) and p(t3 | t1, t2) (V, V, V) after CONTEXT (memoised on the model)."""
    if sampling not in model.conditionals:
        p1 = ar_probs_after(model, np.zeros((1, 0), dtype=np.int64), sampling)[0]
        p2 = ar_probs_after(model, np.arange(V)[:, None], sampling)
        pairs = np.stack(np.meshgrid(np.arange(V), np.arange(V), indexing="ij"), -1).reshape(-1, 2)  # (V*V, 2)
        p3 = ar_probs_after(model, pairs, sampling).reshape(V, V, V)
        model.conditionals[sampling] = p1, p2, p3
    return model.conditionals[sampling]


def exact_ar_joint(model, sampling: SamplingParams) -> np.ndarray:
    """P(t1, t2, t3 | CONTEXT) of AR sampling, (V, V, V)."""
    p1, p2, p3 = ar_conditionals(model, sampling)
    return p1[:, None, None] * p2[:, :, None] * p3


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float, int]:
    """(p-value, total variation, samples in impossible cells): the torch test's chi-square on numpy counts."""
    return torch_chi_square(torch.from_numpy(counts), torch.from_numpy(probs))


def looks_like_ar(counts: np.ndarray, probs: np.ndarray) -> bool:
    p_value, _, impossible = chi_square(counts, probs)
    return impossible == 0 and p_value > 1e-4  # broken rules give p-values below 1e-50


def draw(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One inverse-CDF draw per row of rows (N, V), float64, on the host."""
    cdf = np.cumsum(rows, axis=-1)
    return np.minimum((cdf <= rng.random(len(rows))[:, None] * cdf[:, -1:]).sum(-1), rows.shape[-1] - 1)


def first_three_tokens(model, rule, sampling: SamplingParams, num_samples: int, K: int = 3, seed: int = 0):
    """(counts (V, V, V), n (N,)): the first three tokens when one Orthrus iteration (draft -> verify -> `rule`)
    starts after CONTEXT, for num_samples independent draws; when the iteration commits fewer than three
    tokens, the rest are drawn from the exact AR conditionals (what later iterations must match)."""
    rng, N = np.random.default_rng(seed), num_samples
    cache = model.new_cache(len(CONTEXT) + K)
    model(mx.array([CONTEXT[:-1]]), cache)
    block = mx.array([[CONTEXT[-1]] + [MASK] * (K - 1)])  # (1, K)
    q = warp_probs(model(block, cache, view="diffusion")[0, :-1], sampling)  # (K-1, V): one draft pass serves all
    q = mx.broadcast_to(q, (N, K - 1, V))  # (N, K-1, V)
    drafts = sample_from(q, to_device(rng.random((N, K - 1)))).astype(mx.int32)  # (N, K-1)

    # The verify pass, once per distinct draft: AR distributions at block indices 0 … K-1.
    distinct, which = np.unique(np.array(drafts), axis=0, return_inverse=True)  # (U, K-1), (N,)
    ids = np.concatenate([np.tile(CONTEXT, (len(distinct), 1)), distinct], axis=1)  # (U, len+K-1)
    p = warp_probs(model(mx.array(ids), logits_to_keep=K), sampling)[mx.array(which.reshape(-1))]  # (N, K, V)

    n, next_token = rule(drafts, q, p, to_device(rng.random((N, K - 1))), to_device(rng.random((N, K))))
    n, next_token = np.array(n), np.array(next_token)
    committed = np.concatenate([np.array(drafts), np.zeros((N, 1), dtype=np.int64)], axis=1)  # (N, K)
    committed[np.arange(N), n] = next_token  # d_1 … d_n, next, …
    _, p2, p3 = ar_conditionals(model, sampling)
    t1 = committed[:, 0]
    t2 = np.where(n >= 1, committed[:, 1], draw(p2[t1], rng))
    t3 = np.where(n >= 2, committed[:, 2], draw(p3[t1, t2], rng))
    return np.bincount((t1 * V + t2) * V + t3, minlength=V**3).reshape(V, V, V), n


def broken_rule(accept_prob, residual):
    """speculative_accept with its acceptance probability or its rejection distribution replaced."""

    def rule(drafts, q, p, u_accept, u_token):
        d = drafts[..., None]
        p_d, q_d = mx.take_along_axis(p[..., :-1, :], d, axis=-1)[..., 0], mx.take_along_axis(q, d, axis=-1)[..., 0]
        n = mx.sum(mx.cumprod((u_accept < accept_prob(p_d, q_d)).astype(mx.int32), axis=-1), axis=-1)  # (…,)
        at = n[..., None, None]
        q_padded = mx.concatenate([q, mx.zeros((*q.shape[:-2], 1, V))], axis=-2)
        p_next, q_next = mx.take_along_axis(p, at, axis=-2)[..., 0, :], mx.take_along_axis(q_padded, at, axis=-2)[..., 0, :]
        return n, sample_from(residual(p_next, q_next), mx.take_along_axis(u_token, n[..., None], axis=-1)[..., 0])

    return rule


BROKEN_RULES = {
    "always-accept": broken_rule(lambda p, q: mx.ones_like(p), lambda p, q: p),
    "accept-min(1,q/p)": broken_rule(lambda p, q: q / p, lambda p, q: mx.maximum(p - q, 0) + 1e-12 * p),
    "reject-to-p": broken_rule(lambda p, q: p / q, lambda p, q: p),  # samples p, not max(0, p - q), after a rejection
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_speculative_rule_matches_ar_sampling(tiny_vocab, setting):
    sampling = SETTINGS[setting]
    counts, n = first_three_tokens(tiny_vocab, speculative_accept, sampling, num_samples=40_000)
    p_value, tv, impossible = chi_square(counts, exact_ar_joint(tiny_vocab, sampling))
    assert impossible == 0 and p_value > 1e-4, (p_value, tv, impossible)  # measured: p = 0.21 … 0.79
    share = np.bincount(n, minlength=3) / len(n)  # n = 0, 1, 2 drafts accepted: every branch of the rule runs
    assert (share > 0.05).all(), share


@pytest.mark.parametrize("rule", BROKEN_RULES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_broken_rules_fail_the_same_test(tiny_vocab, setting, rule):
    sampling = SETTINGS[setting]
    counts, _ = first_three_tokens(tiny_vocab, BROKEN_RULES[rule], sampling, num_samples=40_000)
    assert not looks_like_ar(counts, exact_ar_joint(tiny_vocab, sampling))


def decoder_counts(model, sampling: SamplingParams, num_samples: int) -> np.ndarray:
    """Counts (V, V, V) of the three tokens generate_orthrus samples after CONTEXT, one decode per seed."""
    counts = np.zeros((V, V, V), dtype=np.int64)
    for seed in range(num_samples):
        params = SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p, seed=seed)
        t1, t2, t3 = generate_orthrus(model, CONTEXT, 3, params, block_size=3, ignore_eos=True).tokens
        counts[t1, t2, t3] += 1
    return counts


def test_generate_orthrus_samples_like_ar(tiny_vocab, monkeypatch):
    sampling = SamplingParams(temperature=0.7, top_k=4)
    probs = exact_ar_joint(tiny_vocab, sampling)
    assert looks_like_ar(decoder_counts(tiny_vocab, sampling, 400), probs)  # measured: p = 0.77

    monkeypatch.setattr(mlx_consensus, "speculative_accept", BROKEN_RULES["always-accept"])
    assert not looks_like_ar(decoder_counts(tiny_vocab, sampling, 100), probs)  # measured: p = 3e-13, 79 impossible


def test_float32_sampler_of_the_gpu_path(tiny_vocab, monkeypatch):
    """MLX's GPU has no float64: forced to float32, the rule still passes the test and the decoder still runs."""
    monkeypatch.setattr(mlx_sampling, "wide_float", lambda: mx.float32)
    assert to_device(np.array([0.5])).dtype == mx.float32
    sampling = SETTINGS["T0.7-topk8-topp0.9"]
    counts, _ = first_three_tokens(tiny_vocab, speculative_accept, sampling, num_samples=40_000)
    assert looks_like_ar(counts, exact_ar_joint(tiny_vocab, sampling))
    assert not looks_like_ar(first_three_tokens(tiny_vocab, BROKEN_RULES["reject-to-p"], sampling, 40_000)[0],
                             exact_ar_joint(tiny_vocab, sampling))
    out = generate_orthrus(tiny_vocab, CONTEXT, 20, SamplingParams(1.0, seed=4), ignore_eos=True, check=True)
    assert len(out.tokens) == 20


# --------------------------------------------------------------------------- check=True, bf16


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=1)],
                         ids=["greedy", "sampled"])
def test_check_passes_and_catches_a_broken_rule(twins, monkeypatch, sampling):
    _, mm = twins("gqa2-headdim32", diffusion="random")
    generate_orthrus(mm, [5, 6, 7], 20, sampling, ignore_eos=True, check=True)  # the real rules pass
    if sampling.greedy:
        monkeypatch.setattr(mlx_consensus, "greedy_accept", lambda draft, choice: (len(draft), int(choice[-1])))
        message = "is not the AR view's argmax"
    else:
        monkeypatch.setattr(mlx_consensus, "speculative_accept",
                            lambda draft, q, p, u_accept, u_token: (mx.array(draft.shape[-1]), mx.array(0)))
        message = "has probability 0 under the AR view"
    with pytest.raises(ConsensusCheckError, match=message):
        generate_orthrus(mm, [5, 6, 7], 20, sampling, ignore_eos=True, check=True)


def test_bfloat16_stays_bfloat16_and_check_passes(tmp_path):
    shipped = load_model(DEFAULT_MODEL, dtype="bfloat16", device="cpu")  # the shipped file is bf16: no conversion
    assert shipped.dtype == mx.bfloat16 and shipped.model.layers[0].self_attn.q_proj_diff.weight.dtype == mx.bfloat16
    assert shipped.new_cache(4).k[0].dtype == mx.bfloat16
    assert load_model(DEFAULT_MODEL, device="cpu").dtype == mx.float32  # auto: float32 on the CPU, as the torch side
    _, model = make_orthrus(4, "perturbed", block_size=8)
    save_model(model, tmp_path)
    bf16 = load_model(tmp_path, dtype="bfloat16", device="cpu")  # an fp32 file converted on load
    assert bf16.dtype == mx.bfloat16 and bf16(mx.array([[1, 2, 3]])).dtype == mx.bfloat16
    for sampling in (SamplingParams(), SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=1)):
        for prompt in ([1, 2, 3], list(range(50, 90))):
            out = generate_orthrus(bf16, prompt, 40, sampling, ignore_eos=True, check=True)
            assert len(out.tokens) == 40 and max(out.accepted) > 1


# --------------------------------------------------------------------------- bad input: one-line errors


def test_missing_mlx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx.core", None)  # `import mlx.core` now raises ImportError
    monkeypatch.delitem(sys.modules, "orthrus_min.mlx.model")
    with pytest.raises(OrthrusError, match=r'pip install "orthrus-min\[mlx\]"') as e:
        import orthrus_min.mlx.model  # noqa: F401
    assert "\n" not in str(e.value) and "mlx[cpu]" in str(e.value)


@pytest.mark.parametrize("device, attn, dtype, message", [
    ("cuda", "auto", "auto", "--device cuda is not an MLX device (CUDA is the torch backend's: use --backend torch)"),
    ("cuda:0", None, None, "--device cuda:0 is not an MLX device"),
    ("mps", "auto", "auto", "--device mps is not an MLX device; with --backend mlx choose one of auto, cpu, gpu"),
    ("auto", "triton", "auto", "--attn triton applies to the torch backend"),
    ("cpu", "torch", "auto", "--attn torch applies to the torch backend"),
    ("cpu", "auto", "float8", "dtype 'float8' is unknown; choose one of auto, float32, bfloat16, float16"),
], ids=["cuda", "cuda:0", "mps", "triton", "attn-torch", "dtype"])
def test_backend_flags(device, attn, dtype, message):
    with pytest.raises(OrthrusError) as e:
        check_backend_args(device, attn, dtype)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    check_backend_args("cpu", "auto", "bfloat16")  # fine
    check_backend_args(None, None, None)


@pytest.mark.skipif(mx.is_available(mx.gpu), reason="this machine has an MLX GPU")
def test_gpu_without_one_is_a_clear_error():
    with pytest.raises(OrthrusError, match="device 'gpu' asked for, but MLX has no GPU backend"):
        load_model(DEFAULT_MODEL, device="gpu")


def test_checkpoint_mismatches_are_named(tmp_path):
    from safetensors.torch import save_file

    _, model = make_orthrus(0, "random", block_size=8)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.pop("model.layers.1.self_attn.k_proj_diff.weight")
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    state["model.norm.weight"] = torch.zeros(65)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(OrthrusError) as e:
        load_model(tmp_path)
    message = str(e.value)
    assert "checkpoint does not match config.json" in message and "\n" not in message
    assert "missing tensors: model.layers.1.self_attn.k_proj_diff.weight" in message
    assert "unexpected tensors: model.layers.0.self_attn.extra.weight" in message
    assert "wrong shapes: model.norm.weight has shape (65,), expected (64,)" in message

    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated
    with pytest.raises(OrthrusError, match="cannot read safetensors file"):
        load_model(tmp_path)
    with pytest.raises(OrthrusError, match="no such checkpoint folder"):
        load_model(tmp_path / "absent")


def test_bad_requests(twins, tmp_path):
    _, mm = twins("gqa2-headdim32")
    cases = [
        (lambda: generate_orthrus(mm, [], 5), "the prompt is empty"),
        (lambda: generate_ar(mm, [1], 0), "max_new_tokens must be an int >= 1, got 0"),
        (lambda: generate_orthrus(mm, [1], 5, block_size=9), "block size 9 is larger than the checkpoint's block_size 8"),
        (lambda: generate_orthrus(mm, [1], 5, block_size=0), "block size must be an int >= 1"),
        (lambda: generate_orthrus(mm, [1], 2040), r"exceeds the model's context of 2048 tokens"),
        (lambda: generate_ar(mm, [1], 5, SamplingParams(1.0, seed=-1)), r"seed must be in 0 … 2\*\*63-1, got -1"),
        (lambda: mm(mx.array([[1, 2]]), view="draft"), "view 'draft' is unknown"),
        (lambda: mm(mx.array([[1, 2, 3]]), mm.new_cache(2)), "KV cache is full: 0 cached \\+ 3 new tokens > capacity 2"),
        (lambda: load_model(DEFAULT_MODEL, dtype="int8"), "dtype 'int8' is unknown"),
    ]
    for call, message in cases:
        with pytest.raises(OrthrusError, match=message):
            call()
    save_checkpoint(tmp_path, tokenizer=False)  # AR-only Qwen3
    ar_only = load_model(tmp_path, dtype="float32")
    with pytest.raises(OrthrusError, match="this checkpoint has no diffusion view .* --mode ar"):
        generate_orthrus(ar_only, [1, 2], 5)
    with pytest.raises(OrthrusError, match="this checkpoint has no diffusion view"):
        ar_only(mx.array([[1, 2]]), view="diffusion")
    assert len(generate_ar(ar_only, [1, 2], 5, ignore_eos=True).tokens) == 5


@pytest.fixture(scope="module")
def mlx_llm(tmp_path_factory):
    """A tiny Orthrus checkpoint with a tokenizer, loaded through the front door with backend="mlx"."""
    from conftest import make_tokenizer_files
    from orthrus_min import load

    folder = tmp_path_factory.mktemp("mlx_door")
    _, model = make_orthrus(0, "random", block_size=8, mask_token_id=3)
    save_model(model, folder)
    make_tokenizer_files(folder)
    return load(folder, backend="mlx", device="cpu")


@pytest.mark.parametrize("call, error, match", [
    (lambda llm: llm.generate(["a", "b", "c"], [4, 5]), OrthrusError, "max_new_tokens has 2 entries for 3 prompts"),
    (lambda llm: llm.generate(["a", "b"], 4, seeds=[1], temperature=1.0), OrthrusError, "seeds has 1 entries for 2 prompts"),
    (lambda llm: llm.generate(["a", "b"], 4, seeds=[1, -5], temperature=1.0), OrthrusError, r"seeds\[1\] must be in 0 … 2\*\*63-1"),
    (lambda llm: llm.generate("x", 4.0), TypeError, "max_new_tokens must be an int, got float"),
    (lambda llm: llm.generate(["a", ["b", "c"]], 4), TypeError, "a batch is a flat list of prompts"),
    (lambda llm: llm.generate(b"class Stack:", 4), TypeError, "the prompt is bytes"),
    (lambda llm: llm.generate("abc\udcff", 4), OrthrusError, r"not valid Unicode: a lone surrogate U\+DCFF"),
], ids=["budgets-too-few", "seeds-too-few", "seed-negative", "budget-float", "nested-batch", "bytes", "lone-surrogate"])
def test_mlx_goes_through_the_same_door(mlx_llm, monkeypatch, call, error, match):
    """The torch backend's argument checks hold for MLX: they run in api.LLM before either backend's decoder."""
    import orthrus_min.mlx.ar as mlx_ar

    monkeypatch.setattr(mlx_ar, "generate_ar", lambda *a, **k: pytest.fail("the decoder was reached"))
    with pytest.raises(error, match=match) as e:
        call(mlx_llm)
    assert "\n" not in str(e.value)


def test_mlx_batch_has_one_completion_per_prompt(mlx_llm):
    rows = mlx_llm.generate(["a", "b", "c"], [2, 3, 4], mode="ar")
    assert [len(r.token_ids) for r in rows] == [2, 3, 4]


def test_mlx_refuses_non_finite_weights_as_torch_does(tmp_path):
    from orthrus_min import load

    _, model = make_orthrus(0, "random", block_size=8)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    save_model(model, tmp_path)
    with pytest.raises(OrthrusError, match=r"1 tensor\(s\) hold NaN or infinite values \(model\.layers\.1\.mlp\.down_proj\.weight\)"):
        load_model(tmp_path)
    from conftest import make_tokenizer_files

    make_tokenizer_files(tmp_path)
    with pytest.raises(OrthrusError, match="hold NaN or infinite values"):
        load(tmp_path, backend="mlx")
    assert load(tmp_path, backend="mlx", check_weights=False).backend == "mlx"  # loads anyway when asked


def test_threads_with_mlx_get_a_warning(capsys, tmp_path):
    from conftest import make_tokenizer_files
    from orthrus_min.generate import main

    _, model = make_orthrus(0, "random", block_size=8, mask_token_id=3)
    save_model(model, tmp_path)
    make_tokenizer_files(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = main(["--model", str(tmp_path), "--backend", "mlx", "--prompt", "x", "--max-new-tokens", "2", "--threads", "1"])
        assert torch.get_num_threads() == 2  # not applied to torch, which does not run
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert code == 0 and "warning: --threads has no effect with --backend mlx (MLX chooses its own threads)" in err.splitlines()
