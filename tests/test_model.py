"""The AR view against Transformers' Qwen3ForCausalLM: logits, cached decoding, greedy generation, loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_hf_model, save_checkpoint
from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import load_model
from orthrus_min.config import Qwen3Config

CONFIGS = {
    # name: overrides of tiny_config(); together they cover GQA 1/2/4, head_dim != hidden/heads,
    # head_dim absent, tied and untied embeddings, rope base 1e6, and both RoPE config formats.
    "gqa1-headdim24-tied": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=24, tie_word_embeddings=True),
    "gqa2-rope1e6-untied": dict(num_attention_heads=4, num_key_value_heads=2, rope_parameters={"rope_theta": 1e6, "rope_type": "default"}),
    "gqa4-no-headdim": dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2, head_dim=16),
    "gqa2-3layers-old-rope-theta": dict(num_hidden_layers=3, rope_parameters={"rope_theta": 5e5, "rope_type": "default"}),
}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def rewrite_config(folder, name: str) -> None:
    """Rewrites config.json as other checkpoints store it: without head_dim (then hidden/heads), or with a
    top-level rope_theta instead of rope_parameters (older files)."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    if "no-headdim" in name:
        assert cfg.pop("head_dim") == cfg["hidden_size"] // cfg["num_attention_heads"]
    if "old-rope" in name:
        cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(ours, Transformers) with identical weights, for each config."""
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_checkpoint(folder, seed=len(request.param), tokenizer=False, **CONFIGS[request.param])
    rewrite_config(folder, request.param)
    return load_model(folder, dtype="float32", device="cpu"), hf


def test_config_read(pair):
    ours, hf = pair
    c = hf.config
    assert ours.config.head_dim == c.head_dim
    assert ours.config.rope_theta == c.rope_parameters["rope_theta"]
    assert ours.config.tie_word_embeddings == c.tie_word_embeddings
    if c.tie_word_embeddings:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_logits_match_transformers(pair):
    ours, hf = pair
    ids = torch.randint(0, hf.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    assert rel_err(ours(ids), ref) <= 1e-4


def test_logits_match_past_position_1000(pair):
    ours, hf = pair
    ids = torch.randint(0, hf.config.vocab_size, (1, 1100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits[:, 1000:]  # (1, 100, V)
        cache = ours.new_cache(1100)
        ours(ids[:, :1000], cache)
        got = ours(ids[:, 1000:], cache)  # a 100-token block at positions 1000..1099 over the cache
    assert rel_err(got, ref) <= 1e-4


def test_cached_decoding_matches_full_forward(pair):
    ours, hf = pair
    ids = torch.randint(0, hf.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(30, batch_size=2)
        steps = [ours(ids[:, :7], cache)]  # prefill 7, then 3-token and 1-token steps
        steps.append(ours(ids[:, 7:10], cache))
        steps += [ours(ids[:, t : t + 1], cache) for t in range(10, 30)]
    assert cache.lengths.tolist() == [30, 30]
    assert rel_err(torch.cat(steps, 1), full) <= 1e-5


def test_greedy_generation_matches_transformers_64_tokens(pair):
    ours, hf = pair
    prompt = torch.randint(0, hf.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(4))
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, do_sample=False,
                      eos_token_id=None, pad_token_id=0)[0, 9:].tolist()
    got = generate_ar(ours, prompt[0].tolist(), 64, ignore_eos=True).tokens
    assert len(ref) == 64
    assert got == ref


def test_sharded_checkpoint_loads(tmp_path):
    hf = make_hf_model(seed=5)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ours = load_model(tmp_path, dtype="float32", device="cpu")
    ids = torch.arange(20).view(1, 20)
    with torch.no_grad():
        assert rel_err(ours(ids), hf(ids).logits) <= 1e-5


def test_load_in_bfloat16(tiny_checkpoint):
    folder, hf = tiny_checkpoint
    ours = load_model(folder, dtype="bfloat16", device="cpu")
    assert ours.dtype == torch.bfloat16 and ours.model.rotary_emb.cos.dtype == torch.float32
    ids = torch.arange(16).view(1, 16)
    with torch.no_grad():
        assert rel_err(ours(ids).float(), hf(ids).logits) < 0.05


def test_hub_id_loads_offline_from_hf_cache(tmp_path):
    """A checkpoint in the Hugging Face cache layout loads by its id with HF_HUB_OFFLINE=1 (CLI, fresh process)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen3"
    save_checkpoint(repo / "snapshots" / commit, seed=6)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "orthrus_min.generate", "--model", "tiny-org/tiny-qwen3", "--prompt", "def f", "--max-new-tokens", "5"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[ar] 5 tokens" in done.stderr


def test_config_reads_both_eos_forms_and_keeps_unknown_fields():
    base = dict(model_type="qwen3", vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    assert Qwen3Config.from_dict({**base, "eos_token_id": 7}).eos_token_id == (7,)
    c = Qwen3Config.from_dict({**base, "eos_token_id": [7, 8], "torch_dtype": "bfloat16"})
    assert c.eos_token_id == (7, 8) and c.num_key_value_heads == 2 and c.head_dim == 4
    assert c.to_dict()["torch_dtype"] == "bfloat16" and c.to_dict()["eos_token_id"] == [7, 8]
    assert Qwen3Config.from_dict(c.to_dict()) == c
