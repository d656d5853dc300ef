"""Bad input gets one clear line: from the Python API (OrthrusError) and from the CLI (exit 2, no traceback)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from orthrus_min.ar import generate_ar
from orthrus_min.errors import OrthrusError
from orthrus_min.model import Qwen3Config, load_model
from orthrus_min.sampling import SamplingParams


@pytest.fixture()
def ckpt(tmp_path, tiny_checkpoint):
    """A private copy of the tiny checkpoint that a test may break."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    return folder


def edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def edit_tensors(folder, fn):
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    fn(state)
    save_file(state, folder / "model.safetensors")


# ---------------------------------------------------------------- checkpoints


def test_missing_folder():
    with pytest.raises(OrthrusError, match="no such checkpoint folder"):
        load_model("/no/such/folder")


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OrthrusError, match="no-such-org/no-such-model: not a local folder, and could not get it"):
        load_model("no-such-org/no-such-model")


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"])
def test_config_missing_required_field(ckpt, field):
    edit_config(ckpt, **{field: None})
    with pytest.raises(OrthrusError, match=f"required field '{field}' is missing"):
        load_model(ckpt)


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="llama"), "model_type is 'llama'"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}), "rope_parameters.rope_type='yarn' is not supported"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling.rope_type='linear' is not supported"),
    (dict(use_sliding_window=True), "use_sliding_window=true is not supported"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "layer_types"),
    (dict(attention_bias=True), "attention_bias=true is not supported"),
    (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
], ids=["model-type", "yarn", "linear-scaling", "sliding-window", "layer-types", "attention-bias", "gelu"])
def test_config_unsupported_feature(ckpt, changes, message):
    edit_config(ckpt, **changes)
    with pytest.raises(OrthrusError, match=message):
        load_model(ckpt)


def test_tensor_missing(ckpt):
    edit_tensors(ckpt, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(OrthrusError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(ckpt)


def test_tensor_unexpected(ckpt):
    edit_tensors(ckpt, lambda s: s.__setitem__("model.layers.0.self_attn.bias", torch.zeros(3)))
    with pytest.raises(OrthrusError, match=r"unexpected tensors: model\.layers\.0\.self_attn\.bias"):
        load_model(ckpt)


def test_tensor_wrong_shape(ckpt):
    edit_tensors(ckpt, lambda s: s.__setitem__("model.norm.weight", torch.ones(63)))
    with pytest.raises(OrthrusError, match=r"model\.norm\.weight has shape \(63,\), expected \(64,\)"):
        load_model(ckpt)


def test_truncated_safetensors(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OrthrusError, match="model.safetensors: cannot read safetensors file"):
        load_model(ckpt)


def test_missing_shard(tmp_path):
    from conftest import make_hf_model

    make_hf_model().save_pretrained(tmp_path, max_shard_size="40KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(OrthrusError, match=f"{victim.name}: shard listed in the index is missing"):
        load_model(tmp_path)


# ---------------------------------------------------------------- generation settings


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint[0])


def test_prompt_plus_new_tokens_beyond_context(model):
    with pytest.raises(OrthrusError, match=r"prompt \(2000 tokens\) \+ max_new_tokens \(100\) exceeds the model's context of 2048"):
        generate_ar(model, [5] * 2000, 100)


def test_max_new_tokens_below_one(model):
    with pytest.raises(OrthrusError, match="max_new_tokens must be an int >= 1, got 0"):
        generate_ar(model, [5], 0)


def test_empty_prompt(model):
    with pytest.raises(OrthrusError, match="the prompt is empty"):
        generate_ar(model, [], 5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), r"temperature must be >= 0"),
    (dict(temperature=1.0, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(temperature=1.0, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(temperature=1.0, top_k=-1), r"top_k must be >= 0"),
], ids=["temperature", "top-p-zero", "top-p-above-one", "top-k"])
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(OrthrusError, match=message):
        SamplingParams(**kwargs)


def test_unknown_dtype_and_device(tiny_checkpoint):
    with pytest.raises(OrthrusError, match="dtype 'float8' is unknown"):
        load_model(tiny_checkpoint[0], dtype="float8")
    with pytest.raises(OrthrusError, match="device 'gpu0' is not a valid torch device"):
        load_model(tiny_checkpoint[0], device="gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(tiny_checkpoint):
    with pytest.raises(OrthrusError, match="CUDA is not available on this machine"):
        load_model(tiny_checkpoint[0], device="cuda")


def test_config_heads_not_multiple():
    with pytest.raises(OrthrusError, match="num_attention_heads=6 is not a multiple of num_key_value_heads=4"):
        Qwen3Config.from_dict(dict(model_type="qwen3", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                   num_attention_heads=6, num_key_value_heads=4))
