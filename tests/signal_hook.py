"""Runs `python -m orthrus_min.generate ARGS…` and sends it a real SIGINT (Ctrl-C) at a chosen moment, exactly.

    python tests/signal_hook.py import:safetensors -- --model DIR --prompt x

import:MODULE  the moment MODULE is first imported (torch while the API loads, safetensors and
               tokenizers while the checkpoint loads: Ctrl-C during the slow start of a command);
write:N        at the N-th write to stdout (mid-generation: the continuation is streaming).

The signal is sent by the process to itself with os.kill, so it arrives at that point and no
other: a test of "Ctrl-C at any moment" that does not depend on timing.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


class InterruptOnImport:
    """A meta-path finder that finds nothing, but sends SIGINT when `module` is asked for the first time."""

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, name, path=None, target=None):
        if name == self.module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: inside the import machinery
        return None


class InterruptOnWrite:
    """Wraps stdout; the n-th write sends SIGINT after writing."""

    def __init__(self, stream, n: int):
        self.stream, self.n = stream, n

    def write(self, text):
        out = self.stream.write(text)
        self.n -= 1
        if self.n == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main() -> None:
    when, rest = sys.argv[1], sys.argv[3:]  # argv[2] is "--"
    kind, what = when.split(":", 1)
    if kind == "import":
        sys.meta_path.insert(0, InterruptOnImport(what))
    else:
        sys.stdout = InterruptOnWrite(sys.stdout, int(what))
    sys.argv = ["orthrus_min.generate", *rest]
    runpy.run_module("orthrus_min.generate", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
