"""Pretraining a small Qwen3 base from scratch: next-token cross-entropy on packed rows (the loop's "pretrain" job)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch

from ..config import Qwen3Config
from ..model import Qwen3ForCausalLM
from .dist import Dist
from .objective import causal_document_mask, next_token_loss, next_token_weights
from .packing import Pool, RowStream, Rows, plan_epoch, make_rows, rows_of

MODEL_PRESETS = {
    # the shipped default model: ~5.7M parameters in the AR view, +1.2M in the diffusion view
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0),
    # for tests: a model that trains in seconds
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0),
}
EVAL_ROWS = 32  # held-out rows of the held-out loss


def init_weights(model: Qwen3ForCausalLM, seed: int) -> None:
    """GPT-2 style init: N(0, 0.02) matrices, residual projections scaled by 1/sqrt(2 * layers)."""
    g = torch.Generator().manual_seed(seed)
    std_out = 0.02 / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, std_out if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02, generator=g)


def new_base_model(tokenizer, preset: str, seed: int, context: int | None = None) -> Qwen3ForCausalLM:
    """A freshly initialised Qwen3 of a preset's shape for this tokenizer (EOS: <|endoftext|>); `context` replaces
    the preset's max_position_embeddings."""
    fields = dict(model_type="qwen3", vocab_size=tokenizer.vocab_size, rms_norm_eps=1e-6,
                  eos_token_id=tokenizer.token_to_id("<|endoftext|>"), **MODEL_PRESETS[preset])
    if context is not None:
        fields["max_position_embeddings"] = context
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(fields))
    init_weights(model, seed)
    return model


def continued_base_model(folder, context: int | None = None) -> Qwen3ForCausalLM:
    """The AR view of a checkpoint, in float32 on the CPU, to continue pretraining (`pretrain --init`).

    An Orthrus checkpoint's diffusion view is dropped: the base changes, so the view is trained
    again by `distill` (which can start from the old one: `--diffusion-init`). RoPE has no learned
    positions, so `context` (max_position_embeddings) may grow; the model then learns to use it
    from the longer rows it is trained on.
    """
    from ..checkpoint import load_model

    source = load_model(folder, dtype=torch.float32, device="cpu", attn="torch")
    config = replace(source.config, model_type="qwen3", block_size=None, mask_token_id=None,
                     max_position_embeddings=context or source.config.max_position_embeddings)
    model = Qwen3ForCausalLM(config)
    state = {name: t for name, t in source.state_dict().items() if "_diff" not in name}
    model.load_state_dict(state, strict=False)  # the RoPE table is a buffer of the new context, not a weight
    missing = [n for n, _ in model.named_parameters() if n not in state]
    if missing:
        raise RuntimeError(f"continued_base_model: weights not copied: {missing[:3]}")
    return model


@dataclass
class Micro:
    """One micro-batch: rows on the device, the trained positions, their count (weight) and real tokens."""

    rows: Rows
    weights: torch.Tensor  # (B, N-1) bool
    weight: float
    tokens: int


def lm_logits(forward, rows: Rows) -> torch.Tensor:
    """Logits (B, N, V) of packed rows: positions per document and a block-diagonal causal mask
    (plain causal attention when every row is one document)."""
    if rows.single_document:
        return forward(rows.ids)
    return forward(rows.ids, position_ids=rows.pos, attn_mask=causal_document_mask(rows.doc))


def to_device(rows: Rows, device: torch.device) -> Rows:
    """The rows' tensors on `device`."""
    return Rows(rows.ids.to(device), rows.doc.to(device), rows.pos.to(device), rows.loss.to(device), rows.real.to(device),
                rows.refs)


def heldout_rows(heldout: list[Pool], seq_len: int, pad_id: int, seed: int = 0, count: int = EVAL_ROWS) -> list[Rows]:
    """The first `count` rows of `seq_len` tokens of the held-out documents, packed in order: what the held-out loss
    is measured on (the same rows for every model with this tokenizer, data and seq_len)."""
    plan = plan_epoch(heldout, seq_len, seed, 0, shuffle=False)
    return [make_rows(heldout, [plan.row(r)], seq_len, pad_id) for r in range(min(count, len(plan)))]


@torch.no_grad()
def loss_sums(model: Qwen3ForCausalLM, rows: list[Rows]) -> tuple[float, float]:
    """(summed next-token loss in nats, trained tokens) of `model` over `rows`."""
    total, count = 0.0, 0.0
    for r in rows:
        r = to_device(r, model.device)
        weights = next_token_weights(r.loss, r.doc)
        total += float(next_token_loss(lm_logits(model, r), r.ids, weights, normalizer=1.0))
        count += float(weights.sum())
    return total, count


class PretrainJob:
    """Everything trains; the loss is next-token cross-entropy on every trained token of the packed rows."""

    stage = "pretrain"

    def __init__(self, model: Qwen3ForCausalLM, stream: RowStream, heldout: list[Pool], pad_id: int, tokenizer_dir,
                 identity: dict, seed: int):
        self.model, self.stream, self.pad_id, self.tokenizer_dir, self.identity = model, stream, pad_id, tokenizer_dir, identity
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = model.device
        self.eval_rows = heldout_rows(heldout, stream.seq_len, pad_id, seed)

    def autocast(self):
        """bf16 autocast on CUDA (master weights stay fp32)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def micro_batch(self, refs, step: int) -> Micro:
        rows = rows_of(self.stream, refs, self.pad_id)
        weights = next_token_weights(rows.loss, rows.doc)
        return Micro(to_device(rows, self.device), weights.to(self.device), float(weights.sum()), int(rows.real.sum()))

    def loss_sum(self, forward, micro: Micro) -> torch.Tensor:
        logits = lm_logits(forward, micro.rows)  # (B, N, V)
        return next_token_loss(logits, micro.rows.ids, micro.weights, normalizer=1.0)

    def step_record(self, step: int) -> dict:
        return {}

    @torch.no_grad()
    def evaluate(self, dist: Dist, initial: bool) -> dict:
        """Held-out next-token loss over the first held-out rows (each process takes every world-th row)."""
        if initial or not self.eval_rows:
            return {}
        self.model.eval()
        with self.autocast():
            total, count = loss_sums(self.model, self.eval_rows[dist.rank :: dist.world])
        total, count = dist.sum(total, count)
        return {"heldout_loss": round(total / count, 4)} if count else {}

    def describe(self, metrics: dict) -> str:
        return f"held-out loss {metrics['heldout_loss']:.3f}"


__all__ = ["MODEL_PRESETS", "init_weights", "new_base_model", "continued_base_model", "heldout_rows", "loss_sums", "PretrainJob", "lm_logits", "to_device"]
