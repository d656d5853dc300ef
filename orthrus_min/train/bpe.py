"""Stage 1: a byte-level BPE tokenizer trained on the corpus, with the special tokens Orthrus needs.

The files are read as the corpus reads them (sources.read_text: UTF-8, undecodable bytes replaced),
line by line as the `tokenizers` trainer would read them itself. A vocabulary is at least the 256
byte tokens plus the special tokens, and at most MAX_VOCAB_SIZE; a corpus with fewer distinct merges
than asked gives a smaller one, and the stage reports the real size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..files import write_text_atomically
from .sources import read_text

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # the byte alphabet and the special tokens: no merge at all
MAX_VOCAB_SIZE = 2**20  # 1,048,576: several times any real model's (Qwen3: 151,669); the trainer aborts far above


def lines(files: list[Path]) -> Iterator[str]:
    """Every line of every file, each with its "\\n", as the trainer reads a file."""
    for f in files:
        text, start = read_text(f), 0
        while start < len(text):
            end = text.find("\n", start)
            end = len(text) if end < 0 else end + 1
            yield text[start:end]
            start = end


def train_tokenizer(files: list[Path], vocab_size: int, out: Path) -> int:
    """Byte-level BPE (GPT-2 / Qwen style pre-tokenisation) with the special tokens, saved as tokenizer.json (each file
    replaced atomically; a full disk is a one-line error). Returns the vocabulary's real size (at most `vocab_size`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines(files), trainer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "mask_token": "<|mask|>", "model_max_length": 2048}
    write_text_atomically(out / "tokenizer.json", tok.to_str(pretty=True), "--out")
    write_text_atomically(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n", "--out")
    return tok.get_vocab_size()


__all__ = ["train_tokenizer", "SPECIAL_TOKENS", "MIN_VOCAB_SIZE", "MAX_VOCAB_SIZE"]
