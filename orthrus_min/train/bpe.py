"""Stage 1: a byte-level BPE tokenizer trained on the corpus, with the special tokens Orthrus needs."""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]


def train_tokenizer(files: list[Path], vocab_size: int, out: Path) -> None:
    """Byte-level BPE (GPT-2 / Qwen style pre-tokenisation) with the special tokens, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "mask_token": "<|mask|>", "model_max_length": 2048}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


__all__ = ["train_tokenizer", "SPECIAL_TOKENS"]
