"""Command line: generate text with a Qwen3 / Orthrus checkpoint.

    python -m orthrus_min.generate --model Qwen/Qwen3-0.6B --prompt "def fib(n):" --max-new-tokens 64
    python -m orthrus_min.generate --model DIR --chat --prompt "Explain RoPE in one paragraph."

The continuation streams to stdout; timing goes to stderr. Bad input prints one
line `error: …` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import OrthrusError

MODES = ("ar",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orthrus_min.generate", description="Generate text with a Qwen3 / Orthrus checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder, or a Hugging Face Hub id such as chiennv/Orthrus-Qwen3-1.7B")
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
    p.add_argument("--mode", default=None, choices=MODES, help="decoding mode: ar = one token per forward")
    return p


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


def run(args) -> int:
    """Loads the model, generates, streams text to stdout and a timing line to stderr."""
    import torch

    from .ar import generate_ar
    from .model import load_model, resolve_checkpoint
    from .sampling import SamplingParams
    from .tokenizer import Tokenizer

    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)  # validates before the slow load
    if args.max_new_tokens < 1:
        raise OrthrusError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    folder = resolve_checkpoint(args.model)
    tokenizer = Tokenizer(folder)
    prompt_ids = read_prompt(args, tokenizer)
    model = load_model(folder, dtype=args.dtype, device=args.device, attn=None if args.attn == "auto" else args.attn)
    if args.seed is not None:
        torch.manual_seed(args.seed)

    stream = tokenizer.stream_decoder()

    def on_tokens(ids: list[int]) -> None:
        sys.stdout.write(stream.push(ids))
        sys.stdout.flush()

    out = generate_ar(model, prompt_ids, args.max_new_tokens, sampling, on_tokens=on_tokens)
    sys.stdout.write(stream.flush() + "\n")
    sys.stdout.flush()
    print(f"[ar] {len(out.tokens)} tokens in {out.prefill_s + out.decode_s:.2f} s: {out.tokens_per_second:.1f} tokens/s "
          f"(prompt {len(prompt_ids)} tokens, time to first token {out.prefill_s * 1000:.0f} ms, stop: {out.finish_reason})",
          file=sys.stderr)
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
