"""What every benchmark shares: the timer, the copy-bandwidth probe, machine facts, memory, output files.

Used by every command of `python -m orthrus_min.bench` (all, orthrus, ar, forward, attn, random-model).

This module imports nothing from the other bench modules (they all import from it), and no
optional package: transformers, matplotlib and triton are looked up, never required.

Timing follows docs/ARCHITECTURE.md, "Performance model": ratios measured in one run mean
something anywhere; absolute times only on the machine named next to them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Generic, TypeVar

import torch

from ..errors import OrthrusError
from ..files import write_text_atomically

T = TypeVar("T")

L2_FLUSH_BYTES = 256 * 2**20  # larger than the L2 cache of any current GPU (an H100 has 50 MiB)
SPIN_CYCLES = 1_000_000  # torch.cuda._sleep argument: about 0.5 ms of GPU clock cycles


# --------------------------------------------------------------------------- messages


def progress(message: str) -> None:
    """One line of progress (or a note such as a skipped part) on stderr, so stdout stays the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def fmt(x, spec: str = ".1f", none: str = "–") -> str:
    """A number formatted for a table cell; `none` for a missing value."""
    return none if x is None else format(x, spec)


# --------------------------------------------------------------------------- optional packages, machine


def package_version(name: str) -> str | None:
    """The installed version of a package, or None when it cannot be imported (without importing it)."""
    if importlib.util.find_spec(name) is None:  # also None when a test blocks it with sys.modules[name] = None
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(name), "__version__", "unknown")


def has_package(name: str) -> bool:
    """Whether `import name` would find the package."""
    return package_version(name) is not None


def shown_path(path) -> str:
    """A path as a report records it: relative to the working directory when inside it (so that a committed result
    names no folder of the machine it ran on), else as given."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def use_default_threads(args, model) -> None:
    """Without --threads, the CPU threads `load` would choose for this model (api.default_threads), so that a
    benchmark's defaults are what a user gets; --threads was applied before the model loaded."""
    if args.threads is None and model.device.type == "cpu":
        from ..api import default_threads
        from ..checkpoint import num_parameters

        torch.set_num_threads(default_threads(num_parameters(model)))


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: device, CPU, threads, and the versions of everything that matters (None: absent)."""
    info = {"device": str(device), "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": package_version("transformers")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    info["triton"] = package_version("triton")
    return info


def machine_line(info: dict) -> str:
    """machine_info as one line for a report's title."""
    dev = info.get("gpu") or f"CPU ({info['cpu']}), {info['cpu_threads']} threads"
    transformers = f"transformers {info['transformers']}" if info.get("transformers") else "transformers not installed"
    extra = f", CUDA {info['cuda']}, triton {info['triton']}" if info.get("gpu") else ""
    return f"{dev}; Python {info['python']}, torch {info['torch']}, {transformers}{extra}"


# --------------------------------------------------------------------------- the timer


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """How `time_calls` times a function.

    clock "device": on CUDA, events recorded around each call, the calls queued back to back and
    one synchronize at the end: GPU time, the host's launch overhead hidden where the GPU is the
    bottleneck. clock "wall": perf_counter around each call with the device synchronized before
    and after it: end to end, host work included (a whole decode). On the CPU both are perf_counter.

    Warm-up: at least `warmup_calls` untimed calls and at least `warmup_s` seconds of them (an idle
    GPU runs at low clocks for a while, and a few µs-long calls would not bring it back up).
    With the device clock on CUDA, before each timed call:
      flush_l2: overwrite a 256 MiB buffer, so the call reads its inputs from memory, not from an
        L2 that the previous call warmed (a 1k-token K/V of 4 MB would otherwise stay in L2 and
        every bandwidth figure would be flattered);
      spin: queue ~0.5 ms of GPU sleep first, so the CPU is ahead of the GPU when the call is
        launched: the event pair then brackets GPU time, not Python launch overhead (on a slow host
        a 20 µs kernel timed without it read 100–200 µs).
    """

    iters: int = 1  # timed calls; their median is the figure
    warmup_calls: int = 0
    warmup_s: float = 0.0
    clock: str = "device"  # "device" or "wall"
    flush_l2: bool = False
    spin: bool = False

    def __post_init__(self):
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.clock not in ("device", "wall"):
            raise ValueError(f"clock must be 'device' or 'wall', got {self.clock!r}")
        if self.clock == "wall" and (self.flush_l2 or self.spin):
            raise ValueError("flush_l2 and spin apply to the device clock only")


END_TO_END = Timing(clock="wall")  # one synchronized wall-clock call: a whole decode


@dataclass
class Timed(Generic[T]):
    """What `time_calls` measured: the last call's result and the seconds of every timed call."""

    result: T
    seconds: list[float]

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return median(self.seconds)


def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    """A device buffer larger than the L2 cache; zeroing it evicts whatever a previous call left there."""
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)  # (256 Mi,)


def time_calls(fn: Callable[[], T], device: torch.device, timing: Timing = END_TO_END) -> Timed[T]:
    """Times fn() as `timing` says (warm-up, then `timing.iters` timed calls). fn runs in the caller's
    grad mode: wrap model calls in torch.inference_mode()."""
    on_gpu = device.type == "cuda"
    calls, t0 = 0, time.perf_counter()
    while calls < timing.warmup_calls or time.perf_counter() - t0 < timing.warmup_s:
        fn()
        calls += 1
        if on_gpu and calls % 10 == 0:
            torch.cuda.synchronize(device)  # the CPU may not run far ahead: warmup_s then measures GPU time
    synchronize(device)

    if timing.clock == "wall" or not on_gpu:
        seconds = []
        for _ in range(timing.iters):
            synchronize(device)
            t = time.perf_counter()
            result = fn()
            synchronize(device)
            seconds.append(time.perf_counter() - t)
        return Timed(result, seconds)

    flush = l2_flush_buffer(device) if timing.flush_l2 else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(timing.iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(timing.iters)]
    for start, end in zip(starts, ends):
        if flush is not None:
            flush.zero_()
        if timing.spin:
            torch.cuda._sleep(SPIN_CYCLES)  # the GPU is busy while the CPU queues the events and the call
        start.record()
        result = fn()
        end.record()
    torch.cuda.synchronize(device)
    return Timed(result, [start.elapsed_time(end) / 1e3 for start, end in zip(starts, ends)])  # ms -> s


# --------------------------------------------------------------------------- the bandwidth probe

COPY_TIMING = Timing(iters=5, warmup_calls=2)


def available_mib(device: torch.device) -> int | None:
    """MiB that may still be allocated: free CUDA memory, or the machine's available memory for the CPU (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2**20
    try:
        with open("/proc/meminfo") as f:  # Linux: MemAvailable counts the page cache that can be dropped
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20  # elsewhere: all of it
    except (ValueError, OSError, AttributeError):
        return None


def check_copy_size(device: torch.device, mib: int) -> None:
    """--copy-mib: the probe's two buffers must fit in the device's memory; a one-line error naming the need if not."""
    available = available_mib(device)
    if available is not None and 2 * mib > available:
        raise OrthrusError(f"--copy-mib {mib} needs {2 * mib:,} MiB (a source and a destination buffer), but {device} has "
                           f"{available:,} MiB available; give a smaller --copy-mib")


def copy_bandwidth_gbs(device: torch.device, mib: int, timing: Timing = COPY_TIMING) -> float:
    """Achieved GB/s of copying `mib` MiB within device memory (bytes read + bytes written): the roofline's bandwidth."""
    src = torch.ones(mib * 2**20, dtype=torch.uint8, device=device)  # (mib Mi,)
    dst = torch.empty_like(src)
    seconds = time_calls(lambda: dst.copy_(src), device, timing).median
    return 2 * src.numel() / seconds / 1e9


# --------------------------------------------------------------------------- memory


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new CUDA peak-memory window (the CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max memory allocated since the last reset. CPU: the process's peak RSS so far (never decreases)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # Unix only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def memory_kind(device: torch.device) -> str:
    """What peak_memory_mb measures on this device, for the report."""
    if device.type == "cuda":
        return "cuda max_memory_allocated per method (reset before each run)"
    return "process peak RSS (resource.getrusage; monotone over the process: each value is the peak so far)"


# --------------------------------------------------------------------------- comparing outputs


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two token lists differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# --------------------------------------------------------------------------- output files
#
# Whether an output path can be written, and what may be replaced there, is files.py's one rule.


def write_json(result: dict, path: Path) -> None:
    """The result as indented JSON, replacing the file atomically (a full disk: a one-line error, the old file kept)."""
    write_text_atomically(path, json.dumps(result, indent=2) + "\n")


def write_text(text: str, path: Path) -> None:
    """A text file (the Markdown report), its folder created if needed, replaced atomically."""
    write_text_atomically(path, text)
