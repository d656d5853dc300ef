"""Lossless sampling (docs/ARCHITECTURE.md, "Sampling" and "References"): Orthrus sampling has exactly the distribution of AR sampling.

On a 16-token vocabulary the exact AR distribution of the next three tokens (16^3 cells) is
computed from the model, and samples are compared with it by a chi-square test:

* the rule itself, `speculative_accept`, on 40k drafts from the model's diffusion view, with the
  AR distributions the verify pass gives those drafts — and three deliberately broken rules,
  which must fail the same test (the test has teeth);
* the whole decoder, `generate_orthrus`, with its counter-based random numbers: one batch of
  thousands of rows, each row its own seed (a row samples exactly as it would alone).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import orthrus_min.consensus as consensus
from orthrus_min.consensus import generate_orthrus, speculative_accept
from orthrus_min.sampling import SamplingParams, sample_from, warp_probs
from orthrus_helpers import make_orthrus

V, MASK = 16, 15
CONTEXT = [3, 9, 4, 1, 12, 7]  # the prompt; for the rule tests its last token is x_p
SETTINGS = {
    "T1.0": SamplingParams(temperature=1.0),
    "T0.7-topk5": SamplingParams(temperature=0.7, top_k=5),
    "T1.0-topp0.8": SamplingParams(temperature=1.0, top_p=0.8),
    "T0.7-topk8-topp0.9": SamplingParams(temperature=0.7, top_k=8, top_p=0.9),
}


@functools.cache
def tiny_vocab_model():
    """A 16-token Orthrus model; diffusion weights near the AR ones, so drafts are accepted often but not always."""
    _, model = make_orthrus(seed=11, diffusion="perturbed", block_size=4, mask_token_id=MASK, vocab_size=V, eos_token_id=None)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # sharper distributions than the flat random ones
    return model


@torch.no_grad()
def ar_probs_after(model, context: list[int], continuations: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """The AR view's warped distribution of the token after context + each row of continuations (N, n) -> (N, V)."""
    ids = torch.cat([torch.tensor(context).expand(len(continuations), -1), continuations], dim=1)  # (N, C+n)
    return warp_probs(model(ids, logits_to_keep=1)[:, -1], sampling)  # (N, V)


def ar_conditionals(model, context: list[int], sampling: SamplingParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AR sampling's p(t1) (V,), p(t2 | t1) (V, V) and p(t3 | t1, t2) (V, V, V) after context, from the model."""
    p1 = ar_probs_after(model, context, torch.zeros(1, 0, dtype=torch.long), sampling)[0]  # (V,)
    p2 = ar_probs_after(model, context, torch.arange(V)[:, None], sampling)  # (V, V)
    pairs = torch.cartesian_prod(torch.arange(V), torch.arange(V))  # (V*V, 2)
    p3 = ar_probs_after(model, context, pairs, sampling).view(V, V, V)
    return p1, p2, p3


def exact_ar_joint(model, context: list[int], sampling: SamplingParams) -> torch.Tensor:
    """P(t1, t2, t3 | context) of AR sampling, (V, V, V): p(t1) p(t2 | t1) p(t3 | t1, t2)."""
    p1, p2, p3 = ar_conditionals(model, context, sampling)
    return p1[:, None, None] * p2[:, :, None] * p3


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float, int]:
    """(p-value, total variation, samples in impossible cells) of counts against probs (same shape).
    Cells expecting fewer than 5 samples are pooled into one."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    n = counts.sum()
    impossible = int(counts[probs == 0].sum())
    expected = n * probs
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expected = torch.cat([expected[big], expected[~big].sum()[None]])
    stat = ((observed - expected) ** 2 / expected.clamp_min(1e-12)).sum()
    dof = len(observed) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))  # chi2 survival function
    tv = float((counts / n - probs).abs().sum() / 2)
    return p_value, tv, impossible


def looks_like_ar(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    p_value, _, impossible = chi_square(counts, probs)
    return impossible == 0 and p_value > 1e-4  # broken rules give p-values below 1e-100


# --------------------------------------------------------------------------- the rule, on 40k drafts


@torch.no_grad()
def first_three_tokens(model, rule, sampling: SamplingParams, num_samples: int, K: int = 3, seed: int = 0) -> torch.Tensor:
    """Counts (V, V, V) of the first three tokens when one Orthrus iteration (draft -> verify -> `rule`)
    starts after CONTEXT, for num_samples independent drafts; when the iteration commits fewer than
    three tokens, the rest are sampled from the exact AR conditionals (what later iterations must match)."""
    g = torch.Generator().manual_seed(seed)
    N, prefix, x_p = num_samples, CONTEXT[:-1], CONTEXT[-1]
    cache = model.new_cache(len(CONTEXT) + K)
    model(torch.tensor([prefix]), cache)
    block = torch.tensor([[x_p] + [MASK] * (K - 1)])  # (1, K)
    q = warp_probs(model(block, cache, view="diffusion")[0, :-1], sampling)  # (K-1, V): one draft pass serves all
    drafts = torch.multinomial(q, N, replacement=True, generator=g).T  # (N, K-1): any correct draw will do here

    # The verify pass, once per distinct draft: AR distributions at block indices 0 … K-1.
    distinct, which = torch.unique(drafts, dim=0, return_inverse=True)  # (U, K-1), (N,)
    ids = torch.cat([torch.tensor(CONTEXT).expand(len(distinct), -1), distinct], dim=1)  # (U, len+K-1)
    p = warp_probs(model(ids, logits_to_keep=K), sampling)[which]  # (N, K, V)

    u_accept = torch.rand(N, K - 1, generator=g, dtype=torch.float64)  # (N, K-1)
    u_token = torch.rand(N, K, generator=g, dtype=torch.float64)  # (N, K)
    n, next_token = rule(drafts, q.expand(N, -1, -1), p, u_accept, u_token)  # (N,), (N,)
    committed = F.pad(drafts, (0, 1)).scatter(1, n[:, None], next_token[:, None])  # (N, K): d_1 … d_n, next, …
    _, p2, p3 = ar_conditionals(model, CONTEXT, sampling)
    t1 = committed[:, 0]
    t2 = torch.where(n >= 1, committed[:, 1], torch.multinomial(p2[t1], 1, generator=g)[:, 0])
    t3 = torch.where(n >= 2, committed[:, 2], torch.multinomial(p3[t1, t2], 1, generator=g)[:, 0])
    return torch.bincount((t1 * V + t2) * V + t3, minlength=V**3).view(V, V, V)


def broken_rule(accept_prob, residual):
    """speculative_accept with its acceptance probability or its rejection distribution replaced."""

    def rule(drafts, q, p, u_accept, u_token):  # shapes and uniforms as speculative_accept's
        d = drafts[..., None]
        p_d, q_d = p[:, :-1].gather(-1, d)[..., 0], q.gather(-1, d)[..., 0]  # (B, K-1)
        n = (u_accept < accept_prob(p_d, q_d)).long().cumprod(-1).sum(-1)  # (B,)
        at = n[:, None, None].expand(-1, 1, V)
        p_next, q_next = p.gather(1, at)[:, 0], F.pad(q, (0, 0, 0, 1)).gather(1, at)[:, 0]  # (B, V)
        return n, sample_from(residual(p_next, q_next), u_token.gather(1, n[:, None])[:, 0])

    return rule


BROKEN_RULES = {
    "always-accept": broken_rule(lambda p, q: torch.ones_like(p), lambda p, q: p),
    "accept-min(1,q/p)": broken_rule(lambda p, q: q / p, lambda p, q: (p - q).clamp_min(0) + 1e-12 * p),
    "reject-to-p": broken_rule(lambda p, q: p / q, lambda p, q: p),  # samples p, not max(0, p - q), after a rejection
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_speculative_rule_matches_ar_sampling(setting):
    model, sampling = tiny_vocab_model(), SETTINGS[setting]
    counts = first_three_tokens(model, speculative_accept, sampling, num_samples=40_000)
    p_value, tv, impossible = chi_square(counts, exact_ar_joint(model, CONTEXT, sampling))
    assert impossible == 0 and p_value > 1e-4, (p_value, tv, impossible)  # measured: 0.0048 … 0.19


@pytest.mark.parametrize("rule", BROKEN_RULES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_broken_rules_fail_the_same_test(setting, rule):
    model, sampling = tiny_vocab_model(), SETTINGS[setting]
    counts = first_three_tokens(model, BROKEN_RULES[rule], sampling, num_samples=40_000)
    assert not looks_like_ar(counts, exact_ar_joint(model, CONTEXT, sampling))


def test_drafts_are_often_but_not_always_accepted():
    """The setting exercises every branch of the rule: acceptances, rejections, fully accepted blocks."""
    model, sampling = tiny_vocab_model(), SETTINGS["T1.0"]
    seen = []

    def recording_rule(drafts, q, p, u_accept, u_token):
        n, next_token = speculative_accept(drafts, q, p, u_accept, u_token)
        seen.append(n)
        return n, next_token

    first_three_tokens(model, recording_rule, sampling, num_samples=10_000)
    share = torch.bincount(seen[0], minlength=3) / 10_000  # n = 0, 1, 2 drafts accepted
    assert (share > 0.05).all(), share  # measured: 0.09, 0.39, 0.53


# --------------------------------------------------------------------------- the whole decoder


def decoder_counts(model, sampling: SamplingParams, num_samples: int) -> torch.Tensor:
    """Counts (V, V, V) of the three tokens generate_orthrus samples after CONTEXT: one batch, one seed per row."""
    out = generate_orthrus(model, [CONTEXT] * num_samples, 3, sampling, block_size=3, ignore_eos=True,
                           seeds=range(num_samples))
    t = torch.tensor([g.tokens for g in out])  # (N, 3)
    return torch.bincount((t[:, 0] * V + t[:, 1]) * V + t[:, 2], minlength=V**3).view(V, V, V)


def test_generate_orthrus_samples_like_ar(monkeypatch):
    model, sampling = tiny_vocab_model(), SamplingParams(temperature=0.7, top_k=4)
    probs = exact_ar_joint(model, CONTEXT, sampling)
    assert looks_like_ar(decoder_counts(model, sampling, 20_000), probs)

    monkeypatch.setattr(consensus, "speculative_accept", BROKEN_RULES["always-accept"])
    assert not looks_like_ar(decoder_counts(model, sampling, 2_000), probs)


if __name__ == "__main__":  # the numbers behind the tests
    for name, sampling in SETTINGS.items():
        probs = exact_ar_joint(tiny_vocab_model(), CONTEXT, sampling)
        for rule_name, rule in {"correct": speculative_accept, **BROKEN_RULES}.items():
            counts = first_three_tokens(tiny_vocab_model(), rule, sampling, num_samples=40_000)
            p_value, tv, impossible = chi_square(counts, probs)
            print(f"{name:20s} {rule_name:18s} p-value {p_value:.3g}  TV {tv:.4f}  impossible {impossible}")
