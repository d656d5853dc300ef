"""The diffusion view (docs/ARCHITECTURE.md, "The method" step 1 and "References"): draft logits against a Transformers-built reference,
the cache left untouched, init_diffusion_view, and the Orthrus checkpoint layout (docs/ARCHITECTURE.md, "Checkpoints")."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import save_checkpoint
from orthrus_min import OrthrusError
from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import load_model, save_model
from orthrus_min.config import require_diffusion_view
from orthrus_min.consensus import generate_orthrus
from orthrus_min.model import init_diffusion_view
from orthrus_min.sampling import SamplingParams
from orthrus_helpers import DIFF_NAMES, hf_diffusion_twin, hf_draft_logits, make_orthrus, ours_from_hf

CONFIGS = {
    "gqa2": dict(),
    "mha-tied-3layers": dict(num_key_value_heads=4, tie_word_embeddings=True, num_hidden_layers=3),
    "mqa-h8-d8": dict(num_attention_heads=8, num_key_value_heads=1, head_dim=8, hidden_size=48),
}
MASK = 5


def draft_block(x_p: int, K: int) -> torch.Tensor:
    block = torch.full((1, K), MASK)  # (1, K): [x_p, MASK, …, MASK]
    block[0, 0] = x_p
    return block


@functools.cache
def reference_models(config: str):
    """(Transformers AR model, our model with random diffusion weights, Transformers diffusion twin), built once per config."""
    hf, model = make_orthrus(seed=3, diffusion="random", **CONFIGS[config])
    return hf, model, hf_diffusion_twin(hf, model)


@pytest.mark.parametrize("K", [1, 2, 7, 32], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("P", [0, 1, 131], ids=lambda p: f"prefix{p}")
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_draft_logits_match_transformers_reference(config, P, K):
    hf, model, twin = reference_models(config)
    prefix = torch.randint(0, 320, (1, P), generator=torch.Generator().manual_seed(P))
    block = draft_block(x_p=17, K=K)

    expected = hf_draft_logits(hf, twin, prefix, block)  # (1, K, V)
    cache = model.new_cache(P + K)
    if P:
        model(prefix, cache)
    got = model(block, cache, view="diffusion")  # (1, K, V)

    assert got.shape == expected.shape == (1, K, 320)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_reference_is_bidirectional_inside_the_block():
    """The zeros mask matters: with Transformers' causal mask the reference differs (one layer, so the last query agrees)."""
    hf, model = make_orthrus(seed=4, diffusion="random", num_hidden_layers=1)
    twin = hf_diffusion_twin(hf, model)
    prefix, block = torch.arange(20, 40)[None], draft_block(x_p=17, K=7)
    cache = model.new_cache(27)
    model(prefix, cache)
    got = model(block, cache, view="diffusion")
    causal = hf_draft_logits(hf, twin, prefix, block, bidirectional=False)
    assert (got[:, -1] - causal[:, -1]).abs().max() < 1e-4  # the last query sees the whole block either way
    assert (got[:, 0] - causal[:, 0]).abs().max() > 1e-2  # the first sees the masks only when bidirectional


def model_copy_cache(model, cache):
    """A fresh cache holding the same valid entries as `cache`."""
    other = model.new_cache(cache.capacity, cache.batch_size)
    for mine, theirs in zip(other.k + other.v, cache.k + cache.v):
        mine.copy_(theirs)
    other.rollback(0)
    other.lengths.copy_(cache.lengths)
    return other


def test_draft_pass_writes_nothing_to_the_cache():
    _, model = make_orthrus(seed=5, diffusion="random")
    prefix, block = torch.arange(20, 50)[None], draft_block(x_p=17, K=8)
    cache = model.new_cache(40)
    model(prefix, cache)
    keys_before, values_before = cache.keys(0).clone(), cache.values(1).clone()
    ar_logits_before = model(block, model_copy_cache(model, cache))

    model(block, cache, view="diffusion")

    assert cache.lengths.tolist() == [30]
    assert torch.equal(cache.keys(0), keys_before) and torch.equal(cache.values(1), values_before)
    assert torch.equal(model(block, cache), ar_logits_before)  # the AR view sees the same cache as before


def test_init_diffusion_view_copies_ar_weights():
    hf, model = make_orthrus(seed=6, diffusion="copied", block_size=16, mask_token_id=7)
    assert model.config.model_type == "orthrus" and model.config.has_diffusion_view
    assert (model.config.block_size, model.config.mask_token_id) == (16, 7)
    for layer in model.model.layers:
        attn = layer.self_attn
        for name in DIFF_NAMES:
            ar, diff = getattr(attn, name).weight, getattr(attn, f"{name}_diff").weight
            assert torch.equal(ar, diff) and ar.data_ptr() != diff.data_ptr()  # equal values, own storage
    # 6 diffusion tensors per layer: 2 (C x H*D) + 2 (C x Hkv*D) + 2 (D), here 2 layers
    n_diff = sum(p.numel() for n, p in model.named_parameters() if "_diff" in n)
    assert n_diff == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 2 * 16)
    # Copied weights, a single-token block: the draft pass is the AR pass.
    cache = model.new_cache(21)
    model(torch.arange(20, 40)[None], cache)
    assert torch.allclose(model(torch.tensor([[9]]), cache, view="diffusion"), model(torch.tensor([[9]]), cache), atol=1e-5)


def test_init_diffusion_view_rejects_bad_input():
    hf, model = make_orthrus(seed=0)
    with pytest.raises(OrthrusError, match="already has a diffusion view"):
        init_diffusion_view(model, 32, mask_token_id=5)
    ar_only = ours_from_hf(hf)
    with pytest.raises(OrthrusError, match=r"mask_token_id=320 is outside the vocabulary \(0 … 319\)"):
        init_diffusion_view(ar_only, 32, mask_token_id=320)
    with pytest.raises(OrthrusError, match="block_size must be >= 1, got 0"):
        init_diffusion_view(ar_only, 0, mask_token_id=5)
    assert not ar_only.config.has_diffusion_view  # nothing changed by the failed calls


def test_ar_only_model_has_no_draft_pass():
    hf, _ = make_orthrus(seed=0)
    ar_only = ours_from_hf(hf)
    with pytest.raises(OrthrusError, match="has no diffusion view.*--mode ar.*init_diffusion_view"):
        ar_only(torch.tensor([[1, 2]]), view="diffusion")
    with pytest.raises(OrthrusError, match="has no diffusion view.*--mode ar.*init_diffusion_view"):
        generate_orthrus(ar_only, [1, 2, 3], 4)


def test_orthrus_checkpoint_round_trips(tmp_path):
    _, model = make_orthrus(seed=7, diffusion="random", block_size=16, mask_token_id=3, eos_token_id=[2, 3])
    save_model(model, tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["block_size"], config["mask_token_id"]) == ("orthrus", 16, 3)
    tensors = load_file(tmp_path / "model.safetensors")
    for name in DIFF_NAMES:
        assert tensors[f"model.layers.1.self_attn.{name}_diff.weight"].shape == getattr(model.model.layers[1].self_attn, f"{name}_diff").weight.shape
    assert len(tensors) == len(model.state_dict())

    loaded = load_model(tmp_path, dtype="float32", device="cpu")
    assert loaded.config.to_dict() == json.loads(json.dumps(model.config.to_dict()))  # as JSON writes it
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_reference_layout_folder_loads_unchanged(tmp_path):
    """A folder as the reference implementation writes it: a Transformers Qwen3 folder plus the Orthrus
    config fields and `*_diff` tensors. It loads, decodes, and saves back to the same names and fields."""
    hf = save_checkpoint(tmp_path / "in", seed=8, tokenizer=False)
    config = json.loads((tmp_path / "in" / "config.json").read_text())
    config.update(model_type="orthrus", block_size=8, mask_token_id=4)
    (tmp_path / "in" / "config.json").write_text(json.dumps(config))
    tensors = load_file(tmp_path / "in" / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for name in list(tensors):
        if ".self_attn." in name and not name.endswith("_diff.weight"):
            tensors[name.replace(".weight", "_diff.weight")] = tensors[name] + 0.01 * torch.randn(tensors[name].shape, generator=g)
    save_file(tensors, tmp_path / "in" / "model.safetensors", metadata={"format": "pt"})

    model = load_model(tmp_path / "in", dtype="float32", device="cpu")
    assert model.config.has_diffusion_view and (model.config.block_size, model.config.mask_token_id) == (8, 4)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())
    out = generate_orthrus(model, [10, 11, 12], 12, ignore_eos=True)
    assert out.tokens == generate_ar(model, [10, 11, 12], 12, ignore_eos=True).tokens

    save_model(model, tmp_path / "out")
    saved_config = json.loads((tmp_path / "out" / "config.json").read_text())
    for key, value in config.items():
        if key not in ("rope_theta", "rope_parameters", "dtype", "torch_dtype", "transformers_version"):
            assert saved_config[key] == value, key
    assert saved_config["rope_parameters"]["rope_theta"] == hf.config.rope_parameters["rope_theta"]
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert saved.keys() == tensors.keys()
    assert all(torch.equal(saved[k], v) for k, v in tensors.items())


def test_missing_mask_token_id_is_a_clear_error(tmp_path):
    _, model = make_orthrus(seed=0)
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path, dtype="float32", device="cpu")
    with pytest.raises(OrthrusError, match="no mask_token_id"):
        require_diffusion_view(loaded.config)
    with pytest.raises(OrthrusError, match="no mask_token_id"):
        generate_orthrus(loaded, [1, 2, 3], 4, SamplingParams())
