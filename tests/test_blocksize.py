"""`block_size="auto"`: the K chooser against hand computations, and its output equal to AR's."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthrus_min.ar import generate_ar
from orthrus_min.blocksize import BlockSizeChooser, best_block_size, expected_tokens, geometric_tokens, measure_step_costs
from orthrus_min.config import auto_candidates
from orthrus_min.consensus import generate_orthrus
from orthrus_helpers import make_orthrus

# Six steps at K = 8 accepted these many drafts (7 = the whole block: no verdict after it).
SEEN_AT_8 = [(n, 8) for n in (7, 7, 3, 5, 7, 1)]
COSTS = {2: 1.0, 4: 1.2, 8: 1.6, 16: 2.4, 32: 4.0}  # seconds per step


def test_expected_tokens_caps_each_count_at_k_minus_1():
    counts = [n for n, _ in SEEN_AT_8]
    assert expected_tokens(counts, 2) == 1 + 6 / 6  # every count capped at 1
    assert expected_tokens(counts, 4) == pytest.approx(1 + (3 + 3 + 3 + 3 + 3 + 1) / 6)
    assert expected_tokens(counts, 8) == 1 + 30 / 6


def test_geometric_estimate_by_hand():
    # acceptances 0.7 + 30, rejections 0.3 + 3 (the counts below 7): a = 30.7 / 34
    a = 30.7 / 34
    assert geometric_tokens(SEEN_AT_8, 16) == pytest.approx(1 + sum(a ** i for i in range(1, 16)))
    assert geometric_tokens(SEEN_AT_8, 16) == pytest.approx(8.2915, abs=1e-4)
    assert geometric_tokens([], 4) == pytest.approx(1 + 0.7 + 0.49 + 0.343)  # the prior alone


def test_chooser_picks_the_k_a_hand_computation_picks():
    # tokens per second: K=2: 2.0/1.0 = 2.00; K=4: 3.667/1.2 = 3.06; K=8: 6.0/1.6 = 3.75 (exact, from the counts);
    # K=16: 8.29/2.4 = 3.45 and K=32: 9.91/4.0 = 2.48 (geometric: nothing seen at K >= 16)
    assert best_block_size(COSTS, SEEN_AT_8) == 8
    # a cheaper K = 16 (8.29/2.0 = 4.15) wins
    assert best_block_size({**COSTS, 16: 2.0}, SEEN_AT_8) == 16
    # flat costs, as on a GPU: the largest K
    assert best_block_size(dict.fromkeys(COSTS, 1.0), SEEN_AT_8) == 32
    # steep costs, acceptance low: a short block
    assert best_block_size({2: 1.0, 4: 2.0, 8: 4.0, 16: 8.0, 32: 16.0}, [(0, 8), (1, 8), (0, 8), (0, 8)]) == 2


def test_chooser_probes_a_larger_block_now_and_then_and_learns_costs():
    chooser = BlockSizeChooser([2, 4, 8, 16, 32], COSTS, probe_every=4)
    for n, K in SEEN_AT_8:
        chooser.observe(K, [n])
    picks = [chooser.next() for _ in range(8)]
    assert picks == [8, 8, 8, 16, 8, 8, 8, 16]  # the 4th and 8th step probe one size up
    chooser.observe_step({"block_size": 16}, [8, 8], seconds=9.0)  # kept 8 tokens = 7 accepted drafts, twice
    assert chooser.costs[16] == 9.0  # 16 was used twice: the second timing on counts
    assert list(chooser.observations)[-2:] == [(7, 16), (7, 16)]


def test_measured_costs_grow_with_k_on_a_fake_clock():
    _, model = make_orthrus(3, "random", block_size=8)
    ticks = iter(range(1000))
    costs = measure_step_costs(model, [2, 8], repeats=2, clock=lambda: float(next(ticks)))
    assert costs == {2: 1.0, 8: 1.0}  # each timed pair spans one tick of the fake clock


def test_step_costs_are_measured_once_then_remembered_by_the_next_run(tmp_path, monkeypatch):
    """The first auto run on a machine measures the step costs; an eager run leaves its refined costs for the next."""
    from orthrus_min import blocksize, consensus

    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    measured = []
    monkeypatch.setattr(blocksize, "measure_step_costs", lambda model, candidates, B: measured.append(B) or dict.fromkeys(candidates, 0.5))
    _, model = make_orthrus(3, "perturbed", block_size=8, eos_token_id=None, num_hidden_layers=1)
    assert blocksize.step_costs(model, [4, 8], 1) == {4: 0.5, 8: 0.5} and measured == [1]
    assert blocksize.step_costs(model, [4, 8], 1) == {4: 0.5, 8: 0.5} and measured == [1]  # remembered: not measured again
    assert blocksize.step_costs(model, [4, 8], 2) == {4: 0.5, 8: 0.5} and measured == [1, 2]  # another batch size: measured
    assert blocksize.step_costs(model, [4, 8, 16], 1) == dict.fromkeys([4, 8, 16], 0.5) and measured == [1, 2, 1]  # a K not known
    blocksize.remember_step_costs(model, 1, {4: 0.25, 8: 0.75})
    assert blocksize.step_costs(model, [4, 8], 1) == {4: 0.25, 8: 0.75} and len(measured) == 3
    (tmp_path / blocksize.STEP_COSTS).write_text("{not json")
    assert blocksize.step_costs(model, [4, 8], 1) == {4: 0.5, 8: 0.5} and len(measured) == 4  # unreadable: measured anew

    kept = []
    monkeypatch.setattr(consensus, "remember_step_costs", lambda model, B, costs: kept.append(dict(costs)))
    out = generate_orthrus(model, [5, 6, 7], 20, block_size="auto", ignore_eos=True)
    assert len(measured) == 4 and len(kept) == 1  # the costs came from the table; the run's refined ones are kept
    assert all(c > 0 for c in kept[0].values()) and kept[0] != {4: 0.5, 8: 0.5}  # a K that ran has its measured wall time
    assert out.tokens == generate_ar(model, [5, 6, 7], 20, ignore_eos=True).tokens


def test_auto_candidates_stop_at_the_checkpoints_block_size():
    assert auto_candidates(make_orthrus(3, "random", block_size=32)[1].config) == [4, 8, 16, 32]
    assert auto_candidates(make_orthrus(3, "random", block_size=12)[1].config) == [4, 8, 12]
    assert auto_candidates(make_orthrus(3, "random", block_size=2)[1].config) == [2]  # K = 2 only when it is all there is


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=3), budget=st.integers(1, 40), seed=st.integers(0, 50))
def test_auto_greedy_equals_ar_in_batches(lengths, budget, seed):
    import torch

    _, model = make_orthrus(7, "copied", block_size=32, eos_token_id=None)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 320, (n,), generator=g).tolist() for n in lengths]
    auto = generate_orthrus(model, prompts, budget, block_size="auto", ignore_eos=True, check=True)
    assert [o.tokens for o in auto] == [o.tokens for o in generate_ar(model, prompts, budget, ignore_eos=True)]
    assert all(len(o.block_sizes) == len(o.accepted) and set(o.block_sizes) <= {2, 4, 8, 16, 32} for o in auto)
