"""The one exception type that orthrus_min raises for bad input, and the checks of plain values that raise it.
(And `ConsensusCheckError`: not bad input but a decoder bug, found by `check=True` / `--check`.)

Every message is a single line that names what was wrong (a config field, a
tensor, a file, a flag) so the command line can print it without a traceback.
A value of the wrong type raises `TypeError`; a value of the right type that we
cannot use raises `OrthrusError`.
"""

from __future__ import annotations

import numbers


class OrthrusError(ValueError):
    """Bad input: a checkpoint, config, prompt or generation setting we cannot use."""


class ConsensusCheckError(RuntimeError):
    """`check=True` found a committed token that is not the AR view's choice: a decoder bug."""


def is_int(value) -> bool:
    """True for an integer: a Python int or any `numbers.Integral` (numpy's integers), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value, name: str, low: int | None = None, high: int | None = None, high_text: str | None = None) -> int:
    """`value` as a Python int, or a one-line TypeError (not an integer) / OrthrusError (outside low … high)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}"[:200])
    value = int(value)
    if high is not None and low is not None and not low <= value <= high:
        raise OrthrusError(f"{name} must be in {low} … {high_text or high}, got {value}")
    if low is not None and value < low:
        raise OrthrusError(f"{name} must be an int >= {low}, got {value}")
    return value


def check_number(value, name: str) -> float:
    """`value` (an int or a float, not a bool) as a float, or a one-line TypeError."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def check_bool(value, name: str) -> bool:
    """`value` if it is True or False, else a one-line TypeError (a truthy string is not a yes)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}"[:200])
    return value


def check_text(text: str, what: str) -> str:
    """`text` if it is valid Unicode (encodable as UTF-8), else a one-line OrthrusError naming the first bad character.

    A lone surrogate is what Python makes of a byte that is not UTF-8 in a command-line argument
    (U+DC80 … U+DCFF stand for the bytes 0x80 … 0xFF) or of a "\\udcff" escape in JSON; the
    tokenizer cannot take it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        byte = f" (byte 0x{code - 0xDC00:02x}: the text is not UTF-8)" if 0xDC80 <= code <= 0xDCFF else ""
        raise OrthrusError(f"{what} is not valid Unicode: a lone surrogate U+{code:04X} at character {e.start}{byte}") from None
    return text


__all__ = ["OrthrusError", "ConsensusCheckError", "is_int", "check_int", "check_number", "check_bool", "check_text"]
