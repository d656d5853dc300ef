"""What the command lines share: one-line errors, exit codes, and Unix manners.

Every command (`generate`, `bench`, `train`) runs through `run_main`:
  * a user mistake (`OrthrusError`, or a bad flag caught by `Parser`) prints one line
    `error: …` to stderr and exits with status 2 — never a traceback;
  * Ctrl-C prints `interrupted` and exits with 130;
  * output into a closed pipe (`… | head`) ends the command quietly with 141 (128 + SIGPIPE),
    as a Unix tool killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .errors import OrthrusError

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141


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
    """Runs a command's body and turns user mistakes, Ctrl-C and closed pipes into exit statuses."""
    try:
        return run()
    except OrthrusError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away: stop quietly. Point stdout at /dev/null so that Python's own flush at
        # exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


__all__ = ["Parser", "number", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "int_list", "one_line",
           "run_main", "EXIT_USAGE"]
