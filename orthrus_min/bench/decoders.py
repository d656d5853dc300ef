"""The one place where the benchmarks call a decoder: each "method" is a function prompt ids -> Run.

A method is one way to decode (our AR, Orthrus at some block size, Transformers `generate`;
greedy or sampled). `python -m orthrus_min.bench orthrus`, `all`, `ar` and `forward` build
their methods here and time them with `measure.py`; nothing else imports the decoders.

Adding a method: write a constructor like `ar_method` that returns fn(prompt_ids) -> Run; a
batched method (`batch_method`) takes a batch's prompts and returns one Run for the whole batch
(its rows in `Run.rows`). `--compile/--compile-mode` reach our decoders as their `compile_mode`
argument (the engine compiles each fixed-shape step); `prepare_compiled` compiles the
Transformers reference's forward, only with --compile-transformers.
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
    rows: list[list[int]] | None = None  # a batched method: each row's tokens (`tokens` holds them all, row after row)


Method = Callable[[list[int]], Run]


@dataclass(frozen=True)
class Decoding:
    """What every method of one run shares."""

    max_new_tokens: int
    stop_at_eos: bool = False  # False: EOS is ignored, so every run decodes max_new_tokens tokens
    temperature: float = 0.7  # of the sampled methods
    seed: int = 0  # of the sampled methods: the same every run, so every repeat makes the same tokens
    compile_mode: str | None = None  # --compile: the torch.compile mode of the compiled methods; None without it


def compile_mode_of(args, transformers: bool = False) -> str | None:
    """The torch.compile mode (--compile-mode) the flags ask for, or None for eager: for our model with --compile;
    for the Transformers reference (transformers=True) only with --compile-transformers."""
    wanted = getattr(args, "compile_transformers" if transformers else "compile", False)
    return args.compile_mode if wanted else None


def prepare_compiled(model, compile_mode: str | None) -> None:
    """Compiles the Transformers reference's forward (torch.compile, shapes dynamic: they change every step).
    None: left eager. Compile time is paid in the warm-up runs."""
    if compile_mode is not None:
        model.forward = torch.compile(model.forward, dynamic=True, mode=compile_mode)


def _sampling(d: Decoding, sampled: bool):
    from ..sampling import SamplingParams

    return SamplingParams(temperature=d.temperature, seed=d.seed) if sampled else SamplingParams()


def _eos(model, d: Decoding) -> list[int] | None:
    """The ids that end a run: the config's when stopping at EOS, else none (Transformers: eos_token_id=None)."""
    return (list(model.config.eos_token_id) or None) if d.stop_at_eos else None


def _block_size(model, block_size):
    """What a method passes as block_size: K as it is; for "auto", a function that gives a new BlockSizeChooser per run,
    starting from the cost estimates the method's earlier runs left (measured once, on the first run)."""
    if block_size != "auto":
        return lambda batch_size: block_size
    from ..blocksize import BlockSizeChooser, measure_step_costs
    from ..config import auto_candidates

    candidates, costs = auto_candidates(model.config), {}

    def chooser(batch_size: int):
        if batch_size not in costs:
            costs[batch_size] = measure_step_costs(model, candidates, batch_size)
        made = BlockSizeChooser(candidates, costs[batch_size])
        costs[batch_size] = made.costs  # the same dict: what this run learns, the next run starts from
        return made

    return chooser


def _compiler(d: Decoding, compiled: bool):
    """One Compiler per method, kept by it across runs (compiled steps, CUDA-graph buffers); None when eager. Its block
    size under "auto" is chosen by this benchmark's own measurements, not remembered from earlier runs of anything."""
    from ..engine import Compiler

    return Compiler(d.compile_mode, remember=False) if compiled else None


def _run(g) -> Run:
    """A Run from an orthrus_min `Generation` (seconds and peak memory are filled in by the caller)."""
    return Run(g.tokens, ttft_s=g.prefill_s, decode_s=g.decode_s, num_forwards=g.num_forwards, accepted=list(g.accepted))


def ar_method(model, d: Decoding, sampled: bool = False, compiled: bool = False) -> Method:
    """Our AR decoder (`generate_ar`), greedy or at d.temperature; compiled: its step compiled with d.compile_mode."""
    from ..ar import generate_ar

    sampling, mode = _sampling(d, sampled), _compiler(d, compiled)
    return lambda ids: _run(generate_ar(model, ids, d.max_new_tokens, sampling, ignore_eos=not d.stop_at_eos, compile_mode=mode))


def orthrus_method(model, d: Decoding, block_size: int | str, sampled: bool = False, compiled: bool = False) -> Method:
    """Our Orthrus decoder (`generate_orthrus`) with blocks of `block_size`, greedy or at d.temperature; compiled: its
    step compiled with d.compile_mode."""
    from ..consensus import generate_orthrus

    sampling, mode, K = _sampling(d, sampled), _compiler(d, compiled), _block_size(model, block_size)
    return lambda ids: _run(generate_orthrus(model, ids, d.max_new_tokens, sampling, block_size=K(1),
                                             ignore_eos=not d.stop_at_eos, compile_mode=mode))


def batch_method(model, d: Decoding, block_size: int | None, compiled: bool = False) -> Callable[[list[list[int]]], Run]:
    """Our AR (block_size None) or Orthrus decoder, greedy, on a whole batch of prompts at once -> one Run:
    every row's tokens (row after row), the batch's forwards (its longest row's), all rows' acceptance lengths."""
    from ..ar import generate_ar
    from ..consensus import generate_orthrus

    mode, K = _compiler(d, compiled), _block_size(model, block_size)

    def run(batch: list[list[int]]) -> Run:
        if block_size is None:
            out = generate_ar(model, batch, d.max_new_tokens, ignore_eos=not d.stop_at_eos, compile_mode=mode)
        else:
            out = generate_orthrus(model, batch, d.max_new_tokens, block_size=K(len(batch)), ignore_eos=not d.stop_at_eos,
                                   compile_mode=mode)
        return Run([t for g in out for t in g.tokens], ttft_s=out[0].prefill_s, num_forwards=max(g.num_forwards for g in out),
                   accepted=[n for g in out for n in g.accepted], rows=[g.tokens for g in out])

    return run


def mlx_method(folder, d: Decoding, block_size: int | None) -> Method:
    """The MLX backend's AR (block_size None) or Orthrus decoder, greedy, fp32 (`orthrus_min.mlx`)."""
    from .. import mlx

    model = mlx.load_model(folder, dtype="float32")
    if block_size is None:
        return lambda ids: _run(mlx.generate_ar(model, ids, d.max_new_tokens, ignore_eos=not d.stop_at_eos))
    return lambda ids: _run(mlx.generate_orthrus(model, ids, d.max_new_tokens, block_size=block_size,
                                                 ignore_eos=not d.stop_at_eos))


def transformers_method(ref, model, d: Decoding) -> Method:
    """Transformers `generate` (greedy) on the reference model; `model` (ours) gives the EOS ids."""
    from .reference import hf_generate

    eos = _eos(model, d)

    def run(ids: list[int]) -> Run:
        tokens, ttft = hf_generate(ref, ids, d.max_new_tokens, eos)
        return Run(tokens, ttft_s=ttft)

    return run
