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

An output folder that holds anything but the keyed data cache (`data/`) is a previous run: a
stage refuses to start there unless `--resume` (continue it) or `--overwrite` (replace this
stage's outputs; other files are left alone).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import OrthrusError
from ..model import Qwen3ForCausalLM, save_model

CHECKPOINTS = "checkpoints"
STATE_FILE = "training_state.pt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")
RUN_OUTPUTS = (CHECKPOINTS, "log.jsonl", "run.json", "config.json", "model.safetensors") + TOKENIZER_FILES


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
    """Writes the training state (optimizer, data position, random states, identity) with torch.save."""
    torch.save(state, path)


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
        reason = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OrthrusError(f"cannot write the checkpoint of step {step} in {root} ({reason}); {kept}") from None
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


def check_out_folder(out: Path, resume: bool, overwrite: bool, can_resume: bool = True) -> Path | None:
    """Applies the --out rules before any work; returns the checkpoint to resume from (or None).

    Raises a one-line error for: --resume with --overwrite; --out that is a file; --resume without
    a checkpoint; a previous run's outputs without --resume or --overwrite.
    """
    if resume and overwrite:
        raise OrthrusError("--resume and --overwrite contradict each other: pick one")
    if out.exists() and not out.is_dir():
        raise OrthrusError(f"--out {out}: is a file; give a folder")
    previous = sorted(p.name for p in out.iterdir() if p.name != "data") if out.is_dir() else []
    if resume:
        found = latest_checkpoint(out)
        if found is None:
            if (out / "checkpoint" / STATE_FILE).exists():
                raise OrthrusError(f"--resume: {out}/checkpoint was written by an earlier version of orthrus_min, whose "
                                   "checkpoints lack the data position; start a new --out")
            raise OrthrusError(f"--resume: no checkpoint in {out}/{CHECKPOINTS} to continue from; drop --resume to start")
        return found
    if previous and not overwrite:
        shown = ", ".join(previous[:4]) + (", …" if len(previous) > 4 else "")
        fix = "pass --resume to continue the run there, or --overwrite to replace it" if can_resume else \
            "pass --overwrite to replace what this stage writes there"
        raise OrthrusError(f"--out {out} is not empty ({shown}): {fix}")
    return None


def clear_run_outputs(out: Path) -> None:
    """--overwrite: removes this stage's outputs from `out` (checkpoints, log, model, tokenizer files); keeps data/."""
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def check_writable(out: Path) -> None:
    """Creates `out` and proves a file can be written there; a one-line error if not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OrthrusError(f"--out {out}: cannot write there ({e.strerror or type(e).__name__})") from None


__all__ = ["save_checkpoint", "latest_checkpoint", "checkpoints", "load_state", "load_tensors", "rng_state", "set_rng_state",
           "check_out_folder", "clear_run_outputs", "check_writable", "copy_tokenizer", "TOKENIZER_FILES", "CHECKPOINTS"]
