"""Whole training runs through the CLI: losses fall, the base stays frozen, the trainer's acceptance equals the
decoder's; a stopped, crashed or killed run resumes to the same weights as an uninterrupted one; a failed save
keeps the previous checkpoint; two processes (DDP, gloo) take the same steps as one."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import TEXT
from orthrus_min.checkpoint import load_model
from orthrus_min.consensus import generate_orthrus
from orthrus_min.tokenizer import Tokenizer
from orthrus_min.train import main
from orthrus_min.train.corpus import tokenize_source
from orthrus_min.train.evaluate import eval_prompts
from orthrus_min.train.sources import resolve_sources
from train_helpers import REPO, diffusion_state, log_records, max_abs_diff


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny code corpus (12 files), its tokenizer, and a base model pretrained for a few steps by the CLI."""
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    data.mkdir()
    for i in range(12):
        (data / f"mod{i}.py").write_text(TEXT.replace("fibonacci", f"fib{i}") * 6)
    common = ["--data", str(data), "--heldout-percent", "25"]
    assert main(["tokenizer", *common, "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    assert main(["pretrain", *common, "--tokenizer", str(root / "tok"), "--out", str(root / "base"), "--preset", "micro",
                 "--steps", "40", "--batch-size", "8", "--seq-len", "48", "--lr", "5e-3", "--warmup", "100", "--eval-every",
                 "20", "--save-every", "20"]) == 0
    return root, common


def distill_args(root, common, out, steps, save_every=5):
    return ["distill", *common, "--model", str(root / "base"), "--out", str(out), "--block-size", "6", "--steps", str(steps),
            "--batch-size", "3", "--global-batch", "6", "--seq-len", "48", "--lr", "3e-3", "--warmup", "2", "--eval-every",
            "10", "--save-every", str(save_every), "--eval-prompts", "3", "--eval-prompt-len", "12", "--eval-new-tokens", "20"]


@pytest.fixture(scope="module")
def uninterrupted(corpus):
    """The reference runs: 8 and 30 distillation steps without interruption; folder by step count."""
    root, common = corpus
    runs = {}
    for steps in (8, 30):
        out = root / f"straight{steps}"
        assert main(distill_args(root, common, out, steps, save_every=2)) == 0
        runs[steps] = out
    return runs


def test_pretrain_loss_falls(corpus):
    root, _ = corpus
    log = log_records(root / "base")
    assert log[-1]["heldout_loss"] < log[19]["heldout_loss"] < np.log(300)
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]]) - 1.0


def test_evaluate_reproduces_the_held_out_loss_pretrain_logged(corpus, capsys):
    root, common = corpus
    assert main(["evaluate", *common, "--model", str(root / "base"), "--seq-len", "48", "24"]) == 0
    lines = capsys.readouterr().out.splitlines()
    logged = log_records(root / "base")[-1]["heldout_loss"]
    at_48 = float(lines[0].split()[2])
    assert lines[0].startswith("held-out loss ") and "rows of 48" in lines[0]
    assert round(at_48, 4) == logged  # the same rows, the same sums
    assert float(lines[1].split()[2]) > at_48  # shorter rows: less context per token, higher loss


def test_distill_loss_falls_and_base_weights_are_unchanged(corpus, uninterrupted):
    root, _ = corpus
    out = uninterrupted[30]
    base, trained = load_model(root / "base"), load_model(out)
    assert trained.config.model_type == "orthrus" and trained.config.block_size == 6 and trained.config.mask_token_id == 3
    base_state, trained_state = base.state_dict(), trained.state_dict()
    for name, tensor in base_state.items():
        assert torch.equal(tensor, trained_state[name]), name  # bit for bit
    moved = [n for n in trained_state if "_diff" in n and "norm" not in n]
    assert all(not torch.equal(trained_state[n], base_state[n.replace("_diff", "")]) for n in moved)
    log = [r for r in log_records(out) if "loss" in r]
    assert np.mean([r["loss"] for r in log[-4:]]) < 0.7 * np.mean([r["loss"] for r in log[:4]])
    assert (out / "tokenizer.json").exists() and not (out / ".final-tmp").exists()


def test_trainer_acceptance_equals_decoder(corpus, uninterrupted):
    root, common = corpus
    out = uninterrupted[30]
    last = log_records(out)[-1]
    model = load_model(out)
    t = tokenize_source(resolve_sources([common[1]])[0], Tokenizer(out), 25.0, None, out / "data")  # the run's cache
    accepted = []
    for prompt in eval_prompts([t.heldout], 3, 12, max_prompt_len=400):
        accepted += generate_orthrus(model, prompt, 20, block_size=6, ignore_eos=True).accepted  # one prompt at a time
    assert round(float(np.mean(accepted)), 3) == last["heldout_acceptance"]


def test_several_training_block_sizes(corpus):
    root, common = corpus
    out = root / "multi_k"
    assert main(distill_args(root, common, out, 10) + ["--train-block-sizes", "2,6"]) == 0
    log = log_records(out)[1:]
    assert {r["block_size"] for r in log} == {2, 6}
    assert set(log[-1]["heldout_acceptance_by_block_size"]) == {"2"}
    assert 1 <= log[-1]["heldout_acceptance_by_block_size"]["2"] <= 2


def test_continued_pretraining_and_a_diffusion_view_carried_over(corpus, uninterrupted):
    """`pretrain --init` starts from a checkpoint's AR view (an Orthrus one's view dropped) with a longer
    `--context`; `distill --diffusion-init` starts the new base's view from the old one, bit for bit."""
    root, common = corpus
    orthrus = uninterrupted[8]
    longer = root / "longer"
    assert main(["pretrain", *common, "--tokenizer", str(root / "tok"), "--init", str(orthrus), "--context", "1024",
                 "--out", str(longer), "--steps", "2", "--batch-size", "2", "--seq-len", "96", "--lr", "1e-3",
                 "--warmup", "1", "--eval-every", "2", "--save-every", "2"]) == 0
    base, start, continued = load_model(root / "base"), load_model(orthrus), load_model(longer)
    assert continued.config.model_type == "qwen3" and continued.config.max_position_embeddings == 1024
    assert not any("_diff" in n for n, _ in continued.named_parameters())
    assert base.config.max_position_embeddings == 512
    first = log_records(longer)[1]
    assert first["loss"] < np.log(300) - 1.0  # started from trained weights, not from random ones
    moved = max_abs_diff(dict(base.named_parameters()), dict(continued.named_parameters()))
    assert 0 < moved < 0.05  # two small steps away from the base (lr 1e-3)
    out = root / "carried"
    assert main(["distill", *common, "--model", str(longer), "--diffusion-init", str(orthrus), "--out", str(out),
                 "--steps", "1", "--lr", "1e-7", "--batch-size", "2", "--seq-len", "48", "--eval-prompts", "0"]) == 0
    carried = load_model(out)
    assert carried.config.block_size == 6 and carried.config.mask_token_id == start.config.mask_token_id
    assert max_abs_diff(diffusion_state(out), diffusion_state(orthrus)) < 1e-5  # one step of lr 1e-7 from the old view
    fresh = {n: t for n, t in continued.state_dict().items() if n.replace("_diff", "") != n}  # nothing: a base has no view
    assert not fresh
    ar_copy = {n: carried.state_dict()[n.replace("_diff", "")] for n in diffusion_state(out)}
    assert max_abs_diff(diffusion_state(out), ar_copy) > 1e-3  # not the default start (copies of the AR view)
    assert max_abs_diff({n: t for n, t in carried.state_dict().items() if "_diff" not in n},
                        dict(continued.state_dict())) == 0.0  # the base is the continued one, frozen


# --------------------------------------------------------------------------- resume equivalence


def test_stopped_and_resumed_run_equals_the_uninterrupted_run(corpus, uninterrupted):
    """Stopped after every step by the time budget (--minutes), resumed each time: the same weights, bit for bit,
    and every step logged once."""
    root, common = corpus
    out = root / "stop_go"
    args = distill_args(root, common, out, 8, save_every=2)
    assert main(args + ["--minutes", "1e-9"]) == 0  # stops (and saves) after step 1
    for _ in range(3):
        assert main(args + ["--minutes", "1e-9", "--resume"]) == 0
    assert [r["step"] for r in log_records(out)] == [0, 1, 2, 3, 4]
    assert main(args + ["--resume"]) == 0
    assert [r["step"] for r in log_records(out)] == list(range(9))
    assert max_abs_diff(diffusion_state(out), diffusion_state(uninterrupted[8])) == 0.0


def test_activation_checkpointing_changes_no_step(corpus, uninterrupted):
    root, common = corpus
    out = root / "checkpointed"
    assert main(distill_args(root, common, out, 8, save_every=2) + ["--activation-checkpointing"]) == 0
    assert max_abs_diff(diffusion_state(out), diffusion_state(uninterrupted[8])) == 0.0


def test_bfloat16_base_trains_fp32_masters_and_ships_bfloat16(corpus):
    """--dtype bfloat16 (the default on CUDA): the frozen base in bf16 under autocast, the diffusion view's master
    weights in fp32 in the checkpoint, the shipped model in bf16, still decoded losslessly."""
    from safetensors import safe_open

    from orthrus_min.train.checkpoint import latest_checkpoint

    root, common = corpus
    out = root / "bf16"
    assert main(distill_args(root, common, out, 3, save_every=3) + ["--dtype", "bfloat16"]) == 0
    assert all(np.isfinite(r["loss"]) for r in log_records(out)[1:])
    with safe_open(str(latest_checkpoint(out) / "model.safetensors"), "pt") as f:
        assert {("_diff" in k, f.get_tensor(k).dtype) for k in f.keys()} == {(False, torch.bfloat16), (True, torch.float32)}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = load_model(out, dtype="bfloat16")
    t = tokenize_source(resolve_sources([common[1]])[0], Tokenizer(out), 25.0, None, out / "data")
    prompts = eval_prompts([t.heldout], 3, 12, max_prompt_len=400)
    generate_orthrus(model, prompts, 16, ignore_eos=True, check=True)  # raises unless every token is the AR view's


class Crash(BaseException):
    """A stand-in for SIGKILL: nothing catches it, no cleanup runs."""


@pytest.mark.parametrize("point", ["while-writing", "before-rename", "before-removing-old", "while-removing-old"])
def test_a_crash_at_any_point_of_a_save_resumes_to_the_same_weights(corpus, uninterrupted, monkeypatch, point):
    import orthrus_min.train.checkpoint as ck

    root, common = corpus
    out = root / f"crash_{point}"
    args = distill_args(root, common, out, 8, save_every=2)
    real = {"write_state": ck.write_state, "_commit": ck._commit, "_discard": ck._discard}

    def at(name, before: bool):
        def crashing(*a):
            if "00000004" in str(a[0]) or (name == "_discard" and "00000002" in str(a[0])):
                if before:
                    raise Crash
                real[name](*a)
                raise Crash
            return real[name](*a)
        return crashing

    patch = {"while-writing": ("write_state", True), "before-rename": ("_commit", True),
             "before-removing-old": ("_discard", True), "while-removing-old": ("_discard", False)}[point]
    monkeypatch.setattr(ck, patch[0], at(*patch))
    with pytest.raises(Crash):
        main(args)
    monkeypatch.undo()
    newest = {"while-writing": 2, "before-rename": 2, "before-removing-old": 4, "while-removing-old": 4}[point]
    assert ck.latest_checkpoint(out).name == f"step-{newest:08d}"
    assert main(args + ["--resume"]) == 0
    assert max_abs_diff(diffusion_state(out), diffusion_state(uninterrupted[8])) == 0.0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000008"]  # debris cleared
    assert [r["step"] for r in log_records(out)] == list(range(9))


@pytest.mark.parametrize("code, when, previous", [(errno.ENOSPC, 4, "step-00000002"), (errno.EROFS, 2, None)],
                         ids=["disk-full", "read-only"])
def test_a_failed_save_keeps_the_previous_checkpoint(corpus, uninterrupted, monkeypatch, capsys, code, when, previous):
    import orthrus_min.train.checkpoint as ck

    root, common = corpus
    out = root / f"failed_save_{code}"
    args = distill_args(root, common, out, 8, save_every=2)
    real = ck.write_state

    def failing(path, state):
        if f"{when:08d}" in str(path):
            raise OSError(code, os.strerror(code))
        real(path, state)

    monkeypatch.setattr(ck, "write_state", failing)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write the checkpoint of step {when} in {out / 'checkpoints'} ({os.strerror(code)})")
    assert line.endswith(f"the previous checkpoint ({previous}) is intact" if previous else "no earlier checkpoint exists")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ([previous] if previous else [])  # no debris
    monkeypatch.undo()
    if previous:
        assert main(args + ["--resume"]) == 0
        assert max_abs_diff(diffusion_state(out), diffusion_state(uninterrupted[8])) == 0.0


def test_kill_9_then_resume_equals_the_uninterrupted_run(corpus, uninterrupted):
    """A real SIGKILL of a CLI run in another process, as soon as its first checkpoint exists; then --resume."""
    root, common = corpus
    out = root / "killed"
    args = distill_args(root, common, out, 30, save_every=2)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "orthrus_min.train", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoints").is_dir():
        time.sleep(0.005)
    while time.time() < deadline and proc.poll() is None and not any(
            p.name.startswith("step-") for p in (out / "checkpoints").iterdir()):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert main(args + ["--resume"]) == 0
    assert max_abs_diff(diffusion_state(out), diffusion_state(uninterrupted[30])) == 0.0
    assert [r["step"] for r in log_records(out)] == list(range(31))


# --------------------------------------------------------------------------- data parallel


DDP_TOLERANCE = 1e-6  # max |w_2proc - w_1proc| over the diffusion weights after 6 steps (fp32, gloo); measured: 2.2e-7


def test_two_processes_take_the_same_steps_as_one(corpus):
    """torchrun, 2 processes on gloo, micro-batch 1 × 2 accumulation steps each (global batch 4), against one process
    with micro-batch 2 × 2 accumulation steps: the same diffusion weights after 6 steps, within DDP_TOLERANCE."""
    root, common = corpus
    base = distill_args(root, common, root / "unused", 6, save_every=3)
    single, double = root / "dp1", root / "dp2"

    def with_out(out, batch):
        args = list(base)
        args[args.index("--out") + 1] = str(out)
        args[args.index("--batch-size") + 1] = str(batch)
        args[args.index("--global-batch") + 1] = "4"
        return args

    assert main(with_out(single, 2)) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                           "orthrus_min.train", *with_out(double, 1)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from orthrus_min.train.checkpoint import latest_checkpoint, load_state

    assert load_state(latest_checkpoint(double))["world_size"] == 2 and load_state(latest_checkpoint(single))["world_size"] == 1
    diff = max_abs_diff(diffusion_state(double), diffusion_state(single))
    print(f"max |2 processes - 1 process| = {diff:.3g}")
    assert diff <= DDP_TOLERANCE
    a, b = log_records(single), log_records(double)
    assert [r["step"] for r in a] == [r["step"] for r in b] and all(r["tokens"] == s["tokens"] for r, s in zip(a[1:], b[1:]))
    assert abs(a[-1]["loss"] - b[-1]["loss"]) <= 1e-5 and a[-1]["heldout_acceptance"] == b[-1]["heldout_acceptance"]
