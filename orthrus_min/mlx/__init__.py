"""The MLX backend: the same model and decoders as the torch side, for Apple silicon (and MLX's CPU backend).

Module for module, it mirrors the torch package:

| torch                    | MLX                           |
|--------------------------|-------------------------------|
| `orthrus_min.model`      | `orthrus_min.mlx.model`       |
| `orthrus_min.kvcache`    | `orthrus_min.mlx.kvcache`     |
| `orthrus_min.sampling`   | `orthrus_min.mlx.sampling`    |
| `orthrus_min.ar`         | `orthrus_min.mlx.ar`          |
| `orthrus_min.consensus`  | `orthrus_min.mlx.consensus`   |

plus `orthrus_min.mlx.backend` (the import guard, devices, dtypes, flag checks). The config and
block-size checks (`orthrus_min.config`), checkpoint lookup (`orthrus_min.checkpoint`), request
checks and `Generation` (`orthrus_min.batch`) and `SamplingParams` are the torch side's own; the
torch network, engine and decoders are never imported. Usage, batch size 1:

    from orthrus_min.mlx import load_model, generate_orthrus
    model = load_model("orthrus_min/assets/orthrus-stdlib-tiny", dtype="float32")
    out = generate_orthrus(model, prompt_ids, 64, block_size=8)

Importing this package does not import MLX; `load_model`, `generate_ar` and `generate_orthrus`
do, and raise a one-line `OrthrusError` naming the extra to install when it is missing.
"""

from __future__ import annotations

from .backend import INSTALL_HINT, check_backend_args, require_mlx

_LAZY = {"load_model": "model", "Qwen3ForCausalLM": "model", "KVCache": "kvcache", "generate_ar": "ar",
         "generate_orthrus": "consensus"}


def __getattr__(name: str):
    """`orthrus_min.mlx.load_model` and friends, imported on first use (so that MLX is only needed then)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["check_backend_args", "require_mlx", "INSTALL_HINT", *_LAZY]
