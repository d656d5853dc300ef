"""Shared fixtures: tiny random Qwen3 checkpoints saved by Transformers, and a tiny tokenizer.

Nothing here touches the network: every reference model is built from a config in fp32.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
if not torch.cuda.is_available():
    # Triton reads this once, at import: without a GPU its kernels run in the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# What runs leave for later runs (compiled steps, measured step costs) goes to a folder of this session's own:
# never the user's cache, whose measurements would change which block sizes the tests see.
os.environ["ORTHRUS_MIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="orthrus_min_tests_")

CHAT_TEMPLATE = Path(__file__).resolve().parent / "data" / "qwen3_chat_template.jinja"  # the real Qwen3 template
TEXT = """def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
Grüße aus Köln — 東京 🚀 naïve café
"""
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]


def tiny_config(**overrides) -> dict:
    """A tiny Qwen3 config as Transformers takes it (2 layers, 4 heads, GQA 2, head_dim 16)."""
    cfg = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, rms_norm_eps=1e-6,
               tie_word_embeddings=False, eos_token_id=2, bos_token_id=None, pad_token_id=None)
    cfg.update(overrides)
    return cfg


def make_hf_model(seed: int = 0, **overrides):
    """A random Transformers Qwen3ForCausalLM in fp32, eval mode; weights scaled up so logits are not flat."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    model = Qwen3ForCausalLM(Qwen3Config(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08 if "embed" not in name else 1.0)
    return model


def make_tokenizer_files(folder: Path, vocab_size: int = 300, special_tokens: list[str] = SPECIAL_TOKENS,
                         extra_texts: list[str] = ()) -> None:
    """Trains a byte-level BPE on TEXT (and extra_texts) and writes tokenizer.json and tokenizer_config.json (with the
    Qwen3 chat template and eos_token <|im_end|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT] * 4 + list(extra_texts), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
              "chat_template": CHAT_TEMPLATE.read_text()}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def save_checkpoint(folder: Path, seed: int = 0, tokenizer: bool = True, **overrides):
    """Saves a tiny random Transformers Qwen3 (and a tokenizer) to `folder`; returns the Transformers model."""
    model = make_hf_model(seed, **overrides)
    model.save_pretrained(folder)
    if tokenizer:
        make_tokenizer_files(folder)
    return model


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one CPU thread, and never stall in thread barriers when other
    processes share the cores (two threads on a busy 2-core machine made some tests 20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(folder, Transformers model) of a tiny random Qwen3 with a tokenizer and the Qwen3 chat template."""
    folder = tmp_path_factory.mktemp("tiny_qwen3")
    model = save_checkpoint(folder, eos_token_id=[2, 3])
    return folder, model
