"""The old entry point of the attention benchmark, kept: `python -m orthrus_min.bench_attn [flags]`
is `python -m orthrus_min.bench attn [flags]` (orthrus_min/bench/attn.py)."""

from __future__ import annotations

import sys

from .bench.cli import main as bench_main


def main(argv: list[str] | None = None) -> int:
    """Runs `bench attn` with these flags; returns the exit status."""
    return bench_main(["attn", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
