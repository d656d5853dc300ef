"""Benchmark `threads`: tokens/s of our AR and Orthrus decoders against the number of CPU threads, on an idle
machine and with cores kept busy — the measurements behind `api.default_threads`.

    python -m orthrus_min.bench threads                                   # the shipped model, 1 and 2 threads, 0 and 1 busy cores
    python -m orthrus_min.bench random-model --preset qwen3-1.7b --out /tmp/qwen3-1.7b
    python -m orthrus_min.bench threads --model /tmp/qwen3-1.7b --dtype bfloat16 --max-new-tokens 4 --repeats 1 --methods ar

"Busy" cores are simulated: `--busy N` starts N processes that spin (`while True: pass`) for the whole
measurement, as another user's job would. OpenMP's worker threads wait for each other at the end of
every parallel operator, so a thread that shares its core with such a process stalls the others; a
small model, whose forward is mostly per-operator overhead, gains nothing from a second thread anyway.
For each busy count and each thread count, every method decodes the prompt `--repeats` times after one
warm-up run (Orthrus with `--block-size`, default auto, whose costs are measured at that thread count);
the median tokens/s is reported.
"""

from __future__ import annotations

import multiprocessing
from contextlib import contextmanager
from statistics import median

import torch

from .common import machine_info, machine_line, progress, shown_path
from .decoders import Decoding, ar_method, orthrus_method
from .measure import measure, warm_up

METHODS = ("ar", "orthrus")


def _spin() -> None:  # a busy core: another process's CPU-bound work
    while True:
        pass


@contextmanager
def busy_cores(count: int):
    """`count` spinning processes, stopped on exit (also when the measurement fails or is interrupted)."""
    context = multiprocessing.get_context("spawn")  # spawn: no copy of this process's torch threads
    spinners = [context.Process(target=_spin, daemon=True) for _ in range(count)]
    for p in spinners:
        p.start()
    try:
        yield spinners
    finally:
        for p in spinners:
            p.terminate()
            p.join()


def bench_threads(args) -> tuple[dict, str]:
    """Median tokens/s of each method at each (busy cores, threads) pair. Returns (result for the JSON, Markdown)."""
    from ..checkpoint import load_model, num_parameters, resolve_checkpoint, resolve_device, resolve_dtype
    from ..tokenizer import Tokenizer
    from ..api import default_threads

    device = resolve_device("cpu")
    dtype = resolve_dtype(args.dtype, device)
    folder = resolve_checkpoint(args.model)
    model = load_model(folder, dtype=dtype, device=device, attn="torch")
    methods_wanted = [m for m in args.methods if m != "orthrus" or model.config.has_diffusion_view]
    prompt = Tokenizer(folder).encode(args.prompt)
    d = Decoding(args.max_new_tokens)
    rows = []
    for busy in args.busy:
        with busy_cores(busy):
            for threads in args.threads_list:
                torch.set_num_threads(threads)
                progress(f"threads: {busy} busy core(s), {threads} thread(s)")
                methods = {"ar": ar_method(model, d)}
                if "orthrus" in methods_wanted:
                    methods["orthrus"] = orthrus_method(model, d, args.block_size)
                methods = {m: f for m, f in methods.items() if m in methods_wanted}
                warm_up(methods, prompt, 1, device)
                runs = measure(methods, prompt, args.repeats, device)
                rates = {m: round(median([len(r.tokens) / r.seconds for r in rs]), 2) for m, rs in runs.items()}
                rows.append({"busy_cores": busy, "threads": threads, "tokens_per_s": rates})
    params = num_parameters(model)
    info = machine_info(device)
    result = {"command": "threads", "model": shown_path(args.model), "dtype": str(dtype).removeprefix("torch."),
              "parameters": params, "prompt": args.prompt, "new_tokens": args.max_new_tokens, "repeats": args.repeats,
              "block_size": args.block_size, "machine": machine_line(info), "machine_info": info, "rows": rows,
              "default_threads_now": default_threads(params)}
    header = "| busy cores | threads | " + " | ".join(f"{m} tokens/s" for m in methods_wanted) + " |"
    lines = [f"# bench threads — {result['machine']}",
             f"model {args.model} ({params:,} parameters, {result['dtype']}), prompt {args.prompt!r}, "
             f"{args.max_new_tokens} new tokens, Orthrus block size {args.block_size}, median of {args.repeats}", "",
             header, "|" + "---:|" * (2 + len(methods_wanted))]
    for row in rows:
        lines.append(f"| {row['busy_cores']} | {row['threads']} | "
                     + " | ".join(f"{row['tokens_per_s'][m]:.2f}" for m in methods_wanted) + " |")
    lines += ["", f"`load` would choose {result['default_threads_now']} thread(s) for this model on this machine now "
                  "(api.default_threads: 1 under 50M parameters, else one per core that is not busy)."]
    return result, "\n".join(lines) + "\n"
