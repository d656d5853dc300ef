"""Command line: generate text with a Qwen3 / Orthrus checkpoint.

    python -m orthrus_min.generate --prompt "def fib(n):" --stats                # the shipped model, offline
    python -m orthrus_min.generate --model Qwen/Qwen3-0.6B --prompt "def fib(n):" --max-new-tokens 64
    python -m orthrus_min.generate --model DIR --chat --prompt "Explain RoPE in one paragraph."
    python -m orthrus_min.generate --model chiennv/Orthrus-Qwen3-1.7B --prompt "def fib(n):" --stats --compare

The continuation streams to stdout; timing goes to stderr. Bad input prints one
line `error: …` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from .errors import OrthrusError

MODES = ("orthrus", "ar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orthrus_min.generate", description="Generate text with a Qwen3 / Orthrus checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="checkpoint folder, or a Hugging Face Hub id such as chiennv/Orthrus-Qwen3-1.7B "
                        "(default: the small Orthrus model shipped in orthrus_min/assets, trained on Python's standard library)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from this UTF-8 file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn with the checkpoint's chat template (default: raw prompt)")
    p.add_argument("--system", help="with --chat: a system message")
    p.add_argument("--no-thinking", action="store_true", help="with --chat: pass enable_thinking=False to the template (Qwen3: no <think> block)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens when sampling; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto (bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"),
                   help="attention backend: torch (SDPA) or triton (our kernel); auto = triton on CUDA when installed")
    p.add_argument("--mode", default=None, choices=MODES,
                   help="orthrus = draft a block with the diffusion view, verify with the AR view; ar = one token per forward "
                        "(default: orthrus when the checkpoint has a diffusion view, else ar)")
    p.add_argument("--block-size", type=int, default=None, help="orthrus: tokens per draft, 1 … the checkpoint's block_size (default: that)")
    p.add_argument("--stats", action="store_true", help="print the acceptance-length histogram and tokens per forward to stderr")
    p.add_argument("--compare", action="store_true", help="run AR and Orthrus on the same prompt; report whether the outputs are identical and the speedup")
    p.add_argument("--check", action="store_true", help="orthrus: assert that every committed token is the AR view's choice in the same verify pass")
    return p


def default_model():
    """The shipped model's folder, or a clear error when this installation lacks it."""
    from .model import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "model.safetensors").exists():
        raise OrthrusError(f"the shipped default model is missing ({DEFAULT_MODEL}); pass --model DIR or a Hub id")
    return DEFAULT_MODEL


def read_prompt(args, tokenizer) -> list[int]:
    """Token ids of the prompt: raw text, or a chat turn rendered with the checkpoint's template."""
    if args.prompt_file is not None:
        try:
            text = args.prompt_file.read_text(encoding="utf-8")
        except OSError as e:
            raise OrthrusError(f"{args.prompt_file}: cannot read prompt file ({e.strerror})") from None
    else:
        text = args.prompt
    if not text:
        raise OrthrusError("the prompt is empty")
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False if args.no_thinking else None)
    return tokenizer.encode(text)


def choose_mode(args, config) -> str:
    """The decoding mode, checked against the checkpoint's config before the (slow) weight load."""
    from .consensus import resolve_block_size
    from .model import require_diffusion_view

    mode = args.mode or ("orthrus" if config.has_diffusion_view else "ar")
    if mode == "orthrus" or args.compare:
        require_diffusion_view(config)
        resolve_block_size(config, args.block_size)
    elif args.block_size is not None or args.check:
        raise OrthrusError(f"{'--block-size' if args.block_size is not None else '--check'} applies to orthrus decoding; drop it or use --mode orthrus")
    return mode


def print_stats(mode: str, out) -> None:
    """Acceptance-length histogram (tokens committed per iteration) and tokens per forward, to stderr."""
    if out.accepted:
        counts = Counter(out.accepted)
        mean = sum(out.accepted) / len(out.accepted)
        print(f"[{mode}] acceptance length (tokens per iteration): {len(out.accepted)} iterations, mean {mean:.2f}", file=sys.stderr)
        for length in range(1, max(counts) + 1):
            share = counts[length] / len(out.accepted)
            print(f"  {length:3d} | {'#' * round(40 * share):<40} {counts[length]}", file=sys.stderr)
    print(f"[{mode}] tokens per forward: {out.tokens_per_forward:.2f} ({len(out.tokens) - 1} tokens after the first, "
          f"{out.num_forwards} forwards)", file=sys.stderr)


def report(args, mode: str, decode, sampling, num_prompt: int) -> None:
    """Generates in `mode` (streamed to stdout), then timing, --stats and --compare lines to stderr."""
    if args.compare:  # a short warm-up of both, so neither timed run pays one-time costs
        decode("ar", 2)
        decode("orthrus", 2)
    out = decode(mode, args.max_new_tokens, stream_out=True)
    print(f"[{mode}] {len(out.tokens)} tokens in {out.prefill_s + out.decode_s:.2f} s: {out.tokens_per_second:.1f} tokens/s "
          f"(prompt {num_prompt} tokens, time to first token {out.prefill_s * 1000:.0f} ms, stop: {out.finish_reason})",
          file=sys.stderr)
    if args.stats:
        print_stats(mode, out)
    if not args.compare:
        return
    other_mode = "ar" if mode == "orthrus" else "orthrus"
    other = decode(other_mode, args.max_new_tokens)
    ar, orthrus = (out, other) if mode == "ar" else (other, out)
    seconds = {m: o.prefill_s + o.decode_s for m, o in (("ar", ar), ("orthrus", orthrus))}
    same = "identical" if ar.tokens == orthrus.tokens else "DIFFERENT"
    note = " (sampling: only the distributions are equal, not the tokens)" if not sampling.greedy else ""
    print(f"[compare] outputs {same}{note}: ar {len(ar.tokens)} tokens in {seconds['ar']:.2f} s, orthrus "
          f"{len(orthrus.tokens)} tokens in {seconds['orthrus']:.2f} s; speedup {seconds['ar'] / seconds['orthrus']:.2f}x",
          file=sys.stderr)
    if args.stats:
        print_stats(other_mode, other)


def run(args) -> int:
    """Loads the model, generates, streams text to stdout and a timing line to stderr."""
    import torch

    from .ar import generate_ar
    from .consensus import ConsensusCheckError, generate_orthrus
    from .model import Qwen3Config, load_model, resolve_checkpoint
    from .sampling import SamplingParams
    from .tokenizer import Tokenizer

    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)  # validates before the slow load
    if args.max_new_tokens < 1:
        raise OrthrusError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    folder = resolve_checkpoint(args.model if args.model is not None else default_model())
    mode = choose_mode(args, Qwen3Config.from_json(folder / "config.json"))
    tokenizer = Tokenizer(folder)
    prompt_ids = read_prompt(args, tokenizer)
    model = load_model(folder, dtype=args.dtype, device=args.device, attn=None if args.attn == "auto" else args.attn)
    if args.seed is not None:
        torch.manual_seed(args.seed)

    stream = tokenizer.stream_decoder()

    def on_tokens_stdout(row: int, ids: list[int]) -> None:
        sys.stdout.write(stream.push(ids))
        sys.stdout.flush()

    def decode(mode: str, max_new_tokens: int, stream_out: bool = False):
        """One generation in `mode`; with stream_out, its text streams to stdout."""
        on_tokens = on_tokens_stdout if stream_out else None
        if mode == "ar":
            out = generate_ar(model, prompt_ids, max_new_tokens, sampling, on_tokens=on_tokens)
        else:
            out = generate_orthrus(model, prompt_ids, max_new_tokens, sampling, block_size=args.block_size,
                                   on_tokens=on_tokens, check=args.check)
        if stream_out:
            sys.stdout.write(stream.flush() + "\n")
            sys.stdout.flush()
        return out

    try:
        report(args, mode, decode, sampling, len(prompt_ids))
    except ConsensusCheckError as e:  # a decoder bug, not bad input
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except OrthrusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
