"""Command line: generate text with a Qwen3 / Orthrus checkpoint.

    python -m orthrus_min.generate --prompt "class Stack:" --stats                 # the shipped model, offline
    python -m orthrus_min.generate --prompt "class Stack:" --show-drafts           # which tokens were drafted
    python -m orthrus_min.generate --model Qwen/Qwen3-0.6B --mode ar --prompt "def fib(n):"
    python -m orthrus_min.generate --model DIR --chat --prompt "Explain RoPE in one paragraph."
    python -m orthrus_min.generate --model chiennv/Orthrus-Qwen3-1.7B --prompt "def fib(n):" --stats --compare
    python -m orthrus_min.generate --prompt-file prompts.jsonl --batch-size 8 > out.jsonl   # a batch, JSON lines out
    python -m orthrus_min.generate --backend mlx --prompt "class Stack:"                    # Apple silicon (MLX)

One prompt (--prompt TEXT, or --prompt-text-file FILE read verbatim): the continuation streams
to stdout, timing and statistics go to stderr. A prompt file (--prompt-file, JSONL, "-" for
stdin; format in orthrus_min/prompts.py): the prompts are decoded --batch-size at a time and each
gives one JSON line, in input order; --output FILE (a regular file, or a new one) is written under
a temporary name and renamed when complete. Exit status (orthrus_min/cli.py): 0 done; 2 one line
`error: …` (a mistake, or a fault such as a full disk or a closed stdout); 1 an error that could
not even be reported (stderr unusable); 130 Ctrl-C; 141 a closed pipe.

Sampling: flags, else the checkpoint's generation_config.json, else greedy (see --stats).
--echo is off by default so that stdout holds exactly the generated text (pipe it, diff it,
save it); with --echo the prompt is printed first, as llama.cpp's CLI does.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from .cli import Parser, block_size_arg, on_terminal, positive_int, require_stdout, run_main, write_stdout
from .errors import OrthrusError, check_text
from .request import MODES

COMPARE_ROUNDS = 3  # --compare: timed runs of each mode; the fastest counts (a busy machine only ever adds time)


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
    src.add_argument("--prompt-text-file", metavar="FILE", help='a plain-text file read verbatim as the one prompt, trailing '
                     'newlines kept ("-": standard input; UTF-8, at most 4 MiB)')
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
    p.add_argument("--block-size", type=block_size_arg, default=None,
                   help="orthrus: tokens per draft, 1 … the checkpoint's block_size, or auto: chosen before every step for the most "
                        "tokens per second on this machine, from timed forwards and the acceptance so far; the output is the same "
                        "(default: auto; MLX: the checkpoint's block_size)"),
    p.add_argument("--batch-size", type=positive_int, default=None, help="with --prompt-file: prompts decoded together (default: 8)")
    p.add_argument("--output", help="with --prompt-file: write the JSON lines to this file, a regular file replaced only "
                   "once the run completes (default: standard output)")
    p.add_argument("--echo", action="store_true", help="print the prompt before its continuation")
    p.add_argument("--stats", action="store_true", help="print the sampling settings used, the acceptance-length histogram and tokens per forward")
    p.add_argument("--compare", action="store_true", help="also time both modes on the same prompt, alternated, "
                   f"{COMPARE_ROUNDS} runs each; report whether the outputs are identical and the speedup of the fastest runs")
    p.add_argument("--show-drafts", action="store_true", help="orthrus, one prompt: mark what each iteration commits, "
                   "as it commits it: its accepted draft tokens and its bonus (the AR view's own token; the first token, "
                   "from the prefill, is marked so too). On a terminal: green and yellow (unless NO_COLOR is set); "
                   "else ⟦drafts⟧⟨bonus⟩, and ⟪…⟫ for a last token that may be either (the budget or EOS can cut the "
                   "final iteration before its bonus); a legend goes to stderr")
    p.add_argument("--check", action="store_true", help="orthrus: assert that every committed token is the AR view's choice")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto: cuda when available (MLX: cpu, gpu or auto) (default: auto)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto: bfloat16 on a GPU, float32 on a CPU (default: auto)")
    p.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"),
                   help="attention: torch (SDPA) or triton (our kernel); auto = triton on CUDA when installed (default: auto)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: 1 for a model under "
                   "50M parameters, else one per core that is not busy by the 1-minute load average; MLX chooses its own)")
    p.add_argument("--compile", action="store_true", help="compile the fixed-shape decode steps with inductor (the first call of each shape compiles; on a "
                   "CPU in mode default the compiled step is saved, and later runs load it in milliseconds)")
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
    if args.threads is not None and args.backend == "mlx":
        warn("--threads has no effect with --backend mlx (MLX chooses its own threads)")


def choose_mode(args, config) -> str:
    """The decoding mode, checked against the checkpoint's config before the (slow) weight load."""
    from .config import require_diffusion_view, resolve_block_size

    mode = args.mode or ("orthrus" if config.has_diffusion_view else "ar")
    if mode == "orthrus" or args.compare:
        require_diffusion_view(config)
        resolve_block_size(config, args.block_size)
    elif args.block_size is not None or args.check:
        raise OrthrusError(f"{'--block-size' if args.block_size is not None else '--check'} applies to orthrus decoding; "
                           "drop it or use --mode orthrus")
    if args.prompt_file is not None and (args.compare or args.show_drafts):
        raise OrthrusError(f"{'--compare' if args.compare else '--show-drafts'} works with one --prompt, not with --prompt-file")
    if args.show_drafts and mode != "orthrus":
        raise OrthrusError("--show-drafts applies to orthrus decoding (ar drafts nothing); drop it or use --mode orthrus")
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
    """The one prompt: --prompt's text, or --prompt-text-file's content verbatim; checked to be non-empty valid Unicode."""
    if args.prompt_text_file is not None:
        from .prompts import read_prompt_text

        return read_prompt_text(args.prompt_text_file)
    if not args.prompt:
        raise OrthrusError("the prompt is empty")
    return check_text(args.prompt, "--prompt")


def request_ids(llm, text: str, chat: bool, system: str | None, enable_thinking: bool | None) -> list[int]:
    """Token ids of one request: raw text, or a user turn rendered with the checkpoint's chat template."""
    if chat:
        from .prompts import chat_messages

        text = llm.chat_prompt(chat_messages(text, system), enable_thinking)
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
    if out.block_sizes:
        sizes = Counter(out.block_sizes)
        print(f"[{mode}] block size K per iteration: " + ", ".join(f"K={K} ×{sizes[K]}" for K in sorted(sizes))
              + f" (in order: {' '.join(map(str, out.block_sizes))})", file=sys.stderr)
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
        hist = [counts[n] for n in range(1, max(out.block_sizes) + 1)]
    return {"id": prompt.id, "text": out.text, "prompt_tokens": out.prompt_tokens, "new_tokens": len(out.token_ids),
            "finish_reason": out.finish_reason, "mode": out.mode, "acceptance_mean": out.acceptance_mean,
            "acceptance_histogram": hist, "tokens_per_forward": out.tokens_per_forward}


# --------------------------------------------------------------------------- the two ways of running


def run_one(args, llm, mode: str, gen_kwargs: dict, text: str) -> int:
    """One prompt: stream its continuation to stdout, then timing, --stats and --compare lines to stderr."""
    from .errors import ConsensusCheckError

    ids = request_ids(llm, text, args.chat, args.system, False if args.no_thinking else None)

    def write(row: int, piece: str) -> None:
        write_stdout(piece, flush=True)

    painter = None
    if args.show_drafts:  # each iteration's run, marked (orthrus_min/show.py); its last token is printed with the next run
        from . import show

        style = "ansi" if on_terminal(sys.stdout) and not os.environ.get("NO_COLOR") else "plain"
        render, painter = getattr(show, style), show.SpanStream(llm.tokenizer)
        print(show.legend(style), file=sys.stderr)

    def paint(row: int, tokens: list[int]) -> None:
        write_stdout(render(painter.push(tokens)), flush=True)

    def decode(mode: str, n: int, stream: bool = False):
        kw = dict(gen_kwargs, mode=mode, check=args.check and mode == "orthrus",
                  block_size=args.block_size if mode == "orthrus" else None)
        return llm.generate(ids, n, on_text=write if stream and not painter else None,
                            on_tokens=paint if stream and painter else None, **kw)

    if args.compare:  # a short warm-up of both, so that neither timed run pays one-time costs
        decode("ar", 2)
        decode("orthrus", 2)
    if args.echo:
        write_stdout(text)
    try:
        out = decode(mode, args.max_new_tokens, stream=True)
    except ConsensusCheckError as e:  # a decoder bug, not bad input
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    if painter:  # the final run's last token: the bonus, or unsure when that run may have been cut
        write_stdout(render(painter.finish(out.block_sizes[-1] if out.block_sizes else None)))
    write_stdout("\n", flush=True)
    print(timing_line(mode, out), file=sys.stderr)
    if args.stats:
        print(sampling_line(llm, args, out.sampling), file=sys.stderr)
        print_stats(mode, out)
    if args.compare:  # timed apart from the streamed run above, which also paid for printing
        runs = {"ar": [], "orthrus": []}
        for _ in range(COMPARE_ROUNDS):  # alternated, so that both modes see the same machine
            for m in runs:
                runs[m].append(decode(m, args.max_new_tokens))
        ar, orthrus = (min(runs[m], key=lambda o: o.seconds) for m in ("ar", "orthrus"))
        same = "identical" if all(o.token_ids == out.token_ids for m in runs for o in runs[m]) else "DIFFERENT"
        note = " (sampling: only the distributions are equal, not the tokens)" if not out.sampling.greedy else ""
        print(f"[compare] outputs {same}{note}: ar {len(ar.token_ids)} tokens in {ar.seconds:.2f} s, orthrus "
              f"{len(orthrus.token_ids)} tokens in {orthrus.seconds:.2f} s (the fastest of {COMPARE_ROUNDS} runs each, "
              f"alternated); speedup {ar.seconds / orthrus.seconds:.2f}x", file=sys.stderr)
        if args.stats:
            other_mode = "ar" if mode == "orthrus" else "orthrus"
            print_stats(other_mode, runs[other_mode][0])
    return 0


def run_file(args, llm, mode: str, gen_kwargs: dict, prompts) -> int:
    """A prompt file: every request checked first, then --batch-size at a time, one JSON line each, in order."""
    import time

    from .config import resolve_block_size

    K = resolve_block_size(llm.config, args.block_size) if mode == "orthrus" else 0
    extra = llm.config.block_size if K == "auto" else K  # auto: room for its largest block
    limit = llm.config.max_position_embeddings
    requests = []
    for prompt in prompts:  # everything is checked before the first line is written
        ids = request_ids(llm, prompt.text, prompt.chat, prompt.system or args.system,
                          prompt.enable_thinking if prompt.enable_thinking is not None else (False if args.no_thinking else None))
        budget = prompt.max_new_tokens or args.max_new_tokens
        if len(ids) + budget + extra > limit:
            raise OrthrusError(f"prompt {prompt.id!r}: {len(ids)} tokens + max_new_tokens {budget}"
                               f"{f' + one block ({extra})' if extra else ''} exceed the model's context of {limit} tokens")
        requests.append((prompt, ids, budget, prompt.seed if prompt.seed is not None else args.seed))
    t0, outs, lines, batch_size = time.perf_counter(), [], [], args.batch_size or 8
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
        text = "".join(json.dumps(record(prompt, out), ensure_ascii=False) + "\n" for (prompt, *_), out in zip(chunk, done))
        if args.output is None:
            write_stdout(text, flush=True)  # stdout: each batch as soon as it is done
        else:
            lines.append(text)
        outs += done
    if args.output is not None:  # a temporary name, renamed when complete: never a half-written file under the name
        from .files import write_text_atomically

        write_text_atomically(Path(args.output), "".join(lines), "--output")
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
    """Checks everything that can be checked cheaply, loads the model, then runs one prompt or a prompt file.

    The request (prompts, streams, --output) is checked first, before torch is even imported: a closed stdout or an
    endless stdin is reported at once."""
    from .prompts import read_prompt_file

    if args.system is not None:
        check_text(args.system, "--system")
    prompts = read_prompt_file(args.prompt_file, chat=args.chat) if args.prompt_file is not None else None
    text = prompt_text(args) if prompts is None else None
    if args.output is not None and args.prompt_file is not None:
        from .files import check_writable_file

        check_writable_file(Path(args.output), "--output")
    else:
        require_stdout()  # started with stdout closed, there is nowhere to write

    from .api import load
    from .checkpoint import DEFAULT_MODEL, generation_defaults, resolve_checkpoint
    from .config import Qwen3Config
    from .sampling import SamplingParams

    folder = resolve_checkpoint(args.model if args.model is not None else default_model(DEFAULT_MODEL))
    defaults = generation_defaults(folder)
    temperature = args.temperature if args.temperature is not None else defaults.get("temperature", 0.0)
    SamplingParams(temperature, args.top_k if args.top_k is not None else 0, args.top_p if args.top_p is not None else 1.0,
                   args.seed)  # validates the flags before the slow load
    mode = choose_mode(args, Qwen3Config.from_json(folder / "config.json"))
    warn_about_unused_flags(args, temperature)
    llm = load(folder, device=args.device, dtype=args.dtype, attn=args.attn, backend=args.backend,
               compile=compile_mode(args, args.device), threads=args.threads if args.backend == "torch" else None,
               check_weights=not args.no_weight_check)
    gen_kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if prompts is None:
        return run_one(args, llm, mode, gen_kwargs, text)
    gen_kwargs.pop("seed")  # per prompt, through seeds=
    return run_file(args, llm, mode, gen_kwargs, prompts)


def default_model(folder: Path) -> Path:
    """The shipped model's folder, or a clear error when this installation lacks it."""
    if not (folder / "model.safetensors").exists():
        raise OrthrusError(f"the shipped default model is missing ({folder}); pass --model DIR or a Hub id")
    return folder


def main(argv: list[str] | None = None) -> int:
    """`python -m orthrus_min.generate`: the exit status (2 and one line `error: …` for a mistake)."""
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
