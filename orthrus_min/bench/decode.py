"""Benchmarks `orthrus` and `all`: Transformers generate, our AR and Orthrus decoding on the same prompts, side by side.

    python -m orthrus_min.bench all                        # the shipped model and its held-out prompts
    python -m orthrus_min.bench orthrus --model DIR --prompts prompts.jsonl --max-new-tokens 256
    python -m orthrus_min.bench orthrus --smoke            # seconds: 1 prompt, 8 tokens, tiny sweeps

Measuring rules (docs/ARCHITECTURE.md, "Performance model": ratios from one run): see measure.py.
`--warmup` untimed runs of each method come first, again at each sweep point (shapes change).
Runs are timed end to end with the device synchronized; time to first token is the prefill plus
the first token's pick.

Acceptance length τ = tokens committed per Orthrus iteration (1 … K: the accepted drafts plus
the AR view's own token); its histogram counts iterations by τ. The last iteration may be cut
short by --max-new-tokens. Tokens per forward = tokens after the first / forwards after the
prefill (Orthrus: two forwards per iteration, so about τ / 2).

The report has three parts: the main table (every method on every prompt), then one section per
sweep in SWEEPS. A new sweep is a function Bench -> list of points (dicts) added to SWEEPS, plus
its table in decode_report.py; a new method is a constructor in decoders.py.

The JSON (schema_version 1): command, machine, machine_info, settings (every knob of the run);
table = {methods, prompts: [{id, prompt_tokens, methods: {name: metrics}, identical,
first_mismatch}], overall: {name: metrics}, identical_output, speedup}, where metrics =
{new_tokens, seconds, tokens_per_s, ttft_s, decode_tokens_per_s, num_forwards,
tokens_per_forward, peak_memory_mb} plus, for Orthrus, {acceptance_mean, acceptance_histogram
(index i: iterations committing i+1 tokens), iterations}; block_size_sweep and context_sweep:
lists of points {block_size | context_tokens, acceptance_mean, acceptance_histogram,
tokens_per_forward, orthrus_tokens_per_s, ar_tokens_per_s, speedup, identical_output, …};
`all` adds forward (forward.py: latency, summary, copy_bandwidth_gbs, roofline); files; argv (the
command line after `python -m orthrus_min.bench`, added by cli.py; `bench report` prints it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OrthrusError
from .common import (first_mismatch, has_package, machine_info, machine_line, memory_kind, progress, shown_path,
                     use_default_threads)
from .decoders import (Decoding, Method, ar_method, batch_method, compile_mode_of, mlx_method, orthrus_method, prepare_compiled,
                       transformers_method)
from .measure import measure, pool, summarize, warm_up
from ..prompts import Prompt, default_prompts_file, encode_prompt, read_prompt_file
from .reference import MISSING

FULL = dict(max_prompts=None, max_new_tokens=128, repeats=5, block_sizes=[4, 8, 16, 32], sweep_prompts=None,
            context_lengths=[128, 512, 1024, 2048, 4096, 8192, 16384, 32768], context_prompts=4, batch_sizes=[1, 2, 4, 8, 16])
SMOKE = dict(max_prompts=1, max_new_tokens=8, repeats=1, block_sizes=[4, 8], sweep_prompts=1, context_lengths=[32, 64],
             context_prompts=1, batch_sizes=[1, 2])


@dataclass
class Bench:
    """What every table and sweep of one run works with."""

    model: torch.nn.Module
    ref: torch.nn.Module | None  # Transformers' model (`all` with transformers installed), else None
    tokenizer: object
    prompts: list[Prompt]  # the prompts of the main table (those that fit, at most --max-prompts)
    all_prompts: list[Prompt]  # every prompt of the file (the context sweep's filler)
    s: dict  # settings (settings_from)
    decoding: Decoding
    device: torch.device
    folder: Path | None = None  # the checkpoint folder (MLX rows load it themselves)
    mlx: bool = False  # add the MLX backend's rows to the main table


# --------------------------------------------------------------------------- the main table


def main_methods(b: Bench) -> dict[str, Method]:
    """The methods of the main table, in report order (Transformers first when there is a reference; with --compile
    our greedy decoders also compiled; with --backend mlx the MLX backend's greedy decoders)."""
    d, K = b.decoding, b.s["block_size"]
    methods = {"transformers": transformers_method(b.ref, b.model, d)} if b.ref is not None else {}
    methods.update(ar=ar_method(b.model, d), orthrus_greedy=orthrus_method(b.model, d, K))
    if d.compile_mode is not None:
        methods.update(ar_compiled=ar_method(b.model, d, compiled=True), orthrus_compiled=orthrus_method(b.model, d, K, compiled=True))
    methods.update(ar_sampled=ar_method(b.model, d, sampled=True), orthrus_sampled=orthrus_method(b.model, d, K, sampled=True))
    if b.mlx:
        methods.update(mlx_ar=mlx_method(b.folder, d, None), mlx_orthrus=mlx_method(b.folder, d, K))
    return methods


def main_table(b: Bench) -> dict:
    """Every method on every prompt: per-prompt and overall metrics, identical-output checks, speedups."""
    K = b.s["block_room"]  # histogram bins: the largest block a run may use
    methods = main_methods(b)
    names = list(methods)
    encoded = [encode_prompt(p, b.tokenizer) for p in b.prompts]
    warm_up(methods, encoded[0], b.s["warmup"], b.device)
    per_prompt = []
    for i, (prompt, ids) in enumerate(zip(b.prompts, encoded)):
        progress(f"prompt {i + 1}/{len(b.prompts)} ({prompt.id}, {len(ids)} tokens)")
        runs = measure(methods, ids, b.s["repeats"], b.device)
        record = {"id": prompt.id, "prompt_tokens": len(ids), "methods": {name: summarize(r, K) for name, r in runs.items()}}
        ar_tokens = runs["ar"][-1].tokens
        record["first_mismatch"] = {f"{name}_vs_ar": first_mismatch(runs[name][-1].tokens, ar_tokens)
                                    for name in ("orthrus_greedy", "ar_compiled", "orthrus_compiled", "mlx_ar", "mlx_orthrus")
                                    if name in runs}
        if "transformers" in runs:
            record["first_mismatch"]["ar_vs_transformers"] = first_mismatch(ar_tokens, runs["transformers"][-1].tokens)
        record["identical"] = {k: v is None for k, v in record["first_mismatch"].items()}
        per_prompt.append(record)
    overall = {name: pool([p["methods"][name] for p in per_prompt], K) for name in names}
    identical = {k: all(p["identical"][k] for p in per_prompt) for k in per_prompt[0]["identical"]}
    rate = {name: overall[name]["tokens_per_s"] for name in names}
    speedup = {"orthrus_greedy_vs_ar": rate["orthrus_greedy"] / rate["ar"],
               "orthrus_sampled_vs_ar_sampled": rate["orthrus_sampled"] / rate["ar_sampled"]}
    if "transformers" in rate:
        speedup["ar_vs_transformers"] = rate["ar"] / rate["transformers"]
        speedup["orthrus_greedy_vs_transformers"] = rate["orthrus_greedy"] / rate["transformers"]
    if "orthrus_compiled" in rate:
        speedup["orthrus_compiled_vs_ar"] = rate["orthrus_compiled"] / rate["ar"]
        speedup["orthrus_compiled_vs_ar_compiled"] = rate["orthrus_compiled"] / rate["ar_compiled"]
        speedup["ar_compiled_vs_ar"] = rate["ar_compiled"] / rate["ar"]
        if "transformers" in rate:
            speedup["orthrus_compiled_vs_transformers"] = rate["orthrus_compiled"] / rate["transformers"]
    if "mlx_orthrus" in rate:
        speedup["mlx_orthrus_vs_mlx_ar"] = rate["mlx_orthrus"] / rate["mlx_ar"]
    return {"methods": names, "prompts": per_prompt, "overall": overall, "identical_output": identical, "speedup": speedup}


# --------------------------------------------------------------------------- sweeps


def versus_ar(method: str, K: int, per_prompt: list[dict]) -> dict:
    """One sweep point: Orthrus (`method`'s runs) against our AR ("ar"), pooled over the prompts' runs."""
    ar = pool([summarize(runs["ar"], None) for runs in per_prompt], None)
    o = pool([summarize(runs[method], K) for runs in per_prompt], K)
    return {"acceptance_mean": o["acceptance_mean"], "acceptance_histogram": o["acceptance_histogram"],
            "tokens_per_forward": o["tokens_per_forward"], "orthrus_tokens_per_s": o["tokens_per_s"],
            "ar_tokens_per_s": ar["tokens_per_s"], "speedup": o["tokens_per_s"] / ar["tokens_per_s"],
            "ar_ttft_s": ar["ttft_s"], "orthrus_ttft_s": o["ttft_s"],
            "identical_output": all(runs[method][-1].tokens == runs["ar"][-1].tokens for runs in per_prompt)}


def block_size_sweep(b: Bench) -> list[dict]:
    """Orthrus greedy at each block size against our AR, interleaved on the same prompts."""
    prompts = b.prompts[: b.s["sweep_prompts"]] if b.s["sweep_prompts"] else b.prompts
    ids = [encode_prompt(p, b.tokenizer) for p in prompts]
    compiled = b.decoding.compile_mode is not None
    methods = {"ar": ar_method(b.model, b.decoding)}
    if compiled:
        methods["ar_compiled"] = ar_method(b.model, b.decoding, compiled=True)
    for K in b.s["block_sizes"]:
        methods[f"K={K}"] = orthrus_method(b.model, b.decoding, K)
        if compiled:
            methods[f"K={K} compiled"] = orthrus_method(b.model, b.decoding, K, compiled=True)
    warm_up(methods, ids[0], b.s["warmup"], b.device)
    per_prompt = []
    for i, prompt_ids in enumerate(ids):
        progress(f"block-size sweep: prompt {i + 1}/{len(ids)}")
        per_prompt.append(measure(methods, prompt_ids, b.s["repeats"], b.device))
    points = []
    for K in b.s["block_sizes"]:
        point = {"block_size": K, **versus_ar(f"K={K}", K, per_prompt)}
        if compiled:  # the compiled decoder at this K, against our eager and our compiled AR
            c = versus_ar(f"K={K} compiled", K, per_prompt)
            ar_compiled = pool([summarize(runs["ar_compiled"], None) for runs in per_prompt], None)["tokens_per_s"]
            point["compiled"] = {"orthrus_tokens_per_s": c["orthrus_tokens_per_s"], "speedup_vs_ar": c["speedup"],
                                 "ar_compiled_tokens_per_s": ar_compiled,
                                 "speedup_vs_ar_compiled": c["orthrus_tokens_per_s"] / ar_compiled,
                                 "identical_output": c["identical_output"]}
        points.append(point)
    return points


def long_prompt(prompts: list[Prompt], i: int, length: int, tokenizer) -> tuple[list[int], bool]:
    """Prompt i preceded by the other prompts' text (in file order from i+1, wrapping) -> (ids, filler_repeated).

    About `length` tokens (exactly, for a raw prompt): the text's last tokens, so prompt i ends it.
    filler_repeated: the other prompts were too short and had to be used more than once.
    """
    others = [p.text for p in prompts[i + 1:] + prompts[:i]] or [prompts[i].text]
    overhead = len(encode_prompt(prompts[i], tokenizer)) - len(tokenizer.encode(prompts[i].text))  # the chat template's tokens
    want = max(1, length - overhead)
    sizes = [len(tokenizer.encode(t)) + 1 for t in others]  # about what each adds (plus a newline)
    filler, ids = [], tokenizer.encode(prompts[i].text)
    estimate = len(ids)
    while len(ids) < want:
        while estimate < want:  # the nearest neighbour (prompt i+1) goes right before the prompt, the next before it, …
            filler.insert(0, others[len(filler) % len(others)])
            estimate += sizes[(len(filler) - 1) % len(others)]
        ids = tokenizer.encode("\n".join(filler + [prompts[i].text]))
        estimate = len(ids)  # still short (BPE merged across the joins): add more
    repeated = len(filler) > len(others)
    ids = ids[-want:]
    if prompts[i].chat:
        ids = encode_prompt(prompts[i], tokenizer, tokenizer.decode(ids))
    return ids, repeated


def context_sweep(b: Bench) -> list[dict]:
    """Orthrus greedy against our AR at growing prompt lengths (prompts prefixed with other prompts' text)."""
    K, n = b.s["block_size"], b.s["new_tokens"]
    methods = {"ar": ar_method(b.model, b.decoding), "orthrus_greedy": orthrus_method(b.model, b.decoding, K)}
    K = b.s["block_room"]
    points = []
    for length in b.s["context_lengths"]:
        built = [long_prompt(b.all_prompts, i, length, b.tokenizer) for i in range(min(b.s["context_prompts"], len(b.all_prompts)))]
        built = [(ids, rep) for ids, rep in built if len(ids) + n + K <= b.model.config.max_position_embeddings]
        if not built:
            continue
        warm_up(methods, built[0][0], b.s["warmup"], b.device)
        per_prompt = []
        for i, (ids, _) in enumerate(built):
            progress(f"context sweep: {length} tokens, prompt {i + 1}/{len(built)}")
            per_prompt.append(measure(methods, ids, b.s["repeats"], b.device))
        points.append({"context_tokens": length, "prompt_tokens": [len(ids) for ids, _ in built],
                       "filler_repeated": any(rep for _, rep in built), **versus_ar("orthrus_greedy", K, per_prompt)})
    return points


def batch_size_sweep(b: Bench) -> list[dict]:
    """AR and Orthrus greedy (K = the main block size) on batches of B prompts decoded together, eager (and compiled
    with --compile): throughput, acceptance, tokens per forward; every Orthrus row must equal its AR row.
    A batch of B holds the first B prompts (repeated from the first when B exceeds them)."""
    K = b.s["block_size"]
    ids = [encode_prompt(p, b.tokenizer) for p in b.prompts]
    variants = [("", False)] + ([(" compiled", True)] if b.decoding.compile_mode is not None else [])
    points = []
    for B in b.s["batch_sizes"]:
        batch = [ids[i % len(ids)] for i in range(B)]  # the prompts in file order, again from the first when B is larger
        methods = {}
        for suffix, compiled in variants:
            methods["ar" + suffix] = batch_method(b.model, b.decoding, None, compiled)
            methods["orthrus" + suffix] = batch_method(b.model, b.decoding, K, compiled)
        warm_up(methods, batch, b.s["warmup"], b.device)
        progress(f"batch-size sweep: B = {B}")
        runs = measure(methods, batch, b.s["repeats"], b.device)
        point = {"batch_size": B, "repeated_prompts": B > len(ids)}
        for name, rs in runs.items():
            last = rs[-1]
            seconds = summarize(rs, b.s["block_room"])["seconds"]
            rows_forwards = last.num_forwards * B
            point[name] = {"tokens_per_s": len(last.tokens) / seconds, "seconds": seconds,
                           "acceptance_mean": sum(last.accepted) / len(last.accepted) if last.accepted else None,
                           "tokens_per_forward": (len(last.tokens) - B) / last.num_forwards if last.num_forwards else None,
                           "row_tokens_per_forward": (len(last.tokens) - B) / rows_forwards if rows_forwards else None}
        for suffix, _ in variants:
            # like with like: eager Orthrus against eager AR, compiled against compiled
            point["orthrus" + suffix]["speedup_vs_ar"] = point["orthrus" + suffix]["tokens_per_s"] / point["ar" + suffix]["tokens_per_s"]
            point["orthrus" + suffix]["identical_output"] = runs["orthrus" + suffix][-1].rows == runs["ar"][-1].rows
        points.append(point)
    return points


SWEEPS: dict[str, Callable[[Bench], list[dict]]] = {  # JSON key: sweep, run in this order after the main table
    "block_size_sweep": block_size_sweep,
    "context_sweep": context_sweep,
    "batch_size_sweep": batch_size_sweep,
}


# --------------------------------------------------------------------------- the command


def settings_from(args, config) -> dict:
    """The run's settings: flags, else the FULL (or SMOKE) defaults, clipped to what the checkpoint allows."""
    from ..config import require_diffusion_view, resolve_block_size

    require_diffusion_view(config)
    table = SMOKE if args.smoke else FULL

    def pick(name: str):
        value = getattr(args, name)
        return table[name] if value is None else value

    s = {"max_prompts": pick("max_prompts"), "new_tokens": pick("max_new_tokens"), "repeats": pick("repeats"),
         "block_sizes": pick("block_sizes"), "sweep_prompts": pick("sweep_prompts"), "context_lengths": pick("context_lengths"),
         "context_prompts": pick("context_prompts"), "batch_sizes": pick("batch_sizes")}
    K = resolve_block_size(config, "auto" if args.block_size is None else args.block_size)
    s.update(block_size=K, temperature=args.temperature, seed=args.seed, stop_at_eos=args.stop_at_eos, warmup=args.warmup)
    K = s["block_room"] = config.block_size if K == "auto" else K  # the largest block a run may use
    s["block_sizes"] = [k for k in s["block_sizes"] if k <= config.block_size] or [K]
    room = config.max_position_embeddings - s["new_tokens"] - K
    if room < 1:
        raise OrthrusError(f"--max-new-tokens {s['new_tokens']} and a block of {K} leave no room for a prompt in the model's "
                           f"context of {config.max_position_embeddings} tokens")
    too_long = [L for L in s["context_lengths"] if L > room]
    if too_long and args.context_lengths is not None:  # the defaults are clipped; a length asked for is not dropped
        raise OrthrusError(f"--context-lengths {','.join(map(str, too_long))}: the model's context of "
                           f"{config.max_position_embeddings} tokens leaves room for prompts of at most {room} tokens "
                           f"(with --max-new-tokens {s['new_tokens']} and a block of {K})")
    s["context_lengths"] = [L for L in s["context_lengths"] if L <= room]
    if args.context_lengths is None and not args.smoke and room > max(s["context_lengths"], default=0):
        s["context_lengths"].append(room)  # the longest prompt the model allows, as the last point
    return s


def select_prompts(prompts: list[Prompt], tokenizer, s: dict, context: int) -> tuple[list[Prompt], list[dict]]:
    """(the prompts that leave room for the new tokens and one block, at most max_prompts; the skipped ones as {id, prompt_tokens})."""
    selected, skipped = [], []
    for prompt in prompts:
        num = len(encode_prompt(prompt, tokenizer))
        if num + s["new_tokens"] + s["block_room"] <= context:
            selected.append(prompt)
        else:
            skipped.append({"id": prompt.id, "prompt_tokens": num})
    if skipped:
        progress(f"skipping {len(skipped)} prompt(s) too long for the context with {s['new_tokens']} new tokens: "
                 + ", ".join(x["id"] for x in skipped))
    if not selected:
        raise OrthrusError(f"no prompt fits the model's context of {context} tokens with {s['new_tokens']} new tokens and a "
                           f"block of {s['block_room']} (try a smaller --max-new-tokens)")
    return (selected[: s["max_prompts"]] if s["max_prompts"] else selected), skipped


def bench_decode(args) -> tuple[dict, str]:
    """`bench orthrus` / `bench all`: the main table and the sweeps (and, for `all`, the forward section); writes the plot
    to OUT/bench_<command>.png when matplotlib is installed. Returns (result for the JSON, Markdown report)."""
    from ..checkpoint import load_model, num_parameters, resolve_checkpoint, resolve_device, resolve_dtype
    from ..config import Qwen3Config
    from ..tokenizer import Tokenizer
    from .decode_report import decode_report, plot
    from .forward import forward_report, forward_section, forward_settings, roofline

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.backend == "mlx":
        from ..mlx import require_mlx

        require_mlx()  # a one-line error naming the extra to install, before any work
    folder = resolve_checkpoint(args.model)
    config = Qwen3Config.from_json(folder / "config.json")
    s = settings_from(args, config)
    fw_settings = forward_settings(args, device, config, s["block_room"]) if args.command == "all" else None
    prompts_file = args.prompts or default_prompts_file(folder)
    prompts = read_prompt_file(prompts_file)
    tokenizer = Tokenizer(folder)
    selected, skipped = select_prompts(prompts, tokenizer, s, config.max_position_embeddings)
    use_ref = args.command == "all" and has_package("transformers")
    if args.command == "all" and not use_ref:
        progress(f"Transformers rows skipped: {MISSING}")

    model = load_model(folder, dtype=dtype, device=device, attn=None if args.attn == "auto" else args.attn)
    use_default_threads(args, model)
    decoding = Decoding(s["new_tokens"], stop_at_eos=s["stop_at_eos"], temperature=s["temperature"], seed=s["seed"],
                        compile_mode=compile_mode_of(args))
    ref = None
    if use_ref:
        from .reference import transformers_reference

        ref = transformers_reference(folder, dtype, device)
        prepare_compiled(ref, compile_mode_of(args, transformers=True))
    params_diff = sum(p.numel() for n, p in model.named_parameters() if "_diff" in n)
    info = machine_info(device)
    result = {
        "command": args.command, "schema_version": 1, "machine": machine_line(info), "machine_info": info,
        "settings": {"model": shown_path(args.model), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                     "attn": model.attn_backend, "compile": args.compile,
                     "compile_mode": decoding.compile_mode, "compile_transformers": bool(use_ref and args.compile_transformers),
                     "smoke": args.smoke, "prompts_file": shown_path(prompts_file), "num_prompts": len(selected),
                     "skipped_prompts": skipped, "params_ar": num_parameters(model) - params_diff, "params_diffusion": params_diff,
                     "memory_kind": memory_kind(device), **s},
    }
    b = Bench(model, ref, tokenizer, selected, prompts, s, decoding, device, folder, args.backend == "mlx")
    result["table"] = main_table(b)
    for key, sweep in SWEEPS.items():
        result[key] = sweep(b)
    report = decode_report(result)
    if fw_settings is not None:
        progress("per-forward latency")
        section = forward_section(model, device, fw_settings)
        section["settings"]["cache_len_note"] = "the cache is declared full (no prefill): its contents do not change the cost"
        overall = result["table"]["overall"]
        rates = {name: overall[name]["decode_tokens_per_s"] for name in ("transformers", "ar")
                 if name in overall and overall[name]["decode_tokens_per_s"] is not None}
        context = sum(p["prompt_tokens"] for p in result["table"]["prompts"]) / len(selected) + s["new_tokens"] / 2
        section["roofline"] = roofline(model, section["copy_bandwidth_gbs"], context, rates)
        result["forward"] = section
        report += forward_report(section)
    png = Path(args.out) / f"bench_{args.command}.png"
    if plot(result, png):
        result["files"] = {"png": str(png)}
    else:
        result["files"] = {"png": None}
        progress("plot skipped: matplotlib is not installed (pip install matplotlib)")
    return result, report
