"""The one place where the benchmarks call a decoder: each "method" is a function prompt ids -> Run.

A method is one way to decode (our AR, Orthrus at some block size, Transformers `generate`;
greedy or sampled). `python -m orthrus_min.bench orthrus`, `all`, `ar` and `forward` build
their methods here and time them with `measure.py`; nothing else imports the decoders.

Adding a method: write a constructor like `ar_method` that returns fn(prompt_ids) -> Run (a
batched method, for a batch-size sweep, would take the batch's prompts and return one Run per row).
`--compile/--compile-mode` reach the decoders only through `compile_mode_of` and
`prepare_compiled`: today that compiles the model's forward once; when the decoders take
`compile_mode=`, `prepare_compiled` goes away and `Decoding.compile_mode` is passed in the calls below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Run:
    """One decode: the new tokens and how it went."""

    tokens: list[int]
    seconds: float = 0.0  # end to end, device synchronized (set by measure.py)
    ttft_s: float = 0.0  # time to first token: the prefill plus the first token's pick
    decode_s: float | None = None  # after the first token, as the decoder timed it; None for Transformers
    num_forwards: int | None = None  # after the prefill; None for Transformers
    accepted: list[int] = field(default_factory=list)  # Orthrus: tokens committed per iteration
    peak_mb: float = 0.0  # set by measure.py


Method = Callable[[list[int]], Run]


@dataclass(frozen=True)
class Decoding:
    """What every method of one run shares."""

    max_new_tokens: int
    stop_at_eos: bool = False  # False: EOS is ignored, so every run decodes max_new_tokens tokens
    temperature: float = 0.7  # of the sampled methods
    seed: int = 0  # of the sampled methods: the same every run, so every repeat makes the same tokens
    compile_mode: str | None = None  # None: eager; else a torch.compile mode (see prepare_compiled)


def compile_mode_of(args, transformers: bool = False) -> str | None:
    """The torch.compile mode (--compile-mode) the flags ask for, or None for eager: for our model with --compile;
    for the Transformers reference (transformers=True) only with --compile-transformers."""
    wanted = getattr(args, "compile_transformers" if transformers else "compile", False)
    return args.compile_mode if wanted else None


def prepare_compiled(model, compile_mode: str | None) -> None:
    """Applies a compile mode to a model (ours or Transformers'): torch.compile of its forward, shapes
    dynamic (they change every step). None: left eager. Compile time is paid in the warm-up runs."""
    if compile_mode is not None:
        model.forward = torch.compile(model.forward, dynamic=True, mode=compile_mode)


def _sampling(d: Decoding, sampled: bool):
    from ..sampling import SamplingParams

    return SamplingParams(temperature=d.temperature, seed=d.seed) if sampled else SamplingParams()


def _eos(model, d: Decoding) -> list[int] | None:
    """The ids that end a run: the config's when stopping at EOS, else none (Transformers: eos_token_id=None)."""
    return (list(model.config.eos_token_id) or None) if d.stop_at_eos else None


def _run(g) -> Run:
    """A Run from an orthrus_min `Generation` (seconds and peak memory are filled in by the caller)."""
    return Run(g.tokens, ttft_s=g.prefill_s, decode_s=g.decode_s, num_forwards=g.num_forwards, accepted=list(g.accepted))


def ar_method(model, d: Decoding, sampled: bool = False) -> Method:
    """Our AR decoder (`generate_ar`), greedy or at d.temperature."""
    from ..ar import generate_ar

    sampling = _sampling(d, sampled)
    return lambda ids: _run(generate_ar(model, ids, d.max_new_tokens, sampling, ignore_eos=not d.stop_at_eos))


def orthrus_method(model, d: Decoding, block_size: int, sampled: bool = False) -> Method:
    """Our Orthrus decoder (`generate_orthrus`) with blocks of `block_size`, greedy or at d.temperature."""
    from ..consensus import generate_orthrus

    sampling = _sampling(d, sampled)
    return lambda ids: _run(generate_orthrus(model, ids, d.max_new_tokens, sampling, block_size=block_size,
                                             ignore_eos=not d.stop_at_eos))


def transformers_method(ref, model, d: Decoding) -> Method:
    """Transformers `generate` (greedy) on the reference model; `model` (ours) gives the EOS ids."""
    from .reference import hf_generate

    eos = _eos(model, d)

    def run(ids: list[int]) -> Run:
        tokens, ttft = hf_generate(ref, ids, d.max_new_tokens, eos)
        return Run(tokens, ttft_s=ttft)

    return run
