"""Benchmark `ar`: our AR decode vs Transformers `generate` — greedy, same weights, same random prompt, same token count.

    python -m orthrus_min.bench ar                                  # the shipped model
    python -m orthrus_min.bench random-model --preset tiny --out /tmp/qwen3-tiny
    python -m orthrus_min.bench ar --model /tmp/qwen3-tiny --threads 1

EOS is ignored, so both decode exactly --max-new-tokens tokens. The two are interleaved after one
warm-up run each; tokens/s is the median over --repeats (docs/ARCHITECTURE.md, "Performance model":
the ratio is the result). Needs transformers.
"""

from __future__ import annotations

from statistics import median

import torch

from ..errors import OrthrusError
from .common import has_package, machine_info, machine_line, shown_path, use_default_threads
from .decoders import Decoding, ar_method, compile_mode_of, prepare_compiled, transformers_method
from .measure import measure, warm_up
from .reference import MISSING


def bench_ar(args) -> tuple[dict, str]:
    """Tokens/s of our AR decoder and of Transformers `generate`, their ratio, and whether the outputs match.
    Returns (result for the JSON, Markdown report)."""
    from ..checkpoint import load_model, resolve_checkpoint, resolve_device, resolve_dtype
    from ..config import Qwen3Config
    from .reference import transformers_reference

    if not has_package("transformers"):
        raise OrthrusError(f"bench ar compares with Transformers generate, but {MISSING}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_checkpoint(args.model)
    config = Qwen3Config.from_json(folder / "config.json")
    n = args.max_new_tokens
    if args.prompt_len + n > config.max_position_embeddings:
        raise OrthrusError(f"--prompt-len {args.prompt_len} + --max-new-tokens {n} exceeds the model's context of "
                           f"{config.max_position_embeddings}")
    ours = load_model(folder, dtype=dtype, device=device, attn="torch")
    use_default_threads(args, ours)
    ref = transformers_reference(folder, dtype, device)
    d = Decoding(n, compile_mode=compile_mode_of(args))
    prepare_compiled(ref, compile_mode_of(args, transformers=True))
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, ours.config.vocab_size, (args.prompt_len,), generator=g).tolist()

    methods = {"ar": ar_method(ours, d), "transformers": transformers_method(ref, ours, d)}
    if d.compile_mode is not None:
        methods["ar_compiled"] = ar_method(ours, d, compiled=True)
    warm_up(methods, prompt, 1, device)
    runs = measure(methods, prompt, args.repeats, device)  # interleaved, so both see the same machine noise
    rate = {name: median([n / r.seconds for r in rs]) for name, rs in runs.items()}
    info = machine_info(device)
    result = {
        "command": "ar", "model": shown_path(args.model), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "compile": args.compile, "compile_mode": d.compile_mode, "compile_transformers": args.compile_transformers,
        "prompt_len": args.prompt_len, "new_tokens": n, "repeats": args.repeats,
        "machine": machine_line(info), "machine_info": info,
        "ours_tokens_per_s": rate["ar"], "transformers_tokens_per_s": rate["transformers"],
        "identical_output": runs["ar"][-1].tokens == runs["transformers"][-1].tokens,
    }
    if "ar_compiled" in rate:
        result["ours_compiled_tokens_per_s"] = rate["ar_compiled"]
        result["compiled_identical_output"] = runs["ar_compiled"][-1].tokens == runs["ar"][-1].tokens
    result["ratio"] = result["ours_tokens_per_s"] / result["transformers_tokens_per_s"]
    compiled = f", compiled ({d.compile_mode})" if d.compile_mode else ""
    if args.compile_transformers:
        compiled += f", Transformers compiled ({args.compile_mode})"
    report = "\n".join([
        f"# bench ar — {result['machine']}",
        f"model {args.model}, {result['dtype']} on {device}{compiled}, prompt {args.prompt_len} random tokens, {n} new tokens, "
        f"median of {args.repeats}", "",
        "| implementation | tokens/s |", "|---|---|",
        f"| transformers generate | {result['transformers_tokens_per_s']:.1f} |",
        f"| orthrus_min AR | {result['ours_tokens_per_s']:.1f} |",
        *([f"| orthrus_min AR, compiled ({d.compile_mode}) | {result['ours_compiled_tokens_per_s']:.1f} |"] if d.compile_mode else []),
        "",
        f"ratio (orthrus_min / transformers): {result['ratio']:.2f}x; identical greedy output: {result['identical_output']}",
    ]) + "\n"
    return result, report
