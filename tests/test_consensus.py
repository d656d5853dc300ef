"""The consensus decoder (docs/ARCHITECTURE.md, "The method", steps 2-4): lossless greedy decoding against Transformers' `generate`,
EOS and max_new_tokens inside a run, streaming and statistics, the cache (size and roll back),
`check=True` in bf16, and clear errors from the Python API and the command line."""

from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import orthrus_min.consensus as consensus
from conftest import make_tokenizer_files
from orthrus_min import OrthrusError
from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import load_model, save_model
from orthrus_min.config import cache_capacity
from orthrus_min.consensus import generate_orthrus
from orthrus_min.errors import ConsensusCheckError
from orthrus_min.generate import main
from orthrus_min.sampling import SamplingParams
from orthrus_helpers import capture_caches, make_orthrus, ours_from_hf

CONFIGS = {
    "gqa2": dict(),
    "mqa-tied-3layers": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, num_hidden_layers=3),
}


@functools.cache
def models(seed: int, config: str, diffusion: str):
    """(Transformers reference, our Orthrus model), shared by the examples of a test: do not modify them."""
    hf, model = make_orthrus(seed, diffusion, **CONFIGS[config])
    hf.generation_config.eos_token_id = None  # EOS only when a test passes one
    return hf, model


def hf_greedy(hf, prompt: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    """Transformers' greedy `generate`: the reference output (new tokens only)."""
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                      eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


# --------------------------------------------------------------------------- lossless greedy


@pytest.mark.parametrize("diffusion", ["random", "copied"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2), config=st.sampled_from(sorted(CONFIGS)),
       prompt=st.lists(st.integers(0, 319), min_size=1, max_size=24), K=st.sampled_from([1, 2, 3, 5, 8, 32]),
       max_new_tokens=st.integers(1, 40), eos_at=st.none() | st.integers(0, 39))
def test_greedy_output_equals_transformers_generate(diffusion, seed, config, prompt, K, max_new_tokens, eos_at):
    hf, model = models(seed, config, diffusion)
    eos = None
    if eos_at is not None:  # make an EOS of a token the model will produce
        eos = hf_greedy(hf, prompt, max_new_tokens, None)[min(eos_at, max_new_tokens - 1)]
    expected = hf_greedy(hf, prompt, max_new_tokens, eos)

    out = generate_orthrus(model, prompt, max_new_tokens, block_size=K, eos_token_id=eos, ignore_eos=eos is None, check=True)

    assert out.tokens == expected
    assert out.finish_reason == ("eos" if eos is not None and expected[-1] == eos else "length")
    assert all(1 <= n <= K for n in out.accepted) and sum(out.accepted) == len(out.tokens) - 1


def test_copied_diffusion_weights_accept_several_tokens():
    """With the diffusion view copied from the AR view (untrained), drafts are sometimes right."""
    hf, model = models(0, "gqa2", "copied")
    prompt = list(range(40, 60))
    out = generate_orthrus(model, prompt, 64, block_size=8, ignore_eos=True)
    assert out.tokens == hf_greedy(hf, prompt, 64, None)
    assert max(out.accepted) >= 2 and sum(out.accepted) / len(out.accepted) > 1.5  # measured: 1.85 (untrained: at most 2)
    assert out.tokens_per_forward == (len(out.tokens) - 1) / (2 * len(out.accepted))


def accepted_runs(model, prompt, max_new_tokens, K):
    """The runs an EOS-free decode commits, and where each starts in the output (the prefill token is run 0)."""
    runs = []
    generate_orthrus(model, prompt, max_new_tokens, block_size=K, ignore_eos=True, on_tokens=lambda row, run: runs.append(run))
    starts = [sum(len(r) for r in runs[:i]) for i in range(len(runs))]
    return runs, starts


def test_eos_inside_an_accepted_run_ends_there():
    hf, model = models(0, "gqa2", "copied")
    prompt, K = list(range(40, 60)), 8
    runs, starts = accepted_runs(model, prompt, 64, K)
    all_tokens = [t for r in runs for t in r]
    # A run of >= 2 tokens whose first token appears nowhere before: make it the EOS.
    i = next(i for i, r in enumerate(runs) if len(r) >= 2 and r[0] not in all_tokens[: starts[i]])
    eos = runs[i][0]

    seen = []
    out = generate_orthrus(model, prompt, 64, block_size=K, eos_token_id=eos, on_tokens=lambda row, run: seen.append(run))

    assert out.tokens == all_tokens[: starts[i] + 1] == hf_greedy(hf, prompt, 64, eos)
    assert out.finish_reason == "eos" and seen[-1] == [eos] and out.accepted[-1] == 1 < len(runs[i])


def test_max_new_tokens_ending_mid_block():
    hf, model = models(0, "gqa2", "copied")
    prompt, K = list(range(40, 60)), 8
    runs, starts = accepted_runs(model, prompt, 64, K)
    i = next(i for i, r in enumerate(runs) if len(r) >= 2 and i > 0)
    limit = starts[i] + 1  # stop after the first token of a multi-token run

    out = generate_orthrus(model, prompt, limit, block_size=K, ignore_eos=True)

    assert out.tokens == [t for r in runs for t in r][:limit] == hf_greedy(hf, prompt, limit, None)
    assert out.finish_reason == "length" and out.accepted[-1] == 1 < len(runs[i])


def test_streaming_and_statistics():
    _, model = models(1, "gqa2", "copied")
    seen = []
    out = generate_orthrus(model, [7, 8, 9], 30, block_size=4, ignore_eos=True, on_tokens=lambda row, run: seen.append((row, run)))
    assert {row for row, _ in seen} == {0}
    seen = [run for _, run in seen]
    assert [t for run in seen for t in run] == out.tokens and len(out.tokens) == 30
    assert seen[0] == out.tokens[:1] and [len(run) for run in seen[1:]] == out.accepted
    assert out.num_forwards == 2 * len(out.accepted)
    assert out.tokens_per_forward == 29 / out.num_forwards
    assert out.prefill_s > 0 and out.decode_s > 0 and out.finish_reason == "length"


def test_block_size_one_is_ar_plus_a_wasted_draft():
    hf, model = models(1, "gqa2", "random")
    out = generate_orthrus(model, [7, 8, 9], 12, block_size=1, ignore_eos=True)
    assert out.tokens == hf_greedy(hf, [7, 8, 9], 12, None)
    assert out.accepted == [1] * 11 and out.num_forwards == 22


# --------------------------------------------------------------------------- the cache


def test_cache_is_the_ar_cache_plus_one_block():
    _, model = make_orthrus(2, "copied", block_size=16)  # a model of its own: capture_caches patches it
    caches = capture_caches(model)
    prompt, max_new = list(range(30)), 50
    generate_ar(model, prompt, max_new, ignore_eos=True)
    generate_orthrus(model, prompt, max_new, ignore_eos=True)
    ar_cache, orthrus_cache = caches

    c = model.config
    bytes_per_slot = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4  # K and V, fp32
    assert ar_cache.capacity == 30 + 50 and orthrus_cache.capacity == cache_capacity(30, 50, 16) == 30 + 50 + 16
    assert orthrus_cache.nbytes() - ar_cache.nbytes() == 16 * bytes_per_slot == 16 * 512
    assert orthrus_cache.nbytes() == (30 + 50 + 16) * 512


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.8, top_k=20, seed=3)], ids=["greedy", "sampled"])
def test_roll_back_leaves_the_cache_as_ar_decoding_would(sampling):
    """After every iteration the cache holds exactly prompt + committed tokens minus the newest (x_p),
    with the K/V an AR pass over those tokens makes."""
    _, model = make_orthrus(3, "copied", block_size=8)
    caches = capture_caches(model)
    prompt = list(range(100, 120))
    committed, checked = [], []

    def compare_with_ar(row, run):
        committed.extend(run)
        cache = caches[0]
        L = len(prompt) + len(committed) - 1
        assert cache.lengths.tolist() == [L]
        reference = model.new_cache(L)
        model(torch.tensor([prompt + committed[:-1]]), reference)  # an AR pass over the same tokens
        for layer in range(model.config.num_hidden_layers):
            torch.testing.assert_close(cache.k[layer][:, :, :L], reference.k[layer], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cache.v[layer][:, :, :L], reference.v[layer], rtol=1e-5, atol=1e-5)
        checked.append(len(run))

    out = generate_orthrus(model, prompt, 40, sampling, ignore_eos=True, on_tokens=compare_with_ar)
    assert len(checked) == len(out.accepted) + 1 and max(out.accepted) > 1  # rejections and acceptances both seen


# --------------------------------------------------------------------------- check=True in every dtype


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=1)],
                         ids=["greedy", "sampled"])
def test_check_passes_in_bfloat16(tmp_path, sampling):
    _, model = make_orthrus(4, "perturbed", block_size=8)
    save_model(model, tmp_path)
    bf16 = load_model(tmp_path, dtype="bfloat16", device="cpu")
    assert bf16.dtype == torch.bfloat16
    for prompt in ([1, 2, 3], list(range(50, 90)), [300] * 7):
        out = generate_orthrus(bf16, prompt, 48, sampling, ignore_eos=True, check=True)
        assert len(out.tokens) == 48


def test_check_catches_a_broken_acceptance_rule(monkeypatch):
    _, model = models(0, "gqa2", "random")
    generate_orthrus(model, [5, 6, 7], 20, block_size=8, ignore_eos=True, check=True)  # the real rule passes

    def accept_everything(draft, ar_logits):  # (B, K-1), (B, K, V) -> every draft, then the last argmax
        return torch.full_like(draft[:, 0], draft.shape[1]), ar_logits[:, -1].argmax(-1)

    monkeypatch.setattr(consensus, "greedy_accept", accept_everything)
    with pytest.raises(ConsensusCheckError, match="check failed \\(row 0\\): a committed token is not the AR view's argmax"):
        generate_orthrus(model, [5, 6, 7], 20, block_size=8, ignore_eos=True, check=True)

    def accept_everything_sampled(draft, q_probs, p_probs, u_accept, u_token):
        return torch.full_like(draft[:, 0], draft.shape[1]), torch.zeros_like(draft[:, 0])

    monkeypatch.setattr(consensus, "speculative_accept", accept_everything_sampled)
    with pytest.raises(ConsensusCheckError, match="has probability 0 under the AR view"):
        generate_orthrus(model, [5, 6, 7], 20, SamplingParams(temperature=1.0, top_k=3, seed=0), block_size=8,
                         ignore_eos=True, check=True)


# --------------------------------------------------------------------------- bad input: Python API


def test_bad_block_size_is_a_clear_error():
    _, model = models(0, "gqa2", "random")  # block_size 32
    with pytest.raises(OrthrusError, match="block size must be an int >= 1 or 'auto', got 0"):
        generate_orthrus(model, [1, 2], 4, block_size=0)
    with pytest.raises(OrthrusError, match="block size 33 is larger than the checkpoint's block_size 32"):
        generate_orthrus(model, [1, 2], 4, block_size=33)


def test_ar_only_model_in_orthrus_mode_is_a_clear_error():
    hf, _ = models(0, "gqa2", "random")
    with pytest.raises(OrthrusError, match=r"no diffusion view \(model_type 'qwen3'.*--mode ar.*init_diffusion_view"):
        generate_orthrus(ours_from_hf(hf), [1, 2], 4)


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Folders with a tokenizer: an Orthrus model (K = 8, copied diffusion weights), its AR-only
    Transformers original, and the Orthrus one without mask_token_id."""
    root = tmp_path_factory.mktemp("cli")
    hf, model = make_orthrus(5, "copied", block_size=8, mask_token_id=3, eos_token_id=2)
    hf.save_pretrained(root / "qwen3")
    save_model(model, root / "orthrus")
    shutil.copytree(root / "orthrus", root / "no_mask")
    config = json.loads((root / "no_mask" / "config.json").read_text())
    del config["mask_token_id"]
    (root / "no_mask" / "config.json").write_text(json.dumps(config))
    for name in ("qwen3", "orthrus", "no_mask"):
        make_tokenizer_files(root / name)
    return root


def cli(capsys, *args):
    code = main(["--prompt", "def fibonacci(n):", "--max-new-tokens", "24", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_default_mode_follows_the_checkpoint(checkpoints, capsys):
    code, out, err = cli(capsys, "--model", checkpoints / "orthrus")
    assert code == 0 and "[orthrus] 24 tokens" in err
    code, out_ar, err = cli(capsys, "--model", checkpoints / "qwen3")
    assert code == 0 and "[ar] 24 tokens" in err
    assert out == out_ar  # same AR weights: the same text


def test_cli_compare_stats_check(checkpoints, capsys):
    code, out, err = cli(capsys, "--model", checkpoints / "orthrus", "--compare", "--stats", "--check", "--block-size", "4")
    assert code == 0
    assert "[compare] outputs identical" in err and "speedup" in err
    assert "[orthrus] acceptance length (tokens per iteration)" in err and "[orthrus] tokens per forward" in err
    assert "[ar] tokens per forward: 1.00" in err


def test_cli_compare_times_both_modes_alternately_and_keeps_the_fastest(checkpoints, capsys, monkeypatch):
    """The seconds of each timed run are scripted: the speedup must be min(AR) / min(Orthrus), whatever the order."""
    import dataclasses

    from orthrus_min.api import LLM

    scripted = {"ar": iter([3.0, 1.0, 2.0]), "orthrus": iter([2.0, 0.5, 4.0])}
    calls = []
    generate = LLM.generate

    def timed(self, prompt, n, **kw):
        out = generate(self, prompt, n, **kw)
        calls.append((kw["mode"], n))
        if n == 24 and kw.get("on_text") is None and kw.get("on_tokens") is None:  # a timed run, not the streamed one
            out = dataclasses.replace(out, seconds=next(scripted[kw["mode"]]))
        return out

    monkeypatch.setattr(LLM, "generate", timed)
    code, out, err = cli(capsys, "--model", checkpoints / "orthrus", "--compare", "--block-size", "4")
    assert code == 0
    assert calls == [("ar", 2), ("orthrus", 2), ("orthrus", 24)] + [("ar", 24), ("orthrus", 24)] * 3
    assert ("[compare] outputs identical: ar 24 tokens in 1.00 s, orthrus 24 tokens in 0.50 s (the fastest of 3 runs "
            "each, alternated); speedup 2.00x") in err


def test_cli_ar_only_checkpoint_in_orthrus_mode(checkpoints, capsys):
    code, out, err = cli(capsys, "--model", checkpoints / "qwen3", "--mode", "orthrus")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: this checkpoint has no diffusion view") and "--mode ar" in err and "init_diffusion_view" in err


def test_cli_missing_mask_token_id(checkpoints, capsys):
    code, out, err = cli(capsys, "--model", checkpoints / "no_mask")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: config.json has model_type 'orthrus' but no mask_token_id")


def test_cli_check_reports_a_broken_decoder(checkpoints, capsys, monkeypatch):
    monkeypatch.setattr(consensus, "greedy_accept",
                        lambda draft, ar_logits: (torch.full_like(draft[:, 0], draft.shape[1]), ar_logits[:, -1].argmax(-1)))
    code, out, err = cli(capsys, "--model", checkpoints / "orthrus", "--check")
    assert code == 1 and "error: check failed (row 0): a committed token is not the AR view's argmax" in err
