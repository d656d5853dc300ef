"""What the command lines share: one-line errors, exit codes, and Unix manners.

Every command (`generate`, `bench`, `train`) runs through `run_main`:
  * a user mistake (`OrthrusError`, or a bad flag caught by `Parser`) prints one line
    `error: …` to stderr and exits with status 2 — never a traceback;
  * so does a fault of the environment while running — a full disk, an output that cannot
    be written (`/dev/full`, a closed stdout), any other `OSError`: one line, status 2;
  * an error that cannot even be reported (stderr itself is full or gone) exits quietly with 1;
  * Ctrl-C, at any moment (loading included), prints `interrupted` and exits with 130;
  * output into a closed pipe (`… | head`) ends the command quietly with 141 (128 + SIGPIPE),
    as a Unix tool killed by SIGPIPE would.
With stderr closed (`2>&-`), what would go there is dropped, never sent to stdout.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable

from .errors import OrthrusError

EXIT_UNREPORTED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake raises OrthrusError (one line `error: …`, exit 2) instead of printing usage."""

    def error(self, message: str):
        """Called by argparse with what was wrong with the command line."""
        raise OrthrusError(f"{message} (see {self.prog} --help)")


def command_parser(prog: str, description: str | None, metavar: str) -> tuple[Parser, argparse._SubParsersAction]:
    """A Parser for a command with sub-commands (`python -m orthrus_min.train <stage>`), and its sub-parser group."""
    p = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar=metavar, parser_class=Parser)
    return p, sub


# --------------------------------------------------------------------------- argparse value types


def number(text: str, kind, check, expected: str):
    """`text` as `kind` (int or float) if `check` accepts it, else argparse's one-line type error."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not check(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return number(text, int, lambda v: v >= 1, "an integer >= 1")


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return number(text, float, lambda v: 0 < v < float("inf"), "a number > 0")


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def block_size_arg(text: str) -> int | str:
    """--block-size: 'auto' or an integer; its range (and any other word) is checked against the checkpoint later."""
    return int(text) if text.lstrip("-").isdigit() else text


def int_list(minimum: int):
    """A type: '4,8,16' -> [4, 8, 16], each >= minimum, at least one."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            values = []
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum}, got {text!r}")
        return values

    return parse


def one_line(message: object) -> str:
    """A message folded onto one line (a multi-line exception text stays readable in `error: …`)."""
    return " ".join(str(message).split())


def run_main(run: Callable[[], int]) -> int:
    """Runs a command's body and turns user mistakes, faults, Ctrl-C and closed pipes into exit statuses."""
    guard_standard_streams()
    try:
        status = run()
        if sys.stdout is not None:
            write_stdout("", flush=True)  # a full disk shows here, not as a message at exit
        return status
    except OrthrusError as e:
        return report(f"error: {one_line(e)}", EXIT_USAGE)
    except KeyboardInterrupt:
        return report(("\n" if on_terminal(sys.stderr) else "") + "interrupted", EXIT_INTERRUPTED)  # off the ^C line
    except BrokenPipeError:
        settle_streams()  # the reader went away: stop quietly
        return EXIT_BROKEN_PIPE
    except OSError as e:  # a full disk, a closed or failing stream, an I/O error
        where = f"{e.filename}: " if e.filename else ""
        return report(f"error: {where}{one_line(e.strerror or e)}", EXIT_USAGE)


def report(line: str, status: int) -> int:
    """Prints `line` to stderr and returns `status` (EXIT_UNREPORTED when stderr fails too, except for Ctrl-C's 130);
    a second Ctrl-C meanwhile is ignored."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # stderr is gone or full: the status alone must tell
        status = status if status == EXIT_INTERRUPTED else EXIT_UNREPORTED
    finally:
        settle_streams()
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return status


def guard_standard_streams() -> None:
    """For a command started with a standard stream closed (`>&-`, `2>&-`, `<&-`), or open the wrong way round (a
    launcher may leave a read-only file on descriptor 2): points that descriptor at /dev/null, so that no file we open
    later becomes "stdout" and what would go to stderr is dropped (print(file=None) would send it to stdout). A closed
    stdin or stdout becomes sys.stdin / sys.stdout = None, so that readers and writers can say so."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if usable(fd, write=fd != 0):
            continue
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        stream = getattr(sys, name)
        if name != "stderr" and stream is not None and stream_fd(stream) == fd:
            setattr(sys, name, None)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


def usable(fd: int, write: bool) -> bool:
    """Whether descriptor `fd` is open for writing (write=True) or for reading."""
    try:
        import fcntl

        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except ImportError:  # no fcntl (Windows): an open descriptor is taken as usable
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True
    except OSError:
        return False
    return mode != (os.O_RDONLY if write else os.O_WRONLY)


def on_terminal(stream) -> bool:
    """Whether `stream` is a terminal (False for a file, a pipe, a closed stream)."""
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def stream_fd(stream) -> int | None:
    """The descriptor under a standard stream, or None (a stream that captures output in memory has none)."""
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def settle_streams() -> None:
    """Flushes stdout and stderr; one that cannot be written (a closed pipe, a full disk) is pointed at /dev/null so
    that Python's own flush at exit neither raises nor prints again."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):  # (io.UnsupportedOperation is both: a stream with no descriptor)
                pass


def require_stdout() -> None:
    """An OSError (one line, exit 2 in run_main) when the command was started with stdout closed (`>&-`)."""
    if sys.stdout is None:
        raise OSError(errno.EBADF, "standard output is closed (or not open for writing): there is nowhere to write the "
                                   "text (open it, or use --output FILE where the command has one)")


def write_stdout(text: str, flush: bool = False) -> None:
    """Writes `text` to standard output; a closed or failing stdout is an OSError that says so (exit 2 in run_main)."""
    require_stdout()
    try:
        sys.stdout.write(text)
        if flush:
            sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, "standard output") from None


__all__ = ["Parser", "number", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "int_list", "one_line",
           "block_size_arg", "run_main", "require_stdout", "write_stdout", "EXIT_USAGE"]
