"""Any Qwen3 -> Orthrus in one command: a tiny Qwen3 saved by Transformers, with a Qwen3-style tokenizer (its chat
template, no <|mask|>), loaded by Hub id from an offline Hugging Face cache, distilled on chat data; the result
carries its mask token in config.json and its tokenizer, and `generate` decodes it losslessly."""

from __future__ import annotations

import json

import torch

from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import load_model
from orthrus_min.consensus import generate_orthrus
from orthrus_min.generate import main as generate_main
from orthrus_min.tokenizer import Tokenizer
from orthrus_min.train.chat import generation_prompt
from train_helpers import CHAT_DATA, run_module, tiny_base

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_hub_qwen3_distills_and_decodes_losslessly(tmp_path, capsys):
    repo = tmp_path / "hub" / "models--tiny-org--qwen3-chat"
    snapshot = repo / "snapshots" / COMMIT
    tiny_base(snapshot, seed=4)  # Transformers' save_pretrained + tokenizer.json/tokenizer_config.json (chat template)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "orthrus"
    done = run_module(["distill", "--model", "tiny-org/qwen3-chat", "--data", str(CHAT_DATA), "--out", str(out),
                       "--no-thinking", "--block-size", "4", "--steps", "4", "--seq-len", "64", "--batch-size", "2",
                       "--heldout-percent", "20", "--eval-prompts", "2", "--eval-new-tokens", "8"], env=env)
    assert done.returncode == 0, done.stderr
    assert "mask token: id 300 (the first unused embedding row" in done.stderr

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "orthrus" and config["block_size"] == 4 and config["mask_token_id"] == 300
    tok = Tokenizer(out)
    assert tok.chat_template is not None and tok.token_to_id("<|mask|>") is None and tok.vocab_size == 300
    base, trained = load_model(snapshot), load_model(out)
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name  # the AR view is the base, bit for bit

    assert generate_main(["--model", str(out), "--chat", "--no-thinking", "--prompt", "What is 12 times 7?",
                          "--max-new-tokens", "24", "--compare", "--check"]) == 0
    assert "[compare] outputs identical" in capsys.readouterr().err

    rows = [json.loads(line) for line in CHAT_DATA.read_text().splitlines()]
    prompts = [generation_prompt(tok, r["messages"], enable_thinking=False) for r in rows[:6]]
    for K in (2, 4):
        drafted = generate_orthrus(trained, prompts, 24, block_size=K, ignore_eos=True, check=True)
        plain = generate_ar(trained, prompts, 24, ignore_eos=True)
        assert [g.tokens for g in drafted] == [g.tokens for g in plain]
        assert all(300 not in g.tokens for g in drafted)  # the mask id is never emitted
