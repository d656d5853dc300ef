"""`python -m orthrus_min.train <stage>`: see cli.py (stages: tokenizer, pretrain, distill, regenerate, export, prompts)."""

import sys

from .cli import main

sys.exit(main())
