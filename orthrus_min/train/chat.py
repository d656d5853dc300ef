"""Chats as training tokens: the base model's own chat template, loss only on what the assistant wrote.

A conversation is rendered with the tokenizer's chat template exactly as a prompt is at
generation time. An assistant turn is trained when the template renders it as a continuation of
its own generation prompt: the text of `messages[:i]` with the generation prompt is a prefix of
the text of `messages[:i+1]`, which is a prefix of the whole conversation. The turn's tokens are
then the difference — its content and the template's end of turn (Qwen3: `…<|im_end|>\n`) —
and they carry the loss; everything else (system, user, tool turns, the generation prompt) is
context only.

Templates that rewrite history (Qwen3 drops the thinking of assistant turns before the last
user message, and renders them without the `<think>` block a generation prompt opens) make
those earlier turns differ from what the model generated: they stay context, and only the turns
after the last user message are trained. For the published recipe (one regenerated answer per
prompt) that is every response token.

Each piece of text (prompt, answer, prompt, …) is tokenized on its own, as at generation time
where the prompt is encoded alone and the answer follows token by token.
"""

from __future__ import annotations

from ..errors import OrthrusError


def require_template(tokenizer, where: str) -> None:
    """A one-line error naming the row `where` when the tokenizer has no chat template."""
    if tokenizer.chat_template is None:
        raise OrthrusError(f"{where}: a chat row needs a chat template, and the tokenizer in {tokenizer.folder} has none "
                           "(no chat_template in tokenizer_config.json or chat_template.jinja)")


def render(tokenizer, messages: list[dict], add_generation_prompt: bool, enable_thinking: bool | None, where: str) -> str:
    """The chat template's text for `messages` (Tokenizer.apply_chat_template); an error names the row `where`."""
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             enable_thinking=enable_thinking)
    except OrthrusError as e:
        raise OrthrusError(f"{where}: {e}") from None


def assistant_spans(tokenizer, messages: list[dict], enable_thinking: bool | None, where: str) -> tuple[str, list[tuple[int, int]]]:
    """(the whole conversation's text, the character spans [a, b) of its trained assistant turns)."""
    require_template(tokenizer, where)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise OrthrusError(f"{where}: the conversation has no assistant turn, so nothing to train on")
    full = render(tokenizer, messages, False, enable_thinking, where)
    spans = []
    for i in turns:
        if i == 0:
            continue  # an answer to nothing
        before = render(tokenizer, messages[:i], True, enable_thinking, where)
        upto = render(tokenizer, messages[: i + 1], False, enable_thinking, where)
        if len(upto) > len(before) and upto.startswith(before) and full.startswith(upto):
            spans.append((len(before), len(upto)))
    if not spans:
        raise OrthrusError(f"{where}: the chat template renders none of the assistant turns as a continuation of its "
                           "generation prompt (see orthrus_min/train/chat.py)")
    return full, spans


def chat_tokens(tokenizer, messages: list[dict], enable_thinking: bool | None, where: str = "chat") -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a conversation: mask 1 on the trained assistant turns' tokens, 0 elsewhere."""
    full, spans = assistant_spans(tokenizer, messages, enable_thinking, where)
    pieces, cut = [], 0
    for a, b in spans:
        pieces += [(full[cut:a], 0), (full[a:b], 1)]
        cut = b
    pieces.append((full[cut:], 0))
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in pieces:
        if text:
            piece = tokenizer.encode(text)
            ids += piece
            mask += [trained] * len(piece)
    return ids, mask


def before_answer(messages: list[dict]) -> list[dict]:
    """The conversation without its trailing assistant turns: what the next assistant turn answers."""
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    return messages[:end]


def generation_prompt(tokenizer, messages: list[dict], enable_thinking: bool | None, where: str = "chat") -> list[int]:
    """Token ids of the prompt that asks for the next assistant turn (trailing assistant turns are dropped)."""
    require_template(tokenizer, where)
    context = before_answer(messages)
    if not context:
        raise OrthrusError(f"{where}: the conversation has no turn before the assistant's to answer")
    return tokenizer.encode(render(tokenizer, context, True, enable_thinking, where))


__all__ = ["require_template", "render", "assistant_spans", "chat_tokens", "before_answer", "generation_prompt"]
