"""Command line: generate text with a Qwen3 / Orthrus checkpoint.

    python -m orthrus_min.generate --prompt "class Stack:" --stats                 # the shipped model, offline
    python -m orthrus_min.generate --model Qwen/Qwen3-0.6B --mode ar --prompt "def fib(n):"
    python -m orthrus_min.generate --model DIR --chat --prompt "Explain RoPE in one paragraph."
    python -m orthrus_min.generate --model chiennv/Orthrus-Qwen3-1.7B --prompt "def fib(n):" --stats --compare
    python -m orthrus_min.generate --prompt-file prompts.jsonl --batch-size 8 > out.jsonl   # a batch, JSON lines out
    python -m orthrus_min.generate --backend mlx --prompt "class Stack:"                    # Apple silicon (MLX)

One prompt (--prompt): the continuation streams to stdout, timing and statistics go to stderr.
A prompt file (--prompt-file, JSONL, "-" for stdin; format in orthrus_min/prompts.py): the
prompts are decoded --batch-size at a time and each gives one JSON line, in input order.
Every mistake on the command line prints one line `error: …` and exits with status 2.

Sampling: flags, else the checkpoint's generation_config.json, else greedy (see --stats).
--echo is off by default so that stdout holds exactly the generated text (pipe it, diff it,
save it); with --echo the prompt is printed first, as llama.cpp's CLI does.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from .cli import Parser, positive_int, run_main
from .errors import OrthrusError

MODES = ("orthrus", "ar")


def build_parser() -> Parser:
    p = Parser(prog="python -m orthrus_min.generate", description="Generate text with a Qwen3 / Orthrus checkpoint.")
    p.add_argument("--model", default=None, help="checkpoint folder or Hugging Face Hub id, e.g. chiennv/Orthrus-Qwen3-1.7B "
                   "(default: the small Orthrus model shipped in orthrus_min/assets, trained on Python's standard library)")
    p.add_argument("--backend", default="torch", choices=("torch", "mlx"),
                   help="torch (CPU, CUDA) or mlx (Apple silicon; pip install 'orthrus-min[mlx]') (default: torch)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", help='a JSONL file of prompts, one {"prompt": …} per line ("-": standard input); '
                     "writes one JSON line per prompt")
    p.add_argument("--chat", action="store_true", help="render the prompt as a user turn with the checkpoint's chat template")
    p.add_argument("--system", help="with --chat: a system message")
    p.add_argument("--no-thinking", action="store_true", help="with --chat: enable_thinking=False (Qwen3: no <think> block)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="most tokens to generate per prompt (default: 128)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, 0 = greedy (default: generation_config.json's, else 0)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens; 0 = off (default: generation_config.json's, else 0)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1]; 1 = off (default: generation_config.json's, else 1)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed of every prompt (default: a random one per prompt)")
    p.add_argument("--mode", default=None, choices=MODES, help="orthrus: draft with the diffusion view, verify with the AR view; "
                   "ar: one token per forward (default: orthrus when the checkpoint has a diffusion view, else ar)")
    p.add_argument("--block-size", type=int, default=None, help="orthrus: tokens per draft, 1 … the checkpoint's block_size (default: that)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="with --prompt-file: prompts decoded together (default: 8)")
    p.add_argument("--output", help="with --prompt-file: write the JSON lines to this file (default: standard output)")
    p.add_argument("--echo", action="store_true", help="print the prompt before its continuation")
    p.add_argument("--stats", action="store_true", help="print the sampling settings used, the acceptance-length histogram and tokens per forward")
    p.add_argument("--compare", action="store_true", help="also run the other mode on the same prompt; report whether the outputs "
                   "are identical and the speedup")
    p.add_argument("--check", action="store_true", help="orthrus: assert that every committed token is the AR view's choice")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto: cuda when available (MLX: cpu, gpu or auto) (default: auto)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto: bfloat16 on a GPU, float32 on a CPU (default: auto)")
    p.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"),
                   help="attention: torch (SDPA) or triton (our kernel); auto = triton on CUDA when installed (default: auto)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fixed-shape decode steps (the first call of each shape compiles)")
    p.add_argument("--compile-mode", default=None, help="with --compile: default, reduce-overhead (CUDA graphs), max-autotune or "
                   "max-autotune-no-cudagraphs (default: reduce-overhead on CUDA, default on a CPU)")
    p.add_argument("--no-weight-check", action="store_true", help="skip the check for NaN/inf weights at load")
    return p


# --------------------------------------------------------------------------- before loading


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def warn_about_unused_flags(args, temperature: float) -> None:
    """One warning line for each flag the user gave that would change nothing."""
    if temperature == 0:
        for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p), ("--seed", args.seed)):
            if value is not None:
                warn(f"{flag} has no effect at temperature 0 (greedy decoding)")
    if not args.chat:
        for flag, given in (("--system", args.system is not None), ("--no-thinking", args.no_thinking)):
            if given:
                warn(f"{flag} has no effect without --chat")
    if args.prompt_file is None:
        for flag, given in (("--batch-size", args.batch_size is not None), ("--output", args.output is not None)):
            if given:
                warn(f"{flag} has no effect without --prompt-file")
    elif args.echo:
        warn("--echo has no effect with --prompt-file (each JSON line holds its prompt's id)")
    if args.compile_mode is not None and not args.compile:
        warn("--compile-mode has no effect without --compile")


def choose_mode(args, config) -> str:
    """The decoding mode, checked against the checkpoint's config before the (slow) weight load."""
    from .consensus import resolve_block_size
    from .model import require_diffusion_view

    mode = args.mode or ("orthrus" if config.has_diffusion_view else "ar")
    if mode == "orthrus" or args.compare:
        require_diffusion_view(config)
        resolve_block_size(config, args.block_size)
    elif args.block_size is not None or args.check:
        raise OrthrusError(f"{'--block-size' if args.block_size is not None else '--check'} applies to orthrus decoding; "
                           "drop it or use --mode orthrus")
    if args.prompt_file is not None and args.compare:
        raise OrthrusError("--compare works with one --prompt, not with --prompt-file")
    return mode


def compile_mode(args, device: str) -> str | None:
    """The torch.compile mode for --compile: the flag's, else CUDA graphs on CUDA and inductor's default elsewhere."""
    if not args.compile:
        return None
    if args.backend == "mlx":
        raise OrthrusError("--compile applies to the torch backend (MLX compiles its own kernels)")
    if args.compile_mode is not None:
        return args.compile_mode
    import torch

    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "reduce-overhead" if on_cuda else "default"


def prompt_text(args) -> str:
    if not args.prompt:
        raise OrthrusError("the prompt is empty")
    return args.prompt


def request_ids(llm, text: str, chat: bool, system: str | None, enable_thinking: bool | None) -> list[int]:
    """Token ids of one request: raw text, or a user turn rendered with the checkpoint's chat template."""
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        text = llm.chat_prompt(messages, enable_thinking)
    return llm.encode(text)


# --------------------------------------------------------------------------- reporting


def sampling_line(llm, args, sampling) -> str:
    """Which sampling settings were used, and where they came from."""
    if sampling.greedy:
        what = "greedy (temperature 0)"
    else:
        what = f"temperature {sampling.temperature:g}, top-k {sampling.top_k or 'off'}, top-p {sampling.top_p:g}"
    given = [f for f, v in (("--temperature", args.temperature), ("--top-k", args.top_k), ("--top-p", args.top_p)) if v is not None]
    from_config = [k for k in ("temperature", "top_k", "top_p") if k in llm.defaults]
    sources = ([f"flags {', '.join(given)}"] if given else []) + (["generation_config.json"] if from_config and len(given) < 3 else [])
    return f"sampling: {what} (from {', '.join(sources) or 'the built-in default'})"


def print_stats(mode: str, out) -> None:
    """Acceptance-length histogram (tokens committed per iteration) and tokens per forward, to stderr."""
    if out.acceptance:
        counts = Counter(out.acceptance)
        print(f"[{mode}] acceptance length (tokens per iteration): {len(out.acceptance)} iterations, mean {out.acceptance_mean:.2f}",
              file=sys.stderr)
        for length in range(1, max(counts) + 1):
            share = counts[length] / len(out.acceptance)
            print(f"  {length:3d} | {'#' * round(40 * share):<40} {counts[length]}", file=sys.stderr)
    print(f"[{mode}] tokens per forward: {out.tokens_per_forward:.2f} ({len(out.token_ids) - 1} tokens after the first, "
          f"{out.num_forwards} forwards)", file=sys.stderr)


def timing_line(mode: str, out) -> str:
    return (f"[{mode}] {len(out.token_ids)} tokens in {out.seconds:.2f} s: {out.tokens_per_second:.1f} tokens/s (prompt "
            f"{out.prompt_tokens} tokens, time to first token {out.ttft_s * 1000:.0f} ms, stop: {out.finish_reason})")


def record(prompt, out) -> dict:
    """The JSON line of one prompt of a prompt file."""
    hist = None
    if out.acceptance:
        counts = Counter(out.acceptance)
        hist = [counts[n] for n in range(1, (out.block_size or max(counts)) + 1)]
    return {"id": prompt.id, "text": out.text, "prompt_tokens": out.prompt_tokens, "new_tokens": len(out.token_ids),
            "finish_reason": out.finish_reason, "mode": out.mode, "acceptance_mean": out.acceptance_mean,
            "acceptance_histogram": hist, "tokens_per_forward": out.tokens_per_forward}


# --------------------------------------------------------------------------- the two ways of running


def run_one(args, llm, mode: str, gen_kwargs: dict) -> int:
    """One prompt: stream its continuation to stdout, then timing, --stats and --compare lines to stderr."""
    from .consensus import ConsensusCheckError

    ids = request_ids(llm, prompt_text(args), args.chat, args.system, False if args.no_thinking else None)

    def write(row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def decode(mode: str, n: int, stream: bool = False):
        kw = dict(gen_kwargs, mode=mode, check=args.check and mode == "orthrus",
                  block_size=args.block_size if mode == "orthrus" else None)
        return llm.generate(ids, n, on_text=write if stream else None, **kw)

    if args.compare:  # a short warm-up of both, so that neither timed run pays one-time costs
        decode("ar", 2)
        decode("orthrus", 2)
    if args.echo:
        sys.stdout.write(args.prompt)
    try:
        out = decode(mode, args.max_new_tokens, stream=True)
    except ConsensusCheckError as e:  # a decoder bug, not bad input
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(timing_line(mode, out), file=sys.stderr)
    if args.stats:
        print(sampling_line(llm, args, out.sampling), file=sys.stderr)
        print_stats(mode, out)
    if args.compare:
        other_mode = "ar" if mode == "orthrus" else "orthrus"
        other = decode(other_mode, args.max_new_tokens)
        ar, orthrus = (out, other) if mode == "ar" else (other, out)
        same = "identical" if ar.token_ids == orthrus.token_ids else "DIFFERENT"
        note = " (sampling: only the distributions are equal, not the tokens)" if not out.sampling.greedy else ""
        print(f"[compare] outputs {same}{note}: ar {len(ar.token_ids)} tokens in {ar.seconds:.2f} s, orthrus "
              f"{len(orthrus.token_ids)} tokens in {orthrus.seconds:.2f} s; speedup {ar.seconds / orthrus.seconds:.2f}x",
              file=sys.stderr)
        if args.stats:
            print_stats(other_mode, other)
    return 0


def run_file(args, llm, mode: str, gen_kwargs: dict, prompts) -> int:
    """A prompt file: every request checked first, then --batch-size at a time, one JSON line each, in order."""
    import time

    from .consensus import resolve_block_size

    extra = resolve_block_size(llm.config, args.block_size) if mode == "orthrus" else 0
    limit = llm.config.max_position_embeddings
    requests = []
    for prompt in prompts:  # everything is checked before the first line is written
        ids = request_ids(llm, prompt.text, prompt.chat or args.chat, prompt.system or args.system,
                          prompt.enable_thinking if prompt.enable_thinking is not None else (False if args.no_thinking else None))
        budget = prompt.max_new_tokens or args.max_new_tokens
        if len(ids) + budget + extra > limit:
            raise OrthrusError(f"prompt {prompt.id!r}: {len(ids)} tokens + max_new_tokens {budget}"
                               f"{f' + one block ({extra})' if extra else ''} exceed the model's context of {limit} tokens")
        requests.append((prompt, ids, budget, prompt.seed if prompt.seed is not None else args.seed))
    sink = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    t0, outs, batch_size = time.perf_counter(), [], args.batch_size or 8
    try:
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            seeds = None
            if all(r[3] is not None for r in chunk):
                seeds = [r[3] for r in chunk]
            elif any(r[3] is not None for r in chunk):
                import torch

                seeds = [r[3] if r[3] is not None else int(torch.randint(0, 2**62, ())) for r in chunk]
            done = llm.generate([r[1] for r in chunk], [r[2] for r in chunk], mode=mode, seeds=seeds,
                                check=args.check and mode == "orthrus", block_size=args.block_size, **gen_kwargs)
            for (prompt, *_), out in zip(chunk, done):
                sink.write(json.dumps(record(prompt, out), ensure_ascii=False) + "\n")
            sink.flush()
            outs += done
    finally:
        if sink is not sys.stdout:
            sink.close()
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for o in outs)
    line = f"[{mode}] {len(outs)} prompts (batch size {batch_size}): {tokens} tokens in {seconds:.2f} s, {tokens / seconds:.1f} tokens/s"
    runs = [n for o in outs for n in o.acceptance]
    if runs:
        line += f"; acceptance τ {sum(runs) / len(runs):.2f}"
    print(line, file=sys.stderr)
    if args.stats:
        print(sampling_line(llm, args, outs[0].sampling), file=sys.stderr)
    return 0


def run(args) -> int:
    """Checks everything that can be checked cheaply, loads the model, then runs one prompt or a prompt file."""
    from .api import generation_defaults, load
    from .model import DEFAULT_MODEL, Qwen3Config, resolve_checkpoint
    from .prompts import read_prompt_file
    from .sampling import SamplingParams

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    folder = resolve_checkpoint(args.model if args.model is not None else default_model(DEFAULT_MODEL))
    defaults = generation_defaults(folder)
    temperature = args.temperature if args.temperature is not None else defaults.get("temperature", 0.0)
    SamplingParams(temperature, args.top_k if args.top_k is not None else 0, args.top_p if args.top_p is not None else 1.0,
                   args.seed)  # validates the flags before the slow load
    mode = choose_mode(args, Qwen3Config.from_json(folder / "config.json"))
    prompts = read_prompt_file(args.prompt_file) if args.prompt_file is not None else None
    if args.prompt is not None:
        prompt_text(args)
    if args.output is not None and args.prompt_file is not None:
        check_writable(Path(args.output))
    warn_about_unused_flags(args, temperature)
    llm = load(folder, device=args.device, dtype=args.dtype, attn=args.attn, backend=args.backend,
               compile=compile_mode(args, args.device), check_weights=not args.no_weight_check)
    gen_kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if prompts is None:
        return run_one(args, llm, mode, gen_kwargs)
    gen_kwargs.pop("seed")  # per prompt, through seeds=
    return run_file(args, llm, mode, gen_kwargs, prompts)


def default_model(folder: Path) -> Path:
    """The shipped model's folder, or a clear error when this installation lacks it."""
    if not (folder / "model.safetensors").exists():
        raise OrthrusError(f"the shipped default model is missing ({folder}); pass --model DIR or a Hub id")
    return folder


def check_writable(path: Path) -> None:
    """A clear error now, rather than after the whole run, when --output cannot be written."""
    import os

    if path.is_dir():
        raise OrthrusError(f"--output {path}: is a folder")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OrthrusError(f"--output {path}: the folder {folder} does not exist")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise OrthrusError(f"--output {path}: not writable")


def main(argv: list[str] | None = None) -> int:
    """`python -m orthrus_min.generate`: the exit status (2 and one line `error: …` for a mistake)."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
