"""Checkpoints that are never half-written, and the rules for an output folder (`--out`).

A checkpoint is a folder `OUT/checkpoints/step-NNNNNNNN/`: config.json and model.safetensors
(loadable by `generate` as they are), the tokenizer files, and training_state.pt (optimizer,
data position, random states of every process, the run's identity and settings). It is written
under a temporary name (`.tmp-…`), flushed to disk, and renamed into place: a folder named
`step-*` is always complete. Only then is the previous one removed — renamed to `.trash-…`
first, then deleted — so a run killed at any moment leaves the newest complete checkpoint under a
`step-*` name, and debris only under dot-names, which the next save clears. `--resume` takes the
highest step. A failed write (disk full, read-only folder) removes its temporary folder and
raises a one-line error; the previous checkpoint is untouched.

An output folder that holds anything but the keyed data cache (`data/`) is in the way: a stage
refuses to start there unless `--resume` (continue the run whose checkpoint is there) or
`--overwrite` (replace this stage's own outputs; other files are left alone). `--overwrite`
follows files.py's rule: it replaces an output name only when what is there is of the kind the
stage writes — a regular file, or a checkpoints/ folder holding only checkpoint folders — and
refuses (before changing anything) a symbolic link, a device or a foreign folder in its place.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_model
from ..errors import OrthrusError
from ..files import WriteFailed, check_replaceable, check_writable_folder, io_reason, kind_of, listing, own_layout, remove_output
from ..model import Qwen3ForCausalLM

CHECKPOINTS = "checkpoints"
STATE_FILE = "training_state.pt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")
MODEL_FILES = ("config.json", "model.safetensors")


def _checkpoint_entry(name: str) -> bool:
    return name.startswith(("step-", ".tmp-", ".trash-"))


# What each stage writes in its --out, by name: None for a regular file, or a check of a folder's layout.
RUN_OUTPUTS = {CHECKPOINTS: own_layout(_checkpoint_entry), "log.jsonl": None, "run.json": None,
               **dict.fromkeys(MODEL_FILES + TOKENIZER_FILES)}  # pretrain, distill
MODEL_OUTPUTS = dict.fromkeys(MODEL_FILES + TOKENIZER_FILES)  # export
TOKENIZER_OUTPUTS = dict.fromkeys(("tokenizer.json", "tokenizer_config.json"))  # the tokenizer stage


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run, (step, folder), oldest first."""
    root = out / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("step-") and p.name[5:].isdigit() and (p / STATE_FILE).exists():
                found.append((int(p.name[5:]), p))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = checkpoints(out)
    return found[-1][1] if found else None


def clear_debris(root: Path) -> None:
    """Removes `.tmp-*` and `.trash-*` folders left by a run killed while saving."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state(path: Path, state: dict) -> None:
    """Writes the training state (optimizer, data position, random states, identity) with torch.save, through a file
    of ours so that a failed write (a full disk) surfaces as the OSError it is."""
    with open(path, "wb") as f:
        torch.save(state, f)


def non_finite(named_tensors) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in named_tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite_weights(model, what: str) -> None:
    """Refuses (one line) to save weights that are not all finite: a diverged run is never saved as if it were fine."""
    bad = non_finite(model.named_parameters())
    if bad:
        raise OrthrusError(f"{what}: {listing(bad, 2)} hold NaN or infinite values; not saved (training diverged: "
                           "lower --lr)")


def _commit(tmp: Path, final: Path) -> None:
    """Makes a complete temporary checkpoint the newest one: a single rename."""
    os.rename(tmp, final)


def _discard(folder: Path) -> None:
    """Removes an old checkpoint: renamed away from its `step-*` name first, so a kill mid-delete leaves only debris."""
    trash = folder.parent / f".trash-{folder.name}"
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copies the tokenizer files (and generation_config.json) that `src` has into `dst`."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).exists():
            shutil.copyfile(Path(src) / name, Path(dst) / name)


def save_checkpoint(out: Path, step: int, model: Qwen3ForCausalLM, state: dict, tokenizer_dir: Path | None = None) -> Path:
    """Writes checkpoint `step` atomically, then removes the older ones; returns its folder."""
    root = out / CHECKPOINTS
    final = root / step_name(step)
    if (final / STATE_FILE).exists():
        return final  # this step is saved already (a resumed run that had nothing left to do)
    check_finite_weights(model, f"the weights of step {step}")
    tmp = root / f".tmp-{step_name(step)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        clear_debris(root)
        tmp.mkdir()
        save_model(model, tmp)
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, tmp)
        write_state(tmp / STATE_FILE, state)
        _fsync_folder(tmp)
        _commit(tmp, final)
    except Exception as e:  # OSError, or torch's / safetensors' wrappers of it (disk full, read-only folder)
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(out)
        kept = f"the previous checkpoint ({previous.name}) is intact" if previous else "no earlier checkpoint exists"
        raise WriteFailed(f"cannot write the checkpoint of step {step} in {root} ({io_reason(e)}); {kept}") from None
    for old_step, folder in checkpoints(out):
        if old_step < step:
            try:
                _discard(folder)
            except OSError:
                pass  # a leftover old checkpoint is harmless: the newest one wins
    return final


def load_state(folder: Path) -> dict:
    """The training state of a checkpoint folder."""
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable or corrupt: a one-line error, not a traceback
        raise OrthrusError(f"{folder / STATE_FILE}: cannot read the training state ({type(e).__name__}: {e})") from None


def load_tensors(folder: Path, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The named tensors of a checkpoint's model.safetensors, in their stored dtype (fp32 masters stay fp32)."""
    from safetensors import safe_open

    try:
        with safe_open(folder / "model.safetensors", framework="pt", device=str(device)) as f:
            missing = [n for n in names if n not in f.keys()]
            if missing:
                raise OrthrusError(f"{folder}: the checkpoint lacks {', '.join(missing[:4])}")
            return {n: f.get_tensor(n) for n in names}
    except OrthrusError:
        raise
    except Exception as e:
        raise OrthrusError(f"{folder / 'model.safetensors'}: cannot read ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- random states


def rng_state() -> dict:
    """This process's random states: torch (and CUDA), numpy's global generator, Python's `random`."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "python": list(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --------------------------------------------------------------------------- the output folder


def check_out_folder(out: Path, resume: bool, overwrite: bool, outputs: dict = RUN_OUTPUTS,
                     can_resume: bool = True) -> Path | None:
    """Applies the --out rules before any work; returns the checkpoint to resume from (or None).

    `outputs`: what this stage writes there (RUN_OUTPUTS, MODEL_OUTPUTS, TOKENIZER_OUTPUTS). Raises a one-line error
    for: --resume with --overwrite; --out that is not a folder; --resume without a checkpoint; a non-empty folder
    without --resume or --overwrite; --overwrite where one of `outputs` is not the stage's own kind of entry.
    """
    if resume and overwrite:
        raise OrthrusError("--resume and --overwrite contradict each other: pick one")
    kind = kind_of(out)
    if kind not in (None, "a folder") and not out.is_dir():
        raise OrthrusError(f"--out {out}: is {'a file' if kind == 'a regular file' else kind}; give a folder")
    previous = sorted(p.name for p in out.iterdir() if p.name != "data") if out.is_dir() else []
    found = latest_checkpoint(out)
    if resume:
        if found is None:
            if (out / "checkpoint" / STATE_FILE).exists():
                raise OrthrusError(f"--resume: {out}/checkpoint was written by an earlier version of orthrus_min, whose "
                                   "checkpoints lack the data position; start a new --out")
            start = "drop --resume and pass --overwrite to start again" if previous else "drop --resume to start"
            raise OrthrusError(f"--resume: no checkpoint in {out}/{CHECKPOINTS} to continue from (a run stopped before its "
                               f"first save leaves none); {start}")
        return found
    if previous and not overwrite:
        replace = "pass --overwrite to replace this stage's outputs there (other files stay), or give a new folder"
        if can_resume and found is not None:
            fix = "pass --resume to continue the run there, or --overwrite to replace it"
        elif can_resume:
            fix = f"it holds no checkpoint to resume from: {replace}"
        else:
            fix = replace
        raise OrthrusError(f"--out {out} is not empty ({listing(previous)}): {fix}")
    if overwrite:
        check_replaceable(out, "--out", outputs)
    return None


def clear_run_outputs(out: Path, outputs: dict = RUN_OUTPUTS) -> None:
    """--overwrite: removes this stage's outputs from `out` (checked by `check_out_folder` first); keeps data/ and every
    other entry."""
    check_replaceable(out, "--out", outputs)
    for name in outputs:
        remove_output(out / name)


def check_writable(out: Path) -> None:
    """Creates `out` and proves a file can be written there; a one-line error if not."""
    check_writable_folder(out, "--out")


__all__ = ["save_checkpoint", "latest_checkpoint", "checkpoints", "load_state", "load_tensors", "rng_state", "set_rng_state",
           "check_out_folder", "clear_run_outputs", "check_writable", "copy_tokenizer", "check_finite_weights", "non_finite",
           "TOKENIZER_FILES", "CHECKPOINTS", "RUN_OUTPUTS", "MODEL_OUTPUTS", "TOKENIZER_OUTPUTS"]
