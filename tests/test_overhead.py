"""What keeps a run cheap without changing a token: loading imports no compiler, fp32 CPU weights are laid out for
MKL's GEMM, and compiled decoding with block_size="auto" keeps one K, the same run after run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from orthrus_min.ar import generate_ar
from orthrus_min.blocksize import BlockSizeChooser
from orthrus_min.checkpoint import DEFAULT_MODEL, load_model, save_model
from orthrus_min.consensus import generate_orthrus
from orthrus_min.engine import Compiler
from orthrus_helpers import make_orthrus


def test_loading_a_checkpoint_imports_no_compiler():
    """Built on `meta`, nothing is initialised: torch's random init there would import torch._dynamo (seconds)."""
    code = ("import sys, torch; before = 'torch._dynamo' in sys.modules; from orthrus_min.checkpoint import load_model; "
            f"load_model({str(DEFAULT_MODEL)!r}, device='cpu'); print(before, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == out[0]  # loading imported nothing that `import torch` had not


def test_fp32_cpu_weights_are_column_major_with_the_same_values(tmp_path):
    model = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    on_disk = load_file(DEFAULT_MODEL / "model.safetensors")
    for name, p in model.named_parameters():
        if p.dim() == 2:  # every projection, the embedding and (tied) lm_head: (out, in) with strides (1, out)
            assert p.stride() == (1, p.shape[0]) and torch.equal(p, on_disk[name]), name
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    save_model(model, tmp_path)  # written back row-major, tensor for tensor the same
    again = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(again[name], t) for name, t in on_disk.items() if name in again)
    bf16 = load_model(DEFAULT_MODEL, dtype="bfloat16", device="cpu")  # transposed, a bf16 GEMM would be several times slower
    assert all(p.is_contiguous() for p in bf16.parameters())


def test_column_major_projections_stay_batch_invariant():
    """With batch invariance on, a row's fp32 logits do not depend on how many rows are multiplied with it."""
    model = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    model.set_batch_invariant(True)
    g = torch.Generator().manual_seed(0)
    layer = model.model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.v_proj_diff, layer.mlp.down_proj, model.lm_head):
        x = torch.randn(24, linear.in_features, generator=g)
        alone = linear(x[:1])  # (1, out)
        assert all(torch.equal(linear(x[:rows])[:1], alone) for rows in range(1, 25))


def test_a_kept_block_size_is_used_for_every_step():
    chooser = BlockSizeChooser([2, 4, 8, 16, 32], {2: 1.0, 4: 1.2, 8: 1.6, 16: 2.4, 32: 4.0}, probe_every=2)
    chooser.keep(4)
    assert [chooser.next() for _ in range(6)] == [4] * 6  # no probe of a larger K: it would be a new compile
    assert chooser.best() == 4


def test_compiler_remembers_its_block_size_across_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    _, model = make_orthrus(3, "random", block_size=8, num_hidden_layers=1)
    asked = []

    def choose(K):
        return lambda: asked.append(K) or K

    assert Compiler("default").block_size(model, 1, choose(4)) == 4
    assert Compiler("default").block_size(model, 1, choose(8)) == 4  # the next run: the first run's choice
    assert Compiler("default").block_size(model, 2, choose(8)) == 8  # another batch size is another graph
    assert asked == [4, 8]
    (tmp_path / "block_sizes.json").write_text("[not a table")
    assert Compiler("default").block_size(model, 1, choose(2)) == 2  # unreadable: chosen anew
    assert list(json.loads((tmp_path / "block_sizes.json").read_text()).values()) == [2]


def test_a_compiler_that_does_not_remember_chooses_its_own_block_size(tmp_path, monkeypatch):
    """What a benchmark holds: its numbers must not depend on the block size an earlier command left behind."""
    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    _, model = make_orthrus(3, "random", block_size=8, num_hidden_layers=1)
    assert Compiler("default").block_size(model, 1, lambda: 4) == 4  # remembered for the next run
    bench = Compiler("default", remember=False)
    assert bench.block_size(model, 1, lambda: 8) == 8 and bench.block_size(model, 1, lambda: 2) == 8  # its own, kept
    bench.remember_block_size(model, 1, 2)
    assert Compiler("default").block_size(model, 1, lambda: 8) == 4  # what the first one left, untouched


def test_compiled_auto_decodes_with_one_block_size(tmp_path, monkeypatch):
    """Compiling replaced by the function itself: what is tested is the choice of K, not inductor."""
    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(Compiler, "compile", lambda self, fn, device=None: fn)
    _, model = make_orthrus(4, "perturbed", block_size=16, eos_token_id=None)
    prompts = [[5, 6, 7], list(range(20, 45))]
    expected = [g.tokens for g in generate_ar(model, prompts, 30, ignore_eos=True)]
    path = tmp_path / "block_sizes.json"
    for _ in range(2):  # two runs: the second uses the K the first left in the file (its own, or a faster one it saw)
        remembered = json.loads(path.read_text()) if path.exists() else {}
        outs = generate_orthrus(model, prompts, 30, block_size="auto", ignore_eos=True, compile_mode=Compiler("default"))
        used = {K for g in outs for K in g.block_sizes}
        assert len(used) == 1 and (not remembered or used == set(remembered.values()))
        assert [g.tokens for g in outs] == expected


@pytest.mark.parametrize("bad", [0, 17, "8"])
def test_a_remembered_block_size_outside_the_checkpoints_range_is_chosen_anew(tmp_path, monkeypatch, bad):
    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    _, model = make_orthrus(3, "random", block_size=16, num_hidden_layers=1)
    Compiler("default").block_size(model, 1, lambda: 4)
    path = tmp_path / "block_sizes.json"
    path.write_text(json.dumps(dict.fromkeys(json.loads(path.read_text()), bad)))
    assert Compiler("default").block_size(model, 1, lambda: 2) == 2


def test_a_kept_block_size_is_replaced_only_when_the_acceptance_seen_says_another_is_clearly_faster():
    costs = {4: 1.0, 8: 1.1, 16: 1.4}
    chooser = BlockSizeChooser([4, 8, 16], costs)
    chooser.keep(4)
    chooser.observe(4, [3, 3, 3])
    assert chooser.worth_switching() is None  # fewer than MIN_SEEN observations: no evidence yet
    chooser.observe(4, [3] * 17 + [0, 1])  # 22 steps, 20 with every draft accepted
    # By hand: tokens(4) = 1 + mean(n) exactly; above 4 the geometric estimate: acceptances 0.7 + 61 = 61.7,
    # rejections 0.3 + 2 (the counts below K - 1 = 3) = 2.3, so a = 61.7 / 64.
    a = 61.7 / 64
    rate = {4: (1 + (3 * 20 + 0 + 1) / 22) / 1.0, 8: (1 + sum(a ** i for i in range(1, 8))) / 1.1,
            16: (1 + sum(a ** i for i in range(1, 16))) / 1.4}
    assert max(rate, key=rate.get) == 16 and chooser.worth_switching() == 16
    kept8 = BlockSizeChooser([4, 8, 16], costs)
    kept8.keep(8)
    kept8.observe(8, [1, 2, 1, 2, 2, 1])  # at K = 8 the counts are exact for K = 4: tokens(4) == tokens(8)
    assert kept8.worth_switching() == 4  # the same tokens for 1/1.1 of the time: 10% > the 5% margin
    kept8.first_costs[4] = 1.07  # now 4 gains only 1.1/1.07 - 1 = 2.8%: not worth a compile
    assert kept8.worth_switching() is None


def test_a_remembered_block_size_is_what_the_next_run_uses(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHRUS_MIN_CACHE_DIR", str(tmp_path))
    _, model = make_orthrus(3, "random", block_size=16, num_hidden_layers=1)
    first = Compiler("default")
    assert first.block_size(model, 1, lambda: 4) == 4
    first.remember_block_size(model, 1, 8)
    assert first.block_size(model, 1, lambda: 2) == 4  # this Compiler keeps its K: no compile in the middle of its life
    assert Compiler("default").block_size(model, 1, lambda: 2) == 8  # the next one (the next run) takes the new one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_fast_finiteness_check_agrees_with_isfinite(dtype):
    from orthrus_min.checkpoint import all_finite

    for bad in (None, float("nan"), float("inf"), -float("inf")):
        t = torch.randn(64, 33).to(dtype)
        if bad is not None:
            t[17, 5] = bad
        assert all_finite(t) == bool(torch.isfinite(t).all()) == (bad is None)
    assert all_finite(torch.empty(0, 4, dtype=dtype))
