"""The Transformers baseline: Transformers' own Qwen3ForCausalLM on a checkpoint's AR weights, and its `generate`.

Used by `python -m orthrus_min.bench ar`, `all` and `forward`. transformers is a dev-only
package: it is imported here, inside the functions, so nothing else needs it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import OrthrusError

MISSING = "transformers is not installed (pip install transformers)"


def transformers_reference(folder: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """Transformers' Qwen3ForCausalLM on `device` with the AR weights of a checkpoint (an Orthrus one too: *_diff tensors are skipped)."""
    try:
        from transformers import Qwen3Config as HFConfig
        from transformers import Qwen3ForCausalLM as HFModel
    except ImportError:
        raise OrthrusError(MISSING) from None
    from safetensors.torch import load_file

    from ..checkpoint import safetensors_files
    from ..config import Qwen3Config

    cfg = Qwen3Config.from_json(folder / "config.json").to_dict()
    for key in ("model_type", "block_size", "mask_token_id"):
        cfg.pop(key, None)
    with torch.device(device):  # built and initialised where it runs, not first on the CPU (slow for a 1.7B model)
        model = HFModel(HFConfig(**cfg)).to(dtype).eval()
    state = {}
    for f in safetensors_files(folder):
        state.update({k: v for k, v in load_file(f).items() if "_diff" not in k})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


class FirstTokenClock:
    """A Transformers streamer that notes when the first new token arrives: time to first token.

    `generate` calls put() with the prompt, then with each new token (already copied to the CPU,
    so the device has finished it); only the second call is timed, so the overhead is one call per token.
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.first = None
        self.calls = 0

    def put(self, value) -> None:
        """Called by `generate` with the prompt, then with each new token."""
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        """Called by `generate` when it is done; nothing to do."""

    @property
    def ttft_s(self) -> float:
        """Seconds from construction to the first new token (to now, if none came)."""
        return (self.first if self.first is not None else time.perf_counter()) - self.start


def hf_generate(ref, prompt_ids: list[int], n: int, eos: list[int] | None) -> tuple[list[int], float]:
    """Greedy Transformers `generate` of up to n tokens -> (new token ids, time to first token in s).

    eos None: EOS is ignored (exactly n tokens); else generation stops at (and emits) the first id in eos.
    """
    ids = torch.tensor([prompt_ids], device=ref.device)  # (1, P)
    clock = FirstTokenClock()
    out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                       pad_token_id=0, streamer=clock)  # (1, P + n)
    return out[0, len(prompt_ids):].tolist(), clock.ttft_s
