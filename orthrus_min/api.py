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

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OrthrusError
from .sampling import SamplingParams

MODES = ("orthrus", "ar")
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
    block_size: int | None = None

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


def generation_defaults(folder: Path) -> dict:
    """Sampling settings and EOS ids from the checkpoint's generation_config.json ({} when it has none)."""
    path = folder / "generation_config.json"
    if not path.exists():
        return {}
    from .tokenizer import read_json_object

    config = read_json_object(path)
    out = {}
    if config.get("do_sample") is False:
        out["temperature"] = 0.0
    else:
        for key in ("temperature", "top_k", "top_p"):
            if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool):
                out[key] = config[key]
        if config.get("do_sample") is not True:
            out.pop("temperature", None)  # sampling knobs without do_sample: Transformers decodes greedily
    eos = config.get("eos_token_id")
    if isinstance(eos, int) or (isinstance(eos, list) and all(isinstance(e, int) for e in eos)):
        out["eos_token_id"] = [eos] if isinstance(eos, int) else list(eos)
    return out


class LLM:
    """A loaded checkpoint, ready to generate: `generate`, `stream`, `chat`, `encode`, `decode`."""

    def __init__(self, model, tokenizer, folder: Path, backend: str = "torch", compile_mode: str | None = None):
        self.model, self.tokenizer, self.folder, self.backend, self.compile_mode = model, tokenizer, folder, backend, compile_mode
        self.config = model.config
        self.defaults = generation_defaults(folder)
        eos = set(self.config.eos_token_id) | set(self.defaults.get("eos_token_id", []))
        self.eos_token_id = sorted(eos)

    def __repr__(self) -> str:
        c = self.config
        view = f"diffusion view, block_size {c.block_size}" if c.has_diffusion_view else "AR only"
        return f"LLM({self.folder.name!r}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {view}; {self.backend})"

    # ------------------------------------------------------------------ text <-> tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of token ids (special tokens left out)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict], enable_thinking: bool | None = None) -> str:
        """The prompt text for a conversation, rendered with the checkpoint's chat template."""
        check_messages(messages)
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=enable_thinking)

    def prompt_ids(self, prompt) -> tuple[list[list[int]], bool]:
        """(token ids per prompt, single?) for a str, a list of ids, a list of those, or a 1-D/2-D tensor."""
        if isinstance(prompt, str):
            return [self.encode(prompt)], True
        if hasattr(prompt, "tolist") and hasattr(prompt, "dim"):  # a tensor of token ids
            if prompt.dim() not in (1, 2):
                raise TypeError(f"a tensor prompt must be 1-D (one prompt) or 2-D (a batch), got {prompt.dim()}-D")
            prompt = prompt.tolist()
        if isinstance(prompt, Sequence) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [list(prompt)], True
        if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (str, Sequence)) for p in prompt):
            return [self.prompt_ids(p)[0][0] for p in prompt], False
        if isinstance(prompt, Sequence) and not prompt:
            raise OrthrusError("the prompt is empty: give text or at least one token id")
        raise TypeError("prompt must be a str, a list of token ids, or a list of those (a batch); "
                        f"got {type(prompt).__name__}{' holding ' + type(prompt[0]).__name__ if isinstance(prompt, Sequence) and prompt else ''}")

    # ------------------------------------------------------------------ settings

    def sampling(self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> SamplingParams:
        """SamplingParams from the arguments, else the checkpoint's generation_config.json, else greedy."""
        values = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        for key, default in (("temperature", 0.0), ("top_k", 0), ("top_p", 1.0)):
            if values[key] is None:
                values[key] = self.defaults.get(key, default)
        for key, kind in (("temperature", (int, float)), ("top_k", int), ("top_p", (int, float)), ("seed", int)):
            value = seed if key == "seed" else values[key]
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise TypeError(f"{key} must be a number, got {type(value).__name__}")
        return SamplingParams(float(values["temperature"]), int(values["top_k"]), float(values["top_p"]), seed)

    def mode(self, mode: str | None) -> str:
        """The decoding mode: `mode` if given, else orthrus when the checkpoint has a diffusion view, else ar."""
        if mode is None:
            return "orthrus" if self.config.has_diffusion_view else "ar"
        if mode not in MODES:
            raise OrthrusError(f"mode {mode!r} is unknown; choose one of {MODES}")
        return mode

    # ------------------------------------------------------------------ generation

    def generate(self, prompt, max_new_tokens: int | Sequence[int] = 128, *, mode: str | None = None,
                 block_size: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, seeds: Sequence[int] | None = None,
                 ignore_eos: bool = False, check: bool = False, on_text=None) -> Completion | list[Completion]:
        """Generates a continuation of `prompt`: text, token ids, or a list of either (a batch, decoded together).

        Returns one Completion, or one per prompt for a batch. mode: "orthrus" (default when the
        checkpoint has a diffusion view) or "ar". block_size: K (default: the checkpoint's).
        temperature / top_k / top_p: default to the checkpoint's generation_config.json, else
        greedy. seed: every row's sampling seed (seeds: one per prompt). check: assert every
        committed token is the AR view's choice. on_text(row, text): called with each new piece of text.
        """
        rows, single = self.prompt_ids(prompt)
        mode = self.mode(mode)
        sampling = self.sampling(temperature, top_k, top_p, seed)
        if mode == "ar" and (block_size is not None or check):
            raise OrthrusError(f"{'block_size' if block_size is not None else 'check'} applies to orthrus decoding; drop it or use mode='orthrus'")
        streams = [self.tokenizer.stream_decoder() for _ in rows]

        def on_tokens(row: int, tokens: list[int]) -> None:
            piece = streams[row].push(tokens)
            if piece:
                on_text(row, piece)

        generations = self.decode_rows(rows[0] if single else rows, max_new_tokens, mode, block_size, sampling, seeds,
                                       ignore_eos, check, on_tokens if on_text else None)
        generations = [generations] if single else generations
        if on_text:
            for row, stream in enumerate(streams):
                rest = stream.flush()
                if rest:
                    on_text(row, rest)
        K = None
        if mode == "orthrus":
            from .consensus import resolve_block_size

            K = resolve_block_size(self.config, block_size)
        out = [Completion(self.decode(g.tokens), g.tokens, len(ids), g.finish_reason, mode, sampling,
                          g.prefill_s + g.decode_s, g.prefill_s, g.num_forwards, list(g.accepted), K)
               for ids, g in zip(rows, generations)]
        return out[0] if single else out

    def decode_rows(self, rows, max_new_tokens, mode, block_size, sampling, seeds, ignore_eos, check, on_tokens):
        """The engine's Generation for one prompt (a list of ids), or one per row of a batch; the MLX backend
        decodes one row at a time."""
        kw = dict(eos_token_id=self.eos_token_id, ignore_eos=ignore_eos, on_tokens=on_tokens)
        if mode == "orthrus":
            kw.update(block_size=block_size, check=check)
        if self.backend == "mlx":
            from . import mlx

            decode = mlx.generate_orthrus if mode == "orthrus" else mlx.generate_ar
            if rows and isinstance(rows[0], int):  # one prompt
                return decode(self.model, rows, max_new_tokens, sampling, **kw)
            budgets = [max_new_tokens] * len(rows) if isinstance(max_new_tokens, int) else list(max_new_tokens)
            out = []
            for b, (ids, n) in enumerate(zip(rows, budgets)):
                row_sampling = sampling if seeds is None else SamplingParams(sampling.temperature, sampling.top_k,
                                                                             sampling.top_p, list(seeds)[b])
                emit = (lambda _, tokens, b=b: on_tokens(b, tokens)) if on_tokens else None
                out.append(decode(self.model, ids, n, row_sampling, **{**kw, "on_tokens": emit}))
            return out
        from .ar import generate_ar
        from .consensus import generate_orthrus

        decode = generate_orthrus if mode == "orthrus" else generate_ar
        return decode(self.model, rows, max_new_tokens, sampling, compile_mode=self.compile_mode, seeds=seeds, **kw)

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


def check_messages(messages) -> None:
    """One-line errors for a conversation that is not a list of {"role": str, "content": str} dicts."""
    if not isinstance(messages, list) or not messages:
        raise TypeError(f"messages must be a non-empty list of {{'role': …, 'content': …}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"messages[{i}] must be a dict with a str 'role' and a str 'content', got {m!r}"[:200])


def load(model: str | Path | None = None, *, device: str = "auto", dtype: str = "auto", attn: str = "auto",
         backend: str = "torch", compile: str | None = None, check_weights: bool = True) -> LLM:
    """Loads a checkpoint (folder or Hub id; default: the small Orthrus model shipped in the package) and its tokenizer.

    device: "auto", "cpu", "cuda", "cuda:N" (MLX: "auto", "cpu", "gpu"); dtype: "auto" (bf16 on a
    GPU, fp32 on a CPU), "float32", "bfloat16", "float16"; attn: "auto", "torch" or "triton";
    backend: "torch" or "mlx"; compile: None or a torch.compile mode for the decode steps
    ("default", "reduce-overhead", "max-autotune"); check_weights: refuse NaN/inf weights.
    """
    from .model import DEFAULT_MODEL, Qwen3Config, resolve_checkpoint
    from .tokenizer import Tokenizer

    if backend not in BACKENDS:
        raise OrthrusError(f"backend {backend!r} is unknown; choose one of {BACKENDS}")
    if compile is not None:
        from .engine import COMPILE_MODES

        if backend == "mlx":
            raise OrthrusError("compile applies to the torch backend (MLX compiles its own kernels)")
        if compile not in COMPILE_MODES:
            raise OrthrusError(f"compile mode {compile!r} is unknown; choose one of {COMPILE_MODES}")
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

        loaded = mlx.load_model(folder, dtype=dtype, device=device)
    else:
        from .model import load_model

        loaded = load_model(folder, dtype=dtype, device=device, attn=None if attn == "auto" else attn,
                            check_weights=check_weights)
    return LLM(loaded, tokenizer, folder, backend, compile)


__all__ = ["load", "LLM", "Completion", "generation_defaults"]
