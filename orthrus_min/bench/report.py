"""`python -m orthrus_min.bench report`: one benchmark JSON -> the results tables of the README and the model card.

    python -m orthrus_min.bench all --threads 1 --compile --json docs/results/bench_all.json   # measure, once
    python -m orthrus_min.bench report --json docs/results/bench_all.json            # rewrite README.md and the card
    python -m orthrus_min.bench report --json docs/results/bench_all.json --check    # exit 1 where a file differs

A file's results region is the text between two marker lines:

    <!-- results: begin (rendered by python -m orthrus_min.bench report --json docs/results/bench_all.json) -->
    … everything here is rewritten …
    <!-- results: end -->

`report` rewrites the region (its begin line too, so that it names the JSON) from the JSON that
`bench all` (or `bench orthrus`) wrote, and nothing else in the file. Every number in a region is
computed here from that JSON, so the README, the model card and the JSON cannot disagree, and
`--check` (tests/test_results_render.py runs it on the real README) says where they do. Ratios are
recomputed from the tokens/s they relate; the roofline from its parts (bytes per token and copy
bandwidth, in the units printed), so that every line checks by hand.

The README gets every section the JSON holds (decoding, sampling, block size, context length,
batch size, one forward and the break-even τ, the roofline); the card (`--card`) the short form:
decoding, block size, context length. A section the JSON lacks is left out.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import OrthrusError
from ..files import write_text_atomically
from ..reading import read_json_object

README = Path("README.md")
CARD = Path("orthrus_min/assets/orthrus-stdlib-tiny/README.md")
BEGIN = re.compile(r"^<!-- results: begin\b.*-->\s*$")
END = "<!-- results: end -->"
SHIPPED = "orthrus_min/assets/orthrus-stdlib-tiny"  # how the shipped model's path ends

LABELS = {"transformers": "Transformers `generate` (AR, same weights)", "ar": "orthrus_min AR, eager",
          "orthrus_greedy": "orthrus_min Orthrus, eager", "ar_compiled": "orthrus_min AR, compiled",
          "orthrus_compiled": "orthrus_min Orthrus, compiled", "mlx_ar": "MLX backend AR (fp32)",
          "mlx_orthrus": "MLX backend Orthrus (fp32)"}
IDENTICAL_TO = {"ar": ("ar_vs_transformers", "Transformers")}  # else f"{name}_vs_ar", against our eager AR


def begin_line(source: str) -> str:
    """The begin marker, naming the command that renders the region."""
    return f"<!-- results: begin (rendered by python -m orthrus_min.bench report --json {source}) -->"


# --------------------------------------------------------------------------- cells


def rate(x: float) -> str:
    """Tokens per second."""
    return f"{x:.1f}"


def ratio(a: float, b: float) -> str:
    """a / b as '1.23x'."""
    return f"{a / b:.2f}x"


def tau(x: float | None) -> str:
    """An acceptance length or tokens per forward; '–' when there is none (AR)."""
    return "–" if x is None else f"{x:.2f}"


def yes_no(same: bool) -> str:
    return "yes" if same else "**no**"


def count(n: int, noun: str) -> str:
    """'1 prompt', '16 prompts'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A Markdown table; align holds one character per column: l (text) or r (numbers)."""
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


# --------------------------------------------------------------------------- sections


def model_name(s: dict) -> str:
    """The model as a reader knows it: the shipped model by name, else the --model the run was given."""
    model = s["model"].rstrip("/").replace("\\", "/")
    return "the shipped model, `orthrus-stdlib-tiny`" if model.endswith(SHIPPED) else f"`{model}`"


def block_size_text(s: dict) -> str:
    """K of the main table and of the context and batch sweeps."""
    if s["block_size"] == "auto":
        return f"K = auto (chosen before every iteration), at most {s['block_room']}"
    return f"K = {s['block_size']}"


def machine_text(info: dict) -> str:
    """Where it ran: device, threads, platform and the versions that matter."""
    if info.get("gpu"):
        where = f"{info['gpu']} (CUDA {info.get('cuda')})"
    else:
        cores = f", {info['cpu_cores']} cores" if info.get("cpu_cores") else ""
        where = f"a CPU ({info['cpu']}{cores})"
    threads = info["cpu_threads"]
    versions = [f"Python {info['python']}", f"torch {info['torch']}",
                f"transformers {info['transformers']}" if info.get("transformers") else "transformers not installed"]
    if info.get("triton"):
        versions.append(f"triton {info['triton']}")
    return f"{where}, {threads} torch thread{'s' if threads != 1 else ''}; {info.get('platform', 'platform not recorded')}; " \
           + ", ".join(versions)


def provenance(r: dict, source: str) -> list[str]:
    """Which command made the numbers, where, with what: the paragraph every region starts with."""
    s = r["settings"]
    argv = r.get("argv")
    command = "python -m orthrus_min.bench " + (shlex.join(argv) if argv else f"{r['command']}  # flags not recorded in the JSON")
    how = "AOTInductor" if str(s.get("device", "")).startswith("cpu") else "torch.compile"  # (engine.Compiler)
    compiled = f"; compiled rows: {how}, mode `{s['compile_mode']}`" if s.get("compile_mode") else ""
    skipped = f" ({len(s['skipped_prompts'])} too long for the context left out)" if s.get("skipped_prompts") else ""
    lines = [f"Every number in this section comes from one run, `{source}`, written by", "", "```bash", command, "```", "",
             f"on {machine_text(r['machine_info'])}. Model: {model_name(s)} ({s['params_ar'] / 1e6:.2f}M AR + "
             f"{s['params_diffusion'] / 1e6:.2f}M diffusion-view parameters), {s['dtype']} on {s['device']}, attention "
             f"{s['attn']}{compiled}. {count(s['num_prompts'], 'prompt')} of `{Path(s['prompts_file']).name}`{skipped} × "
             f"{s['new_tokens']} new tokens ({'stopping at EOS' if s['stop_at_eos'] else 'EOS ignored'}); "
             f"{block_size_text(s)}; the median of {count(s['repeats'], 'timed run')} after {count(s['warmup'], 'warm-up run')}, "
             "the methods interleaved. Each sweep is timed on its own, so a sweep point and the main table at the same "
             "settings differ by run-to-run noise."]
    if s.get("smoke"):
        lines += ["", "**A smoke run** (`--smoke`: seconds long, tiny sizes): these numbers show the format and measure "
                      "nothing."]
    return lines + [""]


def main_table(r: dict) -> list[str]:
    """Every greedy method over all prompts: tokens/s, ratios, τ, tokens per forward, identical output."""
    t = r["table"]
    overall, prompts = t["overall"], t["prompts"]
    names = [n for n in t["methods"] if n in LABELS]
    has_ref = "transformers" in overall
    header = ["method", "tokens/s"] + (["vs Transformers `generate`"] if has_ref else []) + \
             ["vs our eager AR", "τ (tokens per iteration)", "tokens per forward", "identical output"]
    rows = []
    for name in names:
        o = overall[name]
        key, against = IDENTICAL_TO.get(name, (f"{name}_vs_ar", "our eager AR"))
        same = [p["identical"][key] for p in prompts if key in p["identical"]]
        identical = f"{yes_no(all(same))}, vs {against} ({sum(same)}/{len(same)} prompts)" if same else "–"
        rows.append([LABELS[name], rate(o["tokens_per_s"])]
                    + ([ratio(o["tokens_per_s"], overall["transformers"]["tokens_per_s"])] if has_ref else [])
                    + [ratio(o["tokens_per_s"], overall["ar"]["tokens_per_s"]), tau(o.get("acceptance_mean")),
                       tau(o.get("tokens_per_forward")), identical])
    lines = [f"**Decoding**, {count(len(prompts), 'prompt')}, batch 1, greedy:", ""] + table(header, "lr" + "r" * has_ref + "rrrl", rows)
    lines += ["", acceptance_line(r)]
    if "orthrus_compiled" in names and "ar_compiled" in names:
        lines[-1] += (" Compiled Orthrus against our compiled AR: "
                      f"{ratio(overall['orthrus_compiled']['tokens_per_s'], overall['ar_compiled']['tokens_per_s'])}.")
    return lines + [""]


def acceptance_line(r: dict) -> str:
    """τ over all prompts and its range over the prompts: τ is a property of prompt, context and K, not of the model."""
    o = r["table"]["overall"]["orthrus_greedy"]
    per_prompt = [(p["methods"]["orthrus_greedy"]["acceptance_mean"], p["id"]) for p in r["table"]["prompts"]
                  if p["methods"]["orthrus_greedy"].get("acceptance_mean") is not None]  # None: no iteration ran
    line = (f"Orthrus greedy, eager: τ = {tau(o['acceptance_mean'])} tokens per iteration and "
            f"{tau(o['tokens_per_forward'])} tokens per forward over all prompts")
    if len(per_prompt) > 1:
        (low, low_id), (high, high_id) = min(per_prompt), max(per_prompt)
        line += f"; per prompt, τ runs from {tau(low)} (`{low_id}`) to {tau(high)} (`{high_id}`)"
    return line + ". τ depends on the prompt, the context length and K (the sweeps below)."


def sampling(r: dict) -> list[str]:
    """The sampled rows: Orthrus against our AR at the run's temperature."""
    o, s = r["table"]["overall"], r["settings"]
    if "orthrus_sampled" not in o or "ar_sampled" not in o:
        return []
    orthrus, ar = o["orthrus_sampled"], o["ar_sampled"]
    return [f"**Sampling** at temperature {s['temperature']} (seed {s['seed']}, {block_size_text(s)}, eager): Orthrus "
            f"{rate(orthrus['tokens_per_s'])} tokens/s against our AR's {rate(ar['tokens_per_s'])}, "
            f"{ratio(orthrus['tokens_per_s'], ar['tokens_per_s'])}; τ = {tau(orthrus.get('acceptance_mean'))}. Sampled "
            "outputs are not compared token by token: each has the AR model's distribution.", ""]


def compiled_cells(point: dict) -> tuple[list[str], bool]:
    """A sweep point's compiled columns (compiled Orthrus tokens/s, vs our eager AR, vs our compiled AR) and whether
    its output was identical."""
    c = point["compiled"]
    return ([rate(c["orthrus_tokens_per_s"]), ratio(c["orthrus_tokens_per_s"], point["ar_tokens_per_s"]),
             ratio(c["orthrus_tokens_per_s"], c["ar_compiled_tokens_per_s"])], c["identical_output"])


COMPILED_HEADER = ["compiled Orthrus tokens/s", "vs our eager AR", "vs our compiled AR"]


def sweep_table(points: list[dict], first: str, first_cell: Callable[[dict], str]) -> list[str]:
    """A sweep of Orthrus greedy against our AR: one row per point, compiled columns when the run compiled."""
    compiled = any("compiled" in q for q in points)
    header = [first, "τ", "tokens per forward", "Orthrus tokens/s", "our AR tokens/s", "vs our AR"] \
        + (COMPILED_HEADER if compiled else []) + ["identical to AR"]
    rows = []
    for q in points:
        cells, same = compiled_cells(q) if "compiled" in q else (["–"] * 3 if compiled else [], True)
        rows.append([first_cell(q), tau(q["acceptance_mean"]), tau(q["tokens_per_forward"]), rate(q["orthrus_tokens_per_s"]),
                     rate(q["ar_tokens_per_s"]), ratio(q["orthrus_tokens_per_s"], q["ar_tokens_per_s"])] + cells
                    + [yes_no(q["identical_output"] and same)])
    return table(header, "r" * (len(header) - 1) + "l", rows)


def block_size_sweep(r: dict) -> list[str]:
    """τ, tokens per forward and speed at each block size."""
    if not r.get("block_size_sweep"):
        return []
    s = r["settings"]
    n = min(s["sweep_prompts"] or s["num_prompts"], s["num_prompts"])
    return [f"**By block size K** (Orthrus greedy against our AR, {count(n, 'prompt')}, batch 1):", ""] \
        + sweep_table(r["block_size_sweep"], "K", lambda q: str(q["block_size"])) + [""]


def context_sweep(r: dict) -> list[str]:
    """τ and speed against our AR as the prompt grows."""
    if not r.get("context_sweep"):
        return []
    s = r["settings"]

    def length(q: dict) -> str:
        mean = round(sum(q["prompt_tokens"]) / len(q["prompt_tokens"]))
        return f"{mean:,}" + (" (filler repeated)" if q["filler_repeated"] else "")

    return [f"**By context length** (Orthrus greedy against our AR, {block_size_text(s)}, up to "
            f"{count(s['context_prompts'], 'prompt')} per length, each preceded by other prompts' text):", ""] \
        + sweep_table(r["context_sweep"], "prompt tokens", length) + [""]


def batch_size_sweep(r: dict) -> list[str]:
    """Throughput of B prompts decoded together, AR against Orthrus, eager (and compiled)."""
    points = r.get("batch_size_sweep")
    if not points:
        return []
    compiled = "orthrus compiled" in points[0]
    header = ["B", "AR tokens/s", "Orthrus tokens/s", "Orthrus / AR"] \
        + (["compiled AR tokens/s", "compiled Orthrus tokens/s", "Orthrus / AR, compiled"] if compiled else []) \
        + ["τ", "identical to AR"]
    rows = []
    for q in points:
        cells = [f"{q['batch_size']}{' (prompts repeated)' if q['repeated_prompts'] else ''}", rate(q["ar"]["tokens_per_s"]),
                 rate(q["orthrus"]["tokens_per_s"]), ratio(q["orthrus"]["tokens_per_s"], q["ar"]["tokens_per_s"])]
        same = q["orthrus"]["identical_output"]
        if compiled:
            a, o = q["ar compiled"], q["orthrus compiled"]
            cells += [rate(a["tokens_per_s"]), rate(o["tokens_per_s"]), ratio(o["tokens_per_s"], a["tokens_per_s"])]
            same = same and o["identical_output"]
        rows.append(cells + [tau(q["orthrus"]["acceptance_mean"]), yes_no(same)])
    return [f"**By batch size B** (the first B prompts decoded together, greedy, {block_size_text(r['settings'])}; "
            "tokens/s over all rows; every Orthrus row compared with its AR row):", ""] \
        + table(header, "r" * (len(header) - 1) + "l", rows) + [""]


def forward_costs(r: dict) -> list[str]:
    """One forward's cost by cache length and tokens, and the break-even τ it implies."""
    f = r.get("forward")
    if not f or not f.get("latency"):
        return []
    ms = {(x["view"], x["cache_len"], x["tokens"]): x["ms"] for x in f["latency"]}
    rows = []
    for L in sorted({x["cache_len"] for x in f["latency"]}):
        one = ms.get(("ar", L, 1))
        for K in sorted({x["tokens"] for x in f["latency"] if x["tokens"] > 1}):
            ar_k = ms.get(("ar", L, K))
            if one is None or ar_k is None:
                continue
            draft = ms.get(("diffusion", L, K), ar_k)
            rows.append([f"{L:,}", str(K), f"{one:.2f}", f"{ar_k:.2f}", f"{draft:.2f}", ratio(ar_k, one),
                         f"{(draft + ar_k) / one:.2f}"])
    if not rows:
        return []
    compiled = f"compiled ({f['settings']['compile_mode']})" if f.get("settings", {}).get("compile_mode") else "eager"
    return [f"**One forward** over a cache of L tokens ({compiled}, batch 1, the median of {count(f['settings']['iters'], 'call')}, "
            "ms). "
            "An Orthrus iteration is a diffusion forward and an AR forward over K tokens, so it beats AR decoding when τ "
            "exceeds the break-even τ = (diffusion over K + AR over K) / AR over 1:", ""] \
        + table(["L", "K", "AR, 1 token", "AR, K tokens", "diffusion, K tokens", "AR K / AR 1", "break-even τ"], "rrrrrrr", rows) \
        + [""]


def roofline(r: dict) -> list[str]:
    """AR decode against copy bandwidth / bytes read per token, computed here from its parts."""
    f = r.get("forward") or {}
    roof = f.get("roofline")
    if not roof or not roof.get("decode_tokens_per_s"):
        return []
    weights, kv = roof["weight_bytes_per_token"] / 1e6, roof["kv_bytes_per_token"] / 1e6  # MB
    gbs = roof["copy_bandwidth_gbs"]
    limit = gbs * 1e3 / (weights + kv)  # GB/s / MB = 1e3 per s
    names = {"transformers": "Transformers `generate`", "ar": "orthrus_min AR, eager", "ar_compiled": "orthrus_min AR, compiled"}
    rows = [[names.get(name, name), rate(x), f"{100 * x / limit:.0f}%"] for name, x in roof["decode_tokens_per_s"].items()]
    return [f"**AR decode against the memory-bandwidth roofline**: a decode step reads the AR view's weights "
            f"(lm_head included), {weights:.2f} MB, and the K/V cache at the mean context of {roof['context']:,.0f} tokens, "
            f"{kv:.2f} MB: {weights + kv:.2f} MB per token. At the measured copy bandwidth of {gbs:.2f} GB/s that allows at "
            f"most {gbs:.2f} GB/s ÷ {weights + kv:.2f} MB = {limit:.0f} tokens/s:", ""] \
        + table(["implementation", "decode tokens/s (prefill excluded)", "of the roofline"], "lrr", rows) + [""]


README_SECTIONS = (main_table, sampling, block_size_sweep, context_sweep, batch_size_sweep, forward_costs, roofline)
CARD_SECTIONS = (main_table, block_size_sweep, context_sweep)


def render(r: dict, source: str, card: bool = False) -> str:
    """The region's text (between the markers, without them) for the README, or for the model card when card=True."""
    lines = provenance(r, source)
    for section in CARD_SECTIONS if card else README_SECTIONS:
        lines += section(r)
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- files


def load_result(path: Path) -> dict:
    """A `bench all` / `bench orthrus` JSON, or a one-line OrthrusError."""
    r = read_json_object(path)
    missing = [key for key in ("settings", "table", "machine_info") if key not in r]
    if missing:
        raise OrthrusError(f"{path}: not a JSON of `python -m orthrus_min.bench all` or `orthrus` (no {missing[0]!r})")
    return r


def render_checked(r: dict, path: Path, source: str, card: bool) -> str:
    """`render`, with a JSON that lacks a field the tables need reported in one line."""
    try:
        return render(r, source, card)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        what = f"no {e.args[0]!r}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise OrthrusError(f"{path}: an incomplete benchmark JSON ({what})") from None


def read_target(path: Path, by_default: bool = False) -> str:
    """A README to render into, or a one-line OrthrusError (by_default: the path was not named on the command line)."""
    if path.is_dir():
        raise OrthrusError(f"{path}: is a folder, not a Markdown file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = " (run from the repository root, or name the files with --readme and --card)" if by_default else ""
        raise OrthrusError(f"{path}: no such file{hint}") from None
    except UnicodeDecodeError as e:
        raise OrthrusError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise OrthrusError(f"{path}: cannot read it ({e.strerror})") from None


def region(text: str, path: Path) -> tuple[int, int]:
    """(index of the begin line, index of the end line) of the file's one results region, or a one-line OrthrusError."""
    lines = text.split("\n")
    begins = [i for i, line in enumerate(lines) if BEGIN.match(line)]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if not begins:
        raise OrthrusError(f"{path}: no results region; put a line `{begin_line('FILE')}` and a line `{END}` where the "
                           "tables go")
    if len(begins) > 1 or len(ends) > 1:
        second = (begins if len(begins) > 1 else ends)[1]
        raise OrthrusError(f"{path}:{second + 1}: a second results marker; a file holds one results region")
    if not ends or ends[0] < begins[0]:
        raise OrthrusError(f"{path}:{begins[0] + 1}: the results region is not closed by a line `{END}` after it")
    return begins[0], ends[0]


def rewritten(text: str, path: Path, body: str, source: str) -> str:
    """The file's text with its results region (begin line included) replaced by the rendering."""
    begin, end = region(text, path)
    lines = text.split("\n")
    return "\n".join(lines[:begin] + [begin_line(source), *body.rstrip("\n").split("\n"), *lines[end:]])


def first_difference(found: str, expected: str, path: Path, source: str) -> str | None:
    """One line naming the first line where the file differs from what the JSON renders, or None when it does not."""
    have, want = found.split("\n"), expected.split("\n")
    for i in range(max(len(have), len(want))):
        a = have[i] if i < len(have) else None
        b = want[i] if i < len(want) else None
        if a != b:
            return f"{path}:{i + 1}: differs from what {source} renders: the file has {clip(a, b)}, the JSON renders {clip(b, a)}"
    return None


def clip(line: str | None, other: str | None, width: int = 60) -> str:
    """`line` quoted, cut to `width` characters around where it first differs from `other`."""
    if line is None:
        return "no line (the file ends)"
    start = next((i for i, (x, y) in enumerate(zip(line, other or "")) if x != y), min(len(line), len(other or "")))
    lo = max(0, min(start - width // 2, len(line) - width))
    piece = line[lo: lo + width]
    return repr(("…" if lo > 0 else "") + piece + ("…" if lo + width < len(line) else ""))


def shown_path(path: Path) -> str:
    """A path as the begin line and the text name it: relative to the current folder when it lies inside it."""
    absolute = path.resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def run_report(args) -> int:
    """`bench report`: renders --json into each file's results region, or with --check compares; returns the exit status
    (1: a file differs from its rendering, one line each on stderr). Every file is read and checked before any is written."""
    targets = [(path, card) for path, card in ((args.readme, False), (args.card, True)) if path is not None]
    by_default = not targets
    targets = targets or [(README, False), (CARD, True)]
    r = load_result(args.json)
    source = shown_path(args.json)
    plans = []
    for path, card in targets:
        text = read_target(path, by_default)
        plans.append((path, text, rewritten(text, path, render_checked(r, args.json, source, card), source)))
    if args.check:
        differences = [first_difference(text, new, path, source) for path, text, new in plans]
        for line in filter(None, differences):
            print(line, file=sys.stderr)
        if any(differences):
            return 1
        print(f"{', '.join(str(p) for p, _, _ in plans)}: as {source} renders")
        return 0
    for path, text, new in plans:
        if new != text:
            write_text_atomically(path, new)
        print(f"{path}: {'results rewritten' if new != text else 'unchanged'} from {source}")
    return 0


__all__ = ["render", "run_report", "load_result", "begin_line", "BEGIN", "END"]
