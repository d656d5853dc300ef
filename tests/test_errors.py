"""Bad input gets one clear line: from the Python API (OrthrusError) and from the CLI (exit 2, no traceback)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import load_model
from orthrus_min.config import Qwen3Config
from orthrus_min.errors import OrthrusError
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


def test_context_too_long_for_the_rope_tables_is_refused_before_allocating(ckpt, monkeypatch):
    from orthrus_min.model import RotaryEmbedding

    monkeypatch.setattr(RotaryEmbedding, "build", lambda *a: pytest.fail("the RoPE tables were built"))
    edit_config(ckpt, max_position_embeddings=10**12)
    with pytest.raises(OrthrusError, match=r"max_position_embeddings=1000000000000 is more than this implementation supports "
                                           r"\(1048576 = 2\*\*20 positions\): its RoPE tables alone would take 119,209 GiB"):
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


# ---------------------------------------------------------------- the Python API's door: api.LLM checks every argument


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    from orthrus_min import load

    return load(tiny_checkpoint[0], device="cpu")


def np_int(n):
    import numpy as np

    return np.int64(n)


# (id, a call on the LLM, the exception, what its one-line message must match)
API_CASES = [
    # max_new_tokens: an int >= 1 (numpy ints too), or one per prompt
    ("max-new-tokens-float", lambda llm: llm.generate("x", 4.0), TypeError, "max_new_tokens must be an int, got float 4.0"),
    ("max-new-tokens-fraction", lambda llm: llm.generate("x", 4.5), TypeError, "max_new_tokens must be an int, got float 4.5"),
    ("max-new-tokens-none", lambda llm: llm.generate("x", None), TypeError, "max_new_tokens must be an int, got NoneType"),
    ("max-new-tokens-bool", lambda llm: llm.generate("x", True), TypeError, "max_new_tokens must be an int, got bool True"),
    ("max-new-tokens-tensor", lambda llm: llm.generate("x", torch.tensor(4)), TypeError, "max_new_tokens must be an int, got Tensor"),
    ("max-new-tokens-string", lambda llm: llm.generate("x", "4"), TypeError, "max_new_tokens must be an int, got str"),
    ("max-new-tokens-0-in-list", lambda llm: llm.generate(["x", "y"], [4, 0]), OrthrusError, r"max_new_tokens\[1\] must be an int >= 1, got 0"),
    ("max-new-tokens-list-too-short", lambda llm: llm.generate(["a", "b", "c"], [4, 5]), OrthrusError,
     "max_new_tokens has 2 entries for 3 prompts"),
    ("max-new-tokens-beyond-context", lambda llm: llm.generate("x", 10**30), OrthrusError, "exceeds the model's context of 2048 tokens"),
    # seeds: one int in 0 … 2**63-1 per prompt, checked as seed is
    ("seeds-a-string", lambda llm: llm.generate(["a", "b"], 4, seeds="ab", temperature=1.0), TypeError,
     "seeds must be a list of ints, one per prompt, got str"),
    ("seeds-holding-a-string", lambda llm: llm.generate(["a", "b"], 4, seeds=[1, "x"], temperature=1.0), TypeError,
     r"seeds\[1\] must be an int, got str 'x'"),
    ("seeds-beyond-63-bits", lambda llm: llm.generate(["a", "b"], 4, seeds=[1, 2**64], temperature=1.0), OrthrusError,
     r"seeds\[1\] must be in 0 … 2\*\*63-1, got 18446744073709551616"),
    ("seeds-negative", lambda llm: llm.generate(["a", "b"], 4, seeds=[1, -5], temperature=1.0), OrthrusError,
     r"seeds\[1\] must be in 0 … 2\*\*63-1, got -5"),
    ("seed-negative", lambda llm: llm.generate(["a", "b"], 4, seed=-5, temperature=1.0), OrthrusError,
     r"seed must be in 0 … 2\*\*63-1, got -5"),
    ("seeds-too-few", lambda llm: llm.generate(["a", "b"], 4, seeds=[1], temperature=1.0), OrthrusError,
     "seeds has 1 entries for 2 prompts"),
    ("seed-and-seeds", lambda llm: llm.generate(["a", "b"], 4, seed=1, seeds=[1, 2]), OrthrusError,
     "give seed .* or seeds .*, not both"),
    # sampling settings
    ("top-k-fraction", lambda llm: SamplingParams(0.7, top_k=2.5), TypeError, "top_k must be an int, got float 2.5"),
    ("top-k-fraction-generate", lambda llm: llm.generate("x", 4, temperature=0.7, top_k=2.5), TypeError, "top_k must be an int"),
    ("temperature-nan", lambda llm: llm.generate("x", 4, temperature=float("nan")), OrthrusError, "temperature must be >= 0 and finite"),
    ("temperature-inf", lambda llm: llm.generate("x", 4, temperature=float("inf")), OrthrusError, "temperature must be >= 0 and finite"),
    ("top-p-bool", lambda llm: llm.generate("x", 4, temperature=1.0, top_p=True), TypeError, "top_p must be a number, got bool"),
    ("check-a-string", lambda llm: llm.generate("x", 4, check="yes"), TypeError, "check must be True or False, got str 'yes'"),
    ("ignore-eos-an-int", lambda llm: llm.generate("x", 4, ignore_eos=1), TypeError, "ignore_eos must be True or False"),
    ("on-text-not-callable", lambda llm: llm.generate("x", 4, on_text=5), TypeError, "on_text must be a function"),
    ("mode-an-int", lambda llm: llm.generate("x", 4, mode=3), OrthrusError, "mode 3 is unknown"),
    # a batch is a flat list of prompts; bytes are refused
    ("batch-nested-twice", lambda llm: llm.generate([[[1, 2], [3, 4]]], 4), TypeError,
     "prompt 0 must be a flat list of token ids .ints., but it holds a list: a batch is a flat list of prompts"),
    ("batch-text-and-list", lambda llm: llm.generate(["a", ["b", "c"]], 4), TypeError,
     "prompt 1 must be a flat list of token ids .ints., but it holds a str: a batch is a flat list of prompts"),
    ("ids-and-prompts-mixed", lambda llm: llm.generate([1, [2]], 4), TypeError, "the prompt mixes token ids and prompts"),
    ("bytes", lambda llm: llm.generate(b"class Stack:", 4), TypeError, r"the prompt is bytes: decode it to a str first"),
    ("bytes-in-batch", lambda llm: llm.generate(["a", b"b"], 4), TypeError, "prompt 1 is bytes"),
    ("float-ids", lambda llm: llm.generate([1.0, 2.0], 4), TypeError, "the prompt must be a flat list of token ids .ints., but it holds a float"),
    ("bool-ids", lambda llm: llm.generate([True, 2], 4), TypeError, "but it holds a bool"),
    ("float-tensor", lambda llm: llm.generate(torch.tensor([1.0, 2.0]), 4), TypeError, "but it holds a float"),
    ("tensor-3d", lambda llm: llm.generate(torch.ones(1, 2, 2, dtype=torch.long), 4), TypeError, "must be 1-D .one prompt. or 2-D"),
    ("a-set", lambda llm: llm.generate({1, 2}, 4), TypeError, "prompt must be a str, a list of token ids, or a list of those"),
    ("empty-text", lambda llm: llm.generate("", 4), OrthrusError, "the prompt is empty"),
    ("empty-in-batch", lambda llm: llm.generate(["a", []], 4), OrthrusError, "prompt 1 is empty"),
    # text that is not valid Unicode
    ("lone-surrogate", lambda llm: llm.generate("abc\udcff", 4), OrthrusError,
     r"the prompt is not valid Unicode: a lone surrogate U\+DCFF at character 3 \(byte 0xff: the text is not UTF-8\)"),
    ("lone-surrogate-in-batch", lambda llm: llm.generate(["ok", "\ud800"], 4), OrthrusError,
     r"prompt 1 is not valid Unicode: a lone surrogate U\+D800 at character 0$"),
    ("lone-surrogate-encode", lambda llm: llm.encode("a\udcff"), OrthrusError, "the prompt is not valid Unicode"),
    ("lone-surrogate-chat", lambda llm: llm.chat([{"role": "user", "content": "a\udcff"}], 4), OrthrusError,
     r"messages\[0\]\['content'\] is not valid Unicode"),
    ("lone-surrogate-stream", lambda llm: list(llm.stream("a\udcff", 4)), OrthrusError, "the prompt is not valid Unicode"),
    ("stream-max-new-tokens-fraction", lambda llm: list(llm.stream("a", 4.5)), TypeError, "max_new_tokens must be an int"),
    ("enable-thinking-a-string", lambda llm: llm.chat([{"role": "user", "content": "a"}], 4, enable_thinking="no"), TypeError,
     "enable_thinking must be True or False"),
    ("chat-no-messages", lambda llm: llm.chat([], 4), TypeError, '"messages" must be a non-empty list .* got an empty list'),
    ("chat-content-none", lambda llm: llm.chat([{"role": "user", "content": None}], 4), TypeError,
     r"messages\[0\]\.content must be a string, got NoneType"),
    # decode
    ("decode-a-string", lambda llm: llm.decode("abc"), TypeError, "must be a list of token ids .ints., got str"),
    ("decode-negative-id", lambda llm: llm.decode([-1]), OrthrusError, "token id -1 is outside the model's vocabulary"),
    ("decode-huge-id", lambda llm: llm.decode([2**70]), OrthrusError, "token id 1180591620717411303424 is outside"),
    ("decode-nested", lambda llm: llm.decode([[1, 2]]), TypeError, "but it holds a list"),
    # loading
    ("load-model-int8", lambda llm: load_model(llm.folder, dtype=torch.int8), OrthrusError,
     "dtype torch.int8 is not supported: the model computes in torch.float32, torch.bfloat16 or torch.float16"),
    ("load-check-weights-a-string", lambda llm: __import__("orthrus_min").load(llm.folder, check_weights="no"), TypeError,
     "check_weights must be True or False"),
    ("load-model-an-int", lambda llm: __import__("orthrus_min").load(3), TypeError, "model must be a checkpoint folder or a Hub id"),
]


@pytest.mark.parametrize("case, call, error, match", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_arguments_at_the_door(llm, monkeypatch, case, call, error, match):
    """Every bad argument is refused by api.LLM before any work: the engine is never reached."""
    import orthrus_min.ar as ar

    if case != "max-new-tokens-beyond-context":  # the one check left to the engine (it needs the encoded prompt's length)
        monkeypatch.setattr(ar, "generate_ar", lambda *a, **k: pytest.fail("the engine was reached"))
    with pytest.raises(error, match=match) as e:
        call(llm)
    assert "\n" not in str(e.value)


def test_api_accepts_integer_scalars_and_arrays(llm):
    """numpy integers count as ints; token ids and seeds may come as 1-D arrays or tensors."""
    import numpy as np

    out = llm.generate(np.array([5, 6]), np_int(3), seed=np_int(1), temperature=1.0)
    assert len(out.token_ids) == 3 and out.sampling.seed == 1 and type(out.sampling.seed) is int
    rows = llm.generate(torch.tensor([[5, 6], [7, 8]]), [np_int(2), 3], seeds=np.array([1, 2]), temperature=1.0)
    assert [len(r.token_ids) for r in rows] == [2, 3]
    assert llm.decode(torch.tensor(out.token_ids)) == llm.decode(out.token_ids) == out.text
    assert llm.decode([]) == ""
