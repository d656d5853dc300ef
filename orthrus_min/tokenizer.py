"""Text in and out: a thin wrapper over `tokenizers.Tokenizer` (`tokenizer.json`).

* `encode` / `decode` as Hugging Face's fast tokenizers do them;
* `StreamDecoder`: incremental detokenisation that never emits half a UTF-8 character
  (byte-level BPE splits multi-byte characters across tokens);
* `apply_chat_template`: renders the checkpoint's own `chat_template` (from
  `tokenizer_config.json` or `chat_template.jinja`) in a sandboxed Jinja2 environment
  with `trim_blocks` and `lstrip_blocks`, as Transformers does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import OrthrusError
from .reading import read_json_object


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    # Jinja's built-in tojson HTML-escapes; chat templates expect plain JSON (as in Transformers).
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise OrthrusError(f"chat template: {message}")


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
    """Renders a Jinja chat template over `messages` (extra kwargs such as `enable_thinking`, `tools` pass through)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)
    except TemplateError as e:
        raise OrthrusError(f"chat template failed to render: {e}") from None


class Tokenizer:
    """The checkpoint's tokenizer (`tokenizer.json`) and chat template (`tokenizer_config.json`)."""

    def __init__(self, folder: str | os.PathLike):
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise OrthrusError(f"{folder}: tokenizer.json not found")
        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise OrthrusError(f"{path}: cannot read tokenizer ({e})") from None
        config_path = folder / "tokenizer_config.json"
        self.config = read_json_object(config_path) if config_path.exists() else {}
        template = self.config.get("chat_template")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        if template is None and (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
        if template is not None and not isinstance(template, str):
            raise OrthrusError(f"{config_path}: chat_template must be a string, got {type(template).__name__}")
        self.chat_template: str | None = template
        self.folder = folder

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (the tokenizer's own post-processing, no chat formatting)."""
        return self.tok.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids."""
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool | None = None,
                            **kwargs) -> str:
        """The prompt text for a conversation, rendered with the checkpoint's chat template."""
        if self.chat_template is None:
            raise OrthrusError(f"{self.folder}: the checkpoint has no chat_template (in tokenizer_config.json); drop --chat to use a raw prompt")
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        return render_chat_template(self.chat_template, messages, add_generation_prompt, **kwargs)

    def stream_decoder(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Turns a stream of token ids into a stream of text pieces, holding back incomplete characters.

    Each `push` decodes a small window of recent tokens and returns only the text that is new
    and complete (it does not end in U+FFFD, the sign of a cut-off UTF-8 sequence).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] were already turned into printed text
        self.read = 0

    def _text(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=self.skip)

    def push(self, ids: list[int]) -> str:
        """Adds token ids; returns the newly completed text (possibly "")."""
        self.ids.extend(ids)
        done = self._text(self.prefix, self.read)
        text = self._text(self.prefix, len(self.ids))
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (at the end of generation)."""
        done = self._text(self.prefix, self.read)
        text = self._text(self.prefix, len(self.ids))
        self.prefix = self.read = len(self.ids)
        return text[len(done):]
