"""AR generation and the command line: streaming, EOS, max_new_tokens, sampling, chat prompts."""

from __future__ import annotations

import pytest
import torch

from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import load_model
from orthrus_min.generate import main
from orthrus_min.sampling import TOKEN, SamplingParams, sample_from, uniforms, warp_probs
from orthrus_min.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint[0], device="cpu")


PROMPT = [11, 42, 7, 99, 5]


def test_stops_at_any_eos_id_and_emits_it(model):
    free = generate_ar(model, PROMPT, 20, ignore_eos=True).tokens
    stop = free[4]
    out = generate_ar(model, PROMPT, 20, eos_token_id=[10_000, stop])
    assert out.tokens == free[: free.index(stop) + 1] and out.finish_reason == "eos"


def test_max_new_tokens_and_stream_callback(model):
    seen = []
    out = generate_ar(model, PROMPT, 13, ignore_eos=True, on_tokens=lambda row, tokens: seen.append((row, tokens)))
    assert len(out.tokens) == 13 and seen == [(0, [t]) for t in out.tokens] and out.finish_reason == "length"
    assert out.num_forwards == 12 and out.tokens_per_forward == pytest.approx(1.0)


def test_sampling_reproducible_with_seed(model):
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=123)
    a = generate_ar(model, PROMPT, 30, params, ignore_eos=True).tokens
    b = generate_ar(model, PROMPT, 30, params, ignore_eos=True).tokens
    c = generate_ar(model, PROMPT, 30, SamplingParams(1.0, 50, 0.95, seed=124), ignore_eos=True).tokens
    assert a == b and a != c


def test_top_k_one_is_greedy(model):
    greedy = generate_ar(model, PROMPT, 20, ignore_eos=True).tokens
    assert generate_ar(model, PROMPT, 20, SamplingParams(temperature=0.9, top_k=1, seed=0), ignore_eos=True).tokens == greedy


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 0, 1.0), (1.0, 10, 1.0), (0.7, 0, 0.9), (1.3, 7, 0.5)],
                         ids=["t0.7", "t1-topk10", "t0.7-topp0.9", "t1.3-topk7-topp0.5"])
def test_warping_matches_transformers(model, temperature, top_k, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    with torch.no_grad():
        logits = model(torch.tensor([PROMPT]))[0, -1:]  # (1, V)
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    ref = TopKLogitsWarper(top_k)(None, ref) if top_k else ref
    ref = TopPLogitsWarper(top_p)(None, ref) if top_p < 1 else ref
    assert torch.allclose(warp_probs(logits, SamplingParams(temperature, top_k, top_p)), ref.softmax(-1), atol=1e-6)


def test_sampled_tokens_follow_the_warped_distribution(model):
    """The decoder's first token is the inverse-CDF draw of its counter-based uniform at position len(PROMPT);
    20k seeds give 20k draws that pass a chi-square test against the exact distribution."""
    params = SamplingParams(temperature=0.7, top_p=0.9)
    with torch.no_grad():
        probs = warp_probs(model(torch.tensor([PROMPT]))[0, -1], params)  # (V,)
    position = torch.tensor([[len(PROMPT)]])  # (1, 1): the first new token's position
    for seed in range(5):
        expected = sample_from(probs, uniforms(torch.tensor([seed]), position, TOKEN)[:, 0])
        assert generate_ar(model, PROMPT, 1, SamplingParams(0.7, 0, 0.9, seed=seed)).tokens == expected.tolist()
    n = 20_000
    draws = sample_from(probs.expand(n, -1), uniforms(torch.arange(n), position.expand(n, 1), TOKEN)[:, 0])  # (n,)
    observed = torch.bincount(draws, minlength=probs.numel()).double()
    assert observed[probs == 0].sum() == 0  # never a token that top-p removed
    support = probs > 0
    expected = n * probs[support].double()
    chi2 = ((observed[support] - expected) ** 2 / expected).sum().item()
    dof = int(support.sum()) - 1
    assert (chi2 - dof) / (2 * dof) ** 0.5 < 4, (chi2, dof)  # chi-square, normal approximation: 4 sigma


def test_cli_streams_the_greedy_continuation(capsys, tiny_checkpoint):
    folder = tiny_checkpoint[0]
    tok = Tokenizer(folder)
    rc = main(["--model", str(folder), "--prompt", "def fib", "--max-new-tokens", "12"])
    out, err = capsys.readouterr()
    model = load_model(folder, device="cpu")
    expected = generate_ar(model, tok.encode("def fib"), 12)
    assert rc == 0
    assert out == tok.decode(expected.tokens, skip_special_tokens=True) + "\n"
    assert "tokens/s" in err


def test_cli_chat_prompt_uses_template(capsys, tiny_checkpoint, monkeypatch):
    import orthrus_min.ar as ar

    seen = {}
    real = ar.generate_ar

    def spy(model, prompt_ids, *a, **kw):
        seen["prompt"] = prompt_ids
        return real(model, prompt_ids, *a, **kw)

    monkeypatch.setattr(ar, "generate_ar", spy)
    folder = tiny_checkpoint[0]
    rc = main(["--model", str(folder), "--chat", "--no-thinking", "--system", "S", "--prompt", "hi", "--max-new-tokens", "3"])
    assert rc == 0
    text = Tokenizer(folder).decode(seen["prompt"])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
