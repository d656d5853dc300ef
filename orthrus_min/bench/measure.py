"""Timing decode methods side by side, and the statistics of their runs.

Used by `python -m orthrus_min.bench orthrus`, `all`, `ar` and `forward`. Measuring rules
(docs/ARCHITECTURE.md, "Performance model": ratios from one run): every method decodes the same
prompt ids; methods are interleaved inside each repeat so they share the machine's noise;
untimed warm-up runs come first; each figure is a median over the repeats.
"""

from __future__ import annotations

from statistics import median

import torch

from .common import END_TO_END, peak_memory_mb, reset_peak_memory, time_calls
from .decoders import Method, Run


def measure(methods: dict[str, Method], prompt_ids: list[int], repeats: int, device: torch.device) -> dict[str, list[Run]]:
    """Runs every method `repeats` times on the same prompt, interleaved; returns the runs per method
    (each with its end-to-end seconds and the peak memory after it)."""
    runs = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            reset_peak_memory(device)
            timed = time_calls(lambda: method(prompt_ids), device, END_TO_END)
            run = timed.result
            run.seconds, run.peak_mb = timed.seconds[0], peak_memory_mb(device)
            runs[name].append(run)
    return runs


def warm_up(methods: dict[str, Method], prompt_ids: list[int], count: int, device: torch.device) -> None:
    """`count` untimed rounds of every method (compiles, allocator pools and clocks settle)."""
    for _ in range(count):
        for method in methods.values():
            time_calls(lambda: method(prompt_ids), device, END_TO_END)


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
    """One method over all prompts (summaries from `summarize`): total tokens / total time; median TTFT; pooled acceptance."""
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
