"""The decode engine shared by AR and Orthrus decoding: a batch of prompts, one loop, one host sync per step.

Both decoders are a *step* — one fixed-shape iteration over every row of the batch, written with
tensors only — driven by `decode`, the one loop:

    prompts -> Batch (checked)  -> one cache, (B, capacity)
            -> prefill          one forward over the right-padded prompts; each row keeps its own length
            -> step, step, …    each returns every row's run of new tokens; the host reads them (the one
                                sync per step), streams them, and stops when every row is done

Per row: its own cache length, positions, token budget and EOS. A row that has finished keeps
computing with the others (its results are thrown away and its cache length stays put) rather
than being removed from the batch: removing it would change the batch shape, and fixed shapes
are what let a compiled step run without recompiling (and, on a GPU, as one CUDA graph). With
batches of a few rows the wasted work is small; a serving engine with many requests would refill
the finished row with a new request instead.

A `Step` declares what the loop needs to know about a decoder (forwards per step, extra cache
slots, whether to record acceptance, an optional host-side check). A `Compiler` is the one place
that calls torch.compile: each step is captured whole (fullgraph), once per (batch, block,
capacity) shape — capacities are rounded up to a multiple of CAPACITY_BUCKET so that prompts of
similar length share one compiled graph — and it owns the static buffers CUDA graphs need, and the one block
size that compiled Orthrus decoding keeps under `block_size="auto"` (remembered from run to run).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .batch import Batch, Generation, eos_ids
from .cachedir import key, remember, remembered
from .errors import OrthrusError
from .kvcache import KVCache
from .model import Qwen3ForCausalLM
from .sampling import SamplingParams, pick_tokens
from .stepcache import SavedSteps, can_save

TokenCallback = Callable[[int, list[int]], None]  # on_tokens(row, new tokens of that row)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CAPACITY_BUCKET = 256  # compiled decoding: cache capacities are multiples of this (fewer shapes, fewer compiles)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes whose inductor options turn on CUDA graphs
BLOCK_SIZES = "block_sizes.json"  # the cache folder's table of the K compiled decoding keeps (cachedir.py)


def eos_tensor(model: Qwen3ForCausalLM, eos_token_id: int | Sequence[int] | None, ignore_eos: bool) -> torch.Tensor:
    """(E,) `eos_ids` on the model's device."""
    return torch.tensor(eos_ids(model.config, eos_token_id, ignore_eos), dtype=torch.long, device=model.device)


# --------------------------------------------------------------------------- state on the device


@dataclass
class DecodeState:
    """Every row's decoding state, as tensors on the model's device (the cache holds the lengths)."""

    x_p: torch.Tensor  # (B,) the newest token: emitted, not yet in the cache (it is at position L_b)
    remaining: torch.Tensor  # (B,) tokens the row may still emit
    done: torch.Tensor  # (B,) bool: the row emitted EOS or used its budget
    seeds: torch.Tensor  # (B,) the seed of each row's random stream


def commit(cache: KVCache, state: DecodeState, p: torch.Tensor, run: torch.Tensor, run_len: torch.Tensor,
           eos: torch.Tensor) -> torch.Tensor:
    """Keeps each row's run of new tokens, cut at its first EOS and at its budget; returns the kept lengths (B,).

    p (B,): each row's cache length before the step; run (B, R): new tokens, of which the first
    run_len (B,) are valid. A finished row keeps nothing. The cache is rolled back to p + kept
    (the last kept token is the new x_p, outside the cache), and the state is updated.
    """
    R = run.shape[1]
    index = torch.arange(R, device=run.device)  # (R,)
    is_eos = (run[:, :, None] == eos).any(-1) & (index < run_len[:, None])  # (B, R)
    upto_eos = torch.where(is_eos.any(-1), is_eos.long().argmax(-1) + 1, run_len)  # (B,): through the first EOS
    kept = torch.minimum(upto_eos, state.remaining).masked_fill(state.done, 0)  # (B,)
    cache.rollback(p + kept)
    last = run.gather(1, (kept - 1).clamp_min(0)[:, None])[:, 0]  # (B,): the run's last kept token
    state.x_p.copy_(torch.where(kept > 0, last, state.x_p))
    state.remaining.sub_(kept)
    state.done.logical_or_((kept > 0) & (last[:, None] == eos).any(-1) | (state.remaining == 0))
    return kept


# --------------------------------------------------------------------------- steps, eager or compiled


@dataclass(frozen=True)
class Step:
    """A decoder as the loop sees it: one fixed-shape iteration, and what the loop must know about it.

    fn(model, cache, state, sampling, eos, **args) -> (run (B, R), kept (B,), *flags): one iteration
    for the whole batch, on the device, ending with `commit`: the first kept[b] tokens of run[b]
    are row b's new tokens. Any further (B,) outputs are copied to the host with them, for `check`.
    """

    fn: Callable
    args: dict = field(default_factory=dict)  # the step's own settings (Orthrus: block_size)
    forwards: int = 1  # model forwards per step after the prefill (AR 1, Orthrus 2)
    extra_slots: int = 0  # cache slots needed beyond prompt + new tokens (Orthrus: one block)
    record_runs: bool = False  # note each step's kept length per row (Orthrus's acceptance lengths)
    check: Callable | None = None  # check(lengths, rows, batch, out) on the host after every step
    tuner: object | None = None  # chooses args per step: tuner.next_args() -> dict; tuner.observe_step(args, kept, seconds)


class Compiler:
    """How steps run: eagerly (mode None) or compiled whole with torch.compile `mode`.

    It owns what compiled decoding keeps between calls — the compiled steps and, under CUDA
    graphs, the cache and state buffers of each shape — so a caller that decodes many times
    (`LLM`, a benchmark) holds one Compiler and reuses both; nothing is kept at module level.
    """

    MAX_BUFFERS = 4  # CUDA graphs: shapes whose buffers are kept

    def __init__(self, mode: str | None = None, notify: Callable[[str], None] | None = None, remember: bool = True):
        if mode is not None and mode not in COMPILE_MODES:
            raise OrthrusError(f"compile mode {mode!r} is unknown; choose one of {COMPILE_MODES}")
        self.mode = mode
        self.notify = notify  # told, in one line, before each new shape compiles or loads (the CLI prints it)
        self.remember = remember  # keep the block size of `block_size` in the cache folder, run to run (a benchmark: no)
        self.cuda_graphs = mode in CUDA_GRAPH_MODES  # (named here: asking inductor would import it, seconds)
        self._compiled: dict[Callable, Callable] = {}
        self._buffers: dict[tuple, tuple[KVCache, DecodeState]] = {}
        self._shapes: set[tuple] = set()
        self._block_sizes: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Compiler({self.mode!r})"

    def compile(self, fn: Callable, device: torch.device | None = None) -> Callable:
        """`fn` compiled whole (fullgraph, static shapes); `fn` itself when eager.

        A decode step on a device where `saves_steps` holds is a `stepcache.SavedSteps`: each shape compiled
        ahead of time and saved, so that the next run loads it in milliseconds instead of tracing it again.
        """
        if self.mode is None:
            return fn
        if fn not in self._compiled:
            if device is not None and self.saves_steps(device):
                self._compiled[fn] = SavedSteps(fn, self.mode, self.notify, fallback=lambda: self.torch_compile(fn))
            else:
                self._compiled[fn] = self.torch_compile(fn)
        return self._compiled[fn]

    def torch_compile(self, fn: Callable) -> Callable:
        """`fn` compiled with torch.compile in this Compiler's mode (whole, static shapes), on its first call."""
        compiled_fn = torch.compile(fn, fullgraph=True, dynamic=False, mode=self.mode)

        # Both settings are read at compile time, which happens inside the call. `freezing` folds the frozen
        # weights into the graph as constants, so that inductor can pre-pack them and tune its own matmul
        # kernels: worth it for max-autotune, but a frozen graph bypasses inductor's on-disk cache, so every
        # run would compile again (measured: a second run's first call 27 s frozen, 6 s not; steady speed
        # within 10%; on a CPU, the frozen steps of a small model are saved whole instead, stepcache.py).
        # Every (model, batch, block, capacity, greedy-or-sampled) combination is its own graph: allow
        # many more than dynamo's default of 8 per function, past which it would silently run the step
        # eagerly.
        freeze = self.mode.startswith("max-autotune")

        @functools.wraps(fn)
        def run(*args, **kwargs):
            with torch._inductor.config.patch(freezing=freeze), torch._dynamo.config.patch(recompile_limit=256):
                return compiled_fn(*args, **kwargs)

        return run

    def saves_steps(self, device: torch.device) -> bool:
        """Whether this mode's decode steps on `device` are saved whole and loaded by later runs (`stepcache.py`)."""
        return can_save(self.mode, device)

    def announce(self, fn: Callable, batch_size: int, args: dict, capacity: int, device: torch.device) -> None:
        """Tells `notify`, once per shape, that a step is about to be compiled for it (a compile takes seconds to minutes).
        A saved step (`saves_steps`) says itself whether it compiles or loads."""
        if self.mode is None or self.notify is None or self.saves_steps(device):
            return
        shape = (fn, batch_size, capacity, *sorted(args.items()))
        if shape in self._shapes:
            return
        self._shapes.add(shape)
        block = f", block size {args['block_size']}" if "block_size" in args else ""
        cache = "max-autotune compiles anew every run" if self.mode.startswith("max-autotune") else "later runs reuse the compile cache"
        self.notify(f"compiling {fn.__name__} ({self.mode}) for batch {batch_size}{block}, capacity {capacity}: the first "
                    f"call of each shape takes a while; {cache}")

    def block_size(self, model: Qwen3ForCausalLM, batch_size: int, choose: Callable[[], int]) -> int:
        """The one block size that compiled Orthrus decoding with `block_size="auto"` uses for this model and batch size.

        Each new K is a graph to compile (about a minute on a CPU, cold), so compiled decoding keeps one: `choose()`
        the first time, then the same — for this Compiler's life and, through a table in the cache folder
        (`cachedir.py`), for the next run of the same command, which so finds its step compiled already. After a
        run, `remember_block_size` may leave a K that the acceptance seen meanwhile says is faster for the next
        Compiler (the next process): within one Compiler's life K stays, so a benchmark never compiles mid-run.
        """
        key = self._block_size_key(model, batch_size)
        if key not in self._block_sizes:
            K = remembered(BLOCK_SIZES).get(key) if self.remember else None
            if type(K) is not int or not 1 <= K <= model.config.block_size:  # none yet, or not one this model allows
                K = choose()
                self.remember_block_size(model, batch_size, K)
            self._block_sizes[key] = K
        return self._block_sizes[key]

    def remember_block_size(self, model: Qwen3ForCausalLM, batch_size: int, K: int) -> None:
        """The block size that the next Compiler (the next run) uses for this model and batch size: K."""
        if self.remember:
            remember(BLOCK_SIZES, self._block_size_key(model, batch_size), K)

    def _block_size_key(self, model: Qwen3ForCausalLM, batch_size: int) -> str:
        c = model.config
        return key([vars(c), str(model.dtype), model.device.type, model.attn_backend, batch_size, self.mode])

    def capacity(self, batch: Batch, extra_slots: int, limit: int) -> int:
        """Slots per row: the longest prompt + budget, plus `extra_slots`; compiled, rounded up to a CAPACITY_BUCKET."""
        need = max(len(p) + n for p, n in zip(batch.prompts, batch.max_new_tokens)) + extra_slots
        if self.mode is None:
            return need
        return min(-(-need // CAPACITY_BUCKET) * CAPACITY_BUCKET, max(need, limit))

    def buffers(self, model: Qwen3ForCausalLM, batch_size: int, capacity: int) -> tuple[KVCache, DecodeState]:
        """The cache and the state tensors of one decode, all rows at length 0.

        A CUDA-graph step replays with the addresses it was captured with, so under such a mode the
        buffers of each shape are allocated once, marked as fixed addresses, and reused by every later
        call (a few shapes are kept). Otherwise they are allocated per call.
        """
        def allocate() -> tuple[KVCache, DecodeState]:
            zeros = lambda dtype: torch.zeros(batch_size, dtype=dtype, device=model.device)  # noqa: E731
            return (model.new_cache(capacity, batch_size),
                    DecodeState(zeros(torch.long), zeros(torch.long), zeros(torch.bool), zeros(torch.long)))

        if not self.cuda_graphs:
            return allocate()
        c = model.config
        key = (id(model), c.num_hidden_layers, c.num_key_value_heads, c.head_dim, model.dtype, str(model.device), batch_size, capacity)
        if key not in self._buffers:
            if len(self._buffers) >= self.MAX_BUFFERS:
                self._buffers.pop(next(iter(self._buffers)))
            cache, state = allocate()
            if not self.saves_steps(model.device):  # (a saved step, max-autotune on a CPU, never imports dynamo)
                for t in (*cache.k, *cache.v, cache.lengths, *vars(state).values()):
                    torch._dynamo.mark_static_address(t)
            self._buffers[key] = (cache, state)
        cache, state = self._buffers[key]
        cache.lengths.zero_()
        return cache, state


def compiler(compile_mode: str | Compiler | None) -> Compiler:
    """A Compiler for a mode name (a new one, for one call), or the caller's own Compiler as it is."""
    return compile_mode if isinstance(compile_mode, Compiler) else Compiler(compile_mode)


# --------------------------------------------------------------------------- the loop


def to_host(*tensors: torch.Tensor) -> list[list[int]]:
    """Rows of several (B, n_i) integer tensors, concatenated and copied to the host at once: one sync."""
    return torch.cat([t.long().view(t.shape[0], -1) for t in tensors], dim=1).tolist()


def prefill(model: Qwen3ForCausalLM, cache: KVCache, batch: Batch, sampling: SamplingParams,
            seeds: torch.Tensor) -> torch.Tensor:
    """Runs the right-padded prompts through the AR view; returns each row's first new token (B,).

    Each row keeps its own prompt in the cache (length P_b); the padding's entries lie past it, hidden.
    """
    device = model.device
    lengths = torch.tensor([len(p) for p in batch.prompts], device=device)  # (B,)
    width = max(len(p) for p in batch.prompts)
    ids = torch.tensor([p + [0] * (width - len(p)) for p in batch.prompts], device=device)  # (B, P_max), right-padded
    logits = model(ids, cache, logits_at=lengths - 1)  # (B, 1, V): at each row's last prompt token
    cache.rollback(lengths)
    return pick_tokens(logits, sampling, seeds, lengths[:, None])[:, 0]  # (B,): the tokens at positions P_b


def decode(model: Qwen3ForCausalLM, batch: Batch, step: Step, sampling: SamplingParams, eos: torch.Tensor, *,
           on_tokens: TokenCallback | None = None, seeds: Sequence[int] | None = None,
           compile_mode: str | Compiler | None = None) -> list[Generation]:
    """The loop: prefill, then one `step` after another until every row is done; one Generation per row.

    eos (E,): the ids that end a row. on_tokens(row, tokens) gets each row's new tokens as they come.
    seeds: one sampling seed per row (default: `sampling`'s). compile_mode: eager (None), a
    torch.compile mode, or a Compiler the caller holds (it keeps compiled steps and CUDA-graph buffers).
    """
    B, device = len(batch.prompts), model.device
    runner = compiler(compile_mode)
    if seeds is not None:
        seed_rows = torch.tensor(list(seeds), dtype=torch.long, device=device)
    elif sampling.greedy:
        seed_rows = torch.zeros(B, dtype=torch.long, device=device)  # unused: no random number is drawn (nor taken from torch's RNG)
    else:
        seed_rows = sampling.row_seeds(B, device)
    if seed_rows.shape != (B,):
        raise OrthrusError(f"seeds has {seed_rows.numel()} entries for {B} prompts")
    capacity = runner.capacity(batch, step.extra_slots, model.config.max_position_embeddings)
    cache, state = runner.buffers(model, B, capacity)
    step_fn = runner.compile(step.fn, device)

    t0 = time.perf_counter()
    first = prefill(model, cache, batch, sampling, seed_rows)  # (B,)
    budgets = torch.tensor(batch.max_new_tokens, device=device)  # (B,)
    state.x_p.copy_(first)
    state.remaining.copy_(budgets - 1)
    state.done.copy_((first[:, None] == eos).any(-1) | (budgets == 1))
    state.seeds.copy_(seed_rows)
    host = to_host(first[:, None], state.done[:, None])
    t1 = time.perf_counter()
    out = [Generation([row[0]], "length", prefill_s=t1 - t0) for row in host]
    done = [bool(row[1]) for row in host]
    if on_tokens:
        for b in range(B):
            on_tokens(b, out[b].tokens[:])
    while not all(done):
        args = step.args if step.tuner is None else {**step.args, **step.tuner.next_args()}
        runner.announce(step.fn, B, args, capacity, device)
        t_step = time.perf_counter()
        run, kept, *flags = step_fn(model, cache, state, sampling, eos, **args)
        rows = to_host(run, kept[:, None], state.done[:, None], *flags)  # the one host sync of the step
        R = run.shape[1]
        if step.tuner is not None:  # what the step showed, from the rows that go on decoding (not cut by EOS or budget)
            going_on = [row[R] for b, row in enumerate(rows) if not done[b] and not row[R + 1]]
            step.tuner.observe_step(args, going_on, time.perf_counter() - t_step)
        for b, row in enumerate(rows):
            if done[b]:
                continue
            new = row[: row[R]]
            out[b].tokens += new
            out[b].num_forwards += step.forwards
            if step.record_runs:
                out[b].accepted.append(len(new))
            if on_tokens:
                on_tokens(b, new)
            if row[R + 1]:
                done[b] = True
                out[b].decode_s = time.perf_counter() - t1
        if step.check is not None:
            step.check(cache.lengths.tolist(), [row[R + 2:] for row in rows], batch, out)
    stops = set(eos.tolist())
    for g in out:
        g.finish_reason = "eos" if g.tokens[-1] in stops else "length"
    return out


__all__ = ["eos_tensor", "DecodeState", "commit", "Step", "Compiler", "decode", "COMPILE_MODES", "TokenCallback"]
