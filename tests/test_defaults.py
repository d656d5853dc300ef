"""What a user gets without asking: K chosen per step, CPU threads chosen for the model, compiles announced."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from orthrus_min import api
from orthrus_min.api import default_threads, load
from orthrus_min.ar import generate_ar
from orthrus_min.engine import Compiler
from orthrus_min.generate import main
from orthrus_helpers import make_orthrus, orthrus_checkpoint


@pytest.fixture(scope="module")
def orthrus_folder(tmp_path_factory):
    return orthrus_checkpoint(tmp_path_factory.mktemp("orthrus"), block_size=16, eos_token_id=2)


@pytest.mark.parametrize("parameters, cores, load1, threads", [
    (6_000_000, 2, 0.0, 1),  # the shipped model: one thread whatever the machine
    (2_000_000_000, 2, 0.1, 2),  # a 1.7B model on an idle 2-core machine: both cores
    (2_000_000_000, 2, 1.2, 1),  # one core busy: only the free one
    (2_000_000_000, 16, 3.4, 13),
    (2_000_000_000, 2, 7.0, 1),  # an overloaded machine: still one
], ids=["small", "idle", "one-busy", "16-cores", "overloaded"])
def test_default_threads_rule(monkeypatch, parameters, cores, load1, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load1, 0.0, 0.0), raising=False)
    assert default_threads(parameters) == threads


def test_load_sets_the_threads_it_chose_or_was_given(orthrus_folder, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(api, "default_threads", lambda n: 1 if n < 10**6 else 99)
        load(orthrus_folder, device="cpu")
        assert torch.get_num_threads() == 1  # a tiny model: the rule says 1
        load(orthrus_folder, device="cpu", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(api.OrthrusError, match="threads must be an int >= 1, got 0"):
        load(orthrus_folder, device="cpu", threads=0)


def test_api_default_is_auto_and_equals_ar(orthrus_folder):
    llm = load(orthrus_folder, device="cpu", threads=1)
    prompts = [[5, 6, 7], list(range(20, 50))]
    out = llm.generate(prompts, 40, ignore_eos=True)
    ar = generate_ar(llm.model, prompts, 40, ignore_eos=True)
    assert [o.token_ids for o in out] == [g.tokens for g in ar]
    assert all(len(o.block_sizes) == len(o.acceptance) and set(o.block_sizes) <= {2, 4, 8, 16} for o in out)
    assert set(llm.step_costs) == {2}  # costs measured once for batch size 2, kept for the next call
    costs = llm.step_costs[2]
    llm.generate(prompts, 8, ignore_eos=True)
    assert llm.step_costs[2] is not costs and set(llm.step_costs[2]) == set(costs)
    fixed = llm.generate(prompts[0], 8, block_size=4, ignore_eos=True)
    assert fixed.block_sizes == [4] * len(fixed.acceptance) and len(fixed.acceptance) >= 3  # 7 tokens after the first, <= 4 each


def test_cli_stats_show_the_block_size_of_every_iteration(orthrus_folder, capsys):
    code = main(["--model", str(orthrus_folder), "--prompt", "x", "--max-new-tokens", "20", "--stats", "--threads", "1"])
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "block size K per iteration" in l)
    in_order = [int(k) for k in line.split("(in order: ")[1].rstrip(")").split()]
    counts = {int(part.split("=")[1].split(" ×")[0]): int(part.split("×")[1]) for part in line.split(": ", 1)[1].split(" (in")[0].split(", ")}
    assert code == 0 and sum(counts.values()) == len(in_order) and set(in_order) <= {2, 4, 8, 16}
    assert all(in_order.count(K) == n for K, n in counts.items())


def test_cli_block_size_must_be_an_int_or_auto(orthrus_folder, capsys):
    assert main(["--model", str(orthrus_folder), "--prompt", "x", "--block-size", "big"]) == 2
    assert capsys.readouterr().err == "error: block size must be an int >= 1 or 'auto', got 'big'\n"


def test_compiler_announces_each_new_shape_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))  # a cold cache: this step is compiled, not loaded
    lines = []
    compiler = Compiler("default", notify=lines.append)
    _, model = make_orthrus(9, "random", block_size=4, eos_token_id=None, num_hidden_layers=1)
    from orthrus_min.consensus import generate_orthrus

    for _ in range(2):
        generate_orthrus(model, [1, 2, 3], 6, block_size=4, ignore_eos=True, compile_mode=compiler)
    assert lines == ["compiling orthrus_step (default) for batch 1, block size 4, capacity 256: about a minute on a CPU "
                     "the first time; saved for later runs, which load it"]
    assert Compiler(None, notify=lines.append).compile(print) is print  # eager: nothing compiled, nothing said
