"""Helpers of the training tests: a Qwen3-style tokenizer without a mask token, tiny base checkpoints, the chat
fixture, running the training CLI, and reading trained weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import make_hf_model, make_tokenizer_files

REPO = Path(__file__).resolve().parent.parent
CHAT_DATA = Path(__file__).resolve().parent / "data" / "chat_tiny.jsonl"
QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]  # as Qwen3's: no <|mask|>


def chat_corpus() -> list[str]:
    """The chat fixture's texts, for training a tokenizer that knows its words."""
    texts = []
    for line in CHAT_DATA.read_text().splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


def qwen3_style_tokenizer(folder: Path, vocab_size: int = 300) -> None:
    """A byte-level BPE with Qwen3's special tokens (no <|mask|>), its chat template and eos_token <|im_end|>."""
    make_tokenizer_files(folder, vocab_size, special_tokens=QWEN3_SPECIALS, extra_texts=chat_corpus())


def tiny_base(folder: Path, seed: int = 0, vocab_size: int = 320, **overrides):
    """A tiny random Qwen3 saved by Transformers with a Qwen3-style tokenizer (EOS <|im_end|>); returns the HF model."""
    folder.mkdir(parents=True, exist_ok=True)
    qwen3_style_tokenizer(folder)
    from tokenizers import Tokenizer

    im_end = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id("<|im_end|>")
    model = make_hf_model(seed, vocab_size=vocab_size, eos_token_id=im_end, **overrides)
    model.save_pretrained(folder)
    return model


def diffusion_state(folder: Path) -> dict[str, torch.Tensor]:
    """The *_diff tensors of a saved model (model.safetensors)."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(folder / "model.safetensors").items() if "_diff" in k}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def run_module(args: list[str], env: dict | None = None, timeout: int = 240, module: str = "orthrus_min.train"):
    """Runs `python -m module args` in a fresh process (this checkout first on the path, one thread)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], env=full_env, capture_output=True, text=True, timeout=timeout)


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
