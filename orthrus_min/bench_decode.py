"""Benchmark `orthrus` / `all`: Transformers generate, our AR and Orthrus decoding on the same prompts, side by side.

    python -m orthrus_min.bench all                        # the shipped model and its held-out prompts
    python -m orthrus_min.bench orthrus --model DIR --prompts prompts.jsonl --new-tokens 256

Measuring rules (docs/ARCHITECTURE.md, "Performance model": ratios from one run): every method decodes the same prompt ids
with the same weights; methods are interleaved inside each repeat so they share the machine's
noise; `--warmup` untimed runs of each method come first (again at each sweep point, where
shapes change); each cell is the median over `--repeats`. Runs are timed end to end with
the device synchronized; time to first token is the prefill plus the first token's pick.

Acceptance length τ = tokens committed per Orthrus iteration (1 … K: the accepted drafts
plus the AR view's own token); its histogram counts iterations by τ. The last iteration
may be cut short by --new-tokens. Tokens per forward = tokens after the first / forwards
after the prefill (Orthrus: two forwards per iteration, so about τ / 2).

The JSON (schema_version 1): command, machine, machine_info, settings (every knob of the run);
table = {methods, prompts: [{id, prompt_tokens, methods: {name: metrics}, identical,
first_mismatch}], overall: {name: metrics}, identical_output, speedup}, where metrics =
{new_tokens, seconds, tokens_per_s, ttft_s, decode_tokens_per_s, num_forwards,
tokens_per_forward, peak_memory_mb} plus, for Orthrus, {acceptance_mean, acceptance_histogram
(index i: iterations committing i+1 tokens), iterations}; block_size_sweep and context_sweep:
lists of points {block_size | context_tokens, acceptance_mean, acceptance_histogram,
tokens_per_forward, orthrus_tokens_per_s, ar_tokens_per_s, speedup, identical_output, …};
`all` adds forward (bench_forward.py: latency, summary, copy_bandwidth_gbs, roofline); files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .bench import (compile_forward, first_mismatch, hf_generate, machine_info, machine_line, median, memory_kind,
                    peak_memory_mb, reset_peak_memory, timed, transformers_reference)
from .errors import OrthrusError

FULL = dict(max_prompts=None, new_tokens=128, repeats=5, block_sizes=[4, 8, 16, 32], sweep_prompts=None,
            context_lengths=[128, 512, 1024, 2048, 4096, 8192, 16384, 32768], context_prompts=4)
SMOKE = dict(max_prompts=1, new_tokens=8, repeats=1, block_sizes=[4, 8], sweep_prompts=1, context_lengths=[32, 64],
             context_prompts=1)
LABELS = {"transformers": "Transformers generate (greedy)", "ar": "orthrus_min AR (greedy)",
          "orthrus_greedy": "orthrus_min Orthrus (greedy)", "ar_sampled": "orthrus_min AR (T={t})",
          "orthrus_sampled": "orthrus_min Orthrus (T={t})"}


# --------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    id: str
    text: str
    chat: bool = False
    enable_thinking: bool | None = None


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a JSONL file: one {"prompt": str, "id"?: str, "chat"?: bool, "enable_thinking"?: bool} per line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise OrthrusError(f"{path}: cannot read prompt file ({e.strerror})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise OrthrusError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
            raise OrthrusError(f'{path}:{number}: expected an object with a non-empty string "prompt"')
        prompts.append(Prompt(str(record.get("id", f"{Path(path).name}:{number}")), record["prompt"], bool(record.get("chat", False)),
                              record.get("enable_thinking")))
    if not prompts:
        raise OrthrusError(f"{path}: no prompts")
    return prompts


def default_prompts_file(folder: Path) -> Path:
    """The model folder's heldout_prompts.jsonl, else the shipped model's."""
    from .model import DEFAULT_MODEL

    own = folder / "heldout_prompts.jsonl"
    return own if own.exists() else DEFAULT_MODEL / "heldout_prompts.jsonl"


def encode_prompt(prompt: Prompt, tokenizer, text: str | None = None) -> list[int]:
    """Token ids of the prompt (or of `text` in its place), rendered with the chat template when it asks for it."""
    text = prompt.text if text is None else text
    if prompt.chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             enable_thinking=prompt.enable_thinking)
    return tokenizer.encode(text)


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


# --------------------------------------------------------------------------- timing one method


@dataclass
class Run:
    """One decode: the new tokens and how it went."""

    tokens: list[int]
    seconds: float = 0.0  # end to end, device synchronized
    ttft_s: float = 0.0
    num_forwards: int | None = None  # after the prefill; None for Transformers
    accepted: list[int] = field(default_factory=list)  # Orthrus: tokens committed per iteration
    peak_mb: float = 0.0


def measure(methods: dict[str, Callable[[list[int]], Run]], prompt_ids: list[int], repeats: int, device) -> dict[str, list[Run]]:
    """Runs every method `repeats` times on the same prompt, interleaved; returns the runs per method."""
    runs = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            reset_peak_memory(device)
            run, seconds = timed(lambda: method(prompt_ids), device)
            run.seconds, run.peak_mb = seconds, peak_memory_mb(device)
            runs[name].append(run)
    return runs


def warm_up(methods: dict, prompt_ids: list[int], count: int, device) -> None:
    for _ in range(count):
        for method in methods.values():
            timed(lambda: method(prompt_ids), device)


def histogram(accepted: list[int], K: int) -> list[int]:
    """counts[i] = iterations that committed i+1 tokens, i = 0 … K-1."""
    counts = [0] * K
    for a in accepted:
        counts[min(a, K) - 1] += 1
    return counts


def summarize(runs: list[Run], K: int | None) -> dict:
    """One method on one prompt: medians over the repeats (tokens and acceptance come from the last run;
    greedy and seeded sampling repeat them exactly)."""
    last = runs[-1]
    n = len(last.tokens)
    seconds = median([r.seconds for r in runs])
    ttft = median([r.ttft_s for r in runs])
    out = {"new_tokens": n, "seconds": seconds, "tokens_per_s": n / seconds, "ttft_s": ttft,
           "decode_tokens_per_s": (n - 1) / (seconds - ttft) if n > 1 and seconds > ttft else None,
           "num_forwards": last.num_forwards,
           "tokens_per_forward": (n - 1) / last.num_forwards if last.num_forwards else None,
           "peak_memory_mb": max(r.peak_mb for r in runs)}
    if last.accepted:
        out["acceptance_mean"] = sum(last.accepted) / len(last.accepted)
        out["acceptance_histogram"] = histogram(last.accepted, K)
        out["iterations"] = len(last.accepted)
    return out


def pool(per_prompt: list[dict], K: int | None) -> dict:
    """One method over all prompts: total tokens / total time; median TTFT; pooled acceptance."""
    tokens = sum(p["new_tokens"] for p in per_prompt)
    seconds = sum(p["seconds"] for p in per_prompt)
    decode_s = sum(p["seconds"] - p["ttft_s"] for p in per_prompt)
    out = {"new_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
           "ttft_s": median([p["ttft_s"] for p in per_prompt]),
           "decode_tokens_per_s": (tokens - len(per_prompt)) / decode_s if decode_s > 0 else None,
           "tokens_per_forward": None, "peak_memory_mb": max(p["peak_memory_mb"] for p in per_prompt)}
    if all(p["num_forwards"] for p in per_prompt):
        out["tokens_per_forward"] = (tokens - len(per_prompt)) / sum(p["num_forwards"] for p in per_prompt)
    if all("acceptance_histogram" in p for p in per_prompt):
        hist = [sum(c) for c in zip(*(p["acceptance_histogram"] for p in per_prompt))]
        iterations = sum(hist)
        out["acceptance_histogram"] = hist
        out["acceptance_mean"] = sum((i + 1) * c for i, c in enumerate(hist)) / iterations if iterations else None
    return out


# --------------------------------------------------------------------------- the methods


def make_methods(model, ref, n: int, K: int, temperature: float, seed: int, stop_at_eos: bool, names: list[str]) -> dict:
    """name -> fn(prompt_ids) -> Run, for the names asked for."""
    from .ar import generate_ar
    from .consensus import generate_orthrus
    from .sampling import SamplingParams

    ignore_eos = not stop_at_eos
    eos = (list(model.config.eos_token_id) or None) if stop_at_eos else None
    sampling = SamplingParams(temperature=temperature, seed=seed)  # the same seed every run: the same tokens every repeat

    def from_generation(g) -> Run:
        return Run(g.tokens, ttft_s=g.prefill_s, num_forwards=g.num_forwards, accepted=list(g.accepted))

    def transformers(ids):
        tokens, ttft = hf_generate(ref, ids, n, eos)
        return Run(tokens, ttft_s=ttft)

    all_methods = {
        "transformers": transformers,
        "ar": lambda ids: from_generation(generate_ar(model, ids, n, ignore_eos=ignore_eos)),
        "orthrus_greedy": lambda ids: from_generation(generate_orthrus(model, ids, n, block_size=K, ignore_eos=ignore_eos)),
        "ar_sampled": lambda ids: from_generation(generate_ar(model, ids, n, sampling, ignore_eos=ignore_eos)),
        "orthrus_sampled": lambda ids: from_generation(generate_orthrus(model, ids, n, sampling, block_size=K, ignore_eos=ignore_eos)),
    }
    return {name: all_methods[name] for name in names}


# --------------------------------------------------------------------------- the three parts of the report


def main_table(model, ref, tokenizer, prompts: list[Prompt], s: dict, device) -> dict:
    """Every method on every prompt: per-prompt and overall metrics, identical-output checks, speedups."""
    K = s["block_size"]
    names = (["transformers"] if ref is not None else []) + ["ar", "orthrus_greedy", "ar_sampled", "orthrus_sampled"]
    methods = make_methods(model, ref, s["new_tokens"], K, s["temperature"], s["seed"], s["stop_at_eos"], names)
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    warm_up(methods, encoded[0], s["warmup"], device)
    per_prompt = []
    for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
        progress(f"prompt {i + 1}/{len(prompts)} ({prompt.id}, {len(ids)} tokens)")
        runs = measure(methods, ids, s["repeats"], device)
        record = {"id": prompt.id, "prompt_tokens": len(ids), "methods": {name: summarize(r, K) for name, r in runs.items()}}
        ar_tokens = runs["ar"][-1].tokens
        record["first_mismatch"] = {"orthrus_greedy_vs_ar": first_mismatch(runs["orthrus_greedy"][-1].tokens, ar_tokens)}
        if ref is not None:
            record["first_mismatch"]["ar_vs_transformers"] = first_mismatch(ar_tokens, runs["transformers"][-1].tokens)
        record["identical"] = {k: v is None for k, v in record["first_mismatch"].items()}
        per_prompt.append(record)
    overall = {name: pool([p["methods"][name] for p in per_prompt], K) for name in names}
    identical = {k: all(p["identical"][k] for p in per_prompt) for k in per_prompt[0]["identical"]}
    rate = {name: overall[name]["tokens_per_s"] for name in names}
    speedup = {"orthrus_greedy_vs_ar": rate["orthrus_greedy"] / rate["ar"],
               "orthrus_sampled_vs_ar_sampled": rate["orthrus_sampled"] / rate["ar_sampled"]}
    if ref is not None:
        speedup["ar_vs_transformers"] = rate["ar"] / rate["transformers"]
        speedup["orthrus_greedy_vs_transformers"] = rate["orthrus_greedy"] / rate["transformers"]
    return {"methods": names, "prompts": per_prompt, "overall": overall, "identical_output": identical, "speedup": speedup}


def block_size_sweep(model, tokenizer, prompts: list[Prompt], s: dict, device) -> list[dict]:
    """Orthrus greedy at each block size against our AR, interleaved on the same prompts."""
    ids = [encode_prompt(p, tokenizer) for p in prompts]
    methods = make_methods(model, None, s["new_tokens"], 1, 0, 0, s["stop_at_eos"], ["ar"])
    for K in s["block_sizes"]:
        methods[f"K={K}"] = make_methods(model, None, s["new_tokens"], K, 0, 0, s["stop_at_eos"], ["orthrus_greedy"])["orthrus_greedy"]
    warm_up(methods, ids[0], s["warmup"], device)
    per_prompt = []
    for i, prompt_ids in enumerate(ids):
        progress(f"block-size sweep: prompt {i + 1}/{len(ids)}")
        per_prompt.append(measure(methods, prompt_ids, s["repeats"], device))
    ar = pool([summarize(runs["ar"], None) for runs in per_prompt], None)
    points = []
    for K in s["block_sizes"]:
        o = pool([summarize(runs[f"K={K}"], K) for runs in per_prompt], K)
        same = all(runs[f"K={K}"][-1].tokens == runs["ar"][-1].tokens for runs in per_prompt)
        points.append({"block_size": K, "acceptance_mean": o["acceptance_mean"], "acceptance_histogram": o["acceptance_histogram"],
                       "tokens_per_forward": o["tokens_per_forward"], "orthrus_tokens_per_s": o["tokens_per_s"],
                       "ar_tokens_per_s": ar["tokens_per_s"], "speedup": o["tokens_per_s"] / ar["tokens_per_s"],
                       "identical_output": same})
    return points


def context_sweep(model, tokenizer, prompts: list[Prompt], s: dict, device) -> list[dict]:
    """Orthrus greedy against our AR at growing prompt lengths (prompts prefixed with other prompts' text)."""
    K = s["block_size"]
    methods = make_methods(model, None, s["new_tokens"], K, 0, 0, s["stop_at_eos"], ["ar", "orthrus_greedy"])
    points = []
    for length in s["context_lengths"]:
        built = [long_prompt(prompts, i, length, tokenizer) for i in range(min(s["context_prompts"], len(prompts)))]
        built = [(ids, rep) for ids, rep in built if len(ids) + s["new_tokens"] + K <= model.config.max_position_embeddings]
        if not built:
            continue
        warm_up(methods, built[0][0], s["warmup"], device)
        per_prompt = []
        for i, (ids, _) in enumerate(built):
            progress(f"context sweep: {length} tokens, prompt {i + 1}/{len(built)}")
            per_prompt.append(measure(methods, ids, s["repeats"], device))
        ar = pool([summarize(runs["ar"], None) for runs in per_prompt], None)
        o = pool([summarize(runs["orthrus_greedy"], K) for runs in per_prompt], K)
        points.append({"context_tokens": length, "prompt_tokens": [len(ids) for ids, _ in built],
                       "filler_repeated": any(rep for _, rep in built),
                       "acceptance_mean": o["acceptance_mean"], "acceptance_histogram": o["acceptance_histogram"],
                       "tokens_per_forward": o["tokens_per_forward"], "ar_tokens_per_s": ar["tokens_per_s"],
                       "orthrus_tokens_per_s": o["tokens_per_s"], "speedup": o["tokens_per_s"] / ar["tokens_per_s"],
                       "ar_ttft_s": ar["ttft_s"], "orthrus_ttft_s": o["ttft_s"],
                       "identical_output": all(r["orthrus_greedy"][-1].tokens == r["ar"][-1].tokens for r in per_prompt)})
    return points


# --------------------------------------------------------------------------- output


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def fmt(x, spec: str = ".1f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def print_report(r: dict) -> None:
    s, t = r["settings"], r["table"]
    skipped = f" ({len(s['skipped_prompts'])} too long for the context skipped)" if s["skipped_prompts"] else ""
    print(f"# bench {r['command']} — {r['machine']}\n")
    print(f"model `{s['model']}` ({s['params_ar'] / 1e6:.2f}M AR + {s['params_diffusion'] / 1e6:.2f}M diffusion-view parameters), "
          f"{s['dtype']} on {s['device']}, attention {s['attn']}{', torch.compile' if s['compile'] else ''}; "
          f"{s['num_prompts']} prompts from `{s['prompts_file']}`{skipped}; {s['new_tokens']} new tokens "
          f"({'stop at EOS' if s['stop_at_eos'] else 'EOS ignored'}); block size K = {s['block_size']}; sampled rows: temperature "
          f"{s['temperature']}, seed {s['seed']}; median of {s['repeats']} after {s['warmup']} warm-up run(s)\n")
    print("## Decoding, all prompts\n")
    print("| method | tokens/s | vs our AR (greedy) | time to first token (ms) | tokens / forward | acceptance τ | peak memory (MiB) "
          "| identical output |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    ar_rate = t["overall"]["ar"]["tokens_per_s"]
    same = t["identical_output"]
    identical = {"ar": f"{same['ar_vs_transformers']} (vs Transformers)" if "ar_vs_transformers" in same else "–",
                 "orthrus_greedy": f"{same['orthrus_greedy_vs_ar']} (vs our AR)", "orthrus_sampled": "n/a (sampling)"}
    for name in t["methods"]:
        o = t["overall"][name]
        print(f"| {LABELS[name].format(t=s['temperature'])} | {o['tokens_per_s']:.1f} | {o['tokens_per_s'] / ar_rate:.2f}x | "
              f"{1e3 * o['ttft_s']:.1f} | {fmt(o['tokens_per_forward'], '.2f')} | {fmt(o.get('acceptance_mean'), '.2f')} | "
              f"{o['peak_memory_mb']:.0f} | {identical.get(name, '–')} |")
    ratios = {"ar_vs_transformers": "orthrus_min AR / Transformers generate", "orthrus_greedy_vs_ar": "Orthrus greedy / our AR greedy",
              "orthrus_sampled_vs_ar_sampled": f"Orthrus / our AR at T={s['temperature']}"}
    print("\nratios (tokens/s, all prompts): " + "; ".join(f"{label} **{t['speedup'][key]:.2f}x**"
                                                        for key, label in ratios.items() if key in t["speedup"]))
    print(f"\npeak memory: {s['memory_kind']}.")
    hist = t["overall"]["orthrus_greedy"].get("acceptance_histogram") or []
    print("\nacceptance-length histogram, Orthrus greedy, all prompts (iterations committing τ tokens):\n\n```")
    for i, c in enumerate(hist):
        print(f"τ={i + 1:3d} | {'#' * round(40 * c / max(max(hist), 1)):<40} {c}")
    print("```\n\n## Per prompt\n")
    has_ref = "transformers" in t["methods"]
    print("| prompt | prompt tokens | " + ("Transformers tok/s | " if has_ref else "") +
          "AR tok/s | Orthrus tok/s | speedup | τ greedy | τ sampled | AR TTFT ms | identical |")
    print("|---|---:|" + ("---:|" if has_ref else "") + "---:|---:|---:|---:|---:|---:|---|")
    for p in t["prompts"]:
        m = p["methods"]
        print(f"| {p['id']} | {p['prompt_tokens']} | " + (f"{m['transformers']['tokens_per_s']:.1f} | " if has_ref else "") +
              f"{m['ar']['tokens_per_s']:.1f} | {m['orthrus_greedy']['tokens_per_s']:.1f} | "
              f"{m['orthrus_greedy']['tokens_per_s'] / m['ar']['tokens_per_s']:.2f}x | {fmt(m['orthrus_greedy'].get('acceptance_mean'), '.2f')} | "
              f"{fmt(m['orthrus_sampled'].get('acceptance_mean'), '.2f')} | {1e3 * m['ar']['ttft_s']:.1f} | {all(p['identical'].values())} |")
    print("\n## By block size (Orthrus greedy vs our AR)\n")
    print("| K | acceptance τ | tokens / forward | Orthrus tok/s | AR tok/s | speedup | identical |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for q in r["block_size_sweep"]:
        print(f"| {q['block_size']} | {fmt(q['acceptance_mean'], '.2f')} | {fmt(q['tokens_per_forward'], '.2f')} | "
              f"{q['orthrus_tokens_per_s']:.1f} | {q['ar_tokens_per_s']:.1f} | {q['speedup']:.2f}x | {q['identical_output']} |")
    print(f"\n## By context length (Orthrus greedy, K = {s['block_size']}, vs our AR)\n")
    print("| context (tokens) | acceptance τ | tokens / forward | Orthrus tok/s | AR tok/s | speedup | AR TTFT ms | identical |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for q in r["context_sweep"]:
        note = " (filler repeated)" if q["filler_repeated"] else ""
        print(f"| {round(sum(q['prompt_tokens']) / len(q['prompt_tokens']))}{note} | {fmt(q['acceptance_mean'], '.2f')} | "
              f"{fmt(q['tokens_per_forward'], '.2f')} | {q['orthrus_tokens_per_s']:.1f} | {q['ar_tokens_per_s']:.1f} | "
              f"{q['speedup']:.2f}x | {1e3 * q['ar_ttft_s']:.1f} | {q['identical_output']} |")


def plot(r: dict, path: Path) -> None:
    """Acceptance length and speedup over our AR, by block size (left) and by context length (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex="col")
    for col, (key, sweep, label) in enumerate((("block_size", r["block_size_sweep"], "block size K"),
                                               ("context_tokens", r["context_sweep"], "context length (prompt tokens)"))):
        x = [q[key] for q in sweep]
        axes[0, col].plot(x, [q["acceptance_mean"] for q in sweep], "o-", label="acceptance length τ")
        axes[0, col].plot(x, [q["tokens_per_forward"] for q in sweep], "s--", label="tokens per forward")
        axes[0, col].set_ylabel("tokens")
        axes[0, col].set_ylim(bottom=0)
        axes[0, col].legend()
        axes[1, col].plot(x, [q["speedup"] for q in sweep], "o-", color="C2")
        axes[1, col].axhline(1.0, color="gray", lw=0.8, ls=":")
        axes[1, col].set_ylabel("speedup over our AR (wall clock)")
        axes[1, col].set_ylim(bottom=0)
        axes[1, col].set_xlabel(label)
        for ax in axes[:, col]:
            if x:
                ax.set_xscale("log", base=2)
                ax.set_xticks(x, [str(v) for v in x])
            ax.grid(alpha=0.3)
    s = r["settings"]
    fig.suptitle(f"Orthrus greedy vs AR — {Path(s['model']).name}, {s['device']}, {s['dtype']}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the command


def settings_from(args, config) -> dict:
    """The run's settings: flags, else the FULL (or SMOKE) defaults, clipped to what the checkpoint allows."""
    from .consensus import resolve_block_size
    from .model import require_diffusion_view

    require_diffusion_view(config)
    table = SMOKE if args.smoke else FULL
    s = {k: (table[k] if getattr(args, k) is None else getattr(args, k)) for k in table}
    for key in ("new_tokens", "repeats"):
        if s[key] < 1:
            raise OrthrusError(f"--{key.replace('_', '-')} must be >= 1, got {s[key]}")
    K = resolve_block_size(config, args.block_size)
    s.update(block_size=K, temperature=args.temperature, seed=args.seed, stop_at_eos=args.stop_at_eos, warmup=max(args.warmup, 0))
    s["block_sizes"] = [k for k in s["block_sizes"] if 1 <= k <= config.block_size] or [K]
    room = config.max_position_embeddings - s["new_tokens"] - K
    s["context_lengths"] = [L for L in s["context_lengths"] if 1 <= L <= room]
    if args.context_lengths is None and not args.smoke and room > max(s["context_lengths"], default=0):
        s["context_lengths"].append(room)  # the longest prompt the model allows, as the last point
    return s


def bench_decode(args) -> dict:
    from .bench_forward import forward_section, print_forward, roofline
    from .model import Qwen3Config, load_model, num_parameters, resolve_checkpoint, resolve_device, resolve_dtype
    from .tokenizer import Tokenizer

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_checkpoint(args.model)
    config = Qwen3Config.from_json(folder / "config.json")
    s = settings_from(args, config)
    prompts_file = args.prompts or default_prompts_file(folder)
    prompts = read_prompts(prompts_file)
    tokenizer = Tokenizer(folder)
    selected, skipped = [], []  # a prompt that leaves no room for the new tokens and one block is skipped, and listed
    for prompt in prompts:
        num = len(encode_prompt(prompt, tokenizer))
        if num + s["new_tokens"] + s["block_size"] <= config.max_position_embeddings:
            selected.append(prompt)
        else:
            skipped.append({"id": prompt.id, "prompt_tokens": num})
    if skipped:
        progress(f"skipping {len(skipped)} prompt(s) too long for the context with {s['new_tokens']} new tokens: "
                 + ", ".join(x["id"] for x in skipped))
    if not selected:
        raise OrthrusError(f"no prompt fits the model's context of {config.max_position_embeddings} tokens with "
                           f"{s['new_tokens']} new tokens and a block of {s['block_size']} (try a smaller --new-tokens)")
    selected = selected[: s["max_prompts"]] if s["max_prompts"] else selected
    model = load_model(folder, dtype=dtype, device=device, attn=None if args.attn == "auto" else args.attn)
    ref = transformers_reference(folder, dtype, device) if args.command == "all" else None
    if args.compile:
        compile_forward(model, args.compile_mode)
        if ref is not None:
            compile_forward(ref, args.compile_mode)
    params_diff = sum(p.numel() for n, p in model.named_parameters() if "_diff" in n)
    info = machine_info(device)
    result = {
        "command": args.command, "schema_version": 1, "machine": machine_line(info), "machine_info": info,
        "settings": {"model": str(args.model), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                     "attn": model.model.layers[0].self_attn.attn_backend, "compile": args.compile, "smoke": args.smoke,
                     "prompts_file": str(prompts_file), "num_prompts": len(selected),
                     "skipped_prompts": skipped,
                     "params_ar": num_parameters(model) - params_diff, "params_diffusion": params_diff,
                     "memory_kind": memory_kind(device), **s},
    }
    result["table"] = main_table(model, ref, tokenizer, selected, s, device)
    sweep_prompts = selected[: s["sweep_prompts"]] if s["sweep_prompts"] else selected
    result["block_size_sweep"] = block_size_sweep(model, tokenizer, sweep_prompts, s, device)
    result["context_sweep"] = context_sweep(model, tokenizer, prompts, s, device)
    print_report(result)
    if args.command == "all":
        progress("per-forward latency")
        section = forward_section(model, device, args, s["block_size"])
        section["settings"]["cache_len_note"] = "the cache is declared full (no prefill): its contents do not change the cost"
        overall = result["table"]["overall"]
        rates = {name: overall[name]["decode_tokens_per_s"] for name in ("transformers", "ar")
                 if overall[name]["decode_tokens_per_s"] is not None}
        context = sum(p["prompt_tokens"] for p in result["table"]["prompts"]) / len(selected) + s["new_tokens"] / 2
        section["roofline"] = roofline(model, section["copy_bandwidth_gbs"], context, rates)
        result["forward"] = section
        print_forward(section)
    args.json = args.json or args.out / f"bench_{args.command}.json"
    png = args.out / f"bench_{args.command}.png"
    plot(result, png)
    result["files"] = {"json": str(args.json), "png": str(png)}
    print(f"\nwrote {args.json} and {png}")
    return result
