"""The Python front door: load a checkpoint, generate text.

    from orthrus_min import load
    llm = load()                                   # the shipped model; or load("chiennv/Orthrus-Qwen3-1.7B")
    out = llm.generate("class Stack:", max_new_tokens=64)
    print(out.text, out.acceptance_mean, out.tokens_per_second)

`LLM` holds the model, its tokenizer and the checkpoint's generation defaults; it turns text (or
token ids) into a batch for the engine and the engine's `Generation`s back into `Completion`s
with text. The command line (`python -m orthrus_min.generate`) is built on it.

Sampling settings resolve in this order: the arguments of the call, then the checkpoint's
`generation_config.json` (Qwen3 checkpoints sample with temperature 0.6, top-k 20, top-p 0.95),
then greedy decoding. Greedy Orthrus output is exactly the AR output; sampled output has the
AR distribution.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import generation_defaults
from .errors import OrthrusError, check_bool, check_int, check_text, is_int
from .request import MODES, check_messages, flat_token_ids, is_array, per_prompt, prompt_rows
from .sampling import SamplingParams, check_seed

BACKENDS = ("torch", "mlx")


@dataclass
class Completion:
    """One generated continuation: its text and token ids, and how the decoder got there."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "eos" or "length"
    mode: str  # "orthrus" or "ar"
    sampling: SamplingParams
    seconds: float  # wall clock, prefill included
    ttft_s: float  # time to the first token: the prefill and its pick
    num_forwards: int  # model forwards after the prefill
    acceptance: list[int] = field(default_factory=list)  # Orthrus: tokens committed per iteration
    block_sizes: list[int] = field(default_factory=list)  # Orthrus: the block size K of each iteration

    def __str__(self) -> str:
        return self.text

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def acceptance_mean(self) -> float | None:
        """τ, the paper's acceptance length: tokens committed per draft-verify iteration (None for AR)."""
        return sum(self.acceptance) / len(self.acceptance) if self.acceptance else None

    @property
    def tokens_per_forward(self) -> float:
        return (len(self.token_ids) - 1) / self.num_forwards if self.num_forwards else 0.0


class LLM:
    """A loaded checkpoint, ready to generate: `generate`, `stream`, `chat`, `encode`, `decode`."""

    def __init__(self, model, tokenizer, folder: Path, backend: str = "torch", compiler=None):
        self.model, self.tokenizer, self.folder, self.backend = model, tokenizer, folder, backend
        self.compiler = compiler  # torch: an engine.Compiler, kept across calls (compiled steps, CUDA-graph buffers)
        self.step_costs: dict[int, dict[int, float]] = {}  # block_size="auto": seconds per step at each K, per batch size
        self.config = model.config
        self.defaults = generation_defaults(folder)
        eos = set(self.config.eos_token_id) | set(self.defaults.get("eos_token_id", []))
        self.eos_token_id = sorted(eos)

    def __repr__(self) -> str:
        c = self.config
        view = f"diffusion view, block_size {c.block_size}" if c.has_diffusion_view else "AR only"
        return f"LLM({self.folder.name!r}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {view}; {self.backend})"

    # ------------------------------------------------------------------ text <-> tokens

    def encode(self, text: str, what: str = "the prompt") -> list[int]:
        """Token ids of `text` (a str of valid Unicode: a lone surrogate such as "\\udcff" is refused)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self.tokenizer.encode(check_text(text, what))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of token ids (special tokens left out): a list of ints, or a 1-D tensor or array of them."""
        ids = flat_token_ids(token_ids, "decode's token ids", self.config.vocab_size, allow_empty=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict], enable_thinking: bool | None = None) -> str:
        """The prompt text for a conversation, rendered with the checkpoint's chat template."""
        check_messages(messages)
        if enable_thinking is not None:
            check_bool(enable_thinking, "enable_thinking")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=enable_thinking)

    def prompt_ids(self, prompt) -> tuple[list[list[int]], bool]:
        """(token ids per prompt, single?) for a str, a list of ids, a list of those (a batch), or a 1-D/2-D tensor;
        anything else (bytes, deeper nesting, floats) is a one-line error (orthrus_min/request.py)."""
        return prompt_rows(prompt, self.encode, self.config.vocab_size)

    # ------------------------------------------------------------------ settings

    def sampling(self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> SamplingParams:
        """SamplingParams from the arguments, else the checkpoint's generation_config.json, else greedy."""
        values = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        for key, default in (("temperature", 0.0), ("top_k", 0), ("top_p", 1.0)):
            if values[key] is None:
                values[key] = self.defaults.get(key, default)
        return SamplingParams(values["temperature"], values["top_k"], values["top_p"], seed)  # checks types and ranges

    def mode(self, mode: str | None) -> str:
        """The decoding mode: `mode` if given, else orthrus when the checkpoint has a diffusion view, else ar."""
        if mode is None:
            return "orthrus" if self.config.has_diffusion_view else "ar"
        if mode not in MODES:
            raise OrthrusError(f"mode {mode!r} is unknown; choose one of {MODES}")
        return mode

    def check_request(self, prompt, max_new_tokens, mode, block_size, temperature, top_k, top_p, seed, seeds, ignore_eos,
                check, on_text, on_tokens) -> tuple:
        """Every argument of `generate` checked and normalised, before any work:
        (rows of token ids, single prompt?, budgets, mode, sampling, seeds or None, block_size)."""
        rows, single = self.prompt_ids(prompt)
        budgets = per_prompt(max_new_tokens, "max_new_tokens", len(rows), lambda v, name: check_int(v, name, 1))
        mode = self.mode(mode)
        sampling = self.sampling(temperature, top_k, top_p, seed)
        if seeds is not None:
            if seed is not None:
                raise OrthrusError("give seed (every prompt's) or seeds (one per prompt), not both")
            if not isinstance(seeds, (list, tuple)) and not is_array(seeds):
                raise TypeError(f"seeds must be a list of ints, one per prompt, got {type(seeds).__name__}")
            seeds = per_prompt(seeds, "seeds", len(rows), check_seed)
        if is_int(block_size):
            block_size = int(block_size)  # its range (and any other value) is checked by resolve_block_size
        check_bool(ignore_eos, "ignore_eos")
        check_bool(check, "check")
        if on_text is not None and not callable(on_text):
            raise TypeError(f"on_text must be a function on_text(row, text), got {type(on_text).__name__}")
        if on_tokens is not None and not callable(on_tokens):
            raise TypeError(f"on_tokens must be a function on_tokens(row, token_ids), got {type(on_tokens).__name__}")
        if mode == "ar" and (block_size is not None or check):
            raise OrthrusError(f"{'block_size' if block_size is not None else 'check'} applies to orthrus decoding; drop it or use mode='orthrus'")
        if mode == "orthrus":
            from .config import resolve_block_size

            block_size = resolve_block_size(self.config, "auto" if block_size is None else block_size)
            if block_size == "auto" and self.backend == "mlx":
                block_size = self.config.block_size  # MLX has no chooser: the checkpoint's K (the best on a GPU)
        return rows, single, budgets, mode, sampling, seeds, block_size

    # ------------------------------------------------------------------ generation

    def generate(self, prompt, max_new_tokens: int | Sequence[int] = 128, *, mode: str | None = None,
                 block_size: int | str | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, seeds: Sequence[int] | None = None,
                 ignore_eos: bool = False, check: bool = False, on_text=None, on_tokens=None) -> Completion | list[Completion]:
        """Generates a continuation of `prompt`: text, token ids, or a list of either (a batch, decoded together).

        Returns one Completion, or one per prompt for a batch. max_new_tokens: an int >= 1, or one
        per prompt. mode: "orthrus" (default when the checkpoint has a diffusion view) or "ar".
        block_size: K, 1 … the checkpoint's block_size, or "auto" (the default: K chosen before every
        step for the most tokens per second on this machine; the output does not change). temperature / top_k / top_p: default to the
        checkpoint's generation_config.json, else greedy. seed: every row's sampling seed (seeds:
        one per prompt). check: assert every committed token is the AR view's choice.
        on_text(row, text): called with each new piece of text. on_tokens(row, token_ids): called with each
        committed run of ids — the prefill's token, then one run per step (Orthrus: accepted drafts, then the
        AR view's token; orthrus_min/show.py). Integers may be Python or numpy
        ints (not bools, floats or tensors); every argument is checked here, before any work.
        """
        rows, single, budgets, mode, sampling, seeds, block_size = self.check_request(prompt, max_new_tokens, mode, block_size, temperature,
                                                                    top_k, top_p, seed, seeds, ignore_eos, check, on_text,
                                                                    on_tokens)
        streams = [self.tokenizer.stream_decoder() for _ in rows]

        def emit(row: int, tokens: list[int]) -> None:
            if on_tokens:
                on_tokens(row, tokens)
            piece = streams[row].push(tokens) if on_text else ""
            if piece:
                on_text(row, piece)

        generations = self.decode_rows(rows, budgets, mode, block_size, sampling, seeds, ignore_eos, check,
                                       emit if on_text or on_tokens else None)
        if on_text:
            for row, stream in enumerate(streams):
                rest = stream.flush()
                if rest:
                    on_text(row, rest)
        out = [Completion(self.decode(g.tokens), g.tokens, len(ids), g.finish_reason, mode, sampling,
                          g.prefill_s + g.decode_s, g.prefill_s, g.num_forwards, list(g.accepted),
                          list(g.block_sizes) or [block_size] * len(g.accepted))
               for ids, g in zip(rows, generations)]
        return out[0] if single else out

    def decode_rows(self, rows, budgets, mode, block_size, sampling, seeds, ignore_eos, check, on_tokens) -> list:
        """The engine's Generation for each row (checked by `check_request`); the MLX backend decodes one row at a time."""
        kw = dict(eos_token_id=self.eos_token_id, ignore_eos=ignore_eos, on_tokens=on_tokens)
        if mode == "orthrus":
            kw.update(block_size=block_size, check=check)
        if self.backend == "mlx":
            from . import mlx

            decode = mlx.generate_orthrus if mode == "orthrus" else mlx.generate_ar
            out = []
            for b, (ids, n) in enumerate(zip(rows, budgets)):
                row_sampling = sampling if seeds is None else SamplingParams(sampling.temperature, sampling.top_k,
                                                                             sampling.top_p, seeds[b])
                emit = (lambda _, tokens, b=b: on_tokens(b, tokens)) if on_tokens else None
                out.append(decode(self.model, ids, n, row_sampling, **{**kw, "on_tokens": emit}))
            return out
        from .ar import generate_ar
        from .consensus import generate_orthrus

        decode = generate_orthrus if mode == "orthrus" else generate_ar
        chooser = None
        if mode == "orthrus" and block_size == "auto":  # K chosen per step, from this LLM's cost estimates
            chooser = self.block_size_chooser(len(rows))
            kw["block_size"] = chooser
        one = len(rows) == 1  # one prompt: the engine's messages then name no row
        out = decode(self.model, rows[0] if one else rows, budgets[0] if one else budgets, sampling,
                     compile_mode=self.compiler, seeds=seeds, **kw)
        if chooser is not None:
            self.step_costs[len(rows)] = chooser.costs  # refined by the steps it ran: the next call starts from them
        return [out] if one else out

    def block_size_chooser(self, batch_size: int):
        """A BlockSizeChooser (blocksize.py) for a batch of this size, its step costs measured (or remembered from an earlier
        run on this machine) on the first call, then refined by every call."""
        from .blocksize import BlockSizeChooser, step_costs
        from .config import auto_candidates

        candidates = auto_candidates(self.config)
        if batch_size not in self.step_costs:
            self.step_costs[batch_size] = step_costs(self.model, candidates, batch_size)
        return BlockSizeChooser(candidates, self.step_costs[batch_size])

    def stream(self, prompt, max_new_tokens: int = 128, **kwargs) -> Iterator[str]:
        """Yields the continuation of one prompt as pieces of text, as they are decoded (arguments as `generate`)."""
        rows, single = self.prompt_ids(prompt)
        if not single:
            raise OrthrusError("stream takes one prompt; use generate(..., on_text=...) for a batch")
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()

        class Stopped(Exception):
            pass

        def on_text(row: int, piece: str) -> None:
            if stop.is_set():
                raise Stopped  # the consumer went away: end the decode early
            pieces.put(piece)

        def work() -> None:
            try:
                self.generate(rows[0], max_new_tokens, on_text=on_text, **kwargs)
                pieces.put(None)
            except Stopped:
                pass
            except BaseException as e:  # handed to the consumer, raised there
                pieces.put(e)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (item := pieces.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def chat(self, messages: list[dict], max_new_tokens: int = 512, *, enable_thinking: bool | None = None,
             **kwargs) -> Completion:
        """Answers a conversation ([{"role": "user", "content": …}, …]) with the checkpoint's chat template."""
        return self.generate(self.chat_prompt(messages, enable_thinking), max_new_tokens, **kwargs)


SMALL_MODEL = 50_000_000  # parameters: below this a CPU forward is mostly per-operator overhead, which threads do not shorten


def default_threads(num_parameters: int) -> int:
    """CPU threads for torch when the caller names none: 1 for a small model, else one per core that is not busy.

    Measured (README, "Threads"): the shipped model is fastest on one thread, and a thread on a core
    that another process keeps busy stalls every parallel operator. "Busy" is the 1-minute load
    average, rounded, at load time.
    """
    if num_parameters < SMALL_MODEL:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def load(model: str | Path | None = None, *, device: str = "auto", dtype: str = "auto", attn: str = "auto",
         backend: str = "torch", compile: str | None = None, threads: int | None = None, check_weights: bool = True) -> LLM:
    """Loads a checkpoint (folder or Hub id; default: the small Orthrus model shipped in the package) and its tokenizer.

    device: "auto", "cpu", "cuda", "cuda:N" (MLX: "auto", "cpu", "gpu"); dtype: "auto" (bf16 on a
    GPU, fp32 on a CPU), "float32", "bfloat16", "float16"; attn: "auto", "torch" or "triton";
    backend: "torch" or "mlx"; compile: None or a torch.compile mode for the decode steps
    ("default", "reduce-overhead", "max-autotune"; a line on stderr per new shape: compiled, or on a CPU
    loaded from the file an earlier run saved, orthrus_min/stepcache.py);
    threads: CPU threads for torch (default: `default_threads`; torch's setting is process-wide);
    check_weights: refuse NaN/inf weights.
    """
    from .checkpoint import DEFAULT_MODEL, resolve_checkpoint
    from .config import Qwen3Config
    from .tokenizer import Tokenizer

    check_bool(check_weights, "check_weights")
    if backend not in BACKENDS:
        raise OrthrusError(f"backend {backend!r} is unknown; choose one of {BACKENDS}")
    if threads is not None:
        check_int(threads, "threads", 1)
        if backend == "mlx":
            raise OrthrusError("threads applies to the torch backend (MLX chooses its own threads)")
    compiler = None
    if backend == "torch":
        from .engine import Compiler

        compiler = Compiler(compile, notify=lambda line: print(line, file=sys.stderr, flush=True))  # checks the mode
    elif compile is not None:
        raise OrthrusError("compile applies to the torch backend (MLX compiles its own kernels)")
    if backend == "mlx":
        from .mlx import check_backend_args

        check_backend_args(device, attn, dtype)
    if model is None:
        if not (DEFAULT_MODEL / "model.safetensors").exists():
            raise OrthrusError(f"the shipped default model is missing ({DEFAULT_MODEL}); pass a checkpoint folder or a Hub id")
        model = DEFAULT_MODEL
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a checkpoint folder or a Hub id (str or Path), got {type(model).__name__}")
    folder = resolve_checkpoint(model)
    config = Qwen3Config.from_json(folder / "config.json")
    tokenizer = Tokenizer(folder)
    if tokenizer.vocab_size > config.vocab_size:
        raise OrthrusError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
                           f"{config.vocab_size} rows: they do not belong together")
    if backend == "mlx":
        from . import mlx

        loaded = mlx.load_model(folder, dtype=dtype, device=device, check_weights=check_weights)
    else:
        from .checkpoint import load_model

        loaded = load_model(folder, dtype=dtype, device=device, attn=None if attn == "auto" else attn,
                            check_weights=check_weights)
        if loaded.device.type == "cpu":
            import torch

            torch.set_num_threads(threads or default_threads(sum(p.numel() for p in loaded.parameters())))
    return LLM(loaded, tokenizer, folder, backend, compiler)


__all__ = ["load", "LLM", "Completion", "default_threads"]
