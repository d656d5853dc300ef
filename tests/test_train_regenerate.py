"""The regenerate stage: its responses are the base model's greedy decoding (as `generate` prints it), a rerun with
--resume decodes only what is missing, and processes split the prompts without overlap."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest
import torch

import orthrus_min.ar as ar
from orthrus_min.ar import generate_ar
from orthrus_min.checkpoint import load_model
from orthrus_min.generate import main as generate_main
from orthrus_min.tokenizer import Tokenizer
from orthrus_min.train import main
from orthrus_min.train.chat import generation_prompt
from orthrus_min.train.dist import Dist
from train_helpers import CHAT_DATA, tiny_base

MAX_NEW = 12


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("regen")
    tiny_base(root / "base", seed=3)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(CHAT_DATA.read_text().splitlines(keepends=True)[:8]))
    return root


def regen_args(root, out, *extra):
    return ["regenerate", "--model", str(root / "base"), "--data", str(root / "prompts.jsonl"), "--out", str(out),
            "--max-new-tokens", str(MAX_NEW), "--batch-size", "3", "--no-thinking", *extra]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(base):
    out = base / "all.jsonl"
    assert main(regen_args(base, out)) == 0
    return records(out)


def test_responses_are_the_base_models_greedy_decoding(base, full_run, capsys):
    tok, model = Tokenizer(base / "base"), load_model(base / "base")
    rows = [json.loads(line) for line in (base / "prompts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in full_run] == [r["id"] for r in rows]  # input order
    for row, record in zip(rows, full_run):
        prompt = generation_prompt(tok, row["messages"], enable_thinking=False)
        alone = generate_ar(model, prompt, MAX_NEW)  # each prompt decoded alone
        answer = alone.tokens[:-1] if alone.finish_reason == "eos" else alone.tokens
        assert record["messages"][:-1] == row["messages"][:-1]  # the dataset's own answer is replaced
        assert record["messages"][-1] == {"role": "assistant", "content": tok.decode(answer)}
        assert record["finish_reason"] == alone.finish_reason and record["new_tokens"] == len(alone.tokens)
    for row in rows[:3]:  # the same tokens as the generate command decodes (it prints them without special tokens)
        user = row["messages"][-2]["content"]
        assert generate_main(["--model", str(base / "base"), "--chat", "--no-thinking", "--prompt", user,
                              "--max-new-tokens", str(MAX_NEW), "--mode", "ar", "--temperature", "0"]) == 0
        stream = tok.stream_decoder()
        ids = generate_ar(model, generation_prompt(tok, row["messages"][-2:-1], enable_thinking=False), MAX_NEW).tokens
        assert capsys.readouterr().out == "".join(stream.push([t]) for t in ids) + stream.flush() + "\n"


def test_resume_decodes_only_what_is_missing(base, full_run, monkeypatch):
    out = base / "partial.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in full_run[:3]))
    part = base / "partial.jsonl.part-0"
    part.write_text(json.dumps(full_run[5]) + "\n" + json.dumps(full_run[6])[:40])  # a killed run's half-written line
    decoded = []
    real = ar.generate_ar

    def recording(model, prompts, *a, **k):
        decoded.extend(prompts)
        return real(model, prompts, *a, **k)

    monkeypatch.setattr(ar, "generate_ar", recording)
    assert main(regen_args(base, out, "--resume")) == 0
    assert len(decoded) == 4  # rows 3, 4, 6, 7
    assert records(out) == full_run and not part.exists()


@dataclass
class ThreadDist(Dist):
    """One of two processes of a run, played by a thread: barriers and sums go through a threading.Barrier."""

    meeting: threading.Barrier | None = None
    board: dict | None = None

    def barrier(self) -> None:
        self.meeting.wait()

    def sum(self, *values):
        self.board[self.rank] = values
        self.meeting.wait()
        total = [sum(v[i] for v in self.board.values()) for i in range(len(values))]
        self.meeting.wait()
        return total


def test_processes_share_the_prompts_without_overlap(base, full_run, monkeypatch):
    from orthrus_min.train.cli import build_parser
    from orthrus_min.train.regenerate import regenerate

    out = base / "sharded.jsonl"
    decoded, errors = {0: [], 1: []}, []
    real = ar.generate_ar

    def recording(model, prompts, *a, **k):
        decoded[int(threading.current_thread().name)].extend(tuple(p) for p in prompts)
        return real(model, prompts, *a, **k)

    monkeypatch.setattr(ar, "generate_ar", recording)
    meeting, board = threading.Barrier(2, timeout=60), {}

    def process(rank):
        try:
            regenerate(build_parser().parse_args(regen_args(base, out)),
                       ThreadDist(rank, 2, rank, torch.device("cpu"), meeting, board))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            meeting.abort()

    threads = [threading.Thread(target=process, args=(r,), name=str(r)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(decoded[0]) == 4 and len(decoded[1]) == 4 and not set(decoded[0]) & set(decoded[1])
    assert records(out) == full_run
