"""Benchmarks: every performance claim, measured side by side in one run, on the same weights and prompts.

    python -m orthrus_min.bench all                                  # the shipped model: everything below, one report
    python -m orthrus_min.bench orthrus --model DIR --prompts FILE   # our AR vs Orthrus (greedy, T=0.7) + sweeps
    python -m orthrus_min.bench ar --model DIR                       # our AR vs Transformers generate, random prompt
    python -m orthrus_min.bench forward --model DIR                  # one forward of 1 vs K tokens; decode vs roofline
    python -m orthrus_min.bench random-model --preset qwen3-1.7b --out /tmp/qwen3-1.7b   # a random Qwen3 to time
    python -m orthrus_min.bench attn                                 # the Triton kernel (needs CUDA)
    python -m orthrus_min.bench all --smoke                          # seconds: 1 prompt, few tokens, tiny sweeps

`orthrus` and `all` (bench_decode.py) decode every prompt with each method — Transformers
`generate` (greedy; `all` only), our AR and Orthrus, each greedy and at temperature 0.7
(seeded) — interleaved, after warm-up runs, and report the median of `--repeats` per
prompt and overall: tokens/s, time to first token, tokens per forward, acceptance length
(mean and histogram), peak memory, and whether the greedy outputs are identical (Orthrus vs
our AR, our AR vs Transformers). Then two sweeps of Orthrus greedy against our AR: by block
size (4, 8, 16, 32, clipped to the checkpoint's block_size) and by context length (each
prompt prefixed with other prompts' text to reach 128, 512, 1024, … tokens). `all` adds the
per-forward latency table of `forward` (bench_forward.py). Output: a markdown report on
stdout, a JSON file (`--json`, default OUT/bench_<command>.json) and a PNG plot of
acceptance length and speedup by block size and by context length (OUT/bench_<command>.png).

Prompt files (`--prompts FILE`) are JSONL, one object per line (blank lines are skipped):

    {"id": "fib", "prompt": "def fibonacci(n):\\n"}
    {"prompt": "Write a Python function that reverses a linked list.", "chat": true}

"prompt" (required) is the text; "id" (optional) names it in the report; "chat": true
(optional) renders it as a user turn with the checkpoint's chat template ("enable_thinking":
false is passed on to the template). Default: `heldout_prompts.jsonl` in the model folder,
else the shipped model's held-out prompts.

Peak memory is CUDA's max_memory_allocated on a GPU; on CPU it is the process's peak RSS
(resource.getrusage), which only ever grows over the process: a row shows the peak so far.
Absolute times mean something only on a GPU; ratios from one run are the result (docs/ARCHITECTURE.md, "Performance model").
On a CPU shared with other work, `--threads 1` avoids OpenMP's costly waits for busy cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from statistics import median

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


# --------------------------------------------------------------------------- shared by every sub-command


def transformers_reference(folder: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """Transformers' Qwen3ForCausalLM on `device` with the AR weights of a checkpoint (an Orthrus one too: *_diff tensors are skipped)."""
    from safetensors.torch import load_file
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM as HFModel

    from .model import Qwen3Config, safetensors_files

    cfg = Qwen3Config.from_json(folder / "config.json").to_dict()
    for key in ("model_type", "block_size", "mask_token_id"):
        cfg.pop(key, None)
    with torch.device(device):  # built and initialised where it runs, not first on the CPU (slow for a 1.7B model)
        model = HFModel(HFConfig(**cfg)).to(dtype).eval()
    state = {}
    for f in safetensors_files(folder):
        state.update({k: v for k, v in load_file(f).items() if "_diff" not in k})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: device, CPU, threads, and the versions of everything that matters."""
    import transformers

    info = {"device": str(device), "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def machine_line(info: dict) -> str:
    dev = info.get("gpu") or f"CPU ({info['cpu']}), {info['cpu_threads']} threads"
    extra = f", CUDA {info['cuda']}, triton {info['triton']}" if info.get("gpu") else ""
    return f"{dev}; Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}{extra}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(fn(), wall-clock seconds), the device synchronized before and after; under inference_mode."""
    synchronize(device)
    t = time.perf_counter()
    with torch.inference_mode():
        result = fn()
    synchronize(device)
    return result, time.perf_counter() - t


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max memory allocated since the last reset. CPU: the process's peak RSS so far (never decreases)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # Unix only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated per method (reset before each run)"
    return "process peak RSS (resource.getrusage; monotone over the process: each value is the peak so far)"


class FirstTokenClock:
    """A Transformers streamer that notes when the first new token arrives: time to first token.

    `generate` calls put() with the prompt, then with each new token (already copied to the CPU,
    so the device has finished it); only the second call is timed, so the overhead is one call per token.
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.first = None
        self.calls = 0

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass

    @property
    def ttft_s(self) -> float:
        return (self.first or time.perf_counter()) - self.start


def hf_generate(ref, prompt_ids: list[int], n: int, eos: list[int] | None):
    """Greedy Transformers `generate` of up to n tokens -> (new token ids, time to first token in s).

    eos None: EOS is ignored (exactly n tokens); else generation stops at (and emits) the first id in eos.
    """
    ids = torch.tensor([prompt_ids], device=ref.device)  # (1, P)
    clock = FirstTokenClock()
    out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                       pad_token_id=0, streamer=clock)
    return out[0, len(prompt_ids):].tolist(), clock.ttft_s


def compile_forward(model, mode: str = "default") -> None:
    """torch.compile the model's forward, in this one place (shapes change every step: dynamic=True)."""
    model.forward = torch.compile(model.forward, dynamic=True, mode=mode)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two token lists differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# --------------------------------------------------------------------------- ar: ours vs Transformers, random prompt


def bench_ar(args) -> dict:
    """Our AR decode vs Transformers `generate` (greedy, same weights, same random prompt, same token count)."""
    from .ar import generate_ar
    from .model import load_model, resolve_checkpoint, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_checkpoint(args.model)
    ours = load_model(folder, dtype=dtype, device=device, attn="torch")
    ref = transformers_reference(folder, dtype, device)
    if args.compile:
        compile_forward(ours, args.compile_mode)
        compile_forward(ref, args.compile_mode)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, ours.config.vocab_size, (args.prompt_len,), generator=g).tolist()
    n = args.new_tokens
    run_ours = lambda: generate_ar(ours, prompt, n, ignore_eos=True).tokens  # noqa: E731
    run_ref = lambda: hf_generate(ref, prompt, n, eos=None)[0]  # noqa: E731

    for fn in (run_ours, run_ref):  # warm-up
        timed(fn, device)
    ours_tps, ref_tps = [], []
    for _ in range(args.repeats):  # alternate so both see the same machine noise
        a, ta = timed(run_ours, device)
        b, tb = timed(run_ref, device)
        ours_tps.append(n / ta)
        ref_tps.append(n / tb)
    info = machine_info(device)
    result = {
        "command": "ar", "model": str(args.model), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "compile": args.compile, "prompt_len": args.prompt_len, "new_tokens": n, "repeats": args.repeats,
        "machine": machine_line(info), "machine_info": info,
        "ours_tokens_per_s": median(ours_tps), "transformers_tokens_per_s": median(ref_tps), "identical_output": a == b,
    }
    result["ratio"] = result["ours_tokens_per_s"] / result["transformers_tokens_per_s"]
    print(f"# bench ar — {result['machine']}")
    print(f"model {args.model}, {result['dtype']} on {device}{', compiled' if args.compile else ''}, prompt {args.prompt_len} "
          f"random tokens, {n} new tokens, median of {args.repeats}\n")
    print("| implementation | tokens/s |")
    print("|---|---|")
    print(f"| transformers generate | {result['transformers_tokens_per_s']:.1f} |")
    print(f"| orthrus_min AR | {result['ours_tokens_per_s']:.1f} |")
    print(f"\nratio (orthrus_min / transformers): {result['ratio']:.2f}x; identical greedy output: {result['identical_output']}")
    return result


# --------------------------------------------------------------------------- command line


def ints(text: str) -> list[int]:
    """'4,8,16' -> [4, 8, 16]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_common(sp: argparse.ArgumentParser) -> None:
    from .model import DEFAULT_MODEL

    sp.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder or Hub id (default: the shipped model)")
    sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto")
    sp.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto (bfloat16 on CUDA, float32 on CPU)")
    sp.add_argument("--compile", action="store_true", help="torch.compile the model forward (ours and Transformers'; compile time "
                                                          "is paid in the warm-up runs); off by default")
    sp.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                    help="torch.compile mode with --compile (reduce-overhead: CUDA graphs, one per shape)")
    sp.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    sp.add_argument("--repeats", type=int, default=None, help="timed rounds after the warm-up; the median is reported (default 5; smoke 1)")
    sp.add_argument("--json", type=Path, help="write the result as JSON here")


def add_decode_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--prompts", type=Path, help="JSONL prompt file (format above); default: heldout_prompts.jsonl of the model, "
                                                  "else of the shipped model")
    sp.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts (default all; smoke 1)")
    sp.add_argument("--new-tokens", type=int, default=None, help="tokens generated per run (default 128; smoke 8)")
    sp.add_argument("--block-size", type=int, default=None, help="K of the main table (default: the checkpoint's block_size)")
    sp.add_argument("--temperature", type=float, default=0.7, help="temperature of the sampled Orthrus row")
    sp.add_argument("--seed", type=int, default=0, help="seed of the sampled Orthrus row (the same for every repeat)")
    sp.add_argument("--stop-at-eos", action="store_true", help="stop at EOS (default: ignore it, so every run decodes --new-tokens)")
    sp.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"), help="our attention backend (auto: triton on CUDA)")
    sp.add_argument("--warmup", type=int, default=1, help="untimed runs of every method before each table and each sweep point")
    sp.add_argument("--block-sizes", type=ints, default=None, help="block-size sweep (default 4,8,16,32; clipped to the checkpoint's)")
    sp.add_argument("--sweep-prompts", type=int, default=None, help="prompts in the block-size sweep (default: all)")
    sp.add_argument("--context-lengths", type=ints, default=None,
                    help="context-length sweep, prompt tokens (default 128,512,1024,2048,… up to what the model allows)")
    sp.add_argument("--context-prompts", type=int, default=None, help="prompts per context length (default 4; smoke 1)")
    sp.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON and the PNG plot")
    sp.add_argument("--smoke", action="store_true", help="seconds: 1 prompt, 8 tokens, 1 repeat, tiny sweeps (for tests)")


def add_forward_args(sp: argparse.ArgumentParser, decode: bool) -> None:
    sp.add_argument("--lengths", type=ints, default=None, help="cache lengths L (default 128,1024,4096,16384, clipped to the context)")
    sp.add_argument("--tokens", type=ints, default=None, help="tokens per forward T (default 1,4,8,16,32)")
    sp.add_argument("--iters", type=int, default=None, help="timed forwards per cell (median; default 20, smoke 3)")
    sp.add_argument("--copy-mib", type=int, default=None, help="MiB copied to measure memory bandwidth (default 1024 on CUDA, 256 on CPU)")
    if decode:  # `forward` alone also times AR decoding on a random prompt
        sp.add_argument("--prompt-len", type=int, default=None, help="random prompt tokens for the decode timing (default 128; smoke 8)")
        sp.add_argument("--new-tokens", type=int, default=None, help="tokens decoded per run (default 128; smoke 8)")
        sp.add_argument("--no-transformers", action="store_true", help="skip Transformers generate in the decode timing")
        sp.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"), help="our attention backend")
        sp.add_argument("--smoke", action="store_true", help="seconds: tiny lengths, few iterations (for tests)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="python -m orthrus_min.bench", description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)
    ar = sub.add_parser("ar", help="our AR decode vs Transformers generate on a random prompt: tokens/s and ratio")
    add_common(ar)
    ar.add_argument("--prompt-len", type=int, default=32, help="prompt length in tokens (random ids)")
    ar.add_argument("--new-tokens", type=int, default=128, help="tokens generated per run (EOS ignored)")
    prompt_help = __doc__[__doc__.index("Prompt files"):__doc__.index("Peak memory")]
    for name, help_ in (("orthrus", "our AR vs Orthrus greedy and sampled, per prompt, plus block-size and context sweeps"),
                        ("all", "orthrus + Transformers generate + the per-forward latency table: the whole report")):
        sp = sub.add_parser(name, help=help_, description=help_ + ".\n\n" + prompt_help, formatter_class=fmt)
        add_common(sp)
        add_decode_args(sp)
        if name == "all":
            add_forward_args(sp, decode=False)
    fw = sub.add_parser("forward", help="latency of one forward of T tokens over a cache of L (T=1 vs 32) and AR decode vs the "
                                        "memory-bandwidth roofline")
    add_common(fw)
    add_forward_args(fw, decode=True)
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
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if args.command == "random-model":
            make_random_model(args.preset, args.out)
            print(f"wrote a random {args.preset} Qwen3 to {args.out}")
            return 0
        if args.command == "ar":
            args.repeats = args.repeats or 5
            result = bench_ar(args)
        elif args.command == "forward":
            from .bench_forward import bench_forward

            result = bench_forward(args)
        else:
            from .bench_decode import bench_decode

            result = bench_decode(args)
    except OrthrusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
