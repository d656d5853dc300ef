"""Benchmark `attn`: the block-attention kernel against PyTorch's attention, side by side, on one GPU.

    python -m orthrus_min.bench attn
    python -m orthrus_min.bench attn --lengths 1024,32768 --block 32 --batch 1
    python -m orthrus_min.bench attn --sweep          # tuning aid: launch configurations of our kernel

For the head layouts of Qwen3-1.7B (16 query / 8 KV heads) and Qwen3-8B (32 / 8), head_dim
128, bf16, a block of K = 32 queries over a cached prefix of L keys, causal (AR verify) and
bidirectional (diffusion draft), it times one attention call of
  * ours:  `orthrus_min.triton_attn.block_attention`,
  * SDPA:  `torch.nn.functional.scaled_dot_product_attention` with an explicit boolean mask,
  * flex:  `torch.nn.attention.flex_attention` (compiled) with a block mask,
and prints a Markdown table: µs per call (median; the GPU spun and the L2 flushed before every
call, each cell warmed up for at least 0.1 s: common.KERNEL_TIMING), our speedup over the faster
baseline, and our achieved bandwidth — bytes of K/V read plus q read and output written, per
second — next to the device's measured copy bandwidth. Decoding attention is memory-bound
(docs/ARCHITECTURE.md, "Performance model"), so bandwidth is the yardstick: the goal is >= 1.0x
the faster baseline at every L >= 1k and >= 70% of copy bandwidth at 32k.

K/V are strided views of a larger preallocated cache, as in the model. Needs a CUDA GPU and
triton (`error: …` and exit status 2 without them).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys

import torch
import torch.nn.functional as F

from ..errors import OrthrusError
from .common import Timing, copy_bandwidth_gbs, package_version, time_calls

LAYOUTS = {"Qwen3-1.7B": (16, 8), "Qwen3-8B": (32, 8)}  # name: (H, Hkv); head_dim 128 for both
HEAD_DIM = 128
KERNEL_TIMING = Timing(iters=50, warmup_calls=10, warmup_s=0.1, clock="device", flush_l2=True, spin=True)
COPY_MIB = 1024  # the bandwidth probe copies 1 GiB


def kernel_us(fn, iters: int) -> float:
    """Median µs of one call of fn on the GPU, timed as KERNEL_TIMING says (with `iters` timed calls)."""
    timing = dataclasses.replace(KERNEL_TIMING, iters=iters)
    return 1e6 * time_calls(fn, torch.device("cuda"), timing).median


# --------------------------------------------------------------------------- the three contenders


def make_inputs(B: int, H: int, Hkv: int, L: int, K: int, capacity: int):
    """q as the model makes it ((B, K, H, D) transposed) and k, v as views of a (B, Hkv, capacity, D) cache."""
    D = HEAD_DIM
    q = torch.randn(B, K, H, D, dtype=torch.bfloat16, device="cuda").transpose(1, 2)  # (B, H, K, D)
    k_cache = torch.randn(B, Hkv, capacity, D, dtype=torch.bfloat16, device="cuda")  # (B, Hkv, capacity, D)
    v_cache = torch.randn(B, Hkv, capacity, D, dtype=torch.bfloat16, device="cuda")  # (B, Hkv, capacity, D)
    return q, k_cache[:, :, : L + K], v_cache[:, :, : L + K]  # (B, H, K, D), (B, Hkv, L+K, D) x2


def sdpa_call(q, k, v, causal: bool):
    """SDPA with an explicit (K, L+K) boolean mask: the prefix all visible, the block causal or not."""
    K, S = q.shape[2], k.shape[2]
    mask = torch.ones(K, S, dtype=torch.bool, device=q.device)  # (K, L+K)
    if causal:
        mask = mask.tril(S - K)  # query i sees keys <= L+i
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, K, D)


def flex_call(q, k, v, causal: bool, flex):
    """flex_attention (compiled) with a block mask built from the same visibility rule."""
    from torch.nn.attention.flex_attention import create_block_mask

    K, S = q.shape[2], k.shape[2]
    L = S - K

    def visible(b, h, q_idx, kv_idx):
        return kv_idx <= L + q_idx if causal else kv_idx >= 0

    block_mask = create_block_mask(visible, B=None, H=None, Q_LEN=K, KV_LEN=S, device=q.device)
    return lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True)  # (B, H, K, D)


def allow_many_compiles() -> None:
    """flex_attention compiles once per shape; let dynamo keep every (L, mask) variant of this run."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)


# --------------------------------------------------------------------------- tuning aid


def sweep(args) -> None:
    """Times launch configurations of our kernel around `choose_config`'s pick and prints, per cell, the fastest
    next to the chosen one (row by row: minutes of compiling)."""
    from ..triton_attn import LaunchConfig, _launch, choose_config

    print("| model | L | mask | chosen config | chosen µs | fastest config | fastest µs |")
    print("| --- | ---: | --- | --- | ---: | --- | ---: |")
    for name in args.layouts:
        H, Hkv = LAYOUTS[name]
        for L in args.lengths:
            q, k, v = make_inputs(args.batch, H, Hkv, L, args.block, L + args.block + 64)
            for causal in (True, False):
                chosen = choose_config(q, k)
                expected = _launch(q, k, v, causal, None, chosen).float()
                timings = {}
                for block_n, warps, stages, keys_per_split in itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (128, 256, 512)):
                    # the q tile (block_m) stays fixed: batch invariance needs one tile shape for every T
                    config = LaunchConfig(chosen.block_m, block_n, warps, stages, keys_per_split)
                    try:
                        error = (_launch(q, k, v, causal, None, config).float() - expected).abs().max().item()
                    except Exception as e:  # e.g. triton's OutOfResources: the tiles do not fit in shared memory
                        print(f"skipped {config}: {type(e).__name__}", file=sys.stderr)
                        continue
                    if error > 2e-2:
                        print(f"skipped {config}: max abs diff {error:.1e} from the chosen config", file=sys.stderr)
                        continue
                    timings[config] = kernel_us(lambda: _launch(q, k, v, causal, None, config), args.iters)
                chosen_us = kernel_us(lambda: _launch(q, k, v, causal, None, chosen), args.iters)
                fastest = min(timings, key=timings.get)
                mask = "causal" if causal else "bidirectional"
                print(f"| {name} | {L} | {mask} | {chosen} | {chosen_us:.1f} | {fastest} | {timings[fastest]:.1f} |", flush=True)
            del q, k, v


# --------------------------------------------------------------------------- the command


def cell(x: float | str, digits: int = 1) -> str:
    """A table cell: a number to `digits` places, or a string (an error) as is."""
    return x if isinstance(x, str) else f"{x:.{digits}f}"


def compare(args, flex, copy_gbs: float) -> None:
    """Prints the comparison table row by row as it comes, then whether the two goals are met."""
    from ..triton_attn import block_attention

    print("| model | H / Hkv | L | mask | ours µs | SDPA µs | flex µs | ours vs faster | ours GB/s | % of copy | max abs diff vs SDPA |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    B, K = args.batch, args.block
    goal_speed, goal_bw = [], []
    for name in args.layouts:
        H, Hkv = LAYOUTS[name]
        capacity = max(args.lengths) + K + 64  # a cache with room to spare: k, v are strided views
        for L in args.lengths:
            q, k, v = make_inputs(B, H, Hkv, L, K, capacity)
            nbytes = (2 * k.numel() + 2 * q.numel()) * k.element_size()  # K and V read, q read and output written
            for causal in (True, False):
                ours_us = kernel_us(lambda: block_attention(q, k, v, causal), args.iters)
                sdpa = sdpa_call(q, k, v, causal)
                sdpa_us = kernel_us(sdpa, args.iters)
                try:
                    flex_us = kernel_us(flex_call(q, k, v, causal, flex), args.iters)
                except Exception as e:  # an unsupported shape on this torch version: say so, keep going
                    flex_us = f"error: {type(e).__name__}"
                diff = (block_attention(q, k, v, causal).float() - sdpa().float()).abs().max().item()
                baselines = [t for t in (sdpa_us, flex_us) if not isinstance(t, str)]
                speedup = min(baselines) / ours_us
                gbs = nbytes / (ours_us * 1e-6) / 1e9
                mask = "causal" if causal else "bidirectional"
                print(f"| {name} | {H} / {Hkv} | {L} | {mask} | {cell(ours_us)} | {cell(sdpa_us)} | {cell(flex_us)} "
                      f"| {speedup:.2f}x | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {diff:.1e} |", flush=True)
                if L >= 1024:
                    goal_speed.append(speedup >= 1.0)
                if L >= 32768:
                    goal_bw.append(gbs >= 0.7 * copy_gbs)
            del q, k, v
    print()
    if goal_speed:
        print(f"goal >= 1.0x the faster baseline at every L >= 1k: {'met' if all(goal_speed) else 'NOT met'}")
    if goal_bw:
        print(f"goal >= 70% of copy bandwidth at L = 32k: {'met' if all(goal_bw) else 'NOT met'}")


def check_gpu() -> None:
    """OrthrusError unless a CUDA GPU and triton are there."""
    if not torch.cuda.is_available():
        raise OrthrusError("bench attn needs a CUDA GPU")
    if package_version("triton") is None:
        raise OrthrusError("bench attn needs triton (pip install 'orthrus-min[triton]')")


def bench_attn(args) -> None:
    """`bench attn`: the comparison (or, with --sweep, the tuning table), printed row by row as it runs."""
    check_gpu()
    from torch.nn.attention.flex_attention import flex_attention

    allow_many_compiles()
    flex = torch.compile(flex_attention, dynamic=False)
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth_gbs(torch.device("cuda"), COPY_MIB, dataclasses.replace(KERNEL_TIMING, iters=args.iters))
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {package_version('triton')}")
    print(f"measured copy bandwidth: {copy_gbs:.0f} GB/s; bf16, head_dim {HEAD_DIM}, batch {args.batch}, block K = {args.block}\n")
    if args.sweep:
        sweep(args)
    else:
        compare(args, flex, copy_gbs)
