"""Bad input to the training CLI: one line `error: …` on stderr, exit status 2, never a traceback — one table row each.
And the help text, the dry run and the launch command."""

from __future__ import annotations

import json
import shutil

import pytest

from orthrus_min.train import main
from orthrus_min.train.cli import build_parser
from train_helpers import CHAT_DATA, tiny_base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Qwen3 base (no <|mask|>), variants of it, data files, and a finished 2-step run to resume."""
    root = tmp_path_factory.mktemp("cli")
    tiny_base(root / "base")
    tiny_base(root / "other_base", seed=1)
    tiny_base(root / "full_vocab", vocab_size=300)  # no embedding row past the tokenizer's ids
    shutil.copytree(root / "base", root / "no_template")
    (root / "no_template" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{"messages": [{"role": "user"\n')
    (root / "no_answer.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    (root / "prompts.jsonl").write_text(json.dumps({"text": "not a prompt"}) + "\n")
    shutil.copy(CHAT_DATA, root / "chat.jsonl")
    (root / "other.jsonl").write_text(CHAT_DATA.read_text().replace("84", "85"))
    (root / "regen_out.jsonl").write_text("")
    (root / "nonempty").mkdir()
    (root / "nonempty" / "notes.txt").write_text("mine")
    assert main(["distill", *small(root, root / "run"), "--steps", "2", "--save-every", "1"]) == 0
    return root


def small(root, out) -> list[str]:
    """A seconds-long distill command line on the chat fixture."""
    return ["--model", str(root / "base"), "--data", str(root / "chat.jsonl"), "--out", str(out), "--block-size", "4",
            "--seq-len", "64", "--batch-size", "2", "--eval-prompts", "2", "--eval-new-tokens", "8", "--heldout-percent", "20",
            "--no-thinking"]


def distill(root, out="fresh", *extra) -> list[str]:
    return ["distill", *small(root, root / out), "--steps", "2", *extra]


CASES = {
    # name: (command line from the fixture's root, the error line's pattern)
    "steps-negative": (lambda r: distill(r, "fresh", "--steps", "-5"), r"argument --steps: expected an integer >= 1, got '-5'"),
    "save-every-0": (lambda r: distill(r, "fresh", "--save-every", "0"), r"argument --save-every: expected an integer >= 1"),
    "eval-every-0": (lambda r: distill(r, "fresh", "--eval-every", "0"), r"argument --eval-every: expected an integer >= 1"),
    "batch-size-0": (lambda r: distill(r, "fresh", "--batch-size", "0"), r"argument --batch-size: expected an integer >= 1"),
    "fraction-above-1": (lambda r: distill(r, "fresh", "--self-distill-fraction", "1.5"), r"expected a fraction in \[0, 1\]"),
    "percent-above-100": (lambda r: distill(r, "fresh", "--heldout-percent", "150"), r"expected a percentage in \(0, 100\)"),
    "decay-zero": (lambda r: distill(r, "fresh", "--position-decay", "0"), r"argument --position-decay: expected a number in"),
    "bad-warmup": (lambda r: distill(r, "fresh", "--warmup", "five%"), r"argument --warmup: expected a percentage"),
    "train-block-size-1": (lambda r: distill(r, "fresh", "--train-block-sizes", "1,4"),
                           r"--train-block-sizes 1,4: each must lie in 2 … the block size 4"),
    "block-size-1": (lambda r: distill(r, "fresh", "--block-size", "1"), r"--block-size 1: a block of 1 token drafts nothing"),
    "steps-and-epochs": (lambda r: distill(r, "fresh", "--epochs", "2"), r"--steps and --epochs both"),
    "global-batch": (lambda r: distill(r, "fresh", "--global-batch", "3"),
                     r"--global-batch 3 is not divisible by processes × --batch-size = 1 × 2"),
    "dry-run-global-batch": (lambda r: distill(r, "fresh", "--global-batch", "4", "--dry-run", "3"),
                             r"--global-batch 4 is not divisible by processes × --batch-size = 3 × 2"),
    "mix-count": (lambda r: distill(r, "fresh", "--mix", "1,2"), r"--mix has 2 weights for 1 --data sources"),
    "out-not-empty": (lambda r: distill(r, "run"), r"--out .*run is not empty \(checkpoints, config.json, .*, …\): pass "
                                                   r"--resume to continue the run there, or --overwrite to replace it"),
    "out-with-other-files": (lambda r: distill(r, "nonempty"), r"--out .*nonempty is not empty \(notes.txt\)"),
    "resume-nothing": (lambda r: distill(r, "fresh", "--resume"), r"--resume: no checkpoint in .*fresh/checkpoints"),
    "resume-and-overwrite": (lambda r: distill(r, "run", "--resume", "--overwrite"), r"--resume and --overwrite contradict"),
    "resume-block-size": (lambda r: distill(r, "run", "--resume", "--block-size", "6"),
                          r"--resume: --block-size differs from the run in .*run \(checkpoint: 4, now: 6\)"),
    "resume-seq-len": (lambda r: distill(r, "run", "--resume", "--seq-len", "32"), r"--resume: --seq-len differs"),
    "resume-data": (lambda r: [a if a != str(r / "chat.jsonl") else str(r / "other.jsonl") for a in distill(r, "run", "--resume")],
                    r"--resume: --data \(a file's content, --pattern, --heldout-percent or --no-thinking\) differs"),
    "resume-thinking": (lambda r: [a for a in distill(r, "run", "--resume") if a != "--no-thinking"], r"--resume: --data .* differs"),
    "resume-model": (lambda r: [a if a != str(r / "base") else str(r / "other_base") for a in distill(r, "run", "--resume")],
                     r"--resume: --model \(its config.json or weight files\) differs"),
    "malformed-jsonl": (lambda r: [a if a != str(r / "chat.jsonl") else str(r / "bad.jsonl") for a in distill(r)],
                        r"bad.jsonl:2: not valid JSON"),
    "no-assistant-turn": (lambda r: [a if a != str(r / "chat.jsonl") else str(r / "no_answer.jsonl") for a in distill(r)],
                          r"no_answer.jsonl:1: the conversation has no assistant turn"),
    "no-chat-template": (lambda r: [a if a != str(r / "base") else str(r / "no_template") for a in distill(r)],
                         r"chat.jsonl:\d+: a chat row needs a chat template, and the tokenizer in .*no_template has none"),
    "mask-id-outside": (lambda r: distill(r, "fresh", "--mask-token-id", "999"),
                        r"--mask-token-id 999 is outside the model's vocabulary \(0 … 319\)"),
    "no-mask-no-free-row": (lambda r: [a if a != str(r / "base") else str(r / "full_vocab") for a in distill(r)],
                            r"the tokenizer has no <\|mask\|> token and the embedding has no row .*: pass --mask-token-id"),
    "missing-data": (lambda r: distill(r, "fresh", "--data", "/no/such/data.jsonl"), r"--data /no/such/data.jsonl: no such file"),
    "missing-model": (lambda r: ["distill", "--model", "/no/such/model", "--out", str(r / "fresh")],
                      r"/no/such/model: no such checkpoint folder"),
    "unknown-flag": (lambda r: distill(r, "fresh", "--bogus"), r"unrecognized arguments: --bogus"),
    "seq-len-below-block": (lambda r: distill(r, "fresh", "--seq-len", "3"), r"--seq-len 3 is shorter than the block size 4"),
    "pretrain-no-tokenizer": (lambda r: ["pretrain", "--tokenizer", str(r / "nowhere"), "--out", str(r / "fresh")],
                              r"nowhere: tokenizer.json not found"),
    "regenerate-existing-out": (lambda r: ["regenerate", "--model", str(r / "base"), "--data", str(r / "chat.jsonl"), "--out",
                                           str(r / "regen_out.jsonl")], r"--out .*regen_out.jsonl exists: pass --resume"),
    "regenerate-resume-nothing": (lambda r: ["regenerate", "--model", str(r / "base"), "--data", str(r / "chat.jsonl"), "--out",
                                             str(r / "none.jsonl"), "--resume"], r"--resume: .*none.jsonl does not exist yet"),
    "regenerate-text-row": (lambda r: ["regenerate", "--model", str(r / "base"), "--data", str(r / "prompts.jsonl"), "--out",
                                       str(r / "new.jsonl")], r"prompts.jsonl:1: expected \{\"messages\": \[…\]\} or"),
    "export-not-empty": (lambda r: ["export", "--model", str(r / "base"), "--out", str(r / "nonempty")],
                         r"--out .*nonempty is not empty \(notes.txt\): pass --overwrite"),
    "prompts-exists": (lambda r: ["prompts", "--out", str(r / "chat.jsonl")], r"--out .*chat.jsonl exists: pass --overwrite"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_error_line(setup, capsys, case):
    argv, pattern = CASES[case]
    rc = main(argv(setup))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not (setup / "fresh" / "checkpoints").exists()


def test_help_states_each_default_once():
    parser = build_parser()
    actions = parser._subparsers._group_actions[0].choices
    for name, sub in actions.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.help and action.option_strings:
                assert action.help.count("(default:") <= 1, (name, action.option_strings)
        assert "--help" in text
    assert "(default: 0.75)" in actions["distill"].format_help()


def test_dry_run_prints_the_plan_and_trains_nothing(setup, capsys):
    out = setup / "planned"
    assert main(distill(setup, "planned", "--global-batch", "8", "--dry-run", "2")) == 0
    text = capsys.readouterr().out
    for label in ("parameters", "data", "epoch", "batch", "steps", "memory per GPU", "launch"):
        assert f"{label}:" in text
    assert "global 8 rows = 2 process(es) × micro-batch 2 × 2 accumulation step(s); 512 tokens per step" in text
    assert "torchrun --nproc-per-node 2 -m orthrus_min.train distill" in text and "--dry-run" not in text.split("launch:")[1]
    # trainable = the diffusion view: q (64×64) + k, v (32×64 each) + o (64×64) + two norms (16) per layer, 2 layers
    assert "24,640 trainable" in text
    assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()
    assert any(p.name.startswith("chat.jsonl-") for p in (out / "data").iterdir())  # the data was tokenized and cached


def test_epochs_set_the_steps(setup, capsys):
    assert main(["distill", *small(setup, setup / "planned_epochs"), "--epochs", "3", "--global-batch", "4", "--dry-run"]) == 0
    text = capsys.readouterr().out
    rows = int(text.split("epoch: ")[1].split(" rows")[0].replace(",", ""))
    steps = int(text.split("steps: ")[1].split(" ")[0].replace(",", ""))
    assert steps == -(-3 * rows // 4)  # ceil(3 epochs × rows per epoch / global batch)


def test_the_documented_commands_still_parse():
    """Every training command in the shipped model's card and the README's CPU example still parses (flags kept)."""
    import re
    import shlex

    from orthrus_min.checkpoint import DEFAULT_MODEL

    card = (DEFAULT_MODEL / "README.md").read_text()
    readme = (DEFAULT_MODEL.parent.parent.parent / "README.md").read_text()
    commands = []
    for text in (card, readme):
        variables = {"STD": "stdlib", "d": "math", "NODE_RANK": "0", "HEAD": "localhost"}  # as a shell reading the file would
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                for name, value in re.findall(r'(?:^|;|\s)([A-Za-z_]+)=("[^"]*"|\S+)', line.split("#")[0]):
                    variables[name] = value.strip('"')
                if "-m orthrus_min.train " in line:
                    command = line.split("-m orthrus_min.train ", 1)[1].split("#")[0]
                    for _ in range(3):  # variables inside variables ($D holds $M and $R)
                        command = re.sub(r"\$([A-Za-z_]+)", lambda m: variables.get(m.group(1), m.group(0)), command)
                    commands.append(command)
    assert len(commands) >= 12
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command))


class FakeClock:
    """time.perf_counter at a chosen origin, advancing `tick` seconds per reading."""

    def __init__(self, origin: float, tick: float = 0.001):
        self.now, self.tick = origin, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("origin", [0.0, 5.0, 3599.0, 1e7], ids=["boot", "5s", "under-an-hour", "months"])
def test_progress_writes_a_line_per_interval_when_not_on_a_terminal(monkeypatch, origin):
    """The first step and the last one, nothing in between, whatever the clock's origin (perf_counter starts near 0 on a
    freshly booted machine)."""
    import io
    import time

    from orthrus_min.train.progress import Progress

    monkeypatch.setattr(time, "perf_counter", FakeClock(origin))
    stream = io.StringIO()  # not a TTY: no bar, plain lines
    bar = Progress(500, 0, "distill", interval=3600, stream=stream)
    for step in range(1, 501):
        bar.update(step, loss=0.5, tokens_per_s=1234.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first step and the last one, nothing in between
    assert lines[0].startswith("distill 1/500 (0%) | loss 0.5000 | 1,234 tokens/s | elapsed 0s")
    assert lines[-1].startswith("distill 500/500 (100%) | loss 0.5000 | 1,234 tokens/s | elapsed ") and "ETA 0s" in lines[-1]
    assert "\r" not in stream.getvalue()


def test_progress_first_line_on_a_young_clock_then_one_per_interval(monkeypatch):
    """perf_counter at 5 s (a machine booted 5 s ago): the first update writes a line; then one per 10-s interval."""
    import io
    import time

    from orthrus_min.train.progress import Progress

    clock = FakeClock(5.0, tick=0.0)
    monkeypatch.setattr(time, "perf_counter", clock)
    stream = io.StringIO()
    bar = Progress(100, 0, "pretrain", interval=10.0, stream=stream)
    for step in range(1, 100):
        clock.now += 1.0  # one second per step
        bar.update(step, loss=1.0)
    lines = stream.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == [f"pretrain {s}/100 ({s}%)" for s in range(1, 100, 10)]
    assert "elapsed 1s" in lines[0] and "ETA 1m39s" in lines[0]
