"""Benchmark `forward`: what one forward costs, and how close AR decoding gets to the memory-bandwidth roofline.

    python -m orthrus_min.bench random-model --preset qwen3-1.7b --out /tmp/qwen3-1.7b
    python -m orthrus_min.bench forward --model /tmp/qwen3-1.7b                 # on a GPU
    python -m orthrus_min.bench forward --model DIR --smoke                     # seconds, CPU too

docs/ARCHITECTURE.md, "Performance model": decoding is memory-bound, so one forward over T = 32
new tokens should cost about as much as one over T = 1 — that ratio is Orthrus's whole budget.
An Orthrus iteration is a diffusion forward and an AR forward over K tokens and commits τ tokens
(the acceptance length); plain AR spends one 1-token forward per token. So Orthrus wins when

    τ > break-even τ = (t_diffusion(K) + t_ar(K)) / t_ar(1).

This times one forward of T tokens over a cache of L tokens (the cache's contents do not change
the cost, so it is simply declared full: no prefill), median of `--iters` calls — CUDA events
on a GPU — and AR decode tokens/s (prefill excluded) of ours and of Transformers `generate`
against the roofline: measured copy bandwidth / bytes read per token (the AR view's weights,
lm_head included, the embedding row lookup not; plus the K/V cache). `python -m
orthrus_min.bench all` adds the same latency and roofline tables to its report.
"""

from __future__ import annotations

from statistics import median

import torch

from ..errors import OrthrusError
from .common import (Timing, check_copy_size, copy_bandwidth_gbs, has_package, machine_info, machine_line, progress, shown_path,
                     time_calls, use_default_threads)
from .decoders import Decoding, ar_method, compile_mode_of, prepare_compiled, transformers_method
from .measure import measure, warm_up
from .reference import MISSING

FULL = dict(lengths=[128, 1024, 4096, 16384], tokens=[1, 4, 8, 16, 32], iters=20, prompt_len=128, max_new_tokens=128, repeats=5)
SMOKE = dict(lengths=[16, 64], tokens=[1, 8], iters=3, prompt_len=8, max_new_tokens=8, repeats=1)
LABELS = {"transformers": "Transformers generate", "ar": "orthrus_min AR", "ar_compiled": "orthrus_min AR, compiled"}
WARMUP_CALLS = 3  # untimed forwards before each cell's timed ones


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one AR decode step reads: every AR-view parameter, lm_head included; an untied
    embedding table is not read whole (one row per token), a tied one is (it is the lm_head)."""
    total = 0
    for name, p in model.named_parameters():  # a tied lm_head is listed once, as the embedding
        if "_diff" in name or (name == "model.embed_tokens.weight" and not model.config.tie_word_embeddings):
            continue
        total += p.numel() * p.element_size()
    return total


def kv_bytes_per_token(model, context: float) -> float:
    """Bytes of K/V one decode step reads at `context` cached tokens (all layers, keys and values)."""
    c = model.config
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * context * model.dtype.itemsize


@torch.inference_mode()
def forward_latencies(model, device: torch.device, lengths: list[int], tokens: list[int], iters: int,
                      compile_mode: str | None = None) -> list[dict]:
    """Median seconds of one forward of T tokens over a cache of L, per (view, L, T).

    Rows: {"view", "cache_len", "tokens", "ms"}; the diffusion view only for T > 1 and an Orthrus checkpoint.
    compile_mode: time the forward compiled as the decode steps are (one graph per (view, L, T): a compile each).
    """
    from ..engine import Compiler

    forward = Compiler(compile_mode).compile(model.forward)
    timing = Timing(iters=iters, warmup_calls=WARMUP_CALLS)
    views = ["ar"] + (["diffusion"] if model.config.has_diffusion_view else [])
    rows = []
    for L in lengths:
        cache = model.new_cache(L + max(tokens))
        cache.advance(L)  # declare L entries cached: their values do not change the cost
        for T in tokens:
            ids = torch.randint(0, model.config.vocab_size, (1, T), device=device)  # (1, T)
            for view in views:
                if view == "diffusion" and T == 1:
                    continue

                def step():
                    forward(ids, cache, view=view)  # (1, T, V) logits for every position, as the verify pass needs
                    cache.rollback(L)  # an AR forward appended T entries: drop them (the diffusion view wrote none)

                rows.append({"view": view, "cache_len": L, "tokens": T, "ms": 1e3 * time_calls(step, device, timing).median})
    return rows


def latency_summary(rows: list[dict]) -> list[dict]:
    """Per (L, T > 1): the T-token forward's cost relative to the 1-token one, and the break-even acceptance length."""
    ms = {(r["view"], r["cache_len"], r["tokens"]): r["ms"] for r in rows}
    out = []
    for (view, L, T), t in ms.items():
        if view != "ar" or T == 1 or ("ar", L, 1) not in ms:
            continue
        one = ms[("ar", L, 1)]
        draft = ms.get(("diffusion", L, T), t)  # no diffusion view: same shapes as the AR pass
        out.append({"cache_len": L, "tokens": T, "ratio": t / one, "break_even_acceptance": (draft + t) / one})
    return out


def roofline(model, copy_gbs: float, context: float, decode_rates: dict[str, float]) -> dict:
    """AR decode tokens/s of each implementation next to copy bandwidth / bytes read per token."""
    weights = weight_bytes_per_token(model)
    kv = kv_bytes_per_token(model, context)
    limit = copy_gbs * 1e9 / (weights + kv)
    return {"weight_bytes_per_token": weights, "kv_bytes_per_token": kv, "context": context, "copy_bandwidth_gbs": copy_gbs,
            "roofline_tokens_per_s": limit,
            "decode_tokens_per_s": decode_rates,
            "fraction_of_roofline": {name: rate / limit for name, rate in decode_rates.items()}}


def forward_report(result: dict) -> str:
    """The latency table and the roofline table, in Markdown."""
    rows = result["latency"]
    tokens = sorted({r["tokens"] for r in rows})
    ms = {(r["view"], r["cache_len"], r["tokens"]): r["ms"] for r in rows}
    T_max = max(tokens)
    lines = ["", "## One forward over a cache of L tokens (ms, median)", "",
             "| view | L | " + " | ".join(f"T={T}" for T in tokens) + f" | T={T_max} / T=1 | break-even τ at K={T_max} |",
             "|---|---:|" + "---:|" * (len(tokens) + 2)]
    summary = {(s["cache_len"], s["tokens"]): s for s in result["summary"]}
    for view in ("ar", "diffusion"):
        for L in sorted({r["cache_len"] for r in rows if r["view"] == view}):
            cells = [f"{ms[(view, L, T)]:.3f}" if (view, L, T) in ms else "–" for T in tokens]
            s = summary.get((L, T_max))
            ratio = f"{s['ratio']:.2f}x" if s and view == "ar" else "–"
            be = f"{s['break_even_acceptance']:.2f}" if s and view == "ar" else "–"
            lines.append(f"| {view} | {L} | " + " | ".join(cells) + f" | {ratio} | {be} |")
    lines += ["", "break-even τ = (diffusion forward + AR forward over K tokens) / AR forward over 1 token: the acceptance "
              "length above which Orthrus beats AR decoding (docs/ARCHITECTURE.md, \"Performance model\")."]
    r = result["roofline"]
    lines += ["", "## AR decode vs the memory-bandwidth roofline", "",
              f"weights read per token {r['weight_bytes_per_token'] / 2**20:.1f} MiB (AR view, lm_head included) + K/V "
              f"{r['kv_bytes_per_token'] / 2**20:.2f} MiB at {r['context']:.0f} cached tokens; measured copy bandwidth "
              f"{r['copy_bandwidth_gbs']:.1f} GB/s -> roofline {r['roofline_tokens_per_s']:.1f} tokens/s", "",
              "| implementation | decode tokens/s (prefill excluded) | % of roofline |", "|---|---:|---:|"]
    for name, rate in r["decode_tokens_per_s"].items():
        lines.append(f"| {LABELS.get(name, name)} | {rate:.1f} | {100 * r['fraction_of_roofline'][name]:.0f}% |")
    return "\n".join(lines) + "\n"


def _pick(args, table: dict, name: str):
    """The flag's value, else the table's default."""
    value = getattr(args, name, None)
    return table[name] if value is None else value


def forward_settings(args, device: torch.device, config, block_size: int | None) -> dict:
    """Lengths, tokens per forward, iterations and copy size: flags, else FULL (or SMOKE) defaults, clipped to the context."""
    table = SMOKE if args.smoke else FULL
    tokens = _pick(args, table, "tokens")
    if args.tokens is None and block_size is not None and block_size not in tokens:
        tokens = sorted(set(tokens) | {block_size})
    if 1 not in tokens:
        tokens = [1] + tokens
    limit = config.max_position_embeddings
    lengths = [L for L in _pick(args, table, "lengths") if L + max(tokens) <= limit]
    if not lengths:
        raise OrthrusError(f"no cache length L in --lengths leaves room for {max(tokens)} tokens in the model's context "
                           f"of {limit}")
    mib = args.copy_mib or (16 if args.smoke else 1024 if device.type == "cuda" else 256)
    check_copy_size(device, mib)  # before the model loads
    return {"lengths": lengths, "tokens": tokens, "iters": _pick(args, table, "iters"), "copy_mib": mib}


def forward_section(model, device: torch.device, settings: dict) -> dict:
    """Latencies, their summary and the copy bandwidth, for `forward` and for `all`."""
    rows = forward_latencies(model, device, settings["lengths"], settings["tokens"], settings["iters"], settings.get("compile_mode"))
    return {"latency": rows, "summary": latency_summary(rows), "copy_bandwidth_gbs": copy_bandwidth_gbs(device, settings["copy_mib"]),
            "settings": settings}


def decode_seconds(run) -> float:
    """Seconds after the first token: as our decoder timed it, else (Transformers) end to end minus the time to first token."""
    return run.decode_s if run.decode_s is not None else run.seconds - run.ttft_s


def bench_forward(args) -> tuple[dict, str]:
    """`bench forward`: the latency table, then AR decode on a random prompt (ours, Transformers) vs the roofline.
    Returns (result for the JSON, Markdown report)."""
    from ..checkpoint import load_model, resolve_checkpoint, resolve_device, resolve_dtype
    from ..config import Qwen3Config

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_checkpoint(args.model)
    config = Qwen3Config.from_json(folder / "config.json")
    table = SMOKE if args.smoke else FULL
    P, n, repeats = (_pick(args, table, k) for k in ("prompt_len", "max_new_tokens", "repeats"))
    if P + n > config.max_position_embeddings:
        raise OrthrusError(f"--prompt-len {P} + --max-new-tokens {n} exceeds the model's context of {config.max_position_embeddings}")
    settings = forward_settings(args, device, config, config.block_size)
    use_ref = not args.no_transformers and has_package("transformers")
    if not args.no_transformers and not use_ref:
        progress(f"Transformers generate skipped in the decode timing: {MISSING}")

    model = load_model(folder, dtype=dtype, device=device, attn=None if args.attn == "auto" else args.attn)
    use_default_threads(args, model)
    d = Decoding(n, compile_mode=compile_mode_of(args))
    settings["compile_mode"] = d.compile_mode
    methods = {"ar": ar_method(model, d)}
    if d.compile_mode is not None:
        methods["ar_compiled"] = ar_method(model, d, compiled=True)
    if use_ref:
        from .reference import transformers_reference

        ref = transformers_reference(folder, dtype, device)
        prepare_compiled(ref, compile_mode_of(args, transformers=True))
        methods = {"transformers": transformers_method(ref, model, d), **methods}
    info = machine_info(device)
    attn = model.attn_backend
    progress("per-forward latency")
    section = forward_section(model, device, settings)

    progress("AR decode")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (P,), generator=g).tolist()
    warm_up(methods, prompt, 1, device)
    runs = measure(methods, prompt, repeats, device)  # interleaved, so both see the same machine noise
    decode = {name: (n - 1) / max(median([decode_seconds(r) for r in rs]), 1e-9) for name, rs in runs.items()}
    result = {"command": "forward", "machine": machine_line(info), "machine_info": info,
              "settings": {"model": shown_path(args.model), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                           "attn": attn, "compile": args.compile, "compile_mode": d.compile_mode,
                           "compile_transformers": bool(use_ref and args.compile_transformers),
                           "prompt_len": P, "new_tokens": n, "repeats": repeats, **section.pop("settings")},
              **section}
    result["roofline"] = roofline(model, section["copy_bandwidth_gbs"], P + n / 2, decode)
    header = (f"# bench forward — {result['machine']}\n\nmodel {args.model}, {result['settings']['dtype']} on {device}, attn {attn}"
              f"{', compiled' if d.compile_mode else ''}\n")
    return result, header + forward_report(result)
