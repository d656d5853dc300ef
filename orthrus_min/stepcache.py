"""Compiled decode steps saved whole, so that the next run of the same command loads them instead of compiling.

torch.compile keeps its generated code on disk (inductor's cache), but every new process still
imports the compiler and traces the step again before it can look that code up: on this project's
2-core CPU a second `generate --compile` of the shipped model spent about 6 s in its first step,
3x the whole eager run; even torch's ahead-of-time compile (`torch._dynamo.aot_compile`), loaded
from a file, cost 4 s of importing dynamo and inductor. So on a CPU a step is compiled with
**AOTInductor**, torch's compiler for deployment: `torch.export` traces the step into one graph,
inductor turns it into a shared library, and a later process loads that library through torch's
own C++ runner (`torch._C._aoti`) — in milliseconds, without importing the compiler at all.

The step becomes a module of tensors only (`FlatStep`): the cache's lengths, keys and values and
the decode state are its inputs, which it updates in place as the eager step does; the model is a
submodule, whose weights the saved library does not contain — each run hands it the weights of its
own model (`load_constants`, without copying them), so a retrained checkpoint of the same shape
reuses the file, and the file stays small.

A file is only valid for what its graph was built from, so its name is a hash of all of it:
  * the package's source, torch's version and the CPU's vector instruction set (a code change recompiles);
  * the model's config, dtype, device, weight layout, attention backend and batch-invariance setting;
  * the batch size and cache capacity (compiled steps have fixed shapes), the step's arguments
    (Orthrus: the block size) and the sampling settings, which the graph holds as constants;
  * the thread count;
  * max-autotune only: the weights themselves, which its package holds.
A file that cannot be loaded is compiled again and rewritten. Files live in the cache folder's
`steps/` (`cachedir.py`).

Used on a CPU with the PyTorch attention, in mode "default" (the case a newcomer meets) and in the
max-autotune modes. max-autotune *freezes* the weights into the graph, so that inductor can pack each
matmul's weight for its own C++ matmul kernel and keep, per matmul, whichever of that kernel and the
BLAS call it timed faster, which on this project's 2-core AMD CPU makes the compiled steps of the
shipped model clearly faster than in mode "default" (README, Results). The packed weights
are computed while compiling, so such a package holds the weights (54 MB for an Orthrus step of the
shipped model): its name also hashes the weights' bytes, and only models of up to
`MAX_FROZEN_BYTES` of weights are saved this way. GPUs, larger frozen models and the Triton kernel
keep torch.compile and its own caches (`engine.Compiler`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .cachedir import cache_dir, key
from .kvcache import KVCache

# inductor's options for each mode whose steps are saved (module docstring): "default" leaves the weights out of
# the package; max-autotune freezes them into the graph, packs them for inductor's own matmul kernel and keeps
# them in the package, packed.
MAX_AUTOTUNE = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "freezing": True,
                "aot_inductor.package_constants_in_so": True,
                "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}  # (no timing tables)
SAVED_MODES = {"default": {"aot_inductor.package_constants_in_so": False}, "max-autotune": MAX_AUTOTUNE,
               "max-autotune-no-cudagraphs": MAX_AUTOTUNE}
MAX_FROZEN_BYTES = 256 << 20  # max-autotune: larger models are not saved with their weights (torch.compile instead)
MAX_SAVED = 64  # steps kept in the folder (2 to 3 MB each for the shipped model, 54 MB with weights) …
MAX_SAVED_BYTES = 2 << 30  # … and at most this many bytes of them: the least recently used go first


def can_save(mode: str | None, device: torch.device) -> bool:
    """Whether steps compiled with `mode` on `device` are saved and loaded whole (else: torch.compile's own caches)."""
    return mode in SAVED_MODES and device.type == "cpu" and hasattr(torch._C, "_aoti")


def holds_weights(mode: str) -> bool:
    """Whether a saved step of `mode` carries the model's weights inside its package (max-autotune: frozen, packed)."""
    return SAVED_MODES[mode]["aot_inductor.package_constants_in_so"]


def weights_bytes(model: nn.Module) -> int:
    """The bytes of `model`'s weights."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def weights_digest(model: nn.Module) -> str:
    """A hash of every weight's bytes (tens of milliseconds for the shipped model)."""
    digest = hashlib.blake2b(digest_size=16)
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


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
    if holds_weights(mode):
        parts.append(weights_digest(model))
    return key(parts, 24)


def steps_dir() -> Path:
    """Where saved steps live: `steps/` in the cache folder (cachedir.py)."""
    return cache_dir() / "steps"


def flat_inputs(cache: KVCache, state, eos: torch.Tensor) -> list[torch.Tensor]:
    """A step's tensors in `FlatStep`'s order: the cache's lengths, every layer's keys, then values, the state's fields, eos."""
    return [cache.lengths, *cache.k, *cache.v, *(getattr(state, f.name) for f in dataclasses.fields(state)), eos]


class FlatStep(nn.Module):
    """A decode step `fn(model, cache, state, sampling, eos, **args)` as a module whose inputs are tensors only
    (`flat_inputs`), which is what torch.export takes. The model is a submodule: its weights are the graph's
    constants, named `model.<parameter name>`. The sampling settings and arguments are fixed (constants in the graph)."""

    def __init__(self, fn: Callable, model: nn.Module, state_type: type, sampling, args: dict):
        super().__init__()
        self.fn, self.model, self.state_type, self.sampling, self.args = fn, model, state_type, sampling, args

    def forward(self, lengths: torch.Tensor, *tensors: torch.Tensor):
        L = self.model.config.num_hidden_layers
        cache = KVCache.from_tensors(tensors[:L], tensors[L:2 * L], lengths)
        state = self.state_type(*tensors[2 * L:-1])
        return self.fn(self.model, cache, state, self.sampling, tensors[-1], **self.args)


class SavedSteps:
    """`fn` compiled ahead of time per shape, each saved to a file and loaded from it by later runs.

    Called like `fn(model, cache, state, sampling, eos, **args)`. notify(line) is told, once per
    shape, whether its step is compiled (a minute on a CPU, cold) or loaded (milliseconds).
    fallback() gives the torch.compile'd `fn` for models whose step cannot be saved (the Triton
    attention kernel, a Python operator that the saved library could not call).
    """

    def __init__(self, fn: Callable, mode: str, notify: Callable[[str], None] | None = None,
                 fallback: Callable[[], Callable] | None = None):
        self.fn, self.mode, self.notify, self.fallback = fn, mode, notify, fallback
        self._steps: dict[tuple, tuple] = {}  # (model, its weights and their addresses, step), by a shape's in-process identity
        self._fallback: Callable | None = None
        self.loaded = self.compiled = 0  # how many shapes came from disk / were compiled (tests, messages)

    def __call__(self, model, cache, state, sampling, eos, **args):
        if model.attn_backend != "torch":
            return self.fallback_step()(model, cache, state, sampling, eos, **args)
        shape = (id(model), model.model.batch_invariant, cache.batch_size, cache.capacity, tuple(eos.shape),
                 sampling.temperature, sampling.top_k, sampling.top_p, tuple(sorted(args.items())))
        entry = self._steps.get(shape)
        # The loaded step reads the model's weights where they were when it was loaded: if one moved, load it again.
        if entry is None or any(p.data_ptr() != where for p, where in entry[1]):
            weights = [(p, p.data_ptr()) for p in model.parameters()]  # (the model is kept too, so that its id stays its own)
            if holds_weights(self.mode) and weights_bytes(model) > MAX_FROZEN_BYTES:  # too large to freeze into a file
                step = None
            else:
                step = self.load_or_compile(model, cache, state, sampling, eos, args)
            entry = self._steps[shape] = (model, weights, step)
        if entry[2] is None:
            return self.fallback_step()(model, cache, state, sampling, eos, **args)
        return entry[2](flat_inputs(cache, state, eos))

    def fallback_step(self) -> Callable:
        """The torch.compile'd step (`fallback()`, made on first use) for models whose step is not saved."""
        self._fallback = self._fallback or self.fallback()
        return self._fallback

    def load_or_compile(self, model, cache, state, sampling, eos, args: dict) -> Callable:
        """The step for this shape, a function of `flat_inputs`: loaded from its file if an earlier run saved it, else
        compiled now and saved."""
        path = steps_dir() / (step_key(self.fn, self.mode, model, cache, sampling, eos, args) + ".pt2")
        module = FlatStep(self.fn, model, type(state), sampling, args)
        block = f", block size {args['block_size']}" if "block_size" in args else ""
        what = f"{self.fn.__name__} ({self.mode}) for batch {cache.batch_size}{block}, capacity {cache.capacity}"
        step = None
        if path.is_file():
            try:
                step = load_step(path, module, SAVED_MODES[self.mode])
            except Exception:  # a file this torch cannot read: compile anew
                pass
        if step is not None:
            self.loaded += 1
            if self.notify is not None:
                self.notify(f"loading {what}, compiled by an earlier run")
            mark_used(path)
            return step
        if self.notify is not None:
            self.notify(f"compiling {what}: about a minute on a CPU the first time; saved for later runs, which load it")
        path = compile_step(module, flat_inputs(cache, state, eos), path, SAVED_MODES[self.mode])
        self.compiled += 1
        forget_old_steps(path.parent)
        return load_step(path, module, SAVED_MODES[self.mode])


def compile_step(module: FlatStep, inputs: list[torch.Tensor], path: Path, options: dict | None = None) -> Path:
    """Exports `module` for inputs shaped like `inputs`, compiles it with AOTInductor and inductor `options` (a mode's,
    `SAVED_MODES`) into the package `path` and returns where it is. Written under a temporary name and renamed: a
    concurrent run never reads half a file. A cache folder that cannot be written leaves the package in a temporary
    folder, for this process only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's notices to itself about its own internals, not to the user
        warnings.filterwarnings("ignore", "TypedStorage is deprecated")  # (the same, from max-autotune's timing)
        with torch.inference_mode(False), torch.no_grad():  # export traces ordinary tensors: copies of the decode's inference tensors
            examples = tuple(t.clone() for t in inputs)
            program = torch.export.export(module, examples, strict=False)
        return package(program, path, options)


def package(program, path: Path, options: dict | None = None) -> Path:
    """AOTInductor's package of the exported `program`, compiled with inductor `options` (by default mode "default"'s:
    without the weights), at `path` (or, unwritable, a temporary file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".pt2")
    except OSError:
        fd, tmp = tempfile.mkstemp(suffix=".pt2")
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=tmp,
                                                 inductor_configs=options or SAVED_MODES["default"])
    except BaseException:  # a failed or interrupted compile leaves nothing behind
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp, path)
    except OSError:
        return Path(tmp)
    return path


def mark_used(path: Path) -> None:
    """Marks a saved step as just used (its time stamp), so that `forget_old_steps` keeps it longest."""
    try:
        path.touch()
    except OSError:  # a read-only cache folder: it is used all the same
        pass


def forget_old_steps(folder: Path, keep: int = MAX_SAVED, keep_bytes: int = MAX_SAVED_BYTES) -> None:
    """Deletes all but the `keep` most recently used steps in `folder`, and the older ones past `keep_bytes` of them
    (every code change or new shape adds one); the newest is always kept."""
    try:
        steps = [f for f in folder.glob("*.pt2") if not f.name.startswith(".")]  # (".name…": a package being written)
        steps = sorted(((f.stat().st_mtime, f.stat().st_size, f) for f in steps), reverse=True)
        total = 0
        for i, (_, size, old) in enumerate(steps):
            total += size
            if i > 0 and (i >= keep or total > keep_bytes):
                old.unlink(missing_ok=True)
    except OSError:  # another run deleted one first, or a read-only folder: nothing to do
        pass


def load_step(path: Path, module: FlatStep, options: dict | None = None) -> Callable:
    """The compiled step in package `path`, as a function of `flat_inputs`: given `module`'s weights (not copied), or,
    for a mode whose package `holds_weights`, with its own."""
    # (package, model name in it, run single-threaded: no, runners: 1, device index: none, a CPU)
    runner = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    if (options or SAVED_MODES["default"])["aot_inductor.package_constants_in_so"]:  # its own, frozen weights
        return lambda inputs: tuple(runner.run(inputs))
    weights = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    # (name -> tensor, into the inactive buffer: no, check every constant is given: yes, user-managed, i.e. not copied: yes)
    runner.load_constants({name: weights[name] for name in runner.get_constant_fqns()}, False, True, True)
    return lambda inputs: tuple(runner.run(inputs))


__all__ = ["SavedSteps", "FlatStep", "can_save", "holds_weights", "weights_bytes", "weights_digest", "step_key", "steps_dir",
           "flat_inputs", "compile_step", "load_step", "forget_old_steps", "mark_used", "SAVED_MODES", "MAX_SAVED",
           "MAX_SAVED_BYTES", "MAX_FROZEN_BYTES"]
