"""Benchmark `gpu`: everything a GPU run must show, in one command and one report (OUT/bench_gpu.{json,md}).

    python -m orthrus_min.bench gpu                              # on a GPU: about 7 minutes on one H100
    python -m orthrus_min.bench gpu --device cpu --smoke         # seconds, every section at tiny sizes (the tests run it)
    python -m orthrus_min.bench gpu --sections identical,decode  # some sections only

Sections, in order (each prints progress lines on stderr; one that fails is reported as an error and the
run goes on):

  tests       the GPU-only tests — the kernel in bf16/fp16, and bf16 batch invariance of the kernel and the model —
              run by pytest in a subprocess: pass/fail (they skip without a GPU)
  invariance  per operator, the largest difference between a token's row computed inside a block of T
              tokens (or a batch) and alone: linear, RMSNorm, SDPA, our invariant attention, the kernel,
              and the whole model's logits with batch invariance off and on (bf16 and fp32)
  decode      the shipped model at batch 1, 4, 16 (K = --block-size): AR and Orthrus tokens/s, eager and
              compiled (--compile-mode, CUDA graphs by default on a GPU); Orthrus == AR within each, and
              compiled == eager in fp32 (bf16's fused kernels round differently), row for row, token for token
  roofline    AR decode of the Qwen3-1.7B-shaped random model, eager and compiled, against the
              memory-bandwidth roofline (weights + K/V read per token at the measured copy bandwidth)
  forward     one forward of that model over a cache of L tokens for T = 1 … 32 new tokens, each captured
              in a CUDA graph (eager on the CPU): what a block of K costs against one token, break-even τ
  identical   bf16 greedy: how often Orthrus's output equals AR's (held-out prompts, K = 4, 8, 16, 32),
              with batch invariance off and on, per attention backend; and batched rows == alone
  cost        eager AR and Orthrus tokens/s with batch invariance off and on, bf16 and fp32, interleaved
  attn        the Triton kernel against SDPA and flex_attention (`bench attn`'s cells), and its split size

Checks (every equality above, and the GPU tests) are listed first in the report; the command exits with
status 1 when one fails or a section errs, 0 otherwise. Budget on one H100 (estimates, never yet run on
a GPU): tests 1 min, decode 2.5 min (six compiles), roofline 1.5 min (one compile of the 1.7B model),
identical 1 min, cost 1 min, attn 1 min, the rest seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F

from ..errors import OrthrusError
from .common import (Timing, copy_bandwidth_gbs, first_mismatch, fmt, machine_info, machine_line, package_version, progress,
                     shown_path, time_calls)

SECTIONS = ("tests", "invariance", "decode", "roofline", "forward", "identical", "cost", "attn")
GPU_TESTS = ("tests/test_triton_attn.py::test_kernel_half_precision_on_gpu",
             "tests/test_triton_attn.py::test_a_bf16_query_gives_the_same_bits_alone_and_in_a_block_on_gpu",
             "tests/test_batch_invariance.py::test_bf16_on_gpu_alone_in_a_block_and_in_a_batch")
FULL = dict(prompts=16, new_tokens=128, block_sizes=[4, 8, 16, 32], batch_sizes=[1, 4, 16], repeats=3, preset="qwen3-1.7b",
            prompt_len=128, lengths=[1024, 4096], tokens=[1, 2, 4, 8, 16, 32], iters=20, copy_mib=1024,
            attn_lengths=[1024, 8192, 32768], split_sizes=[128, 256, 512, 1024], tests_timeout_s=300, probe_tokens=32,
            probe_windows=3, probe_dtypes=["bfloat16", "float32"], cost_prompts=8)
SMOKE = dict(prompts=2, new_tokens=12, block_sizes=[4, 32], batch_sizes=[1, 2], repeats=1, preset="tiny",
             prompt_len=8, lengths=[16, 64], tokens=[1, 8], iters=2, copy_mib=16,
             attn_lengths=[256], split_sizes=[64, 256], tests_timeout_s=300, probe_tokens=8, probe_windows=1,
             probe_dtypes=["bfloat16"], cost_prompts=1)
INVARIANCE_TOKENS = (2, 3, 8, 32)  # block sizes T of the invariance section


# --------------------------------------------------------------------------- what every section shares


class Context:
    """The run's settings and what sections share: the device, the shipped model's prompts, the random model."""

    def __init__(self, args, device: torch.device):
        from ..checkpoint import resolve_checkpoint

        self.args, self.device, self.s = args, device, dict(SMOKE if args.smoke else FULL)
        self.cuda = device.type == "cuda"
        self.folder = resolve_checkpoint(args.model)
        self.compile_mode = None if args.compile_mode == "none" else args.compile_mode
        self._random = None

    def shipped(self, dtype: torch.dtype):
        """The --model checkpoint in `dtype` on the device (attention: triton on CUDA when installed, else torch)."""
        from ..checkpoint import load_model

        return load_model(self.folder, dtype=dtype, device=self.device)

    def prompt_ids(self, n: int) -> list[list[int]]:
        """The first n held-out prompts of the checkpoint (its heldout_prompts.jsonl, else the shipped model's), encoded."""
        from ..prompts import default_prompts_file, encode_prompt, read_prompt_file
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer(self.folder)
        return [encode_prompt(p, tokenizer) for p in read_prompt_file(default_prompts_file(self.folder))][:n]

    def random_model(self):
        """The random model of the roofline and forward sections (preset qwen3-1.7b; tiny with --smoke), built once."""
        if self._random is None:
            from .random_model import random_qwen3

            model = random_qwen3(self.s["preset"], device=self.device, dtype=torch.bfloat16 if self.cuda else torch.float32)
            if self.cuda and package_version("triton"):
                model.set_attn_backend("triton")
            self._random = model
        return self._random


def rows_equal(a: list[list[int]], b: list[list[int]]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


# --------------------------------------------------------------------------- tests


def section_tests(ctx: Context) -> dict:
    """The GPU-only tests, by pytest in a subprocess (from the repository's tests/; they skip without a GPU)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "tests").is_dir():
        return {"status": "skipped", "reason": f"no tests/ next to the package ({root}): an installed copy, not a checkout"}
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *GPU_TESTS]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=ctx.s["tests_timeout_s"])
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {ctx.s['tests_timeout_s']} s", "command": command[2:],
                "checks": {"gpu_tests_pass": False}}
    out = done.stdout + done.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""  # pytest's last line: "2 failed, 8 passed in 30.1s"
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", summary)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    ran = counts.get("passed", 0) + failed
    status = "failed" if done.returncode not in (0, 5) or failed else "passed" if ran else "skipped"
    result = {"status": status, "command": ["python", *command[1:]], "exit_code": done.returncode, "seconds": time.perf_counter() - t0,
              "passed": counts.get("passed", 0), "failed": failed, "skipped": counts.get("skipped", 0),
              "failures": re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M), "output_tail": out[-3000:]}
    if status == "skipped":
        result["reason"] = "every GPU-only test skipped: no CUDA GPU"
    else:
        result["checks"] = {"gpu_tests_pass": status == "passed"}
    return result


def md_tests(r: dict) -> list[str]:
    lines = [f"`{' '.join(r['command'])}`" if "command" in r else "", ""]
    if "passed" in r:
        lines.append(f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped in {r['seconds']:.0f} s"
                     + (": " + ", ".join(r["failures"]) if r["failures"] else ""))
    return lines


# --------------------------------------------------------------------------- invariance


def _max_diff(block: Callable[[int, int], torch.Tensor], alone: Callable[[int], torch.Tensor], n: int) -> float:
    """The largest |block(B=3, T)[0, i] - alone(j)| over T in INVARIANCE_TOKENS (up to n) and every token j of n: the n
    tokens fed to `block` in consecutive blocks of T (in a batch of 3), against each token fed alone."""
    worst = 0.0
    for T in [T for T in INVARIANCE_TOKENS if T <= n]:
        for start in range(0, n, T):
            out = block(start, min(T, n - start))  # (3, T', …): row 0 holds tokens start … start+T'-1
            for i in range(out.shape[1]):
                worst = max(worst, (out[0, i].float() - alone(start + i)[0, 0].float()).abs().max().item())
    return worst


@torch.inference_mode()
def section_invariance(ctx: Context) -> dict:
    """Per operator and for the whole model, in each dtype of `probe_dtypes`: each of `probe_tokens` tokens computed
    inside blocks of T (in a batch of 3, over a larger cache) against the same token alone (T = 1, batch 1, a cache just
    large enough)."""
    prompts = ctx.prompt_ids(3 * ctx.s["probe_windows"])
    streams = [[t for p in prompts[i:i + 3] for t in p] for i in range(0, len(prompts), 3)]  # windows of text
    streams = [(s * (1 + 400 // len(s)))[:400] for s in streams]  # each long enough for the three rows' prefixes
    rows, checks = [], {}
    for name in ctx.s["probe_dtypes"]:
        progress(f"gpu invariance: {name}")
        dtype_rows, dtype_checks = _probe_dtype(ctx, getattr(torch, name), streams)
        rows += [{"dtype": name, **row} for row in dtype_rows]
        checks.update({f"{check}_{name}": ok for check, ok in dtype_checks.items()})
    n = ctx.s["probe_tokens"]
    return {"status": "ok", "tokens": [T for T in INVARIANCE_TOKENS if T <= n], "n": n, "windows": len(streams), "rows": rows,
            "checks": checks}


def _probe_dtype(ctx: Context, dtype: torch.dtype, streams: list[list[int]]) -> tuple[list[dict], dict]:
    """section_invariance's rows and checks for one dtype."""
    from ..invariant import additive_mask, invariant_attention
    from ..model import block_mask

    model = ctx.shipped(dtype)
    c, device, n, P = model.config, ctx.device, ctx.s["probe_tokens"], 100
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(3, n, c.hidden_size, generator=g).to(device, dtype)  # (3, n, C)
    q_all = torch.randn(3, c.num_attention_heads, n, c.head_dim, generator=g).to(device, dtype)  # (3, H, n, D)
    kv = torch.randn(2, 3, c.num_key_value_heads, P + n + 300, c.head_dim, generator=g).to(device, dtype)
    layer = model.model.layers[0]

    def attend(kind: str, q: torch.Tensor, L: torch.Tensor, S: int) -> torch.Tensor:
        """Queries q (B, H, T, D) at positions L_b … over the first S slots of kv -> (B, T, H, D)."""
        B, T = q.shape[0], q.shape[2]
        k, v = kv[0, :B, :, :S], kv[1, :B, :, :S]
        if kind == "triton":
            from ..triton_attn import block_attention

            return block_attention(q, k, v, True, lengths=L).transpose(1, 2)
        mask = block_mask(L, T, S, True)
        if kind == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
        return invariant_attention(q, k, v, additive_mask(mask)).transpose(1, 2)

    def attention_probe(kind: str):
        def block(start: int, T: int) -> torch.Tensor:  # row 0's queries start … at P + start …; rows 1, 2 elsewhere
            return attend(kind, q_all[:, :, start:start + T], torch.tensor([P + start, 50, 200], device=device), P + n + 300)

        def alone(j: int) -> torch.Tensor:  # query j alone, over exactly its keys
            return attend(kind, q_all[:1, :, j:j + 1], torch.tensor([P + j], device=device), P + j + 1)

        return block, alone

    def linear_probe(invariant: bool):
        def run(x: torch.Tensor) -> torch.Tensor:
            model.set_batch_invariant(invariant)
            return layer.self_attn.q_proj(x)

        return lambda start, T: run(hidden[:, start:start + T].contiguous()), lambda j: run(hidden[:1, j:j + 1])

    probes = {"F.linear (q_proj)": linear_probe(False), "Linear, batch-invariant (q_proj)": linear_probe(True),
              "RMSNorm": (lambda start, T: layer.input_layernorm(hidden[:, start:start + T].contiguous()),
                          lambda j: layer.input_layernorm(hidden[:1, j:j + 1])),
              "SDPA": attention_probe("sdpa"), "invariant attention (torch)": attention_probe("invariant")}
    if ctx.cuda and package_version("triton"):
        probes["Triton kernel"] = attention_probe("triton")
    rows = [{"what": name, "max_abs_diff": _max_diff(block, alone, n)} for name, (block, alone) in probes.items()]

    backends = ["torch"] + (["triton"] if ctx.cuda and package_version("triton") else [])
    checks = {}
    for backend in backends:
        model.set_attn_backend(backend)
        for invariant in (False, True):
            model.set_batch_invariant(invariant)
            diff = max(_max_diff(*_model_probe(model, stream, n), n) for stream in streams)
            rows.append({"what": f"model logits, {backend}, batch invariance {'on' if invariant else 'off'}", "max_abs_diff": diff})
            if invariant:
                checks[f"logits_invariant_{backend}"] = diff == 0.0
    for row in rows:
        row["bit_identical"] = row["max_abs_diff"] == 0.0
    return rows, checks


def _model_probe(model, stream: list[int], n: int):
    """(block, alone) for _max_diff over the whole model: n tokens of real text after a 40-token prefix, fed in blocks
    of T next to two rows of other prefixes in a cache with 300 spare slots (a verify pass), or one at a time in a
    cache just large enough (AR decoding); both return logits (B, T, V)."""
    device, P = model.device, 40
    ends = [P, P + 70, P + 150]  # each row's prefix length; row b's tokens follow its prefix in the stream

    def prefill(B: int, capacity: int):
        cache = model.new_cache(capacity, B)
        width = max(ends[:B])
        model(torch.tensor([stream[:e] + [0] * (width - e) for e in ends[:B]], device=device), cache)
        cache.rollback(torch.tensor(ends[:B], device=device))
        return cache

    state = {}

    def block(start: int, T: int) -> torch.Tensor:
        if start == 0:  # a new T: a new batch
            state["block"] = prefill(3, max(ends) + n + 300)
        return model(torch.tensor([stream[e + start: e + start + T] for e in ends], device=device), state["block"])

    def alone(j: int) -> torch.Tensor:
        if j == 0:
            state["alone"], state["logits"] = prefill(1, P + n), []
            for t in stream[P: P + n]:
                state["logits"].append(model(torch.tensor([[t]], device=device), state["alone"]))
        return state["logits"][j]

    alone(0)
    return block, alone


def md_invariance(r: dict) -> list[str]:
    lines = [f"each of {r['n']} tokens computed inside blocks of T = {', '.join(map(str, r['tokens']))} tokens in a batch of 3 (over a "
             "larger cache), against the same token alone (T = 1, batch 1, a cache just large enough); largest absolute "
             f"difference (the model: {r['windows']} windows of held-out text):", "",
             "| dtype | what | max abs diff | bit-identical |", "|---|---|---:|---|"]
    lines += [f"| {row['dtype']} | {row['what']} | {row['max_abs_diff']:.1e} | {row['bit_identical']} |" for row in r["rows"]]
    return lines


# --------------------------------------------------------------------------- decode (throughput, compiled == eager)


def section_decode(ctx: Context) -> dict:
    """The shipped model at each batch size: AR and Orthrus greedy, eager and compiled, interleaved; equality row by row.

    Orthrus == AR is checked within each mode (eager against eager, compiled against compiled). Compiled == eager
    is checked in fp32: in bf16 the compiled step's fused kernels round differently from the eager ones, so their
    outputs may part after a near-tie (reported, not checked); fp32 leaves a greedy choice no such room in practice."""
    from .decoders import Decoding, batch_method
    from .measure import measure, warm_up

    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    model = ctx.shipped(dtype)
    K, n = ctx.args.block_size, ctx.s["new_tokens"]
    prompts = ctx.prompt_ids(ctx.s["prompts"])
    d = Decoding(n, compile_mode=ctx.compile_mode)
    modes = ("", "_compiled") if ctx.compile_mode else ("",)
    points, checks = [], {}
    for B in ctx.s["batch_sizes"]:
        progress(f"gpu decode: batch {B}")
        batch = [prompts[i % len(prompts)] for i in range(B)]
        methods = {}
        for suffix in modes:
            methods["ar" + suffix] = batch_method(model, d, None, compiled=bool(suffix))
            methods["orthrus" + suffix] = batch_method(model, d, K, compiled=bool(suffix))
        warm_up(methods, batch, 1, ctx.device)  # compiles here
        runs = measure(methods, batch, ctx.s["repeats"], ctx.device)
        rows = {name: rs[-1].rows for name, rs in runs.items()}
        point = {"batch_size": B}
        for name, rs in runs.items():
            seconds = median(r.seconds for r in rs)
            last = rs[-1]
            point[name] = {"tokens_per_s": len(last.tokens) / seconds, "seconds": seconds,
                           "acceptance_mean": sum(last.accepted) / len(last.accepted) if last.accepted else None}
        for suffix in modes:
            o = point["orthrus" + suffix]
            o["speedup_vs_ar"] = o["tokens_per_s"] / point["ar" + suffix]["tokens_per_s"]
            o["equals_ar"] = checks[f"orthrus_equals_ar{suffix}_b{B}"] = rows_equal(rows["orthrus" + suffix], rows["ar" + suffix])
        if ctx.compile_mode:
            point["compiled_equals_eager"] = (rows_equal(rows["ar_compiled"], rows["ar"])
                                              and rows_equal(rows["orthrus_compiled"], rows["orthrus"]))
            if dtype == torch.float32:
                checks[f"compiled_equals_eager_b{B}"] = point["compiled_equals_eager"]
        points.append(point)
    result = {"status": "ok", "dtype": str(dtype).removeprefix("torch."), "block_size": K, "new_tokens": n,
              "compile_mode": ctx.compile_mode, "attn": model.attn_backend, "points": points, "checks": checks}
    if ctx.compile_mode and dtype != torch.float32:
        same = _compiled_equals_eager_fp32(ctx, prompts, d, K)
        result["fp32_compiled_equals_eager"] = checks["compiled_equals_eager_fp32"] = same
    return result


def _compiled_equals_eager_fp32(ctx: Context, prompts: list[list[int]], d, K: int) -> bool:
    """The shipped model in fp32, a batch of four prompts: compiled AR and Orthrus rows equal eager AR's."""
    from .decoders import batch_method

    progress("gpu decode: compiled == eager in fp32")
    model = ctx.shipped(torch.float32)
    batch = [prompts[i % len(prompts)] for i in range(4)]
    eager = batch_method(model, d, None)(batch).rows
    return all(rows_equal(batch_method(model, d, k, compiled=True)(batch).rows, eager) for k in (None, K))


def md_decode(r: dict) -> list[str]:
    compiled = r["compile_mode"] is not None
    lines = [f"shipped model, {r['dtype']}, attention {r['attn']}, K = {r['block_size']}, {r['new_tokens']} new tokens per row, greedy; "
             f"tokens/s over all rows" + (f"; compiled: torch.compile mode {r['compile_mode']}" if compiled else "; not compiled"), "",
             "| B | AR eager | Orthrus eager | Orthrus / AR | Orthrus == AR | "
             + ("AR compiled | Orthrus compiled | Orthrus / AR, compiled | Orthrus == AR, compiled | compiled == eager | " if compiled else "")
             + "τ |", "|---:|---:|---:|---:|---|" + ("---:|---:|---:|---|---|" if compiled else "") + "---:|"]
    for p in r["points"]:
        cells = [str(p["batch_size"]), fmt(p["ar"]["tokens_per_s"]), fmt(p["orthrus"]["tokens_per_s"]),
                 f"{p['orthrus']['speedup_vs_ar']:.2f}x", str(p["orthrus"]["equals_ar"])]
        if compiled:
            c = p["orthrus_compiled"]
            cells += [fmt(p["ar_compiled"]["tokens_per_s"]), fmt(c["tokens_per_s"]), f"{c['speedup_vs_ar']:.2f}x", str(c["equals_ar"]),
                      str(p["compiled_equals_eager"])]
        cells.append(fmt(p["orthrus"]["acceptance_mean"], ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    if "fp32_compiled_equals_eager" in r:
        lines += ["", f"compiled == eager in fp32 (batch of 4, AR and Orthrus): {r['fp32_compiled_equals_eager']}; in {r['dtype']} "
                  "the compiled step's fused kernels round differently from eager ones, so that column is reported, not checked"]
    return lines


# --------------------------------------------------------------------------- roofline


def section_roofline(ctx: Context) -> dict:
    """AR decode of the random model (eager and compiled) against copy bandwidth / bytes read per token."""
    from .decoders import Decoding, ar_method
    from .forward import decode_seconds, roofline
    from .measure import measure, warm_up

    model = ctx.random_model()
    P, n = ctx.s["prompt_len"], ctx.s["new_tokens"]
    d = Decoding(n, compile_mode=ctx.compile_mode)
    methods = {"ar": ar_method(model, d)}
    if ctx.compile_mode:
        methods["ar_compiled"] = ar_method(model, d, compiled=True)
    prompt = torch.randint(0, model.config.vocab_size, (P,), generator=torch.Generator().manual_seed(0)).tolist()
    progress(f"gpu roofline: {ctx.s['preset']} random model, {'compiling' if ctx.compile_mode else 'eager'}")
    warm_up(methods, prompt, 1, ctx.device)
    runs = measure(methods, prompt, ctx.s["repeats"], ctx.device)
    rates = {name: (n - 1) / max(median(decode_seconds(r) for r in rs), 1e-9) for name, rs in runs.items()}
    copy_gbs = copy_bandwidth_gbs(ctx.device, ctx.s["copy_mib"])
    result = {"status": "ok", "preset": ctx.s["preset"], "dtype": str(model.dtype).removeprefix("torch."), "attn": model.attn_backend,
              "compile_mode": ctx.compile_mode, "prompt_len": P, "new_tokens": n, **roofline(model, copy_gbs, P + n / 2, rates)}
    if ctx.compile_mode:
        result["checks"] = {"roofline_compiled_equals_eager": runs["ar_compiled"][-1].tokens == runs["ar"][-1].tokens}
        result["goal_60_percent_met"] = result["fraction_of_roofline"]["ar_compiled"] >= 0.6
    return result


def md_roofline(r: dict) -> list[str]:
    lines = [f"random `{r['preset']}` Qwen3, {r['dtype']}, attention {r['attn']}; prompt {r['prompt_len']} random tokens, "
             f"{r['new_tokens']} new; weights read per token {r['weight_bytes_per_token'] / 2**20:.1f} MiB + K/V "
             f"{r['kv_bytes_per_token'] / 2**20:.2f} MiB; copy bandwidth {r['copy_bandwidth_gbs']:.0f} GB/s -> roofline "
             f"{r['roofline_tokens_per_s']:.1f} tokens/s", "", "| AR decode | tokens/s (prefill excluded) | % of roofline |", "|---|---:|---:|"]
    for name, rate in r["decode_tokens_per_s"].items():
        label = f"compiled ({r['compile_mode']})" if name == "ar_compiled" else "eager"
        lines.append(f"| {label} | {rate:.1f} | {100 * r['fraction_of_roofline'][name]:.0f}% |")
    if "goal_60_percent_met" in r:
        lines += ["", f"goal >= 60% of the roofline with CUDA graphs: {'met' if r['goal_60_percent_met'] else 'NOT met'}"]
    return lines


# --------------------------------------------------------------------------- forward


def capture_graph(fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """fn captured in a CUDA graph, after two warm-up calls on a side stream (compiles the kernels, fills allocator pools)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


@torch.inference_mode()
def graph_latencies(model, device: torch.device, lengths: list[int], tokens: list[int], iters: int) -> list[dict]:
    """Rows as forward.forward_latencies gives them (AR view), each forward replayed from a CUDA graph: GPU time
    without Python's launch overhead, as a compiled decode step with CUDA graphs runs it."""
    timing = Timing(iters=iters, warmup_calls=3, warmup_s=0.1, clock="device", spin=True)
    rows = []
    for L in lengths:
        cache = model.new_cache(L + max(tokens))
        cache.advance(L)  # declare L entries cached: their values do not change the cost
        for T in tokens:
            ids = torch.randint(0, model.config.vocab_size, (1, T), device=device)

            def forward():
                model(ids, cache)  # (1, T, V) logits for every position, as the verify pass needs
                cache.lengths.sub_(T)  # the forward appended T entries: drop them, inside the graph

            graph = capture_graph(forward)
            rows.append({"view": "ar", "cache_len": L, "tokens": T, "ms": 1e3 * time_calls(graph.replay, device, timing).median})
            del graph
    return rows


def section_forward(ctx: Context) -> dict:
    """One forward of T tokens over a cache of L (the random model): CUDA graphs on a GPU, eager on the CPU."""
    from .forward import forward_latencies, latency_summary

    model = ctx.random_model()
    lengths = [L for L in ctx.s["lengths"] if L + max(ctx.s["tokens"]) <= model.config.max_position_embeddings]
    progress(f"gpu forward: L = {lengths}, T = {ctx.s['tokens']}")
    if ctx.cuda:
        rows = graph_latencies(model, ctx.device, lengths, ctx.s["tokens"], ctx.s["iters"])
    else:
        with torch.inference_mode():
            rows = forward_latencies(model, ctx.device, lengths, ctx.s["tokens"], ctx.s["iters"])
    return {"status": "ok", "preset": ctx.s["preset"], "cuda_graphs": ctx.cuda, "attn": model.attn_backend, "latency": rows,
            "summary": latency_summary(rows)}


def md_forward(r: dict) -> list[str]:
    tokens = sorted({row["tokens"] for row in r["latency"]})
    ms = {(row["cache_len"], row["tokens"]): row["ms"] for row in r["latency"]}
    summary = {(s["cache_len"], s["tokens"]): s for s in r["summary"]}
    T_max = max(tokens)
    lines = [f"random `{r['preset']}` Qwen3, attention {r['attn']}, AR view, " + ("each forward replayed from a CUDA graph"
             if r["cuda_graphs"] else "eager") + "; ms, median", "",
             "| L | " + " | ".join(f"T={T}" for T in tokens) + f" | T={T_max} / T=1 | break-even τ at K={T_max} |",
             "|---:|" + "---:|" * (len(tokens) + 2)]
    for L in sorted({row["cache_len"] for row in r["latency"]}):
        s = summary.get((L, T_max))
        ratio, break_even = (f"{s['ratio']:.2f}x", f"{s['break_even_acceptance']:.2f}") if s else ("–", "–")
        lines.append(f"| {L} | " + " | ".join(f"{ms[(L, T)]:.3f}" for T in tokens) + f" | {ratio} | {break_even} |")
    return lines


# --------------------------------------------------------------------------- identical output


def section_identical(ctx: Context) -> dict:
    """bf16 greedy: per backend, batch invariance off and on, how many prompts Orthrus decodes exactly as AR does."""
    from .decoders import Decoding, ar_method, batch_method, orthrus_method

    model = ctx.shipped(torch.bfloat16)
    prompts = ctx.prompt_ids(ctx.s["prompts"])
    n, d = ctx.s["new_tokens"], Decoding(ctx.s["new_tokens"])
    backends = ["triton", "torch"] if ctx.cuda and package_version("triton") else ["torch"]
    rows, batched, checks = [], [], {}
    for backend in backends:
        model.set_attn_backend(backend)
        block_sizes = ctx.s["block_sizes"] if backend == backends[0] else ctx.s["block_sizes"][-1:]  # the second: the largest K
        for invariant in (False, True):
            model.set_batch_invariant(invariant)
            on = "on" if invariant else "off"
            progress(f"gpu identical: {backend}, batch invariance {on}")
            ar = [ar_method(model, d)(p).tokens for p in prompts]
            for K in block_sizes:
                orthrus = [orthrus_method(model, d, K)(p).tokens for p in prompts]
                mismatches = [first_mismatch(o, a) for o, a in zip(orthrus, ar)]
                same = sum(m is None for m in mismatches)
                rows.append({"backend": backend, "batch_invariant": invariant, "block_size": K, "identical": same,
                             "prompts": len(prompts), "first_mismatches": [m for m in mismatches if m is not None]})
                if invariant:
                    checks[f"identical_{backend}_K{K}"] = same == len(prompts)
            K = ctx.args.block_size
            together = batch_method(model, d, K)(prompts).rows
            together_ar = batch_method(model, d, None)(prompts).rows
            batched.append({"backend": backend, "batch_invariant": invariant, "block_size": K, "rows": len(prompts),
                            "orthrus_rows_equal_ar_alone": sum(a == b for a, b in zip(together, ar)),
                            "ar_rows_equal_ar_alone": sum(a == b for a, b in zip(together_ar, ar))})
            if invariant:
                checks[f"batched_rows_equal_alone_{backend}"] = (batched[-1]["orthrus_rows_equal_ar_alone"] == len(prompts)
                                                                == batched[-1]["ar_rows_equal_ar_alone"])
    model.set_batch_invariant(None)
    return {"status": "ok", "dtype": "bfloat16", "new_tokens": n, "rows": rows, "batched": batched, "checks": checks}


def md_identical(r: dict) -> list[str]:
    lines = [f"bf16, greedy, {r['new_tokens']} new tokens; prompts on which Orthrus's output equals AR's, token for token", "",
             "| backend | batch invariance | K | identical | first mismatch at |", "|---|---|---:|---:|---|"]
    for row in r["rows"]:
        at = ", ".join(map(str, row["first_mismatches"])) or "–"
        lines.append(f"| {row['backend']} | {'on' if row['batch_invariant'] else 'off'} | {row['block_size']} | "
                     f"{row['identical']}/{row['prompts']} | {at} |")
    lines += ["", "All prompts decoded together (one batch), each row against that prompt's AR decode alone:", "",
              "| backend | batch invariance | Orthrus rows (K) == AR alone | AR rows == AR alone |", "|---|---|---:|---:|"]
    for b in r["batched"]:
        lines.append(f"| {b['backend']} | {'on' if b['batch_invariant'] else 'off'} | {b['orthrus_rows_equal_ar_alone']}/{b['rows']} "
                     f"(K = {b['block_size']}) | {b['ar_rows_equal_ar_alone']}/{b['rows']} |")
    return lines


# --------------------------------------------------------------------------- the cost of batch invariance


def section_cost(ctx: Context) -> dict:
    """Eager AR and Orthrus greedy tokens/s with batch invariance off and on, interleaved, per dtype (the default
    attention backend of the device), over the first `cost_prompts` held-out prompts, median of `repeats`."""
    from .decoders import Decoding, ar_method, orthrus_method
    from .measure import measure, warm_up

    prompts = ctx.prompt_ids(ctx.s["cost_prompts"])
    d, K = Decoding(ctx.s["new_tokens"]), ctx.args.block_size
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        model = ctx.shipped(dtype)

        def with_setting(method, invariant: bool):
            def run(ids):
                model.set_batch_invariant(invariant)
                return method(ids)
            return run

        methods = {f"{name}_{'on' if inv else 'off'}": with_setting(method, inv) for inv in (False, True)
                   for name, method in (("ar", ar_method(model, d)), ("orthrus", orthrus_method(model, d, K)))}
        progress(f"gpu cost: {str(dtype).removeprefix('torch.')}")
        warm_up(methods, prompts[0], 1, ctx.device)
        per_prompt = [measure(methods, ids, ctx.s["repeats"], ctx.device) for ids in prompts]
        rate = {name: sum(len(runs[name][-1].tokens) for runs in per_prompt) / sum(median(r.seconds for r in runs[name])
                                                                                  for runs in per_prompt) for name in methods}
        for name in ("ar", "orthrus"):
            rows.append({"dtype": str(dtype).removeprefix("torch."), "method": name if name == "ar" else f"orthrus K={K}",
                         "off_tokens_per_s": rate[f"{name}_off"], "on_tokens_per_s": rate[f"{name}_on"],
                         "on_vs_off": rate[f"{name}_on"] / rate[f"{name}_off"]})
        model.set_batch_invariant(None)
    return {"status": "ok", "attn": model.attn_backend, "prompts": len(prompts), "new_tokens": d.max_new_tokens,
            "repeats": ctx.s["repeats"], "rows": rows}


def md_cost(r: dict) -> list[str]:
    lines = [f"eager, attention {r['attn']}, greedy, {r['prompts']} held-out prompts x {r['new_tokens']} new tokens, interleaved, "
             f"median of {r['repeats']}; tokens/s", "", "| dtype | method | invariance off | invariance on | on / off |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {row['dtype']} | {row['method']} | {row['off_tokens_per_s']:.1f} | {row['on_tokens_per_s']:.1f} | "
              f"{row['on_vs_off']:.3f} |" for row in r["rows"]]
    return lines


# --------------------------------------------------------------------------- attention kernel


def section_attn(ctx: Context) -> dict:
    """`bench attn`'s comparison at a few lengths (1.7B layout, K = 32), and our kernel at several split sizes."""
    if not ctx.cuda or package_version("triton") is None:
        return {"status": "skipped", "reason": "needs a CUDA GPU and triton"}
    from torch.nn.attention.flex_attention import flex_attention

    from ..triton_attn import KEYS_PER_SPLIT, block_attention
    from .attn import COPY_MIB, LAYOUTS, allow_many_compiles, flex_call, kernel_us, make_inputs, sdpa_call

    allow_many_compiles()
    flex = torch.compile(flex_attention, dynamic=False)
    H, Hkv = LAYOUTS["Qwen3-1.7B"]
    K, iters = 32, 50
    copy_gbs = copy_bandwidth_gbs(ctx.device, COPY_MIB)
    rows = []
    for L in ctx.s["attn_lengths"]:
        q, k, v = make_inputs(1, H, Hkv, L, K, L + K + 64)
        nbytes = (2 * k.numel() + 2 * q.numel()) * k.element_size()
        for causal in (True, False):
            progress(f"gpu attn: L = {L}, {'causal' if causal else 'bidirectional'}")
            row = {"cache_len": L, "causal": causal, "sdpa_us": kernel_us(sdpa_call(q, k, v, causal), iters)}
            try:
                row["flex_us"] = kernel_us(flex_call(q, k, v, causal, flex), iters)
            except Exception as e:  # an unsupported shape on this torch version: say so, keep going
                row["flex_us"], row["flex_error"] = None, type(e).__name__
            row["ours_us_by_split"] = {kps: kernel_us(lambda: block_attention(q, k, v, causal, keys_per_split=kps), iters)
                                       for kps in sorted(set(ctx.s["split_sizes"]) | {KEYS_PER_SPLIT})}
            row["ours_us"] = row["ours_us_by_split"][KEYS_PER_SPLIT]
            baselines = [t for t in (row["sdpa_us"], row["flex_us"]) if t is not None]
            row["speedup_vs_faster"] = min(baselines) / row["ours_us"]
            row["fraction_of_copy_bandwidth"] = nbytes / (row["ours_us"] * 1e-6) / 1e9 / copy_gbs
            rows.append(row)
        del q, k, v
    return {"status": "ok", "layout": "Qwen3-1.7B", "block": K, "keys_per_split": KEYS_PER_SPLIT, "copy_bandwidth_gbs": copy_gbs,
            "rows": rows}


def md_attn(r: dict) -> list[str]:
    splits = sorted(r["rows"][0]["ours_us_by_split"]) if r["rows"] else []
    lines = [f"{r['layout']} layout, bf16, head_dim 128, batch 1, K = {r['block']} queries; µs per call (median, L2 flushed); "
             f"ours with its fixed split of {r['keys_per_split']} keys, then other split sizes", "",
             "| L | mask | ours µs | SDPA µs | flex µs | ours vs faster | % of copy bandwidth | " + " | ".join(f"split {s}" for s in splits) + " |",
             "|---:|---|---:|---:|---:|---:|---:|" + "---:|" * len(splits)]
    for row in r["rows"]:
        lines.append(f"| {row['cache_len']} | {'causal' if row['causal'] else 'bidirectional'} | {row['ours_us']:.1f} | {row['sdpa_us']:.1f} | "
                     f"{fmt(row['flex_us'])} | {row['speedup_vs_faster']:.2f}x | {100 * row['fraction_of_copy_bandwidth']:.0f}% | "
                     + " | ".join(f"{row['ours_us_by_split'][s]:.1f}" for s in splits) + " |")
    return lines


# --------------------------------------------------------------------------- the command

RUNNERS: dict[str, tuple[Callable[[Context], dict], Callable[[dict], list[str]], str]] = {
    "tests": (section_tests, md_tests, "GPU-only tests"),
    "invariance": (section_invariance, md_invariance, "Batch invariance, operator by operator"),
    "decode": (section_decode, md_decode, "Decoding the shipped model by batch size; compiled == eager"),
    "roofline": (section_roofline, md_roofline, "AR decode against the bandwidth roofline"),
    "forward": (section_forward, md_forward, "One forward of K tokens over a cache"),
    "identical": (section_identical, md_identical, "bf16: Orthrus output identical to AR's"),
    "cost": (section_cost, md_cost, "What batch invariance costs"),
    "attn": (section_attn, md_attn, "The attention kernel against SDPA and flex_attention"),
}


def section_list(text: str) -> list[str]:
    """--sections: 'decode,identical' -> the names, each one of SECTIONS."""
    import argparse

    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown section {', '.join(unknown) or repr(text)}; choose from {', '.join(SECTIONS)}")
    return names


def run_sections(ctx: Context, names: list[str]) -> dict:
    """Each section in turn, timed; one that raises becomes {"status": "error", "error": its one-line message}."""
    from ..cli import one_line

    sections, t_start = {}, time.perf_counter()
    for name in names:
        progress(f"gpu {name} … ({time.perf_counter() - t_start:.0f} s so far)")
        t0 = time.perf_counter()
        try:
            result = RUNNERS[name][0](ctx)
        except Exception as e:  # one section's failure must not lose the others' numbers
            result = {"status": "error", "error": f"{type(e).__name__}: {one_line(e)}"}
        result["seconds"] = time.perf_counter() - t0
        progress(f"gpu {name}: {result['status']} in {result['seconds']:.0f} s")
        sections[name] = result
    return sections


def report(result: dict) -> str:
    """The Markdown report: the checks first, then one part per section."""
    s = result["settings"]
    lines = [f"# bench gpu — {result['machine']}", "",
             f"device {s['device']}{', smoke sizes' if s['smoke'] else ''}; sections {', '.join(s['sections'])}; "
             f"{result['seconds']:.0f} s in all", "", "## Checks", ""]
    checks = result["checks"]
    lines += [f"- {'PASS' if ok else 'FAIL'} {name}" for name, ok in checks.items()] or ["(none ran)"]
    errors = [name for name, r in result["sections"].items() if r["status"] == "error"]
    if errors:
        lines += ["", "Sections that failed to run: " + ", ".join(errors)]
    for name, r in result["sections"].items():
        render, title = RUNNERS[name][1], RUNNERS[name][2]
        lines += ["", f"## {title} ({name}: {r['status']}, {r['seconds']:.0f} s)", ""]
        if r["status"] == "error":
            lines.append(f"error: {r['error']}")
        elif r["status"] == "skipped" and "reason" in r and name != "tests":
            lines.append(f"skipped: {r['reason']}")
        else:
            lines += render(r)
            if r["status"] == "skipped":
                lines.append(f"skipped: {r['reason']}")
    return "\n".join(lines) + "\n"


def bench_gpu(args) -> tuple[dict, str]:
    """`bench gpu`: the sections asked for, on --device. Returns (result for the JSON, Markdown report)."""
    from ..checkpoint import resolve_device

    device = resolve_device(args.device)
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if device.type == "cuda" else "none"  # compiling on a CPU takes minutes
    if args.block_size < 1:
        raise OrthrusError(f"--block-size must be >= 1, got {args.block_size}")
    ctx = Context(args, device)
    info = machine_info(device)
    t0 = time.perf_counter()
    sections = run_sections(ctx, args.sections)
    checks = {name: ok for r in sections.values() for name, ok in r.get("checks", {}).items()}
    result = {"command": "gpu", "schema_version": 1, "machine": machine_line(info), "machine_info": info,
              "settings": {"model": shown_path(args.model), "device": str(device), "smoke": args.smoke, "sections": list(args.sections),
                           "compile_mode": ctx.compile_mode, "block_size": args.block_size, **ctx.s},
              "seconds": time.perf_counter() - t0, "checks": checks, "all_checks_pass": all(checks.values()),
              "sections": sections}
    return result, report(result)


def failed(result: dict) -> bool:
    """Whether the run should exit with status 1: a check failed or a section errored."""
    return not result["all_checks_pass"] or any(r["status"] == "error" for r in result["sections"].values())


__all__ = ["bench_gpu", "SECTIONS", "graph_latencies", "capture_graph"]
