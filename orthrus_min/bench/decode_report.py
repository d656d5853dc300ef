"""The Markdown report and the plot of `python -m orthrus_min.bench orthrus` / `all` (from decode.py's result).

A sweep's table is a function result -> lines, listed in SWEEP_TABLES under the sweep's JSON key.
The plot needs matplotlib (a dev-only package): without it `plot` returns False and draws nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..files import write_atomically
from .common import fmt

LABELS = {"transformers": "Transformers generate (greedy)", "ar": "orthrus_min AR (greedy)",
          "orthrus_greedy": "orthrus_min Orthrus (greedy)", "ar_compiled": "orthrus_min AR (greedy), compiled",
          "orthrus_compiled": "orthrus_min Orthrus (greedy), compiled", "ar_sampled": "orthrus_min AR (T={t})",
          "orthrus_sampled": "orthrus_min Orthrus (T={t})", "mlx_ar": "MLX backend AR (greedy, fp32)",
          "mlx_orthrus": "MLX backend Orthrus (greedy, fp32)"}


def header(r: dict) -> list[str]:
    """Title and one paragraph of settings."""
    s = r["settings"]
    skipped = f" ({len(s['skipped_prompts'])} too long for the context skipped)" if s["skipped_prompts"] else ""
    compiled = f", torch.compile ({s['compile_mode']})" if s.get("compile_mode") else ""
    return [f"# bench {r['command']} — {r['machine']}", "",
            f"model `{s['model']}` ({s['params_ar'] / 1e6:.2f}M AR + {s['params_diffusion'] / 1e6:.2f}M diffusion-view parameters), "
            f"{s['dtype']} on {s['device']}, attention {s['attn']}{compiled}; "
            f"{s['num_prompts']} prompts from `{s['prompts_file']}`{skipped}; {s['new_tokens']} new tokens "
            f"({'stop at EOS' if s['stop_at_eos'] else 'EOS ignored'}); block size K = {s['block_size']}; sampled rows: temperature "
            f"{s['temperature']}, seed {s['seed']}; median of {s['repeats']} after {s['warmup']} warm-up run(s)", ""]


def overall_table(r: dict) -> list[str]:
    """Every method over all prompts, the ratios, and the acceptance histogram of Orthrus greedy."""
    s, t = r["settings"], r["table"]
    lines = ["## Decoding, all prompts", "",
             "| method | tokens/s | vs our AR (greedy) | time to first token (ms) | tokens / forward | acceptance τ | "
             "peak memory (MiB) | identical output |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    ar_rate = t["overall"]["ar"]["tokens_per_s"]
    same = t["identical_output"]
    identical = {"ar": f"{same['ar_vs_transformers']} (vs Transformers)" if "ar_vs_transformers" in same else "–",
                 "orthrus_sampled": "n/a (sampling)"}
    identical.update({name: f"{same[f'{name}_vs_ar']} (vs our AR)" for name in t["methods"] if f"{name}_vs_ar" in same})
    for name in t["methods"]:
        o = t["overall"][name]
        lines.append(f"| {LABELS[name].format(t=s['temperature'])} | {o['tokens_per_s']:.1f} | {o['tokens_per_s'] / ar_rate:.2f}x | "
                     f"{1e3 * o['ttft_s']:.1f} | {fmt(o['tokens_per_forward'], '.2f')} | {fmt(o.get('acceptance_mean'), '.2f')} | "
                     f"{o['peak_memory_mb']:.0f} | {identical.get(name, '–')} |")
    ratios = {"ar_vs_transformers": "orthrus_min AR / Transformers generate", "orthrus_greedy_vs_ar": "Orthrus greedy / our AR greedy",
              "orthrus_sampled_vs_ar_sampled": f"Orthrus / our AR at T={s['temperature']}",
              "orthrus_compiled_vs_transformers": "compiled Orthrus / Transformers generate",
              "orthrus_compiled_vs_ar": "compiled Orthrus / our eager AR",
              "orthrus_compiled_vs_ar_compiled": "compiled Orthrus / our compiled AR",
              "ar_compiled_vs_ar": "compiled AR / eager AR", "mlx_orthrus_vs_mlx_ar": "MLX Orthrus / MLX AR"}
    lines += ["", "ratios (tokens/s, all prompts): " + "; ".join(f"{label} **{t['speedup'][key]:.2f}x**"
                                                             for key, label in ratios.items() if key in t["speedup"])]
    lines += ["", f"peak memory: {s['memory_kind']}."]
    hist = t["overall"]["orthrus_greedy"].get("acceptance_histogram") or []
    lines += ["", "acceptance-length histogram, Orthrus greedy, all prompts (iterations committing τ tokens):", "", "```"]
    for i, c in enumerate(hist):
        lines.append(f"τ={i + 1:3d} | {'#' * round(40 * c / max(max(hist), 1)):<40} {c}")
    return lines + ["```", ""]


def per_prompt_table(r: dict) -> list[str]:
    """One row per prompt."""
    t = r["table"]
    has_ref = "transformers" in t["methods"]
    lines = ["## Per prompt", "",
             "| prompt | prompt tokens | " + ("Transformers tok/s | " if has_ref else "") +
             "AR tok/s | Orthrus tok/s | speedup | τ greedy | τ sampled | AR TTFT ms | identical |",
             "|---|---:|" + ("---:|" if has_ref else "") + "---:|---:|---:|---:|---:|---:|---|"]
    for p in t["prompts"]:
        m = p["methods"]
        lines.append(f"| {p['id']} | {p['prompt_tokens']} | " + (f"{m['transformers']['tokens_per_s']:.1f} | " if has_ref else "") +
                     f"{m['ar']['tokens_per_s']:.1f} | {m['orthrus_greedy']['tokens_per_s']:.1f} | "
                     f"{m['orthrus_greedy']['tokens_per_s'] / m['ar']['tokens_per_s']:.2f}x | "
                     f"{fmt(m['orthrus_greedy'].get('acceptance_mean'), '.2f')} | {fmt(m['orthrus_sampled'].get('acceptance_mean'), '.2f')} | "
                     f"{1e3 * m['ar']['ttft_s']:.1f} | {all(p['identical'].values())} |")
    return lines


def block_size_table(r: dict) -> list[str]:
    """The block-size sweep."""
    lines = ["", "## By block size (Orthrus greedy vs our AR)", "",
             "| K | acceptance τ | tokens / forward | Orthrus tok/s | AR tok/s | speedup | identical |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for q in r["block_size_sweep"]:
        lines.append(f"| {q['block_size']} | {fmt(q['acceptance_mean'], '.2f')} | {fmt(q['tokens_per_forward'], '.2f')} | "
                     f"{q['orthrus_tokens_per_s']:.1f} | {q['ar_tokens_per_s']:.1f} | {q['speedup']:.2f}x | {q['identical_output']} |")
    if r["block_size_sweep"] and "compiled" in r["block_size_sweep"][0]:
        lines += ["", f"Compiled ({r['settings']['compile_mode']}), the same runs:", "",
                  "| K | compiled Orthrus tok/s | vs our eager AR | compiled AR tok/s | vs our compiled AR | identical |",
                  "|---:|---:|---:|---:|---:|---|"]
        for q in r["block_size_sweep"]:
            c = q["compiled"]
            lines.append(f"| {q['block_size']} | {c['orthrus_tokens_per_s']:.1f} | {c['speedup_vs_ar']:.2f}x | "
                         f"{c['ar_compiled_tokens_per_s']:.1f} | {c['speedup_vs_ar_compiled']:.2f}x | {c['identical_output']} |")
    return lines


def context_table(r: dict) -> list[str]:
    """The context-length sweep."""
    lines = ["", f"## By context length (Orthrus greedy, K = {r['settings']['block_size']}, vs our AR)", "",
             "| context (tokens) | acceptance τ | tokens / forward | Orthrus tok/s | AR tok/s | speedup | AR TTFT ms | identical |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for q in r["context_sweep"]:
        note = " (filler repeated)" if q["filler_repeated"] else ""
        lines.append(f"| {round(sum(q['prompt_tokens']) / len(q['prompt_tokens']))}{note} | {fmt(q['acceptance_mean'], '.2f')} | "
                     f"{fmt(q['tokens_per_forward'], '.2f')} | {q['orthrus_tokens_per_s']:.1f} | {q['ar_tokens_per_s']:.1f} | "
                     f"{q['speedup']:.2f}x | {1e3 * q['ar_ttft_s']:.1f} | {q['identical_output']} |")
    return lines


def batch_size_table(r: dict) -> list[str]:
    """The batch-size sweep."""
    lines = ["", f"## By batch size (greedy, K = {r['settings']['block_size']}: the first B prompts decoded together)", "",
             "| B | method | tokens/s (all rows) | vs AR at this B (eager vs eager, compiled vs compiled) | acceptance τ | tokens / batch forward | identical to AR |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for q in r["batch_size_sweep"]:
        for name in [k for k in q if k not in ("batch_size", "repeated_prompts")]:
            m = q[name]
            lines.append(f"| {q['batch_size']}{' (prompts repeated)' if q['repeated_prompts'] else ''} | {name} | "
                         f"{m['tokens_per_s']:.1f} | {fmt(m.get('speedup_vs_ar'), '.2f')}{'x' if 'speedup_vs_ar' in m else ''} | "
                         f"{fmt(m['acceptance_mean'], '.2f')} | {fmt(m['tokens_per_forward'], '.2f')} | {m.get('identical_output', '–')} |")
    return lines


SWEEP_TABLES: dict[str, Callable[[dict], list[str]]] = {"block_size_sweep": block_size_table, "context_sweep": context_table,
                                                         "batch_size_sweep": batch_size_table}


def decode_report(r: dict) -> str:
    """The whole report of decode.py's result, in Markdown."""
    lines = header(r) + overall_table(r) + per_prompt_table(r)
    for key, table in SWEEP_TABLES.items():
        if key in r:
            lines += table(r)
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> bool:
    """Acceptance length and speedup over our AR, by block size (left) and by context length (right), as a PNG.
    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
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
    try:
        write_atomically(path, lambda f: fig.savefig(f, dpi=120, format="png"), "--out")  # a full disk: one line
    finally:
        plt.close(fig)
    return True
