"""What a generate call asks for, checked: the shapes and types that `api.LLM` accepts, and the one-line errors for the rest.

`api.LLM` is the door; these are the checks it runs before any work:
  * a prompt is a str, or a flat list (or 1-D tensor / array) of token ids; a batch is a flat
    list of prompts (or a 2-D tensor). Bytes are refused — decode them first; no encoding is
    guessed — and so is any deeper nesting, which would otherwise be read as something else;
  * a per-prompt setting (max_new_tokens, seeds) is one value for all, or a list of one per prompt;
  * integers are Python ints or any `numbers.Integral` (numpy's), never bools, floats or tensors;
  * a conversation (`LLM.chat`) is a non-empty list of {"role", "content"} dicts — the same check
    reads the chat rows of training data (`check_messages`).
A wrong type is a TypeError, a wrong value an OrthrusError; each names the argument (and the prompt).
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import OrthrusError, check_text, is_int

MODES = ("orthrus", "ar")  # decoding modes: draft and verify, or one token per forward
BYTES = "is bytes: decode it to a str first (prompt.decode('utf-8')); bytes are not token ids"


def is_array(value) -> bool:
    """A torch tensor or a numpy array (anything with .ndim and .tolist())."""
    return hasattr(value, "tolist") and hasattr(value, "ndim")


def is_prompt_like(value) -> bool:
    """Whether a batch item looks like a prompt (text, bytes, or a sequence of ids) rather than a token id."""
    return isinstance(value, (str, bytes, bytearray, list, tuple)) or (is_array(value) and value.ndim > 0)


def flat_token_ids(ids, what: str, vocab_size: int, allow_empty: bool = False, in_batch: bool = False) -> list[int]:
    """A flat list of token ids (a list or tuple of ints, or a 1-D integer tensor or array) as Python ints, each in
    0 … vocab_size-1; anything else is a one-line TypeError (wrong type) or OrthrusError (empty, out of range)."""
    if is_array(ids):
        if ids.ndim != 1:
            raise TypeError(f"{what} must be 1-D, got a {ids.ndim}-D {type(ids).__name__}")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"{what} must be a list of token ids (ints), got {type(ids).__name__}")
    odd = next((t for t in ids if not is_int(t)), None)
    if odd is not None:
        hint = ": a batch is a flat list of prompts, each a str or a flat list of ids" if in_batch and is_prompt_like(odd) else ""
        raise TypeError(f"{what} must be a flat list of token ids (ints), but it holds a {type(odd).__name__}{hint}")
    ids = [int(t) for t in ids]
    if not ids and not allow_empty:
        raise OrthrusError(f"{what} is empty: give text or at least one token id")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise OrthrusError(f"{what}: token id {bad} is outside the model's vocabulary (0 … {vocab_size - 1})")
    return ids


def prompt_rows(prompt, encode: Callable[[str, str], list[int]], vocab_size: int) -> tuple[list[list[int]], bool]:
    """(token ids per prompt, single prompt?) for a str, a list of ids, a list of those, or a 1-D/2-D tensor.

    encode(text, what): the token ids of a text prompt (it checks the text; `what` names it in errors).
    """

    def text_ids(text: str, what: str) -> list[int]:
        ids = encode(text, what)
        if not ids:
            raise OrthrusError(f"{what} is empty: give text or at least one token id")
        return ids

    if isinstance(prompt, str):
        return [text_ids(prompt, "the prompt")], True
    if is_array(prompt):
        if prompt.ndim not in (1, 2):
            raise TypeError(f"a tensor prompt must be 1-D (one prompt) or 2-D (a batch), got {prompt.ndim}-D")
        if prompt.ndim == 1:
            return [flat_token_ids(prompt, "the prompt", vocab_size)], True
        prompt = list(prompt)
    if isinstance(prompt, (bytes, bytearray)):
        raise TypeError(f"the prompt {BYTES}")
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"prompt must be a str, a list of token ids, or a list of those (a batch); got {type(prompt).__name__}")
    if not prompt:
        raise OrthrusError("the prompt is empty: give text or at least one token id")
    if not any(is_prompt_like(p) for p in prompt):  # scalars: the token ids of one prompt
        return [flat_token_ids(prompt, "the prompt", vocab_size)], True
    rows = []
    for b, p in enumerate(prompt):
        what = f"prompt {b}"
        if isinstance(p, str):
            rows.append(text_ids(p, what))
        elif isinstance(p, (bytes, bytearray)):
            raise TypeError(f"{what} {BYTES}")
        elif not is_prompt_like(p):
            raise TypeError(f"the prompt mixes token ids and prompts (item {b} is {type(p).__name__} {p!r}): give one "
                            "flat list of token ids, or a list of prompts")
        else:
            rows.append(flat_token_ids(p, what, vocab_size, in_batch=True))
    return rows, False


def per_prompt(value, name: str, n: int, check: Callable[[object, str], object]) -> list:
    """One value for each of n prompts: `value` (checked by check(value, name)) for all, or a list, tuple or 1-D
    array of n of them."""
    if is_array(value) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise OrthrusError(f"{name} has {len(value)} entries for {n} prompt{'s' if n != 1 else ''}")
        return [check(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return [check(value, name)] * n


ROLES = ("system", "user", "assistant", "tool")  # the turns a chat template renders


def check_messages(messages, where: str | None = None) -> list[dict]:
    """A conversation, checked and returned: a non-empty list of {"role": str, "content": str} dicts, the content
    valid Unicode.

    where=None: `LLM.chat`'s argument; each turn needs its "content", and a wrong type is a TypeError.
    where="FILE:LINE": a chat row of training data; every mistake is an OrthrusError that starts with `where`, a turn
    may go without content (a turn of tool calls: absent or null), and its role must be one of ROLES (a template
    skips a role it does not know, which would leave the turn out of training unseen).
    """
    in_file = where is not None
    at, wrong = (f"{where}: ", OrthrusError) if in_file else ("", TypeError)
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else type(messages).__name__
        raise wrong(f'{at}"messages" must be a non-empty list of {{"role": …, "content": …}} dicts, got {got}')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or ("content" not in m and not in_file):
            raise wrong(f"{at}messages[{i}] must be a dict with a str 'role' and a str 'content', got {m!r}"[:200])
        content = m.get("content")
        if not isinstance(content, str) and not (in_file and content is None):
            raise wrong(f"{at}messages[{i}].content must be a string, got {type(content).__name__}")
        if in_file and m["role"] not in ROLES:
            raise OrthrusError(f"{at}messages[{i}] has role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if content is not None:
            check_text(content, f"{at}messages[{i}]['content']")
    return messages


__all__ = ["prompt_rows", "flat_token_ids", "per_prompt", "is_array", "is_prompt_like", "check_messages", "ROLES"]
