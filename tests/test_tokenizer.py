"""Tokenizer wrapper, streaming detokenisation and chat templates, against Transformers' fast tokenizer."""

from __future__ import annotations

import pytest

from conftest import CHAT_TEMPLATE, TEXT
from orthrus_min.tokenizer import Tokenizer, render_chat_template

CONVERSATIONS = {
    "system-user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
    "user-only": [{"role": "user", "content": "Grüße, 東京!"}],
    "multi-turn-with-reasoning": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "and 3+3?"},
    ],
}


@pytest.fixture(scope="module")
def tokenizers(tiny_checkpoint):
    from transformers import PreTrainedTokenizerFast

    folder = tiny_checkpoint[0]
    return Tokenizer(folder), PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))


@pytest.mark.parametrize("text", [TEXT, "x", "  leading spaces\n\ttabs", "🚀🚀 émoji"], ids=["corpus", "one-char", "spaces", "emoji"])
def test_encode_decode_match_transformers(tokenizers, text):
    ours, ref = tokenizers
    ids = ours.encode(text)
    assert ids == ref.encode(text)
    assert ours.decode(ids) == ref.decode(ids) == text


def test_stream_decoder_never_emits_half_a_character(tokenizers):
    ours, _ = tokenizers
    text = "Grüße 東京 🚀 naïve café — done"
    ids = ours.encode(text)
    assert len(ids) > len(text.split())  # multi-byte characters are split across tokens
    stream = ours.stream_decoder()
    pieces = [stream.push([i]) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stream_decoder_multi_token_pushes(tokenizers):
    ours, _ = tokenizers
    ids = ours.encode(TEXT)
    stream = ours.stream_decoder()
    pieces = [stream.push(ids[i : i + 3]) for i in range(0, len(ids), 3)] + [stream.flush()]
    assert "".join(pieces) == TEXT


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("enable_thinking", [None, False], ids=["thinking-default", "no-thinking"])
def test_chat_template_matches_transformers(tokenizers, name, enable_thinking):
    ours, ref = tokenizers
    ref.chat_template = CHAT_TEMPLATE.read_text()
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    expected = ref.apply_chat_template(CONVERSATIONS[name], tokenize=False, add_generation_prompt=True, **kwargs)
    assert ours.apply_chat_template(CONVERSATIONS[name], add_generation_prompt=True, enable_thinking=enable_thinking) == expected


def test_chat_template_known_rendering():
    """A system and a user turn with thinking off, rendered from the real Qwen3 template, as Qwen3 documents it."""
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    got = render_chat_template(CHAT_TEMPLATE.read_text(), messages, add_generation_prompt=True, enable_thinking=False)
    assert got == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_chat_template_with_tools_matches_transformers(tokenizers):
    ours, ref = tokenizers
    ref.chat_template = CHAT_TEMPLATE.read_text()
    tools = [{"type": "function", "function": {"name": "add", "description": "Add <two> numbers & more",
                                                "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]
    messages = CONVERSATIONS["user-only"]
    expected = ref.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(messages, tools=tools) == expected


def test_chat_template_is_sandboxed():
    from orthrus_min.errors import OrthrusError

    with pytest.raises(OrthrusError, match="chat template failed to render"):
        render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])
