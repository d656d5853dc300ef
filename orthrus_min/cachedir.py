"""What one run leaves for the next: the cache folder, and the small JSON tables kept in it.

A second run of the same command should not pay again for what the first one measured or compiled:
  * `steps/`: compiled decode steps, the 64 most recently used, at most 2 GB of them (`stepcache.py`);
  * `step_costs.json`: the measured seconds of an Orthrus step at each block size, per model shape,
    device, batch size and thread count (`blocksize.py`: `block_size="auto"` starts from them);
  * `block_sizes.json`: the one block size compiled decoding keeps per model and batch size (`engine.py`).

Everything here can be deleted at any time: it is measured or compiled again. The folder is
$ORTHRUS_MIN_CACHE_DIR, else $XDG_CACHE_HOME/orthrus_min, else ~/.cache/orthrus_min. A cache that
cannot be written (a read-only home) is not an error: that run keeps what it learns to itself.
Finding the folder imports nothing from torch's compiler (that import alone takes seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import OrthrusError
from .files import write_text_atomically

CACHE_ENV = "ORTHRUS_MIN_CACHE_DIR"


def cache_dir() -> Path:
    """The folder where runs leave compiled steps and measurements for later runs (module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orthrus_min"


def key(parts: list, length: int = 16) -> str:
    """The name of an entry (a table key, a file name): a hash of everything its content depends on, `parts` (JSON-able;
    anything else by its str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def remembered(table: str) -> dict:
    """The JSON table `table` (e.g. "step_costs.json") of the cache folder; {} when there is none yet or it cannot be read."""
    try:
        with open(cache_dir() / table) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def remember(table: str, key: str, value) -> None:
    """Sets `key` of the JSON table `table` to `value`, the file rewritten atomically (files.py: a concurrent run never
    reads half of it); when the folder cannot be written the value is simply not kept."""
    entries = remembered(table)
    entries[key] = value
    try:
        write_text_atomically(cache_dir() / table, json.dumps(entries))
    except OrthrusError:  # WriteFailed, or something other than a file in its place
        pass


__all__ = ["cache_dir", "key", "remembered", "remember", "CACHE_ENV"]
