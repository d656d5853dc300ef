"""What goes into a decoder and what comes out: a checked `Batch` of prompts, and one `Generation` per prompt.

Every decoder — the torch engine's AR and Orthrus steps, and the MLX backend's — takes its prompts
through `make_batch` (so a bad request reads the same whichever decodes it) and returns
`Generation`s. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import Qwen3Config
from .errors import OrthrusError
from .request import is_array


@dataclass
class Generation:
    """What a decoder produced for one prompt: new token ids (prompt excluded) and how it got there."""

    tokens: list[int]
    finish_reason: str  # "eos" or "length"
    num_forwards: int = 0  # model forwards after the prefill while this row was decoding (AR: 1 per step; Orthrus: 2)
    prefill_s: float = 0.0  # time to first token
    decode_s: float = 0.0  # everything after the first token, until this row finished
    accepted: list[int] = field(default_factory=list)  # Orthrus: tokens committed per iteration (τ samples)
    block_sizes: list[int] = field(default_factory=list)  # Orthrus: the block size K of each iteration

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens over total wall-clock time (prefill included)."""
        total = self.prefill_s + self.decode_s
        return len(self.tokens) / total if total > 0 else float("inf")

    @property
    def tokens_per_forward(self) -> float:
        """Tokens committed per model forward after the prefill (AR: about 1)."""
        return (len(self.tokens) - 1) / self.num_forwards if self.num_forwards else 0.0


@dataclass
class Batch:
    """Checked requests: one prompt and token budget per row."""

    prompts: list[list[int]]
    max_new_tokens: list[int]
    single: bool  # the caller passed one prompt (and gets one Generation back)


def is_single_prompt(prompts) -> bool:
    """True for one prompt (a sequence of ints or a 1-D tensor / array), False for a batch of them."""
    if is_array(prompts):
        return prompts.ndim == 1
    first = prompts[0] if len(prompts) else None
    return first is None or isinstance(first, str) or not (isinstance(first, Sequence) or is_array(first) and first.ndim > 0)


def make_batch(config: Qwen3Config, prompts, max_new_tokens: int | Sequence[int], extra_slots: int = 0) -> Batch:
    """Checks a prompt (list of ids) or a batch of them, with one token budget or one per row, for a model of `config`.

    extra_slots: cache slots the decoder needs beyond prompt + new tokens (Orthrus: one block).
    Raises a one-line OrthrusError naming the row for an empty prompt or batch, a bad token id,
    a budget < 1, or a request beyond the model's context.
    """
    single = is_single_prompt(prompts)
    rows = [prompts] if single else list(prompts)
    if not rows:
        raise OrthrusError("the batch is empty: give at least one prompt")
    budgets = [max_new_tokens] * len(rows) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(rows):
        raise OrthrusError(f"max_new_tokens has {len(budgets)} entries for {len(rows)} prompts")
    V, limit = config.vocab_size, config.max_position_embeddings
    checked = []
    for b, (prompt, budget) in enumerate(zip(rows, budgets)):
        where = "" if single else f"prompt {b}: "
        ids = prompt.tolist() if is_array(prompt) else list(prompt)
        if not ids:
            raise OrthrusError(f"{where}the prompt is empty: give at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise OrthrusError(f"{where}token ids must be ints, got {type(next(t for t in ids if not isinstance(t, int) or isinstance(t, bool))).__name__}")
        bad = next((t for t in ids if not 0 <= t < V), None)
        if bad is not None:
            raise OrthrusError(f"{where}token id {bad} is outside the model's vocabulary (0 … {V - 1})")
        if not isinstance(budget, int) or budget < 1:
            raise OrthrusError(f"{where}max_new_tokens must be an int >= 1, got {budget!r}")
        if len(ids) + budget + extra_slots > limit:
            raise OrthrusError(f"{where}prompt ({len(ids)} tokens) + max_new_tokens ({budget})"
                               f"{f' + one block ({extra_slots})' if extra_slots else ''} exceeds the model's context of {limit} tokens")
        checked.append(ids)
    return Batch(checked, budgets, single)


def eos_ids(config: Qwen3Config, eos_token_id: int | Sequence[int] | None, ignore_eos: bool) -> list[int]:
    """The ids that end a row: the argument if given, else the config's `eos_token_id`; none with ignore_eos."""
    if ignore_eos:
        return []
    if eos_token_id is None:
        return list(config.eos_token_id)
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def result(batch: Batch, generations: list[Generation]) -> Generation | list[Generation]:
    """One Generation for a single prompt, the list for a batch."""
    return generations[0] if batch.single else generations


__all__ = ["Generation", "Batch", "make_batch", "is_single_prompt", "eos_ids", "result"]
