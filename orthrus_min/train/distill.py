"""Distilling the diffusion view (the loop's "distill" job): KL(AR view ‖ diffusion view) on random anchor blocks.

Setup of any Qwen3 checkpoint: the diffusion view is added with its weights copied from the
AR view (`init_diffusion_view`), everything else is frozen, and a mask token is chosen when the
tokenizer has none (`choose_mask_token`). Each step draws one block size K (from
`--train-block-sizes`); each row gets up to `--blocks-per-row` random anchor blocks (default
seq_len // K, so the diffusion stream is about as long as the row), inside the trained tokens
of one document (`sample_anchors`); the loss is the KL of every draft index 0 … K-2 to the
frozen AR view at the same position (objective.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import num_parameters
from ..errors import OrthrusError
from ..model import Qwen3ForCausalLM
from .dist import Dist
from .evaluate import acceptance_sums
from .objective import block_weights, distill_loss, distill_weight, dual_forward
from .packing import RowStream, Rows, rows_of
from .pretrain import to_device

MASK_TOKEN = "<|mask|>"


def freeze_base(model: Qwen3ForCausalLM) -> tuple[list[torch.nn.Parameter], int, int]:
    """Freezes every weight but the diffusion view's; returns (trainable params, trainable count, total count)."""
    model.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if "_diff" in name]
    for p in params:
        p.requires_grad_(True)
    return params, sum(p.numel() for p in params), num_parameters(model)


def largest_token_id(tokenizer) -> int:
    """The largest id the tokenizer can produce (its vocabulary and added tokens)."""
    return max(tokenizer.tok.get_vocab(with_added_tokens=True).values())


def choose_mask_token(tokenizer, vocab_size: int, requested: int | None) -> tuple[int, str]:
    """The [MASK] id that fills draft blocks, and why it was chosen.

    In order: --mask-token-id; the tokenizer's `<|mask|>`; else the first unused embedding row —
    an id past every token the tokenizer has, inside the embedding (Qwen3: the tokenizer has
    151,669 tokens, the embedding 151,936 rows, so the mask is 151669). No text ever encodes to
    such a row, so the mask can never be confused with a real token, and decoding never emits it
    (the AR view verifies every committed token). Without a free row, --mask-token-id is required.
    """
    if requested is not None:
        if not 0 <= requested < vocab_size:
            raise OrthrusError(f"--mask-token-id {requested} is outside the model's vocabulary (0 … {vocab_size - 1})")
        return requested, "--mask-token-id"
    mask = tokenizer.token_to_id(MASK_TOKEN)
    if mask is not None:
        if mask >= vocab_size:
            raise OrthrusError(f"the tokenizer's {MASK_TOKEN} is id {mask}, outside the model's vocabulary ({vocab_size} rows)")
        return mask, f"the tokenizer's {MASK_TOKEN}"
    unused = largest_token_id(tokenizer) + 1
    if unused < vocab_size:
        return unused, (f"the first unused embedding row: the tokenizer's ids end at {unused - 1}, the embedding has "
                        f"{vocab_size} rows")
    raise OrthrusError(f"the tokenizer has no {MASK_TOKEN} token and the embedding has no row beyond the tokenizer's "
                       f"{unused} ids to use instead: pass --mask-token-id ID (a token the data never contains)")


def copy_diffusion_view(model: Qwen3ForCausalLM, folder) -> int:
    """Copies every diffusion-view weight (`*_diff*`) of the Orthrus checkpoint in `folder` into `model` (same
    shapes: `distill --diffusion-init`); returns how many tensors were copied."""
    from safetensors import safe_open

    from ..checkpoint import safetensors_files

    params = dict(model.named_parameters())
    copied = 0
    for file in safetensors_files(folder):
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():
                if "_diff" not in name:
                    continue
                if name not in params or tuple(params[name].shape) != tuple(f.get_slice(name).get_shape()):
                    raise OrthrusError(f"--diffusion-init {folder}: {name} does not fit --model (another shape)")
                with torch.no_grad():
                    params[name].copy_(f.get_tensor(name))
                copied += 1
    wanted = sum(1 for name in params if "_diff" in name)
    if copied != wanted:
        raise OrthrusError(f"--diffusion-init {folder}: {copied} of the {wanted} diffusion-view tensors found")
    return copied


def blocks_for(seq_len: int, block_size: int, blocks_per_row: int | None) -> int:
    """Anchor blocks per row: --blocks-per-row, or seq_len // K (a diffusion stream about as long as the row)."""
    return blocks_per_row or max(1, seq_len // block_size)


def sample_anchors(rows: Rows, blocks_per_row: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random anchor blocks per row: (starts (B, nb), valid (B, nb)), nb = blocks_per_row.

    An anchor s is valid when s and s+1 lie in the same piece and the token at s+1 carries loss
    (the draft of the block starting at s begins there). Each row draws up to nb distinct valid
    anchors, seeded by (seed, epoch, row index), sorted; missing ones are padding (s = 0, invalid).
    """
    B, N = rows.ids.shape
    starts = np.zeros((B, blocks_per_row), dtype=np.int64)
    valid = np.zeros((B, blocks_per_row), dtype=bool)
    ok = ((rows.doc[:, :-1] == rows.doc[:, 1:]) & rows.loss[:, 1:]).numpy()  # (B, N-1): anchor s is usable
    for b in range(B):
        candidates = np.flatnonzero(ok[b])
        epoch, r = rows.refs[b] if rows.refs else (0, b)
        rng = np.random.default_rng([seed, epoch, r, 3])
        n = min(blocks_per_row, len(candidates))
        starts[b, :n] = np.sort(rng.choice(candidates, n, replace=False))
        valid[b, :n] = True
    return torch.from_numpy(starts), torch.from_numpy(valid)


def step_block_size(sizes: list[int], seed: int, step: int) -> int:
    """The block size of a step, drawn from `sizes` by (seed, step): the same on every process."""
    return sizes[int(np.random.default_rng([seed, step, 4]).integers(len(sizes)))] if len(sizes) > 1 else sizes[0]


@dataclass
class Micro:
    """One micro-batch of the dual pass: rows, block size, anchors and the weights of their drafts."""

    rows: Rows
    block_size: int
    starts: torch.Tensor  # (B, nb)
    weights: torch.Tensor  # (B, nb, K-1) bool
    weight: float
    tokens: int


class DistillJob:
    """Only the diffusion view trains, by KL to the frozen AR view under the dual-pass mask."""

    stage = "distill"

    def __init__(self, model: Qwen3ForCausalLM, params, stream: RowStream, pad_id: int, tokenizer_dir, identity: dict, *,
                 train_sizes: list[int], blocks_per_row: int | None, loss: str, position_decay: float, seed: int,
                 prompts: list[list[int]], eval_new_tokens: int, use_autocast: bool):
        self.model, self.params, self.stream, self.pad_id = model, params, stream, pad_id
        self.tokenizer_dir, self.identity = tokenizer_dir, identity
        self.train_sizes, self.blocks_per_row, self.loss_kind = train_sizes, blocks_per_row, loss
        self.position_decay, self.seed, self.prompts, self.eval_new_tokens = position_decay, seed, prompts, eval_new_tokens
        self.use_autocast = use_autocast
        self.device = model.device

    def autocast(self):
        """bf16 autocast on CUDA, or when the frozen base is stored in bf16 (the trained weights stay fp32)."""
        if self.use_autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def micro_batch(self, refs, step: int) -> Micro:
        k = step_block_size(self.train_sizes, self.seed, step)
        rows = rows_of(self.stream, refs, self.pad_id)
        starts, valid = sample_anchors(rows, blocks_for(self.stream.seq_len, k, self.blocks_per_row), self.seed)
        weights = block_weights(starts, k, rows.loss, rows.doc, valid)  # (B, nb, K-1)
        return Micro(to_device(rows, self.device), k, starts.to(self.device), weights.to(self.device),
                     distill_weight(weights, k, self.position_decay), int(rows.real.sum()))

    def loss_sum(self, forward, micro: Micro) -> torch.Tensor:
        rows, k = micro.rows, micro.block_size
        packed = not rows.single_document
        teacher, student, _ = dual_forward(self.model, rows.ids, k, starts=micro.starts, doc=rows.doc if packed else None,
                                           pos=rows.pos if packed else None, forward=forward)
        return distill_loss(teacher, student, rows.ids, micro.starts, k, self.loss_kind, self.position_decay,
                            weights=micro.weights, normalizer=1.0)

    def step_record(self, step: int) -> dict:
        return {"block_size": step_block_size(self.train_sizes, self.seed, step)}

    @torch.no_grad()
    def evaluate(self, dist: Dist, initial: bool) -> dict:
        """Held-out greedy acceptance length at the checkpoint's block size (and each other training size)."""
        if not self.prompts:
            return {}
        self.model.eval()
        K = self.model.config.block_size
        mine = self.prompts[dist.rank :: dist.world]
        sizes = [K] if initial else [b for b in self.train_sizes if b != K] + [K]
        out = {}
        for b in sizes:
            with self.autocast():
                total, count = acceptance_sums(self.model, mine, self.eval_new_tokens, b) if mine else (0.0, 0)
            total, count = dist.sum(total, count)
            tau = round(total / count, 3) if count else float("nan")
            if b == K:
                out["heldout_acceptance"] = tau
            else:
                out.setdefault("heldout_acceptance_by_block_size", {})[str(b)] = tau
        return out

    def describe(self, metrics: dict) -> str:
        return f"held-out acceptance length {metrics['heldout_acceptance']:.2f} (block size {self.model.config.block_size})"


def train_token_stream(pools) -> np.ndarray:
    """Every training document's tokens back to back (the prompts of --self-distill are windows of it)."""
    return np.concatenate([np.asarray(p.docs.stream()) for p in pools])


__all__ = ["freeze_base", "copy_diffusion_view", "choose_mask_token", "largest_token_id", "DistillJob", "blocks_for", "sample_anchors",
           "step_block_size", "train_token_stream", "MASK_TOKEN"]
