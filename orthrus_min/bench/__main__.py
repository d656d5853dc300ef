"""`python -m orthrus_min.bench <command>`: see cli.py (commands: all, orthrus, ar, forward, random-model, attn, gpu)."""

import sys

from .cli import main

sys.exit(main())
