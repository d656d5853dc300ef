"""`--dry-run`: what a training run would cost, before it spends anything.

Printed: parameters (frozen / trainable), the data (documents, tokens, rows per epoch — the data
is tokenized and cached, so the real run starts at once), the batch arithmetic, steps, an
estimate of memory per GPU, and the launch command. The memory estimate is a sum of simple
terms, not a measurement (check it with a short run and torch.cuda.max_memory_allocated); it counts:
  * weights: frozen ones in their storage dtype, trainable ones as fp32 masters;
  * training state: fp32 gradient, AdamW's two moments, and DDP's gradient buckets;
  * activations of one micro-batch: the KV cache of the dual pass, per layer the tensors the
    backward pass keeps (all layers, or one plus each layer's input with activation
    checkpointing), the attention masks, and the logits with their fp32 softmax and gradient.
"""

from __future__ import annotations

import shlex
import sys

import torch

from ..config import Qwen3Config
from ..model import Qwen3ForCausalLM

GiB = 2**30


def parameter_counts(config: Qwen3Config) -> tuple[int, int]:
    """(all parameters, diffusion-view parameters) of a config, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    diff = sum(p.numel() for n, p in model.named_parameters() if "_diff" in n)
    return total, diff


def memory_estimate(config: Qwen3Config, frozen: int, trainable: int, frozen_bytes: int, micro_batch: int, seq_len: int,
                    diffusion_tokens: int, world: int, checkpointing: bool, act_bytes: int) -> dict[str, float]:
    """Bytes per process, by part: weights, optimizer state, activations (see the module docstring)."""
    c = config
    C, I, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    N, M = seq_len, diffusion_tokens  # AR tokens and diffusion tokens per row
    weights = frozen * frozen_bytes + trainable * 4
    state = trainable * (4 + 8 + (4 if world > 1 else 0))
    kv = 2 * L * Hkv * D * (N + M) * act_bytes
    per_layer_token = (6 * C + 3 * H * D + 4 * Hkv * D + 3 * I) * act_bytes  # what autograd keeps per token and layer
    trained_tokens = M if M else N
    kept = (L * C * act_bytes + per_layer_token) if checkpointing else L * per_layer_token
    masks = L * trained_tokens * (N + M) if M else 0  # bool masks, one per layer call
    logits = (N * V * (act_bytes + 4) if M else 0) + trained_tokens * V * (act_bytes + 12)
    activations = micro_batch * (kv + trained_tokens * kept + masks + logits)
    return {"weights": weights / GiB, "optimizer": state / GiB, "activations": activations / GiB,
            "total": (weights + state + activations) / GiB}


def launch_command(argv: list[str], processes: int) -> str:
    """The command that runs this plan: torchrun for several processes, plain python for one."""
    cleaned, i = [], 0  # everything but --dry-run (and the process count after it)
    while i < len(argv):
        a = argv[i]
        if a == "--dry-run":
            if i + 1 < len(argv) and argv[i + 1].isdigit():
                i += 1
        elif not a.startswith("--dry-run="):
            cleaned.append(a)
        i += 1
    cmd = " ".join(shlex.quote(a) for a in cleaned)
    if processes > 1:
        return f"torchrun --nproc-per-node {processes} -m orthrus_min.train {cmd}"
    return f"python -m orthrus_min.train {cmd}"


def print_plan(lines: list[tuple[str, str]], file=None) -> None:
    """The plan as aligned `label: value` lines on stdout."""
    file = file or sys.stdout
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.rjust(width)}: {v}", file=file)


__all__ = ["parameter_counts", "memory_estimate", "launch_command", "print_plan"]
