"""orthrus_min: Orthrus (arXiv 2605.12825) from scratch — a frozen Qwen3 plus a diffusion view
that drafts a block of tokens over the same KV cache, verified by the AR view: the exact
base-model output, several tokens per iteration.

The names below are imported on first use, so that `import orthrus_min` (and so the command
lines' start) imports no torch: a Ctrl-C while torch loads is then the command's to handle.
"""

from __future__ import annotations

__version__ = "0.1.0"
_WHERE = {"load": "api", "LLM": "api", "Completion": "api", "OrthrusError": "errors", "KVCache": "kvcache",
          "Qwen3Config": "config", "Qwen3ForCausalLM": "model", "load_model": "checkpoint", "save_model": "checkpoint",
          "SamplingParams": "sampling"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    """`orthrus_min.load` and the other public names, imported from their module on first use."""
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
