"""Benchmark: the block-attention kernel against PyTorch's attention, side by side, on one GPU.

    python -m orthrus_min.bench attn            (or: python -m orthrus_min.bench_attn)
    python -m orthrus_min.bench_attn --lengths 1024,32768 --block 32 --batch 1

For the head layouts of Qwen3-1.7B (16 query / 8 KV heads) and Qwen3-8B (32 / 8), head_dim
128, bf16, a block of K = 32 queries over a cached prefix of L keys, causal (AR verify) and
bidirectional (diffusion draft), it times one attention call of
  * ours:  `orthrus_min.triton_attn.block_attention`,
  * SDPA:  `torch.nn.functional.scaled_dot_product_attention` with an explicit boolean mask,
  * flex:  `torch.nn.attention.flex_attention` (compiled) with a block mask,
and prints a markdown table: µs per call (median; L2 flushed before every call), our speedup
over the faster baseline, and our achieved bandwidth — bytes of K/V read plus q read and
output written, per second — next to the device's measured copy bandwidth. Decoding attention
is memory-bound (docs/ARCHITECTURE.md, "Performance model"), so bandwidth is the yardstick: the goal is >= 1.0x the faster
baseline at every L >= 1k and >= 70% of copy bandwidth at 32k.

K/V are strided views of a larger preallocated cache, as in the model. Needs a CUDA GPU
(exit status 2 without one).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
import torch.nn.functional as F

LAYOUTS = {"Qwen3-1.7B": (16, 8), "Qwen3-8B": (32, 8)}  # name: (H, Hkv); head_dim 128 for both
HEAD_DIM = 128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m orthrus_min.bench attn", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1024,4096,16384,32768", help="cached prefix lengths L, comma-separated")
    p.add_argument("--block", type=int, default=32, help="K: queries per block (default 32, the paper's)")
    p.add_argument("--batch", type=int, default=1, help="B: sequences per call (default 1)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"head layouts, comma-separated, from {list(LAYOUTS)}")
    p.add_argument("--iters", type=int, default=50, help="timed calls per cell (after 10 warm-up calls)")
    p.add_argument("--sweep", action="store_true",
                   help="instead of the comparison, time 54 launch configurations of our kernel per cell and print "
                        "the fastest next to the one `choose_config` picks (a tuning aid; minutes of compiling)")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.layouts = args.layouts.split(",")
    for name in args.layouts:
        if name not in LAYOUTS:
            p.error(f"unknown layout {name!r}; choose from {list(LAYOUTS)}")
    return args


# --------------------------------------------------------------------------- timing


class Timer:
    """Median µs per call on the current CUDA device, with the L2 cache flushed before each call.

    Without the flush a 1k-token K/V (4 MB) would be read from L2, not from memory, on the
    second call, and every bandwidth figure would be flattered. A GPU spin before each call
    keeps the CPU ahead, so the figure is GPU time, not Python launch overhead (on a slow host
    CPU, a 20 µs kernel timed without it read 100-200 µs).
    """

    def __init__(self, iters: int, warmup: int = 10):
        self.iters, self.warmup = iters, warmup
        self.flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # larger than any L2

    def __call__(self, fn) -> float:
        # At least `warmup` calls and 0.1 s of them: an idle GPU (say, after a compile) runs at a low
        # clock for a while, and a few µs-long calls would not bring it back up.
        calls, t0 = 0, time.perf_counter()
        while calls < self.warmup or time.perf_counter() - t0 < 0.1:
            fn()
            calls += 1
            if calls % 10 == 0:
                torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.iters)]
        for start, end in zip(starts, ends):
            self.flush.zero_()
            # ~0.5 ms of GPU spin while the CPU queues the call: its Python launch overhead stays out
            # of the measured GPU time (a µs-scale kernel would otherwise time the CPU).
            torch.cuda._sleep(1_000_000)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times_ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
        return times_ms[len(times_ms) // 2] * 1e3


def copy_bandwidth_gbs(timer: Timer) -> float:
    """Achieved GB/s of a 1 GiB device-to-device copy (bytes read + bytes written): the memory roofline."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = timer(lambda: dst.copy_(src))
    return 2 * src.numel() / (us * 1e-6) / 1e9


# --------------------------------------------------------------------------- the three contenders


def make_inputs(B: int, H: int, Hkv: int, L: int, K: int, capacity: int):
    """q as the model makes it ((B, K, H, D) transposed) and k, v as views of a (B, Hkv, capacity, D) cache."""
    D = HEAD_DIM
    q = torch.randn(B, K, H, D, dtype=torch.bfloat16, device="cuda").transpose(1, 2)  # (B, H, K, D)
    k_cache = torch.randn(B, Hkv, capacity, D, dtype=torch.bfloat16, device="cuda")
    v_cache = torch.randn(B, Hkv, capacity, D, dtype=torch.bfloat16, device="cuda")
    return q, k_cache[:, :, : L + K], v_cache[:, :, : L + K]  # (B, H, K, D), (B, Hkv, L+K, D) x2


def sdpa_call(q, k, v, causal: bool):
    """SDPA with an explicit (K, L+K) boolean mask: the prefix all visible, the block causal or not."""
    K, S = q.shape[2], k.shape[2]
    mask = torch.ones(K, S, dtype=torch.bool, device=q.device)  # (K, L+K)
    if causal:
        mask = mask.tril(S - K)  # query i sees keys <= L+i
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def flex_call(q, k, v, causal: bool, flex):
    """flex_attention (compiled) with a block mask built from the same visibility rule."""
    from torch.nn.attention.flex_attention import create_block_mask

    K, S = q.shape[2], k.shape[2]
    L = S - K

    def visible(b, h, q_idx, kv_idx):
        return kv_idx <= L + q_idx if causal else kv_idx >= 0

    block_mask = create_block_mask(visible, B=None, H=None, Q_LEN=K, KV_LEN=S, device=q.device)
    return lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True)


def allow_many_compiles() -> None:
    """flex_attention compiles once per shape; let dynamo keep every (L, mask) variant of this run."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)


# --------------------------------------------------------------------------- tuning aid


def sweep(args: argparse.Namespace, timer: Timer) -> None:
    """Times launch configurations of our kernel around `choose_config`'s pick and prints the fastest per cell."""
    import triton

    from .triton_attn import LaunchConfig, _launch, _num_sms, choose_config

    num_sms = _num_sms(torch.cuda.current_device())
    print("| model | L | mask | chosen config | chosen µs | fastest config | fastest µs |")
    print("| --- | ---: | --- | --- | ---: | --- | ---: |")
    for name in args.layouts:
        H, Hkv = LAYOUTS[name]
        for L in args.lengths:
            q, k, v = make_inputs(args.batch, H, Hkv, L, args.block, L + args.block + 64)
            for causal in (True, False):
                chosen = choose_config(q, k)
                programs = args.batch * Hkv * triton.cdiv(H // Hkv * args.block, chosen.block_m)
                expected = _launch(q, k, v, causal, None, chosen).float()
                timings = {}
                for block_n, warps, stages, waves in itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (1, 2, 4)):
                    splits = max(1, min(waves * num_sms // programs, k.shape[2] // block_n))  # `waves` programs per SM
                    config = LaunchConfig(chosen.block_m, block_n, warps, stages, splits)
                    try:
                        error = (_launch(q, k, v, causal, None, config).float() - expected).abs().max().item()
                    except Exception as e:  # e.g. triton's OutOfResources: the tiles do not fit in shared memory
                        print(f"skipped {config}: {type(e).__name__}", file=sys.stderr)
                        continue
                    if error > 2e-2:
                        print(f"skipped {config}: max abs diff {error:.1e} from the chosen config", file=sys.stderr)
                        continue
                    timings[config] = timer(lambda: _launch(q, k, v, causal, None, config))
                chosen_us = timer(lambda: _launch(q, k, v, causal, None, chosen))
                fastest = min(timings, key=timings.get)
                mask = "causal" if causal else "bidirectional"
                print(f"| {name} | {L} | {mask} | {chosen} | {chosen_us:.1f} | {fastest} | {timings[fastest]:.1f} |", flush=True)
            del q, k, v


# --------------------------------------------------------------------------- main


def fmt(x: float | str, digits: int = 1) -> str:
    return x if isinstance(x, str) else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table; returns the exit status (2 without a CUDA GPU or Triton)."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench attn needs a CUDA GPU", file=sys.stderr)
        return 2
    try:
        from .triton_attn import block_attention
    except ImportError:
        print("bench attn needs triton (pip install 'orthrus-min[triton]')", file=sys.stderr)
        return 2
    from torch.nn.attention.flex_attention import flex_attention

    import triton

    allow_many_compiles()
    flex = torch.compile(flex_attention, dynamic=False)
    torch.manual_seed(0)
    timer = Timer(args.iters)
    copy_gbs = copy_bandwidth_gbs(timer)
    B, K = args.batch, args.block
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"measured copy bandwidth: {copy_gbs:.0f} GB/s; bf16, head_dim {HEAD_DIM}, batch {B}, block K = {K}\n")
    if args.sweep:
        sweep(args, timer)
        return 0
    print("| model | H / Hkv | L | mask | ours µs | SDPA µs | flex µs | ours vs faster | ours GB/s | % of copy | max abs diff vs SDPA |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    goal_speed, goal_bw = [], []
    for name in args.layouts:
        H, Hkv = LAYOUTS[name]
        capacity = max(args.lengths) + K + 64  # a cache with room to spare: k, v are strided views
        for L in args.lengths:
            q, k, v = make_inputs(B, H, Hkv, L, K, capacity)
            nbytes = (2 * k.numel() + 2 * q.numel()) * k.element_size()  # K and V read, q read and output written
            for causal in (True, False):
                ours_us = timer(lambda: block_attention(q, k, v, causal))
                sdpa = sdpa_call(q, k, v, causal)
                sdpa_us = timer(sdpa)
                try:
                    flex_us = timer(flex_call(q, k, v, causal, flex))
                except Exception as e:  # an unsupported shape on this torch version: say so, keep going
                    flex_us = f"error: {type(e).__name__}"
                diff = (block_attention(q, k, v, causal).float() - sdpa().float()).abs().max().item()
                baselines = [t for t in (sdpa_us, flex_us) if not isinstance(t, str)]
                speedup = min(baselines) / ours_us
                gbs = nbytes / (ours_us * 1e-6) / 1e9
                mask = "causal" if causal else "bidirectional"
                print(f"| {name} | {H} / {Hkv} | {L} | {mask} | {fmt(ours_us)} | {fmt(sdpa_us)} | {fmt(flex_us)} "
                      f"| {speedup:.2f}x | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {diff:.1e} |")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
