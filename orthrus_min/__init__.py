"""orthrus_min: Orthrus (arXiv 2605.12825) from scratch — a frozen Qwen3 plus a diffusion view
that drafts a block of tokens over the same KV cache, verified by the AR view: the exact
base-model output, several tokens per iteration."""

from .api import LLM, Completion, load
from .errors import OrthrusError
from .kvcache import KVCache
from .model import Qwen3Config, Qwen3ForCausalLM, load_model, save_model
from .sampling import SamplingParams

__version__ = "0.1.0"
__all__ = ["load", "LLM", "Completion", "OrthrusError", "KVCache", "Qwen3Config", "Qwen3ForCausalLM", "load_model",
           "save_model", "SamplingParams"]
