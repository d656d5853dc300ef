"""Compiled decoding (torch.compile, CPU inductor) gives exactly the eager tokens.

Each step is compiled whole (fullgraph=True: a graph break would raise), once per shape; the
tests keep to tiny models and few shapes, since every new shape costs a compile (seconds here).
"""

from __future__ import annotations

import json

import pytest
import torch

from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import DEFAULT_MODEL, load_model
from orthrus_min.consensus import generate_orthrus, orthrus_step
from orthrus_min.engine import CAPACITY_BUCKET, Compiler
from orthrus_min.sampling import SamplingParams
from orthrus_min.stepcache import SavedSteps
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


def test_a_saved_step_is_loaded_by_the_next_run_and_reads_that_models_weights(tmp_path, monkeypatch):
    """A second Compiler (as in a new process) loads the step the first one saved, and runs it on other weights."""
    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    _, first = make_orthrus(9, "perturbed", block_size=4, eos_token_id=None, num_hidden_layers=1)
    _, second = make_orthrus(11, "perturbed", block_size=4, eos_token_id=None, num_hidden_layers=1)  # same shapes
    prompt = [5, 6, 7, 8]
    runs = [Compiler("default", notify=[].append), Compiler("default", notify=(lines := []).append)]
    compiled = [generate_orthrus(m, prompt, 12, block_size=4, ignore_eos=True, compile_mode=c).tokens
                for m, c in zip((first, second), runs)]
    eager = [generate_orthrus(m, prompt, 12, block_size=4, ignore_eos=True).tokens for m in (first, second)]
    assert compiled == eager and eager[0] != eager[1]  # the weights are inputs of the saved step, not constants in it
    step = next(iter(runs[1]._compiled.values()))
    assert (runs[0]._compiled[orthrus_step].compiled, step.loaded, step.compiled) == (1, 1, 0)
    assert lines == ["loading orthrus_step (default) for batch 1, block size 4, capacity 256, compiled by an earlier run"]
    assert len(list((tmp_path / "steps").iterdir())) == 1
    with torch.no_grad():  # new weights in new tensors (same layout): the loaded step must read these, not the old ones
        for param in second.parameters():
            param.data = param.data.clone().add_(torch.randn_like(param) * 0.05)
    moved = generate_orthrus(second, prompt, 12, block_size=4, ignore_eos=True, compile_mode=runs[1]).tokens
    assert moved == generate_orthrus(second, prompt, 12, block_size=4, ignore_eos=True).tokens != eager[1]
    assert (step.loaded, step.compiled) == (2, 0)


LOAD_IN_A_NEW_PROCESS = """
import sys, torch
from orthrus_min.checkpoint import load_model
from orthrus_min.consensus import generate_orthrus
from orthrus_min.engine import Compiler
torch.set_num_threads(1)
model = load_model(sys.argv[1])
lines = []
tokens = generate_orthrus(model, [5, 6, 7, 8], 12, block_size=4, ignore_eos=True, compile_mode=Compiler("default", notify=lines.append)).tokens
print(lines, tokens, "torch._dynamo" in sys.modules, "torch._inductor" in sys.modules)
"""


def test_a_new_process_loads_a_saved_step_without_importing_the_compiler(tmp_path, monkeypatch):
    """What makes a second `generate --compile` as quick as an eager run: the saved library is loaded by torch's C++
    runner; neither dynamo nor inductor (seconds of imports) is imported, and the tokens are the eager ones."""
    import subprocess
    import sys

    from orthrus_min.checkpoint import save_model

    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path / "cache"))
    _, model = make_orthrus(9, "perturbed", block_size=4, eos_token_id=None, num_hidden_layers=1)
    save_model(model, tmp_path / "model")
    model = load_model(tmp_path / "model")  # as the new process will have it (weights column-major)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count is part of a saved step's name
    try:
        compiled = generate_orthrus(model, [5, 6, 7, 8], 12, block_size=4, ignore_eos=True, compile_mode="default").tokens
    finally:
        torch.set_num_threads(threads)
    eager = generate_orthrus(model, [5, 6, 7, 8], 12, block_size=4, ignore_eos=True).tokens
    assert compiled == eager
    out = subprocess.run([sys.executable, "-c", LOAD_IN_A_NEW_PROCESS, str(tmp_path / "model")], capture_output=True,
                         text=True, check=True).stdout
    expected = ["loading orthrus_step (default) for batch 1, block size 4, capacity 256, compiled by an earlier run"]
    assert out.strip() == f"{expected} {eager} False False"


def test_an_unreadable_saved_step_is_compiled_again(tmp_path, monkeypatch):
    """AOTInductor stood in for by stubs: "compiling" writes a marker file, "loading" accepts only that file and runs the
    eager step on the flat inputs (FlatStep). What is tested is the file logic and the flat calling convention."""
    from orthrus_min import stepcache

    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))

    def compile_step(module, inputs, path, options=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"compiled")
        return path

    def load_step(path, module, options=None):
        if path.read_bytes() != b"compiled":
            raise RuntimeError("not a package")
        return lambda inputs: module(*inputs)

    monkeypatch.setattr(stepcache, "compile_step", compile_step)
    monkeypatch.setattr(stepcache, "load_step", load_step)
    _, model = make_orthrus(9, "perturbed", block_size=4, eos_token_id=None, num_hidden_layers=1)
    eager = generate_orthrus(model, [5, 6], 9, block_size=4, ignore_eos=True).tokens

    def run() -> tuple[int, int]:  # a new process: a new SavedSteps
        steps = SavedSteps(orthrus_step, "default")
        assert generate_orthrus(model, [5, 6], 9, block_size=4, ignore_eos=True, compile_mode=FixedSteps(steps)).tokens == eager
        return steps.loaded, steps.compiled

    assert run() == (0, 1)  # nothing saved yet: compiled
    [saved] = (tmp_path / "steps").iterdir()
    saved.write_bytes(b"junk")
    assert run() == (0, 1)  # a file that cannot be loaded: compiled again, and rewritten
    assert saved.read_bytes() == b"compiled"
    assert run() == (1, 0)


def test_the_steps_folder_keeps_the_most_recently_used_steps(tmp_path):
    import os

    from orthrus_min.stepcache import forget_old_steps

    for i in range(5):
        (tmp_path / f"{i}.pt2").write_bytes(b"step")
        os.utime(tmp_path / f"{i}.pt2", (1000 + i, 1000 + i))  # step 4 used last
    (tmp_path / ".3.x1y2.pt2").write_bytes(b"being written")  # another run's package in the making is not a step
    os.utime(tmp_path / ".3.x1y2.pt2", (900, 900))
    forget_old_steps(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".3.x1y2.pt2", "2.pt2", "3.pt2", "4.pt2"]
    forget_old_steps(tmp_path, keep=3, keep_bytes=9)  # 4 bytes each: the two most recent fit, the third does not
    assert sorted(p.name for p in tmp_path.iterdir()) == [".3.x1y2.pt2", "3.pt2", "4.pt2"]
    forget_old_steps(tmp_path, keep=3, keep_bytes=1)  # the newest stays even when it alone is over the limit
    assert sorted(p.name for p in tmp_path.iterdir()) == [".3.x1y2.pt2", "4.pt2"]


class FixedSteps(Compiler):
    """A Compiler whose step is the given SavedSteps (CPU, mode "default")."""

    def __init__(self, steps):
        super().__init__("default")
        self.steps = steps

    def compile(self, fn, device=None):
        return self.steps


def test_a_saved_steps_name_changes_with_what_its_graph_holds():
    from orthrus_min.stepcache import step_key

    _, model = make_orthrus(9, "random", block_size=8, num_hidden_layers=1)
    cache, eos = model.new_cache(256, 1), torch.tensor([0])
    key = lambda **kw: step_key(orthrus_step, "default", model, kw.get("cache", cache), kw.get("sampling", SamplingParams()),  # noqa: E731
                                kw.get("eos", eos), kw.get("args", {"block_size": 8}))
    base = key()
    assert key(sampling=SamplingParams(seed=3)) == base  # the seed is a tensor input (state.seeds), not in the graph
    others = [key(args={"block_size": 4}), key(cache=model.new_cache(512, 1)), key(cache=model.new_cache(256, 2)),
              key(sampling=SamplingParams(temperature=0.7)), key(eos=torch.tensor([0, 1]))]
    model.set_weight_layout()  # fp32 on a CPU: every weight column-major, as load_model leaves it
    others.append(key())
    model.set_attn_backend("triton")
    others.append(key())
    assert len({base, *others}) == 1 + len(others)


def test_a_max_autotune_step_is_saved_with_its_weights(tmp_path, monkeypatch):
    """max-autotune freezes the weights into the step (packed for inductor's matmul kernel): the package holds them,
    so its name hashes them — other weights, another file — and a later Compiler loads it with no weights handed in."""
    from orthrus_min import stepcache

    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    # Only inductor's own matmul kernel (the one that needs the packed weights): no BLAS candidates to time, a faster compile.
    monkeypatch.setitem(stepcache.SAVED_MODES["max-autotune"], "max_autotune_gemm_backends", "CPP")
    _, model = make_orthrus(9, "perturbed", block_size=4, eos_token_id=None, num_hidden_layers=1)
    prompt = [5, 6, 7, 8]
    eager = generate_orthrus(model, prompt, 12, block_size=4, ignore_eos=True).tokens
    runs = [Compiler("max-autotune", notify=[].append), Compiler("max-autotune", notify=(lines := []).append)]
    compiled = [generate_orthrus(model, prompt, 12, block_size=4, ignore_eos=True, compile_mode=c).tokens for c in runs]
    assert compiled == [eager, eager]
    assert (runs[0]._compiled[orthrus_step].compiled, runs[1]._compiled[orthrus_step].loaded) == (1, 1)
    assert lines == ["loading orthrus_step (max-autotune) for batch 1, block size 4, capacity 256, compiled by an earlier run"]
    [saved] = (tmp_path / "steps").iterdir()
    assert saved.stat().st_size > stepcache.weights_bytes(model)  # the weights are inside
    _, other = make_orthrus(11, "perturbed", block_size=4, eos_token_id=None, num_hidden_layers=1)  # same shapes
    assert stepcache.weights_digest(other) != stepcache.weights_digest(model)
    assert stepcache.weights_digest(model) == stepcache.weights_digest(make_orthrus(9, "perturbed", block_size=4,
                                                                                     eos_token_id=None, num_hidden_layers=1)[1])


def test_a_model_too_large_to_freeze_into_a_file_falls_back_to_torch_compile(monkeypatch):
    """Above MAX_FROZEN_BYTES of weights, a max-autotune step is not saved (its package would hold them all)."""
    from orthrus_min import stepcache

    monkeypatch.setattr(stepcache, "MAX_FROZEN_BYTES", 1000)
    _, model = make_orthrus(9, "perturbed", block_size=4, eos_token_id=None, num_hidden_layers=1)
    calls = []
    steps = SavedSteps(orthrus_step, "max-autotune", fallback=lambda: (calls.append(1), orthrus_step)[1])
    eager = generate_orthrus(model, [5, 6, 7, 8], 12, block_size=4, ignore_eos=True).tokens
    compiler = Compiler(None)
    compiler.mode, compiler._compiled[orthrus_step] = "max-autotune", steps  # (the fallback: the eager step, no compile)
    assert generate_orthrus(model, [5, 6, 7, 8], 12, block_size=4, ignore_eos=True, compile_mode=compiler).tokens == eager
    assert calls == [1] and steps.compiled == steps.loaded == 0
