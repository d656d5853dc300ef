"""Benchmark: what one forward costs, and how close AR decoding gets to the memory-bandwidth roofline.

    python -m orthrus_min.bench random-model --preset qwen3-1.7b --out /tmp/qwen3-1.7b
    python -m orthrus_min.bench forward --model /tmp/qwen3-1.7b                 # on a GPU
    python -m orthrus_min.bench forward --model DIR --smoke                     # seconds, CPU too

docs/ARCHITECTURE.md, "Performance model": decoding is memory-bound, so one forward over T = 32 new tokens should cost about
as much as one over T = 1 — that ratio is Orthrus's whole budget. An Orthrus iteration is a
diffusion forward and an AR forward over K tokens and commits τ tokens (the acceptance
length); plain AR spends one 1-token forward per token. So Orthrus wins when

    τ > break-even τ = (t_diffusion(K) + t_ar(K)) / t_ar(1).

This times one forward of T tokens over a cache of L tokens (the cache's contents do not change
the cost, so it is simply declared full: no prefill), median of `--iters` calls — CUDA events
on a GPU, after a synchronize — and AR decode tokens/s (prefill excluded) of ours and of
Transformers `generate` against the roofline: measured copy bandwidth / bytes read per token
(the AR view's weights, lm_head included, the embedding row lookup not; plus the K/V cache).
"""

from __future__ import annotations

import time

import torch

from .bench import hf_generate, machine_info, machine_line, median, synchronize, timed

FULL = dict(lengths=[128, 1024, 4096, 16384], tokens=[1, 4, 8, 16, 32], iters=20, prompt_len=128, new_tokens=128, repeats=5)
LABELS = {"transformers": "Transformers generate", "ar": "orthrus_min AR"}
SMOKE = dict(lengths=[16, 64], tokens=[1, 8], iters=3, prompt_len=8, new_tokens=8, repeats=1)


def median_seconds(fn, device: torch.device, iters: int, warmup: int = 3) -> float:
    """Median wall time of fn() over `iters` calls: CUDA events on a GPU, perf_counter on CPU."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        synchronize(device)
        times = []
        if device.type == "cuda":
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            for start, end in zip(starts, ends):
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize(device)
            times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
        else:
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
    return median(times)


def copy_bandwidth_gbs(device: torch.device, mib: int, iters: int = 5) -> float:
    """Achieved GB/s of copying `mib` MiB within device memory (bytes read + bytes written): the roofline's bandwidth."""
    src = torch.ones(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, iters, warmup=2)
    return 2 * mib * 2**20 / seconds / 1e9


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


def forward_latencies(model, device: torch.device, lengths: list[int], tokens: list[int], iters: int) -> list[dict]:
    """Median seconds of one forward of T tokens over a cache of L, per (view, L, T).

    Rows: {"view", "cache_len", "tokens", "ms"}; the diffusion view only for T > 1 and an Orthrus checkpoint.
    """
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
                    model(ids, cache, view=view)  # (1, T, V) logits for every position, as the verify pass needs
                    cache.rollback(L)  # an AR forward appended T entries: drop them (the diffusion view wrote none)

                rows.append({"view": view, "cache_len": L, "tokens": T, "ms": 1e3 * median_seconds(step, device, iters)})
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


def print_forward(result: dict) -> None:
    """The latency table and the roofline table, in markdown."""
    rows = result["latency"]
    tokens = sorted({r["tokens"] for r in rows})
    ms = {(r["view"], r["cache_len"], r["tokens"]): r["ms"] for r in rows}
    T_max = max(tokens)
    print("\n## One forward over a cache of L tokens (ms, median)\n")
    print("| view | L | " + " | ".join(f"T={T}" for T in tokens) + f" | T={T_max} / T=1 | break-even τ at K={T_max} |")
    print("|---|---:|" + "---:|" * (len(tokens) + 2))
    summary = {(s["cache_len"], s["tokens"]): s for s in result["summary"]}
    for view in ("ar", "diffusion"):
        for L in sorted({r["cache_len"] for r in rows if r["view"] == view}):
            cells = [f"{ms[(view, L, T)]:.3f}" if (view, L, T) in ms else "–" for T in tokens]
            s = summary.get((L, T_max))
            ratio = f"{s['ratio']:.2f}x" if s and view == "ar" else "–"
            be = f"{s['break_even_acceptance']:.2f}" if s and view == "ar" else "–"
            print(f"| {view} | {L} | " + " | ".join(cells) + f" | {ratio} | {be} |")
    print("\nbreak-even τ = (diffusion forward + AR forward over K tokens) / AR forward over 1 token: the acceptance length "
          "above which Orthrus beats AR decoding (docs/ARCHITECTURE.md, 'Performance model').")
    r = result["roofline"]
    print(f"\n## AR decode vs the memory-bandwidth roofline\n\nweights read per token {r['weight_bytes_per_token'] / 2**20:.1f} MiB "
          f"(AR view, lm_head included) + K/V {r['kv_bytes_per_token'] / 2**20:.2f} MiB at {r['context']:.0f} cached tokens; "
          f"measured copy bandwidth {r['copy_bandwidth_gbs']:.1f} GB/s -> roofline {r['roofline_tokens_per_s']:.1f} tokens/s\n")
    print("| implementation | decode tokens/s (prefill excluded) | % of roofline |")
    print("|---|---:|---:|")
    for name, rate in r["decode_tokens_per_s"].items():
        print(f"| {LABELS.get(name, name)} | {rate:.1f} | {100 * r['fraction_of_roofline'][name]:.0f}% |")


def resolve(args, table: dict, name: str):
    value = getattr(args, name, None)
    return table[name] if value is None else value


def forward_section(model, device: torch.device, args, block_size: int | None) -> dict:
    """Latencies and copy bandwidth for `forward` and for `all` (settings from args, else FULL / SMOKE)."""
    table = SMOKE if args.smoke else FULL
    limit = model.config.max_position_embeddings
    tokens = resolve(args, table, "tokens")
    if args.tokens is None and block_size is not None and block_size not in tokens:
        tokens = sorted(set(tokens) | {block_size})
    tokens = [T for T in tokens if T >= 1] or [1]
    if 1 not in tokens:
        tokens = [1] + tokens
    lengths = [L for L in resolve(args, table, "lengths") if L + max(tokens) <= limit] or [0]
    iters = resolve(args, table, "iters")
    mib = args.copy_mib or (16 if args.smoke else 1024 if device.type == "cuda" else 256)
    rows = forward_latencies(model, device, lengths, tokens, iters)
    return {"latency": rows, "summary": latency_summary(rows), "copy_bandwidth_gbs": copy_bandwidth_gbs(device, mib),
            "settings": {"lengths": lengths, "tokens": tokens, "iters": iters, "copy_mib": mib}}


def bench_forward(args) -> dict:
    """`bench forward`: the latency table, then AR decode on a random prompt (ours, Transformers) vs the roofline."""
    from .ar import generate_ar
    from .bench import compile_forward, transformers_reference
    from .model import load_model, resolve_checkpoint, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_checkpoint(args.model)
    model = load_model(folder, dtype=dtype, device=device, attn=None if args.attn == "auto" else args.attn)
    ref = None if args.no_transformers else transformers_reference(folder, dtype, device)
    if args.compile:
        compile_forward(model, args.compile_mode)
        if ref is not None:
            compile_forward(ref, args.compile_mode)
    table = SMOKE if args.smoke else FULL
    P, n, repeats = (resolve(args, table, k) for k in ("prompt_len", "new_tokens", "repeats"))
    info = machine_info(device)
    print(f"# bench forward — {machine_line(info)}")
    print(f"model {args.model}, {str(dtype).removeprefix('torch.')} on {device}, attn {model.model.layers[0].self_attn.attn_backend}"
          f"{', compiled' if args.compile else ''}")
    section = forward_section(model, device, args, model.config.block_size)

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (P,), generator=g).tolist()

    def ours_decode_s() -> float:  # generate_ar times its own decode phase (prefill excluded), synchronized
        return generate_ar(model, prompt, n, ignore_eos=True).decode_s

    def transformers_decode_s() -> float:  # end to end minus the time to the first token
        (_, ttft), seconds = timed(lambda: hf_generate(ref, prompt, n, eos=None), device)
        return seconds - ttft

    runners = {"ar": ours_decode_s} if ref is None else {"transformers": transformers_decode_s, "ar": ours_decode_s}
    for fn in runners.values():  # warm-up
        fn()
    times = {name: [] for name in runners}
    for _ in range(repeats):  # interleaved, so both see the same machine noise
        for name, fn in runners.items():
            times[name].append(fn())
    decode = {name: (n - 1) / max(median(v), 1e-9) for name, v in times.items()}
    result = {"command": "forward", "machine": machine_line(info), "machine_info": info,
              "settings": {"model": str(args.model), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                           "attn": model.model.layers[0].self_attn.attn_backend, "compile": args.compile,
                           "prompt_len": P, "new_tokens": n, "repeats": repeats, **section.pop("settings")},
              **section}
    result["roofline"] = roofline(model, section["copy_bandwidth_gbs"], P + n / 2, decode)
    print_forward(result)
    return result
