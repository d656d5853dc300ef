"""The generate command when its surroundings fail: closed or full standard streams, an --output that cannot be
written, an endless stdin, Ctrl-C at any moment. Each case runs the real command in a subprocess and asserts its
exit status and its one line on stderr — never a traceback, never a half-written file, never stderr's lines on stdout.

Exit statuses (orthrus_min/cli.py): 2 one `error:` line (a mistake or a fault of the environment), 1 an error that
could not be reported (stderr unusable), 130 Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orthrus_helpers import orthrus_checkpoint

REPO = Path(__file__).resolve().parent.parent
HOOK = Path(__file__).resolve().parent / "signal_hook.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
has_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """An Orthrus checkpoint with no EOS token: it always generates its whole --max-new-tokens."""
    return orthrus_checkpoint(tmp_path_factory.mktemp("endless"), eos_token_id=None)


def shell(command: str, cwd: Path, stdin=None) -> subprocess.CompletedProcess:
    """Runs `command` in bash, where GENERATE stands for `python -m orthrus_min.generate`."""
    command = command.replace("GENERATE", f"{sys.executable} -m orthrus_min.generate")
    return subprocess.run(["bash", "-c", command], capture_output=True, env=ENV, cwd=cwd, timeout=300, stdin=stdin)


def assert_one_line(err: bytes, expected: str) -> None:
    text = err.decode()
    assert text.startswith(expected) and text.count("\n") == 1 and "Traceback" not in text, text


# (id, shell command, exit status, the error line's start or None for an empty stderr, stdout expected or None for any)
STREAMS = [
    ("stdout-closed", "GENERATE --model M --prompt x --max-new-tokens 4 >&-", 2,
     "error: standard output is closed (or not open for writing): there is nowhere to write the text", None),
    ("stdout-closed-output-file", "echo '{\"prompt\": \"x\"}' | GENERATE --model M --prompt-file - --max-new-tokens 4 "
     "--output out.jsonl >&- 2>/dev/null; test -s out.jsonl", 0, None, b""),
    ("stdin-closed", "GENERATE --model M --prompt-file - <&-", 2,
     "error: <stdin>: cannot read prompt file (standard input is closed)", b""),
    ("stdin-endless", "GENERATE --model M --prompt-file - < /dev/zero", 2,
     "error: <stdin>: line 1 is longer than 4 MiB, the longest line a prompt file may have", b""),
    ("text-stdin-endless", "GENERATE --model M --prompt-text-file - < /dev/zero", 2,
     "error: <stdin>: more than 4 MiB, the most that a prompt may hold", b""),
]
FULL = [  # /dev/full: every write fails with ENOSPC, as on a full disk
    ("stdout-full", "GENERATE --model M --prompt x --max-new-tokens 4 > /dev/full", 2,
     "error: standard output: No space left on device", None),
    ("output-a-device", "echo '{\"prompt\": \"x\"}' | GENERATE --model M --prompt-file - --max-new-tokens 4 --output /dev/full",
     2, "error: --output /dev/full: is a character device, not a regular file", b""),
    ("stderr-full", "GENERATE --model M --prompt x --max-new-tokens 4 2>/dev/full; echo \" status $?\"", 0, None, None),
]


@pytest.mark.parametrize("case, command, status, error, out", STREAMS + [pytest.param(*c, marks=has_dev_full) for c in FULL],
                         ids=[c[0] for c in STREAMS + FULL])
def test_closed_full_and_endless_streams(tmp_path, endless, case, command, status, error, out):
    done = shell(command.replace(" M ", f" {endless} "), tmp_path)
    assert done.returncode == status, done.stderr
    if error is None:
        assert done.stderr == b""
    else:
        assert_one_line(done.stderr, error)
    if out is not None:
        assert done.stdout == out
    if case == "output-a-device":
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # written in place: the device is still a device
    if case == "stderr-full":  # the text was written; the timing line could not be, so the status is 1, quietly
        assert done.stdout.endswith(b"\n status 1\n") and len(done.stdout) > len(b"\n status 1\n")


def test_output_on_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, endless):
    """A real write error from the kernel while --output is written (a file-size limit: EFBIG, as a full disk gives
    ENOSPC): one line, the old file as it was, no temporary file left."""
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n' * 4)
    (tmp_path / "out.jsonl").write_text("old\n")
    prelude = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)); sys.argv = ['generate'] + sys.argv[1:]; "
               "runpy.run_module('orthrus_min.generate', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", prelude, "--model", str(endless), "--prompt-file", "p.jsonl", "--output",
                           "out.jsonl", "--max-new-tokens", "4"], capture_output=True, env=ENV, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    assert_one_line(done.stderr, "error: --output out.jsonl: cannot write (File too large)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "p.jsonl"] and (tmp_path / "out.jsonl").read_text() == "old\n"


def test_closed_stderr_sends_nothing_to_stdout(tmp_path, endless, capsys):
    """With stderr closed, the timing and --stats lines are dropped: stdout holds exactly the generated text."""
    from orthrus_min.generate import main

    assert main(["--model", str(endless), "--prompt", "x", "--max-new-tokens", "6"]) == 0
    text, err = capsys.readouterr()
    closed = shell(f"GENERATE --model {endless} --prompt x --max-new-tokens 6 --stats 2>&-", tmp_path)
    assert closed.returncode == 0 and "tokens/s" in err
    assert closed.stdout.decode() == text and b"tokens" not in closed.stdout


# --------------------------------------------------------------------------- Ctrl-C


def interruptible() -> None:
    """Run in each child before it starts: SIGINT back to its default. A test run started in the background without job
    control (`nohup pytest &`) hands its children SIGINT ignored, and Python then never installs its Ctrl-C handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("moment", ["import:orthrus_min.api", "import:torch", "import:safetensors", "write:3"],
                         ids=["api-import", "torch-import", "weights-load", "mid-generation"])
def test_ctrl_c_at_any_moment_is_one_line_and_130(tmp_path, endless, moment):
    """A real SIGINT, sent at exactly that moment (tests/signal_hook.py): while torch is imported, while the checkpoint
    loads, while the continuation streams."""
    done = subprocess.run([sys.executable, str(HOOK), moment, "--", "--model", str(endless), "--prompt", "x",
                           "--max-new-tokens", "500"], capture_output=True, env=ENV, cwd=tmp_path, timeout=300,
                          preexec_fn=interruptible)
    assert done.returncode == 130 and done.stderr == b"interrupted\n", done.stderr.decode()[-2000:]


def test_ctrl_c_from_outside_during_generation(tmp_path, endless):
    """Ctrl-C from another process once text is streaming (1500 new tokens, no EOS: the run is still going then)."""
    child = subprocess.Popen([sys.executable, "-m", "orthrus_min.generate", "--model", str(endless), "--prompt", "x",
                              "--max-new-tokens", "1500", "--mode", "ar"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=ENV, cwd=tmp_path, preexec_fn=interruptible)
    try:
        assert child.stdout.read(1)  # the first byte of the continuation: generation has started
        child.send_signal(signal.SIGINT)
        try:
            _, err = child.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after SIGINT: {process_state(child.pid)}")
    finally:
        child.kill()
    assert child.returncode == 130 and err == b"interrupted\n", err.decode()[-2000:]


def process_state(pid: int) -> str:
    """What Linux says about a process that should have ended: its state, where it waits, its signal masks."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as e:
        return f"no /proc entry ({e})"
    return f"wchan {wchan}; " + "; ".join(line for line in status if line.startswith(("State", "SigPnd", "ShdPnd", "SigBlk",
                                                                                          "SigIgn", "SigCgt")))


def test_ctrl_c_while_reading_stdin(tmp_path, endless):
    """`--prompt-file -` from a stream that never ends a line: Ctrl-C interrupts the read. The child has read part of
    what we wrote (a write larger than the pipe's buffer returns only once it did) and waits for more."""
    child = subprocess.Popen([sys.executable, "-m", "orthrus_min.generate", "--model", str(endless), "--prompt-file", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=tmp_path,
                             preexec_fn=interruptible)
    try:
        child.stdin.write(b'{"prompt": "' + b"a" * 2**20)  # 1 MiB of one line: under the 4 MiB line limit
        child.stdin.flush()
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=120)  # stdin stays open: the read ends by the signal, not by an end of file
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after SIGINT: {process_state(child.pid)}")
        err = child.stderr.read()
    finally:
        child.kill()
        child.stdin.close()
    assert child.returncode == 130 and err == b"interrupted\n", err.decode()[-2000:]
