"""The command line of the benchmarks: flags, the checks that run before any work, and dispatch.

    python -m orthrus_min.bench <command> [flags]     # commands: all, orthrus, ar, forward, random-model, attn, gpu, report
    python -m orthrus_min.bench <command> --help      # every flag, with its default

Conventions (shared with generate and train): every flag has help text that states its default
once, as "(default: …)"; flags that change with --smoke say both. Every user mistake — a bad
flag value, an output path that cannot be written, a bad model or prompt file — prints one line
`error: …` on stderr and exits with status 2, before any model is loaded where it can be
checked that early; so does a full disk. Report files are written under a temporary name and
renamed, only over a regular file (files.py's rule); `random-model` refuses a non-empty --out
unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import block_size_arg, command_parser, int_list, nonnegative_float, nonnegative_int, positive_int, run_main
from ..engine import COMPILE_MODES
from ..files import check_replaceable, check_writable_file, check_writable_folder
from .common import write_json, write_text

MODEL_COMMANDS = ("all", "orthrus", "ar", "forward", "gpu", "threads")  # run a model and write OUT/bench_<command>.{json,md}


def layout_list(text: str) -> list[str]:
    """'Qwen3-1.7B,Qwen3-8B' -> the names, each one of attn.LAYOUTS."""
    from .attn import LAYOUTS

    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [name for name in names if name not in LAYOUTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown layout {', '.join(unknown) or repr(text)}; choose from {', '.join(LAYOUTS)}")
    return names


# --------------------------------------------------------------------------- flags


def add_model_args(sp: argparse.ArgumentParser, command: str, repeats_help: str, repeats_default: int | None) -> None:
    """Flags of every command that runs a model: which model, where, how, and where the results go."""
    from ..checkpoint import DEFAULT_MODEL

    sp.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder or Hub id (default: the shipped model)")
    sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: cuda when available (default: auto)")
    sp.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto: bfloat16 on CUDA, float32 on CPU "
                                                    "(default: auto)")
    sp.add_argument("--compile", action="store_true", help="also time our decoders with their fixed-shape steps compiled "
                    "(compiled rows beside the eager ones; compile time is paid in the warm-up runs)")
    sp.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                    help="torch.compile mode for --compile and --compile-transformers; reduce-overhead: CUDA graphs; "
                         "max-autotune: also tuned matmul kernels, the fastest on a CPU and the slowest to compile (default: default)")
    sp.add_argument("--compile-transformers", action="store_true",
                    help="also torch.compile the Transformers reference's forward (without it the reference runs eager)")
    sp.add_argument("--threads", type=positive_int, default=None,
                    help="CPU threads for torch (default: what load chooses: 1 for a model under 50M parameters, else one "
                         "per core that is not busy)")
    sp.add_argument("--repeats", type=positive_int, default=repeats_default, help=repeats_help)
    sp.add_argument("--out", type=Path, default=Path("bench-results"),
                    help=f"folder for bench_{command}.md, .json" + (" and .png" if command in ("all", "orthrus") else "")
                         + " (default: bench-results)")
    sp.add_argument("--json", type=Path, default=None, help=f"write the result as JSON here instead (default: OUT/bench_{command}.json)")


def add_decode_args(sp: argparse.ArgumentParser) -> None:
    """Flags of `orthrus` and `all`."""
    sp.add_argument("--prompts", type=Path, help="JSONL prompt file, format above (default: heldout_prompts.jsonl of the model, "
                                                  "else of the shipped model's)")
    sp.add_argument("--max-prompts", type=positive_int, default=None, help="use only the first N prompts (default: all; with "
                                                                           "--smoke: 1)")
    sp.add_argument("--max-new-tokens", type=positive_int, default=None, help="tokens generated per run (default: 128; with "
                                                                              "--smoke: 8)")
    sp.add_argument("--block-size", type=block_size_arg, default=None, help="K of the main table, the context and batch sweeps: "
                    "1 … the checkpoint's block_size, or auto: chosen per step, as generate does (default: auto)")
    sp.add_argument("--temperature", type=nonnegative_float, default=0.7, help="temperature of the sampled rows (default: 0.7)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the sampled rows, the same for every repeat (default: 0)")
    sp.add_argument("--stop-at-eos", action="store_true", help="stop at EOS (without it EOS is ignored, so every run decodes "
                                                              "--max-new-tokens tokens)")
    sp.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"),
                    help="our attention backend; auto: triton on CUDA (default: auto)")
    sp.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed runs of every method before each table and each "
                                                                      "sweep point (default: 1)")
    sp.add_argument("--block-sizes", type=int_list(1), default=None, help="block-size sweep, clipped to the checkpoint's block_size "
                                                                          "(default: 4,8,16,32; with --smoke: 4,8)")
    sp.add_argument("--sweep-prompts", type=positive_int, default=None, help="prompts in the block-size sweep (default: all; with "
                                                                             "--smoke: 1)")
    sp.add_argument("--context-lengths", type=int_list(1), default=None,
                    help="context-length sweep, prompt tokens (default: 128,512,1024,2048,… up to what the model allows; "
                         "with --smoke: 32,64)")
    sp.add_argument("--context-prompts", type=positive_int, default=None, help="prompts per context length (default: 4; with "
                                                                               "--smoke: 1)")
    sp.add_argument("--batch-sizes", type=int_list(1), default=None, help="batch-size sweep: prompts decoded together "
                    "(default: 1,2,4,8,16; with --smoke: 1,2)")
    sp.add_argument("--backend", default="torch", choices=("torch", "mlx"),
                    help="mlx: add the MLX backend's greedy AR and Orthrus rows to the main table (needs mlx installed) "
                         "(default: torch)")
    sp.add_argument("--smoke", action="store_true", help="seconds: 1 prompt, 8 tokens, 1 repeat, tiny sweeps (for tests)")


def add_forward_args(sp: argparse.ArgumentParser) -> None:
    """Flags of the per-forward latency table (`forward` and `all`)."""
    sp.add_argument("--lengths", type=int_list(0), default=None, help="cache lengths L, clipped to the context (default: "
                                                                      "128,1024,4096,16384; with --smoke: 16,64)")
    sp.add_argument("--tokens", type=int_list(1), default=None, help="tokens per forward T; 1 is always added (default: "
                                                                     "1,4,8,16,32 and the block size; with --smoke: 1,8)")
    sp.add_argument("--iters", type=positive_int, default=None, help="timed forwards per cell, median reported (default: 20; "
                                                                     "with --smoke: 3)")
    sp.add_argument("--copy-mib", type=positive_int, default=None, help="MiB copied to measure memory bandwidth (default: 1024 on "
                                                                        "CUDA, 256 on CPU; with --smoke: 16)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m orthrus_min.bench`, one sub-command per benchmark."""
    from . import __doc__ as package_doc
    from .. import prompts
    from .attn import LAYOUTS
    from .random_model import PRESETS

    fmt = argparse.RawDescriptionHelpFormatter
    p, sub = command_parser("python -m orthrus_min.bench", package_doc, "command")
    repeats_smoke = "timed rounds after the warm-up; the median is reported (default: 5; with --smoke: 1)"

    help_ = "our AR decode vs Transformers generate on a random prompt: tokens/s and ratio"
    ar = sub.add_parser("ar", help=help_, description=help_, formatter_class=fmt)
    add_model_args(ar, "ar", "timed rounds after the warm-up; the median is reported (default: 5)", 5)
    ar.add_argument("--prompt-len", type=positive_int, default=32, help="prompt length in tokens, random ids (default: 32)")
    ar.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens generated per run, EOS ignored (default: 128)")

    prompt_format = prompts.__doc__.split("\n\nReading is bounded")[0]  # the format, documented once (orthrus_min/prompts.py)
    for name, help_ in (("orthrus", "our AR vs Orthrus greedy and sampled, per prompt, plus block-size and context sweeps"),
                        ("all", "orthrus + Transformers generate + the per-forward latency table: the whole report")):
        sp = sub.add_parser(name, help=help_, description=f"{help_}.\n\n{prompt_format}", formatter_class=fmt)
        add_model_args(sp, name, repeats_smoke, None)
        add_decode_args(sp)
        if name == "all":
            add_forward_args(sp)

    help_ = "latency of one forward of T tokens over a cache of L (T=1 vs 32) and AR decode vs the memory-bandwidth roofline"
    fw = sub.add_parser("forward", help=help_, description=help_, formatter_class=fmt)
    add_model_args(fw, "forward", repeats_smoke, None)
    add_forward_args(fw)
    fw.add_argument("--prompt-len", type=positive_int, default=None, help="random prompt tokens for the decode timing (default: "
                                                                          "128; with --smoke: 8)")
    fw.add_argument("--max-new-tokens", type=positive_int, default=None, help="tokens decoded per run (default: 128; with "
                                                                              "--smoke: 8)")
    fw.add_argument("--no-transformers", action="store_true", help="skip Transformers generate in the decode timing")
    fw.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"),
                    help="our attention backend; auto: triton on CUDA (default: auto)")
    fw.add_argument("--smoke", action="store_true", help="seconds: tiny lengths, few iterations (for tests)")

    help_ = "write a random Qwen3 checkpoint of a preset shape (to benchmark on)"
    rm = sub.add_parser("random-model", help=help_, description=help_, formatter_class=fmt)
    rm.add_argument("--preset", choices=list(PRESETS), default="small", help="the model's shape (default: small)")
    rm.add_argument("--out", type=Path, required=True, help="checkpoint folder to write: new or empty, unless --overwrite")
    rm.add_argument("--overwrite", action="store_true", help="replace config.json and model.safetensors in a non-empty "
                                                            "--out (other files stay)")
    rm.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    rm.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's choice)")

    from .attn import __doc__ as attn_doc

    help_ = "the Triton block-attention kernel vs SDPA and flex_attention (CUDA only)"
    at = sub.add_parser("attn", help=help_, description=attn_doc, formatter_class=fmt)
    at.add_argument("--lengths", type=int_list(1), default=[1024, 4096, 16384, 32768],
                    help="cached prefix lengths L, comma-separated (default: 1024,4096,16384,32768)")
    at.add_argument("--block", type=positive_int, default=32, help="K: queries per block (default: 32, the paper's)")
    at.add_argument("--batch", type=positive_int, default=1, help="B: sequences per call (default: 1)")
    at.add_argument("--layouts", type=layout_list, default=list(LAYOUTS),
                    help=f"head layouts, comma-separated, from {', '.join(LAYOUTS)} (default: all of them)")
    at.add_argument("--iters", type=positive_int, default=50, help="timed calls per cell, after at least 10 warm-up calls and "
                                                                   "0.1 s (default: 50)")
    at.add_argument("--sweep", action="store_true",
                    help="instead of the comparison, time 54 launch configurations of our kernel per cell and print the fastest "
                         "next to the one `choose_config` picks (a tuning aid; minutes of compiling)")

    add_threads_parser(sub, fmt)
    add_gpu_parser(sub, fmt)
    add_report_parser(sub, fmt)
    return p


def add_threads_parser(sub, fmt) -> None:
    """The `threads` command: tokens/s against CPU threads, idle and with busy cores (threads.py)."""
    from ..checkpoint import DEFAULT_MODEL
    from .threads import METHODS
    from .threads import __doc__ as threads_doc

    help_ = "tokens/s of AR and Orthrus against CPU threads, on an idle machine and with cores kept busy"
    th = sub.add_parser("threads", help=help_, description=threads_doc, formatter_class=fmt)
    th.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder or Hub id (default: the shipped model)")
    th.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto: float32 on a CPU (default: auto)")
    th.add_argument("--threads-list", type=int_list(1), default=[1, 2], metavar="N1,N2,…",
                    help="thread counts to time (default: 1,2)")
    th.add_argument("--busy", type=int_list(0), default=[0, 1], metavar="B1,B2,…",
                    help="numbers of spinning processes to run beside the measurement, each a busy core (default: 0,1)")
    th.add_argument("--methods", type=method_list, default=list(METHODS), metavar="M1,M2",
                    help="ar, orthrus or both (default: ar,orthrus; orthrus needs a diffusion view)")
    th.add_argument("--prompt", default="class Stack:", help="the prompt (default: 'class Stack:')")
    th.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens per run (default: 128)")
    th.add_argument("--block-size", type=block_size_arg, default="auto", help="Orthrus's K, or auto (default: auto)")
    th.add_argument("--repeats", type=positive_int, default=3, help="timed runs per cell; the median is reported (default: 3)")
    th.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench_threads.md and .json "
                                                                              "(default: bench-results)")
    th.add_argument("--json", type=Path, default=None, help="write the result as JSON here instead "
                                                            "(default: OUT/bench_threads.json)")


def method_list(text: str) -> list[str]:
    """'ar,orthrus' -> the names, each one of threads.METHODS."""
    from .threads import METHODS

    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names or any(n not in METHODS for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(METHODS)}")
    return names


def add_gpu_parser(sub, fmt) -> None:
    """The `gpu` command: every section of gpu.py, one report."""
    from ..checkpoint import DEFAULT_MODEL
    from .gpu import SECTIONS, section_list
    from .gpu import __doc__ as gpu_doc

    help_ = "everything a GPU run must show, in one report: GPU tests, batch invariance, CUDA-graph decoding, roofline, kernel"
    gp = sub.add_parser("gpu", help=help_, description=gpu_doc, formatter_class=fmt)
    gp.add_argument("--model", default=str(DEFAULT_MODEL), help="the Orthrus checkpoint of the decode and identical sections "
                    "(default: the shipped model)")
    gp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: cuda when available (default: auto)")
    gp.add_argument("--sections", type=section_list, default=list(SECTIONS),
                    help=f"comma-separated, from {', '.join(SECTIONS)} (default: all of them)")
    gp.add_argument("--compile-mode", default=None, choices=(*COMPILE_MODES, "none"),
                    help="torch.compile mode of the compiled rows, or none (default: reduce-overhead, i.e. CUDA graphs, on a "
                         "GPU; none on a CPU, where compiling takes minutes)")
    gp.add_argument("--block-size", type=positive_int, default=8, help="K of the decode section and of the batched rows "
                                                                       "(default: 8)")
    gp.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's choice)")
    gp.add_argument("--smoke", action="store_true", help="seconds: tiny sizes in every section (the tests run it on the CPU)")
    gp.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench_gpu.md and .json "
                                                                              "(default: bench-results)")
    gp.add_argument("--json", type=Path, default=None, help="write the result as JSON here instead (default: OUT/bench_gpu.json)")


def add_report_parser(sub, fmt) -> None:
    """The `report` command: a benchmark JSON rendered into the results regions of the README and the model card."""
    from .report import CARD, README
    from .report import __doc__ as report_doc

    help_ = "render a bench all/orthrus JSON into the results region of the README and the model card (or --check them)"
    rp = sub.add_parser("report", help=help_, description=report_doc, formatter_class=fmt)
    rp.add_argument("--json", type=Path, required=True, help="the JSON that `bench all` or `bench orthrus` wrote")
    rp.add_argument("--readme", type=Path, default=None, help="a README whose results region gets every table (default: "
                    f"{README} and, with it, the card {CARD}, unless --readme or --card names a file)")
    rp.add_argument("--card", type=Path, default=None, help="a model card whose results region gets the short form: decoding, "
                                                            "block size, context length")
    rp.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 with one line per file whose region differs "
                                                         "from what the JSON renders")


# --------------------------------------------------------------------------- running a command


def check_outputs(args) -> None:
    """Proves every output path can be written (creating OUT), before any model is loaded; fills in the default --json.

    The report files a command rewrites in OUT (bench_<command>.md, .json, .png) may only replace regular files
    (files.py's rule); random-model refuses a non-empty OUT without --overwrite."""
    if args.command == "random-model":
        from .random_model import check_model_out

        check_model_out(args.out, args.overwrite)
    elif args.command in MODEL_COMMANDS:
        check_replaceable(args.out, "--out", {f"bench_{args.command}.{ext}": None for ext in ("md", "json", "png")})
    check_writable_folder(args.out, "--out")
    if args.command in MODEL_COMMANDS:
        args.json = args.json or args.out / f"bench_{args.command}.json"
        check_writable_file(args.json, "--json")


def run_benchmark(args) -> tuple[dict, str]:
    """Runs the model command `args.command` -> (result for the JSON, Markdown report)."""
    if args.command == "ar":
        from .ar import bench_ar

        return bench_ar(args)
    if args.command == "forward":
        from .forward import bench_forward

        return bench_forward(args)
    if args.command == "threads":
        from .threads import bench_threads

        return bench_threads(args)
    if args.command == "gpu":
        from .gpu import bench_gpu

        return bench_gpu(args)
    from .decode import bench_decode

    return bench_decode(args)


def finish(args, result: dict, report: str) -> None:
    """Prints the report, writes it to OUT/bench_<command>.md and the result to the JSON file, and says where."""
    md = args.out / f"bench_{args.command}.md"
    result["files"] = {"json": str(args.json), "markdown": str(md), **result.get("files", {})}
    result["argv"] = getattr(args, "argv", None)  # the command line after `python -m orthrus_min.bench` (bench report shows it)
    print(report, end="")
    write_text(report, md)
    write_json(result, args.json)
    written = [str(path) for path in result["files"].values() if path]
    print(f"\nwrote {', '.join(written[:-1])} and {written[-1]}")


def run(args) -> int:
    """Runs a parsed command line; OrthrusError for any user mistake."""
    import torch

    if args.command == "attn":
        from .attn import bench_attn

        bench_attn(args)
        return 0
    if args.command == "report":
        from .report import run_report

        return run_report(args)
    check_outputs(args)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.command == "random-model":
        from .random_model import run_random_model

        return run_random_model(args)
    result, report = run_benchmark(args)
    finish(args, result, report)
    if args.command == "gpu":
        from .gpu import failed

        return 1 if failed(result) else 0  # a failed check or a section that could not run
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m orthrus_min.bench`: returns the exit status (2 and one line `error: …` for any user mistake)."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def parse_and_run() -> int:
        args = build_parser().parse_args(argv)
        args.argv = argv  # recorded in the JSON
        return run(args)

    return run_main(parse_and_run)
