"""Benchmarks: ratios measured side by side in one run, on the same weights and prompt.

    python -m orthrus_min.bench random-model --preset small --out /tmp/qwen3-small   # a random Qwen3 to measure on
    python -m orthrus_min.bench ar --model /tmp/qwen3-small                          # ours vs Transformers, AR decode
    python -m orthrus_min.bench attn                                                 # the Triton kernel (needs CUDA)

`ar` alternates the two implementations (warm-up first, then `--repeats` rounds) and
reports the median tokens/s of each, their ratio, and whether the greedy outputs agree.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from .errors import OrthrusError

PRESETS = {
    # name: config fields of a random Qwen3 (vocab is Qwen3's real 151,936 only for the 1.7B shape)
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, tie_word_embeddings=True),
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
}


def make_random_model(preset: str, out: Path, seed: int = 0) -> Path:
    """Writes a random Qwen3 checkpoint (config.json + model.safetensors) of a preset shape to `out`."""
    from .model import Qwen3Config, Qwen3ForCausalLM, save_model

    fields = dict(model_type="qwen3", max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1e6, eos_token_id=1,
                  **PRESETS[preset])
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embed" in name else 0.02)
    save_model(model, out)
    return out


def transformers_reference(folder: Path, dtype: torch.dtype):
    """Transformers' Qwen3ForCausalLM with the AR weights of a checkpoint (an Orthrus one too: *_diff tensors are skipped)."""
    from safetensors.torch import load_file
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM as HFModel

    from .model import Qwen3Config, safetensors_files

    cfg = Qwen3Config.from_json(folder / "config.json").to_dict()
    for key in ("model_type", "block_size", "mask_token_id"):
        cfg.pop(key, None)
    model = HFModel(HFConfig(**cfg)).to(dtype).eval()
    state = {}
    for f in safetensors_files(folder):
        state.update({k: v for k, v in load_file(f).items() if "_diff" not in k})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


def machine_line() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    import transformers

    return f"{dev}; Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"


def bench_ar(args) -> dict:
    """Our AR decode vs Transformers `generate` (greedy, same weights, same prompt, same token count)."""
    from .ar import generate_ar
    from .model import load_model, resolve_checkpoint, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_checkpoint(args.model)
    ours = load_model(folder, dtype=dtype, device=device, attn="torch")
    ref = transformers_reference(folder, dtype).to(device)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, ours.config.vocab_size, (1, args.prompt_len), generator=g).to(device)  # (1, P)
    n = args.new_tokens

    def run_ours():
        return generate_ar(ours, prompt[0].tolist(), n, ignore_eos=True).tokens

    def run_ref():
        out = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, args.prompt_len:].tolist()

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            tokens = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return tokens, time.perf_counter() - t

    for fn in (run_ours, run_ref):  # warm-up
        timed(fn)
    ours_tps, ref_tps = [], []
    for _ in range(args.repeats):  # alternate so both see the same machine noise
        a, ta = timed(run_ours)
        b, tb = timed(run_ref)
        ours_tps.append(n / ta)
        ref_tps.append(n / tb)
    result = {
        "model": str(args.model), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "prompt_len": args.prompt_len, "new_tokens": n, "repeats": args.repeats, "machine": machine_line(),
        "ours_tokens_per_s": statistics.median(ours_tps), "transformers_tokens_per_s": statistics.median(ref_tps),
        "identical_output": a == b,
    }
    result["ratio"] = result["ours_tokens_per_s"] / result["transformers_tokens_per_s"]
    print(f"# bench ar — {result['machine']}")
    print(f"model {args.model}, {result['dtype']} on {device}, prompt {args.prompt_len} tokens, {n} new tokens, median of {args.repeats}\n")
    print("| implementation | decode tokens/s |")
    print("|---|---|")
    print(f"| transformers generate | {result['transformers_tokens_per_s']:.1f} |")
    print(f"| orthrus_min AR | {result['ours_tokens_per_s']:.1f} |")
    print(f"\nratio (orthrus_min / transformers): {result['ratio']:.2f}x; identical greedy output: {result['identical_output']}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orthrus_min.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ar = sub.add_parser("ar", help="our AR decode vs Transformers generate, tokens/s and ratio")
    ar.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    ar.add_argument("--prompt-len", type=int, default=32, help="prompt length in tokens (random ids)")
    ar.add_argument("--new-tokens", type=int, default=128, help="tokens generated per run (EOS ignored)")
    ar.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up; the median is reported")
    ar.add_argument("--device", default="auto")
    ar.add_argument("--dtype", default="auto")
    ar.add_argument("--json", type=Path, help="also write the result as JSON here")
    rm = sub.add_parser("random-model", help="write a random Qwen3 checkpoint of a preset shape (to benchmark on)")
    rm.add_argument("--preset", choices=list(PRESETS), default="small")
    rm.add_argument("--out", type=Path, required=True)
    sub.add_parser("attn", help="the Triton block-attention kernel vs SDPA and flex_attention (CUDA only)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attn"]:
        from .bench_attn import main as attn_main

        return attn_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "random-model":
            make_random_model(args.preset, args.out)
            print(f"wrote a random {args.preset} Qwen3 to {args.out}")
            return 0
        result = bench_ar(args)
    except OrthrusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
