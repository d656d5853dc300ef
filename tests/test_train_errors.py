"""The training CLI at its last doors (issue 19): what --overwrite may replace, text that is not UTF-8 or not text at all,
sizes that cannot fit, diverging runs, full disks and read-only folders — one table row each, asserting the exit
status, a single `error:` line and no traceback, and that nothing the user did not name was changed.

Full disks are simulated: os.fsync raising ENOSPC (what a full disk reports for a delayed write), or a file-size
limit (RLIMIT_FSIZE: a real write failure, EFBIG) in a subprocess. Read-only folders are simulated by the write probe
raising EROFS: the tests run as root, who may write into a chmod-ed folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat

import pytest
import torch

from conftest import TEXT
from orthrus_min import files
from orthrus_min.train import main
from orthrus_min.train.checkpoint import save_checkpoint
from train_helpers import CHAT_DATA, run_module, tiny_base


def make_node(path, kind: str) -> None:
    """A FIFO, or (as root) a character device with /dev/full's numbers — made in the test's own folder, never in /dev."""
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny base (tokenizer included), a code folder, data files with faults, and previous outputs of every kind."""
    r = tmp_path_factory.mktemp("errors")
    tiny_base(r / "base")
    code = r / "code"
    code.mkdir()
    for i in range(8):
        (code / f"mod{i}.py").write_text(TEXT.replace("fibonacci", f"fib{i}") * 6)
    binaries = r / "binaries"
    binaries.mkdir()
    for i in range(3):
        (binaries / f"prog{i}").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    mixed = r / "mixed"
    shutil.copytree(code, mixed)
    (mixed / "blob.py").write_bytes(b"\x00\x01\x02 not text")
    (r / "program.bin").write_bytes(b"\x7fELF\x00\x00\x00" * 10)
    shutil.copy(CHAT_DATA, r / "chat.jsonl")
    lines = CHAT_DATA.read_bytes().splitlines(keepends=True)
    (r / "latin1.jsonl").write_bytes(lines[0] + lines[1].replace(b'"', b'"\xff', 1) + b"".join(lines[2:]))
    (r / "prompts_ok.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"def f{i}("}) + "\n" for i in range(3)))
    (r / "id_object.jsonl").write_text(json.dumps({"id": {"a": 1}, "prompt": "def f("}) + "\n")
    (r / "id_bool.jsonl").write_text(json.dumps({"id": True, "prompt": "def f("}) + "\n")
    (r / "id_list.jsonl").write_text(json.dumps({"id": [1], "prompt": "def f("}) + "\n")
    (r / "not_a_record.jsonl").write_text(json.dumps({"id": "p0", "text": "def f0(x)"}) + "\nnot a record\n")
    (r / "surrogate.jsonl").write_text('{"prompt": "def f(\\udcff"}\n')  # a JSON escape of a lone surrogate
    (r / "surrogate_text.jsonl").write_text('{"text": "ok"}\n{"text": "x = \\udcff"}\n')
    (r / "pair.jsonl").write_text('{"prompt": "rocket \\ud83d\\ude80"}\n')  # a surrogate pair: one character, fine
    (r / "parted.jsonl").write_text("")
    (r / "parted.jsonl.part-0").symlink_to(r / "victim.jsonl")
    (r / "log_folder" / "log.jsonl").mkdir(parents=True)
    (r / "file").write_text("a regular file, not a folder")
    make_node(r / "fifo", "fifo")
    (r / "victim.jsonl").write_text("precious\n")
    (r / "link.jsonl").symlink_to(r / "victim.jsonl")
    # a run killed before its first checkpoint: the log and the data cache, no checkpoint
    (r / "killed" / "data").mkdir(parents=True)
    (r / "killed" / "log.jsonl").write_text(json.dumps({"step": 0, "loss": 5.0}) + "\n")
    # run folders where an output name holds something the stage did not write
    foreign = r / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("precious")
    (r / "ckpt_link" / "checkpoints").parent.mkdir()
    (r / "ckpt_link" / "checkpoints").symlink_to(foreign, target_is_directory=True)
    (r / "ckpt_foreign" / "checkpoints").mkdir(parents=True)
    (r / "ckpt_foreign" / "checkpoints" / "notes.txt").write_text("precious")
    (r / "config_fifo").mkdir()
    make_node(r / "config_fifo" / "config.json", "fifo")
    (r / "weights_link").mkdir()
    (r / "weights_link" / "model.safetensors").symlink_to(r / "file")
    (r / "tok_link").mkdir()
    (r / "tok_link" / "tokenizer.json").symlink_to(r / "file")
    return r


def distill(r, out, *extra) -> list[str]:
    return ["distill", "--model", str(r / "base"), "--data", str(r / "chat.jsonl"), "--out", str(out), "--block-size", "4",
            "--seq-len", "64", "--batch-size", "2", "--eval-prompts", "0", "--heldout-percent", "20", "--no-thinking",
            "--steps", "2", *extra]


def pretrain(r, out, *extra) -> list[str]:
    return ["pretrain", "--data", str(r / "code"), "--tokenizer", str(r / "base"), "--out", str(out), "--preset", "micro",
            "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--heldout-percent", "25", "--eval-every", "100", *extra]


def regenerate(r, data, out, *extra) -> list[str]:
    return ["regenerate", "--model", str(r / "base"), "--data", str(r / data), "--out", str(out), "--max-new-tokens", "4",
            *extra]


def tokenizer(r, data, out, *extra) -> list[str]:
    return ["tokenizer", "--data", str(data), "--pattern", "*", "--heldout-percent", "25", "--vocab-size", "300",
            "--out", str(out), *extra]


CASES = {
    # name: (command line from the fixture's root, the error line's pattern)
    # --overwrite replaces only what the stage wrote: never a FIFO, a link's target or a foreign folder
    "regenerate-overwrite-fifo": (lambda r: regenerate(r, "prompts_ok.jsonl", r / "fifo", "--overwrite"),
                                  r"--out .*fifo: .*fifo is a FIFO, not a file regenerate wrote; it is neither read nor "
                                  r"replaced: give another --out"),
    "regenerate-fifo-no-flag": (lambda r: regenerate(r, "prompts_ok.jsonl", r / "fifo"), r"fifo is a FIFO, not a file"),
    "regenerate-overwrite-link": (lambda r: regenerate(r, "prompts_ok.jsonl", r / "link.jsonl", "--overwrite"),
                                  r"link.jsonl is a symbolic link, not a file regenerate wrote"),
    "regenerate-resume-link": (lambda r: regenerate(r, "prompts_ok.jsonl", r / "link.jsonl", "--resume"),
                               r"link.jsonl is a symbolic link"),
    "distill-overwrite-checkpoints-link": (lambda r: distill(r, r / "ckpt_link", "--overwrite"),
                                           r"--out .*ckpt_link: checkpoints is a symbolic link, not a folder this command "
                                           r"wrote, so it is not replaced"),
    "distill-overwrite-foreign-checkpoints": (lambda r: distill(r, r / "ckpt_foreign", "--overwrite"),
                                              r"checkpoints holds notes.txt, not a folder this command wrote"),
    # continued pretraining and a carried-over diffusion view: wrong kinds of checkpoint, too long rows
    "distill-diffusion-init-without-view": (lambda r: distill(r, r / "carry", "--diffusion-init", str(r / "base")),
                                            r"--diffusion-init .*base: it has no diffusion view"),
    "distill-diffusion-init-missing": (lambda r: distill(r, r / "carry", "--diffusion-init", str(r / "no_such_model")),
                                       r"no_such_model"),
    "pretrain-init-rows-beyond-context": (lambda r: pretrain(r, r / "cont", "--init", str(r / "base"), "--context", "16"),
                                          r"--seq-len 32 is longer than --init .*base's context of 16 tokens"),
    "pretrain-overwrite-config-fifo": (lambda r: pretrain(r, r / "config_fifo", "--overwrite"),
                                       r"config.json is a FIFO, not a file this command wrote"),
    "export-overwrite-weights-link": (lambda r: ["export", "--model", str(r / "base"), "--out", str(r / "weights_link"),
                                                 "--overwrite"], r"model.safetensors is a symbolic link, not a file"),
    "tokenizer-overwrite-link": (lambda r: tokenizer(r, r / "code", r / "tok_link", "--overwrite"),
                                 r"tokenizer.json is a symbolic link, not a file"),
    "prompts-out-fifo": (lambda r: ["prompts", "--data", str(r / "code"), "--out", str(r / "fifo"), "--overwrite"],
                         r"--out .*fifo: is a FIFO, not a regular file; give the path of a file to write"),
    "prompts-out-link": (lambda r: ["prompts", "--data", str(r / "code"), "--out", str(r / "link.jsonl"), "--overwrite"],
                         r"link.jsonl: is a symbolic link, not a regular file"),
    "regenerate-part-file-link": (lambda r: regenerate(r, "prompts_ok.jsonl", r / "parted.jsonl", "--resume"),
                                  r"parted.jsonl.part-0 is a symbolic link, not a file regenerate wrote"),
    "distill-overwrite-log-folder": (lambda r: distill(r, r / "log_folder", "--overwrite"),
                                     r"--out .*log_folder: log.jsonl is a folder, not a file this command wrote"),
    "distill-out-fifo": (lambda r: distill(r, r / "fifo"), r"--out .*fifo: is a FIFO; give a folder"),
    # a run killed before its first checkpoint: one consistent way out (--overwrite)
    "killed-before-checkpoint": (lambda r: distill(r, r / "killed"),
                                 r"--out .*killed is not empty \(log.jsonl\): it holds no checkpoint to resume from: pass "
                                 r"--overwrite to replace this stage's outputs there"),
    "killed-before-checkpoint-resume": (lambda r: distill(r, r / "killed", "--resume"),
                                        r"--resume: no checkpoint in .*killed/checkpoints to continue from .*; drop --resume "
                                        r"and pass --overwrite to start again"),
    # text that is not UTF-8, files that are not text
    "distill-jsonl-not-utf8": (lambda r: [a if a != str(r / "chat.jsonl") else str(r / "latin1.jsonl")
                                          for a in distill(r, r / "fresh")],
                               r"latin1.jsonl:2: not valid UTF-8 \(byte 0xff at column \d+\)"),
    "regenerate-jsonl-not-utf8": (lambda r: regenerate(r, "latin1.jsonl", r / "new.jsonl"),
                                  r"latin1.jsonl:2: not valid UTF-8 \(byte 0xff"),
    "regenerate-lone-surrogate": (lambda r: regenerate(r, "surrogate.jsonl", r / "new.jsonl"),
                                  r"surrogate.jsonl:1: \"prompt\" is not valid Unicode: a lone surrogate U\+DCFF"),
    "distill-lone-surrogate": (lambda r: [a if a != str(r / "chat.jsonl") else str(r / "surrogate_text.jsonl")
                                          for a in distill(r, r / "fresh")], r"surrogate_text.jsonl:2: \"text\" is not valid Unicode"),
    "tokenizer-only-binary-files": (lambda r: tokenizer(r, r / "binaries", r / "tok_new"),
                                    r"--data .*binaries: no files matching '\*' that are text \(3 binary skipped\)"),
    "tokenizer-binary-file-named": (lambda r: tokenizer(r, r / "program.bin", r / "tok_new"),
                                    r"--data .*program.bin: a binary file \(a NUL byte in its first 8 KiB\), not text"),
    "data-is-a-fifo": (lambda r: tokenizer(r, r / "fifo", r / "tok_new"), r"--data .*fifo: is a FIFO; give files or folders"),
    # sizes that cannot fit, refused before any allocation
    "distill-seq-len-huge": (lambda r: distill(r, r / "fresh", "--seq-len", "100000000"),
                             r"--seq-len 100,000,000 is longer than the model's context of 2,048 tokens"),
    "pretrain-seq-len-huge": (lambda r: pretrain(r, r / "fresh", "--seq-len", "100000"),
                              r"--seq-len 100,000 is longer than the micro preset's context of 512 tokens"),
    "tokenizer-vocab-huge": (lambda r: tokenizer(r, r / "code", r / "tok_new", "--vocab-size", "1000000000"),
                             r"argument --vocab-size: expected an integer from 260 \(256 bytes \+ 4 special tokens\) to "
                             r"1,048,576, got '1000000000'"),
    "tokenizer-vocab-tiny": (lambda r: tokenizer(r, r / "code", r / "tok_new", "--vocab-size", "5"),
                             r"argument --vocab-size: expected an integer from 260"),
    "prompts-more-than-exist": (lambda r: ["prompts", "--data", str(r / "code"), "--heldout-percent", "50", "--count",
                                           "100000", "--out", str(r / "p.jsonl")],
                                r"--count 100000: the \d+ held-out files hold only [\d,]+ distinct prompts of 12 lines"),
    # regenerate's records and ids
    "regenerate-id-object": (lambda r: regenerate(r, "id_object.jsonl", r / "new.jsonl"),
                             r"id_object.jsonl:1: \"id\" must be a string or a number, got \{\"a\": 1\}"),
    "regenerate-id-bool": (lambda r: regenerate(r, "id_bool.jsonl", r / "new.jsonl"), r"id_bool.jsonl:1: \"id\" must be"),
    "regenerate-id-list": (lambda r: regenerate(r, "id_list.jsonl", r / "new.jsonl"), r"\"id\" must be .*got \[1\]"),
    "regenerate-resume-bad-line": (lambda r: regenerate(r, "prompts_ok.jsonl", r / "not_a_record.jsonl", "--resume"),
                                   r"not_a_record.jsonl:2: not a record written by regenerate .*; fix or delete the line, "
                                   r"or start again with --overwrite"),
    # folders that cannot be written
    "dry-run-out-under-a-file": (lambda r: pretrain(r, r / "file" / "run", "--dry-run"),
                                 r"--out .*file/run: .*file is a file, not a folder"),
    "regenerate-out-under-a-file": (lambda r: regenerate(r, "prompts_ok.jsonl", r / "file" / "out.jsonl"),
                                    r"--out .*file/out.jsonl: .*file is a file, not a folder"),
}


def one_error_line(rc: int, err: str, pattern: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def tree(folder) -> dict:
    """Every entry under `folder` (links not followed): kind and, for files, content."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            kind = files.kind_of(p)
            found[os.path.relpath(p, folder)] = (kind, open(p, "rb").read() if kind == "a regular file" else None)
    return found


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fault_is_one_error_line_and_changes_nothing(root, capsys, case):
    before = tree(root)
    rc = main(CASES[case][0](root))
    one_error_line(rc, capsys.readouterr().err, CASES[case][1])
    after = tree(root)
    changed = {p for p in before if after.get(p) != before[p]}
    assert not changed, changed  # nothing that was there is touched (new scratch folders may appear: "fresh", "tok_new")
    assert not (root / "fresh" / "checkpoints").exists()


@pytest.mark.parametrize("kind", ["fifo", pytest.param("chardev", marks=pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="making a device node needs root"))])
def test_overwrite_never_replaces_a_device_node(tmp_path, capsys, kind):
    """`regenerate --out /dev/full --overwrite` (issue 19) unlinked the node: here on a node made in tmp_path, never /dev."""
    tiny_base(tmp_path / "base")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "def f("}) + "\n")
    node = tmp_path / "full"
    make_node(node, kind)
    rc = main(regenerate(tmp_path, "prompts.jsonl", node, "--overwrite"))
    words = "a FIFO" if kind == "fifo" else "a character device"
    one_error_line(rc, capsys.readouterr().err, rf"--out .*full: .*full is {words}, not a file regenerate wrote")
    assert files.kind_of(node) == words and sorted(p.name for p in tmp_path.iterdir()) == ["base", "full", "prompts.jsonl"]


def test_tokenizer_skips_binary_files_in_a_folder_with_a_warning_and_reports_the_real_size(root, tmp_path, capsys):
    assert main(tokenizer(root, root / "mixed", tmp_path / "tok", "--vocab-size", "100000", "--heldout-percent", "50")) == 0
    err = capsys.readouterr().err
    assert re.search(r"^warning: --data .*mixed: skipped 1 binary file \(a NUL byte in the first 8 KiB\), e.g. .*blob.py$",
                     err, re.M), err
    size = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    real = len(size["model"]["vocab"]) + sum(1 for t in size["added_tokens"] if t["content"] not in size["model"]["vocab"])
    assert 260 < real < 100000
    assert f"tokenizer with {real} tokens (--vocab-size 100000: the corpus has no more merges) trained on" in err


def test_tokenizer_reads_undecodable_bytes_as_the_corpus_does(tmp_path, capsys):
    """A text file with a byte that is not UTF-8 (Latin-1 'é') trains, its byte replaced as pretraining reads it."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"m{i}.py").write_bytes(TEXT.encode() * 3 + b"caf\xe9 = 1\n")
    assert main(["tokenizer", "--data", str(data), "--heldout-percent", "25", "--vocab-size", "300",
                 "--out", str(tmp_path / "tok")]) == 0
    assert "tokenizer with 300 tokens trained on" in capsys.readouterr().err


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_saves_nothing(root, tmp_path, capsys):
    out = tmp_path / "diverged"
    rc = main(pretrain(root, out, "--lr", "1e12", "--warmup", "0", "--save-every", "1", "--steps", "6"))
    line = one_error_line(rc, capsys.readouterr().err,
                          r"step (\d+): the (loss|gradient norm) is (nan|inf|-inf): training diverged and stopped, saving "
                          r"nothing more \((the last checkpoint \(step-\d+\) is kept|no checkpoint was saved)\); lower --lr "
                          r"\(now 1e\+12\) or raise --warmup")
    step = int(re.search(r"step (\d+)", line).group(1))
    assert 1 <= step < 6
    assert not (out / "model.safetensors").exists()  # no final model
    from safetensors.torch import load_file

    saved = sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []
    assert [int(p.name[5:]) for p in saved] == ([step - 1] if step > 1 else [])
    for folder in saved:  # what was saved before the divergence is finite
        assert all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values())


def test_resume_from_non_finite_weights_is_refused(root, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    assert main(pretrain(root, out, "--steps", "2", "--save-every", "1")) == 0
    folder = out / "checkpoints" / "step-00000002"
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    before = tree(out)
    rc = main(pretrain(root, out, "--steps", "4", "--resume"))
    one_error_line(rc, capsys.readouterr().err, r"--resume: .*step-00000002 holds NaN or infinite weights "
                                                r"\(model.layers.0.mlp.up_proj.weight\): a diverged run cannot be continued")
    assert tree(out) == before


def test_non_finite_weights_are_never_saved(tmp_path):
    from orthrus_min.config import Qwen3Config
    from orthrus_min.errors import OrthrusError
    from orthrus_min.model import Qwen3ForCausalLM

    from conftest import tiny_config

    model = Qwen3ForCausalLM(Qwen3Config.from_dict(dict(model_type="qwen3", **tiny_config())))
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    with pytest.raises(OrthrusError, match=r"the weights of step 3: model.norm.weight hold NaN or infinite values; not saved"):
        save_checkpoint(tmp_path, 3, model, {"step": 3})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


FAULTS = {
    # name: (what to break, command line, error pattern); os.fsync is where a full disk reports a delayed write
    "tokenizer-full-disk": ("os.fsync", lambda r, t: tokenizer(r, r / "code", t / "tok"),
                            r"--out .*tok/tokenizer.json: cannot write \(No space left on device\)"),
    "checkpoint-full-disk": ("os.fsync after a dry run", lambda r, t: pretrain(r, t / "run", "--steps", "1"),
                             r"cannot write the checkpoint of step 1 in .*run/checkpoints \(No space left on device\); no "
                             r"earlier checkpoint exists"),
    "prompts-full-disk": ("os.fsync", lambda r, t: ["prompts", "--data", str(r / "code"), "--heldout-percent", "50",
                                                    "--count", "2", "--out", str(t / "p.jsonl")],
                          r"--out .*p.jsonl: cannot write \(No space left on device\)"),
    "regenerate-full-disk": ("os.fsync", lambda r, t: regenerate(r, "prompts_ok.jsonl", t / "out.jsonl"),
                             r"--out .*out.jsonl: cannot write out.jsonl.part-0 \(No space left on device\); the responses "
                             r"written so far are kept: free space and rerun with --resume"),
    "dry-run-read-only": ("probe", lambda r, t: pretrain(r, t / "run", "--dry-run"),
                          r"--out .*run: cannot write there \(Read-only file system\)"),
    "regenerate-read-only": ("probe", lambda r, t: regenerate(r, "prompts_ok.jsonl", t / "out.jsonl"),
                             r"--out .*out.jsonl: cannot write there \(Read-only file system\)"),
    "tokenizer-read-only": ("probe", lambda r, t: tokenizer(r, r / "code", t / "tok"),
                            r"--out .*tok: cannot write there \(Read-only file system\)"),
}


@pytest.mark.parametrize("case", list(FAULTS), ids=list(FAULTS))
def test_full_disk_or_read_only_folder_is_one_error_line(root, tmp_path, capsys, monkeypatch, case):
    what, argv, pattern = FAULTS[case]
    if what == "os.fsync after a dry run":  # the token cache is written first, so that the checkpoint is what fails
        assert main(argv(root, tmp_path) + ["--dry-run"]) == 0
    if what.startswith("os.fsync"):
        monkeypatch.setattr(os, "fsync", enospc)
    else:
        monkeypatch.setattr(files, "_probe", erofs)
    rc = main(argv(root, tmp_path))
    one_error_line(rc, capsys.readouterr().err, pattern)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.startswith((".tmp-", ".final-"))]
    assert not leftovers  # nothing half-written is left behind
    assert not list(tmp_path.rglob("step-*")) and not list(tmp_path.rglob("tokenizer.json"))


def test_write_failures_are_told_apart_from_mistakes(tmp_path, monkeypatch):
    """A full disk raises files.WriteFailed (an OrthrusError: one line, exit 2 today) so run_main can tell a fault of
    the machine from a mistake in the command."""
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(files.WriteFailed, match=r"x.json: cannot write \(No space left on device\)"):
        files.write_text_atomically(tmp_path / "x.json", "{}")
    assert issubclass(files.WriteFailed, files.OrthrusError) and list(tmp_path.iterdir()) == []


def limited(limit: int) -> dict:
    return {"ORTHRUS_TEST_FSIZE": str(limit)}


FSIZE_PRELUDE = ("import os, resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                 "n = int(os.environ['ORTHRUS_TEST_FSIZE']); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); ")


def test_a_real_write_failure_while_saving_a_checkpoint_is_one_line(root, tmp_path):
    """A real I/O error from the kernel (a file-size limit: EFBIG) in safetensors' and torch's writers, in a subprocess."""
    import subprocess
    import sys

    from train_helpers import REPO

    code = FSIZE_PRELUDE + ("sys.argv = ['orthrus_min.train'] + sys.argv[1:]; "
                            "runpy.run_module('orthrus_min.train', run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **limited(60_000))
    proc = subprocess.run([sys.executable, "-c", code, *pretrain(root, tmp_path / "run", "--steps", "1")], env=env,
                          capture_output=True, text=True, timeout=240)
    one_error_line(proc.returncode, proc.stderr, r"cannot write the checkpoint of step 1 in .*run/checkpoints \(File too "
                                                 r"large\); no earlier checkpoint exists")
    assert not list((tmp_path / "run").rglob("step-*"))


def test_torch_save_reports_the_os_error_behind_its_own(tmp_path):
    """torch.save's own "[enforce fail … unexpected pos]" hides the cause; write_state's file object keeps it."""
    import subprocess
    import sys

    from train_helpers import REPO

    code = FSIZE_PRELUDE + ("import torch; from orthrus_min.files import io_reason; "
                            "from orthrus_min.train.checkpoint import write_state\n"
                            "try:\n    write_state(sys.argv[1], {'x': torch.zeros(100_000)})\n"
                            "except Exception as e:\n    print(io_reason(e))")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **limited(20_000))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state.pt")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "File too large", proc.stderr


def test_a_surrogate_pair_is_one_character_and_fine(root, tmp_path):
    assert main(regenerate(root, "pair.jsonl", tmp_path / "out.jsonl", "--max-new-tokens", "2")) == 0
    assert json.loads((tmp_path / "out.jsonl").read_text())["text"].startswith("rocket \U0001F680")


def test_regenerate_ids_that_are_numbers_are_written_as_json_writes_them(root, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": 7, "prompt": "def f("}) + "\n" +
                                      json.dumps({"id": 1.5, "prompt": "def g("}) + "\n")
    assert main(["regenerate", "--model", str(root / "base"), "--data", str(tmp_path / "p.jsonl"), "--out",
                 str(tmp_path / "out.jsonl"), "--max-new-tokens", "2"]) == 0
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["7", "1.5"]


def test_module_entry_point_on_the_tokenizer_vocab_size_is_one_line(tmp_path):
    """Before: a Rust panic and abort (exit -6). Now the flag is refused before any work."""
    proc = run_module(["tokenizer", "--vocab-size", "1000000000", "--out", str(tmp_path / "tok")], timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: argument --vocab-size: expected an integer from 260")
