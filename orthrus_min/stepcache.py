"""Compiled decode steps saved whole, so that the next run of the same command loads them instead of compiling.

torch.compile keeps its generated code on disk (inductor's cache), but every new process still
traces the step again before it can look that code up: on this project's 2-core CPU, a second
`generate --compile` of the shipped model spent about 6 s in its first step (tracing, cache
lookups), 3x the whole eager run. torch's ahead-of-time compile (`torch._dynamo.aot_compile`)
instead produces the traced *and* generated step as one object that can be written to a file;
a later process reads it back in about a second and calls it directly. That is what `SavedSteps`
does, one file per step shape, under `{inductor's cache}/orthrus_min/steps/`.

A file is only valid for what the compiled graph was built from, so its name is a hash of all of it:
  * the package's source, torch's version and the CPU's vector instruction set (a code change retraces);
  * the model's config, dtype, device, weight layout, attention backend and batch-invariance setting;
  * the batch size and cache capacity (compiled steps have fixed shapes), the step's arguments
    (Orthrus: the block size) and the sampling settings, which the graph holds as constants.
The weights are not in it: the step takes the model as an input, so a retrained checkpoint of the
same shape reuses the file. The loaded step still checks torch's guards (e.g. grad mode) on its
first call; should they fail, or the file be unreadable, it is compiled again and rewritten.

Used for mode "default" on a CPU, the case a newcomer meets; CUDA-graph and max-autotune modes
(which fold the weights into the graph) keep torch.compile's own caching (`engine.Compiler`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

SAVED_MODES = ("default",)


def can_save(mode: str | None, device: torch.device) -> bool:
    """Whether steps compiled with `mode` on `device` are saved and loaded whole (else: torch.compile's own caches)."""
    return mode in SAVED_MODES and device.type == "cpu" and hasattr(torch._dynamo, "aot_compile")


@functools.cache
def source_digest() -> str:
    """A hash of the package's own Python source: a saved step is only valid for the code it was traced from."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def step_key(fn: Callable, mode: str, model, cache, sampling, eos: torch.Tensor, args: dict) -> str:
    """The file name of a compiled step: a hash of everything its graph depends on (module docstring)."""
    sampling = {f.name: getattr(sampling, f.name) for f in dataclasses.fields(sampling) if f.name != "seed"}  # seeds are tensors
    layout = [(list(p.shape), p.stride()) for p in model.parameters()]  # the compiled code assumes each weight's strides
    parts = [fn.__module__, fn.__qualname__, mode, torch.__version__, source_digest(), vars(model.config), str(model.dtype),
             str(model.device), layout, model.attn_backend, model.model.batch_invariant, cache.batch_size, cache.capacity,
             list(eos.shape), sorted(args.items()), sampling, torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def steps_dir() -> str:
    """Where saved steps live: next to inductor's own cache (TORCHINDUCTOR_CACHE_DIR moves both)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return os.path.join(cache_dir(), "orthrus_min", "steps")


class SavedSteps:
    """`fn` compiled ahead of time per shape, each saved to a file and loaded from it by later runs.

    Called like `fn(model, cache, state, sampling, eos, **args)`. notify(line) is told, once per
    shape, whether its step is compiled (a minute on a CPU, cold) or loaded (about a second).
    """

    def __init__(self, fn: Callable, mode: str, notify: Callable[[str], None] | None = None):
        self.fn, self.mode, self.notify = fn, mode, notify
        self._steps: dict[tuple, Callable] = {}  # by the cheap in-process identity of a shape
        self.loaded = self.compiled = 0  # how many shapes came from disk / were compiled (tests, messages)

    def __call__(self, model, cache, state, sampling, eos, **args):
        shape = (id(model), id(model.config), model.attn_backend, model.model.batch_invariant, cache.batch_size,
                 cache.capacity, tuple(eos.shape), sampling.temperature, sampling.top_k, sampling.top_p,
                 tuple(sorted(args.items())))
        step = self._steps.get(shape)
        if step is None:
            step = self._steps[shape] = self.load_or_compile(model, cache, state, sampling, eos, args)
        return step(model, cache, state, sampling, eos, **args)

    def load_or_compile(self, model, cache, state, sampling, eos, args: dict) -> Callable:
        """The step for this shape: read from its file if an earlier run saved it, else compiled now and saved."""
        path = os.path.join(steps_dir(), step_key(self.fn, self.mode, model, cache, sampling, eos, args) + ".bin")
        inputs = (model, cache, state, sampling, eos)
        block = f", block size {args['block_size']}" if "block_size" in args else ""
        what = f"{self.fn.__name__} ({self.mode}) for batch {cache.batch_size}{block}, capacity {cache.capacity}"
        try:
            # Its C++ kernels were built and checked on this CPU (its vector ISA is in the file's name), so inductor's
            # check of the compiler (a test build and a child process: 0.7 s) is skipped while they load.
            with open(path, "rb") as f, torch._inductor.config.patch({"cpp.vec_isa_ok": True}):
                step = torch.compiler.load_compiled_function(f)
            if step.guard_check(*inputs, **args):
                self.loaded += 1
                if self.notify is not None:
                    self.notify(f"loading {what}, compiled by an earlier run")
                return step
        except Exception:  # no file yet, or one this torch cannot read: compile anew
            pass
        if self.notify is not None:
            self.notify(f"compiling {what}: about a minute on a CPU the first time; saved for later runs, which load it")
        step = torch.compile(self.fn, fullgraph=True, dynamic=False, mode=self.mode).aot_compile((inputs, args))
        self.compiled += 1
        try:  # torch writes it atomically: a concurrent run never reads half a file
            os.makedirs(os.path.dirname(path), exist_ok=True)
            step.save_compiled_function(path)
        except OSError:  # a read-only or full cache: compiled for this process only
            pass
        return step


__all__ = ["SavedSteps", "can_save", "step_key", "steps_dir", "SAVED_MODES"]
