"""Checkpoints on disk: where one is, what its files hold, and loading and saving the model.

A checkpoint is a folder in the Hugging Face layout — `config.json` (config.py reads it),
`model.safetensors` (or shards listed in `model.safetensors.index.json`), the tokenizer's files,
and optionally `generation_config.json` — or a Hub id `org/name` whose files are fetched into the
Hugging Face cache. `load_model` builds the network (model.py) on the `meta` device and reads
every tensor straight into its parameter, on the asked device and dtype; every mismatch between
the files and the config is a one-line `OrthrusError` naming the tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import Qwen3Config
from .errors import OrthrusError
from .reading import read_json_object

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "orthrus-stdlib-tiny"  # the small model shipped with the package
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
CHECKPOINT_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                       "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> cuda if available else cpu; checks that the asked device exists."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise OrthrusError(f"device {device!r} is not a valid torch device (try 'cpu', 'cuda' or 'cuda:0')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OrthrusError(f"device {device!r} asked for, but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise OrthrusError(f"device {device!r} is not supported (use 'cpu' or 'cuda')")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto"/None -> bfloat16 on CUDA, float32 on CPU; otherwise a name from DTYPES or one of their torch.dtypes."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise OrthrusError(f"dtype {dtype} is not supported: the model computes in torch.float32, torch.bfloat16 or torch.float16")
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise OrthrusError(f"dtype {dtype!r} is unknown; choose one of auto, float32, bfloat16, float16")
    return DTYPES[dtype]


# --------------------------------------------------------------------------- finding a checkpoint and reading its files


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder, or a Hub id `org/name` downloaded (only the files we use) into the HF cache.

    With HF_HUB_OFFLINE=1 (or no network) a Hub id resolves from the cache alone.
    """
    if isinstance(name_or_path, str) and not name_or_path.strip():
        raise OrthrusError("the checkpoint name is empty: give a checkpoint folder or a Hub id like 'org/name'")
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise OrthrusError(f"{name}: is a file; --model wants a checkpoint folder or a Hub id like 'org/name'")
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise OrthrusError(f"{name}: no such checkpoint folder (and not a Hub id of the form 'org/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=CHECKPOINT_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, network error: all mean "cannot get it"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OrthrusError(f"{name}: not a local folder, and could not get it from the Hugging Face Hub or its cache ({type(e).__name__}: {reason})") from None


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: the shards listed in `model.safetensors.index.json`, or `model.safetensors`."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise OrthrusError(f"{index}: not a valid safetensors index ({e})") from None
        return [folder / f for f in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise OrthrusError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def check_finite(folder: Path, broken: list[str]) -> None:
    """The one-line error for a checkpoint whose tensors `broken` hold NaN or inf (nothing when the list is empty)."""
    if broken:
        raise OrthrusError(f"{folder}: {len(broken)} tensor(s) hold NaN or infinite values ({', '.join(broken[:4])}"
                           f"{' …' if len(broken) > 4 else ''}): the checkpoint is corrupt or was saved after training "
                           "diverged (check_weights=False / --no-weight-check loads it anyway)")


def generation_defaults(folder: Path) -> dict:
    """Sampling settings and EOS ids from the checkpoint's generation_config.json ({} when it has none)."""
    path = folder / "generation_config.json"
    if not path.exists():
        return {}
    config = read_json_object(path)
    out = {}
    if config.get("do_sample") is False:
        out["temperature"] = 0.0
    else:
        for key in ("temperature", "top_k", "top_p"):
            if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool):
                out[key] = config[key]
        if config.get("do_sample") is not True:
            out.pop("temperature", None)  # sampling knobs without do_sample: Transformers decodes greedily
    eos = config.get("eos_token_id")
    if isinstance(eos, int) or (isinstance(eos, list) and all(isinstance(e, int) for e in eos)):
        out["eos_token_id"] = [eos] if isinstance(eos, int) else list(eos)
    return out


# --------------------------------------------------------------------------- loading and saving the model


def check_names(folder, missing: list[str], unexpected: list[str], misshaped: list[str]) -> None:
    """One OrthrusError naming (up to 8 of each) the missing, unexpected and wrongly shaped tensors of a checkpoint."""
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:8])}{' …' if len(unexpected) > 8 else ''}")
    if misshaped:
        problems.append("wrong shapes: " + "; ".join(misshaped[:8]))
    if problems:
        raise OrthrusError(f"{folder}: checkpoint does not match config.json — " + " | ".join(problems))


def load_model(name_or_path: str | os.PathLike, dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto",
               attn: str | None = None, check_weights: bool = True):
    """Loads a Qwen3 or Orthrus checkpoint (folder or Hub id) for inference; returns a `Qwen3ForCausalLM`.

    The model is built on the `meta` device and every tensor is read from the safetensors
    files straight into its parameter (converted to `dtype` on `device`), so no second full
    copy is ever held. Missing, unexpected and mis-shaped tensors are reported by name.
    attn: "torch" or "triton"; None picks triton on CUDA when it is installed, torch otherwise.
    check_weights: refuse a checkpoint with NaN or infinite weights (one pass over the weights
    where they were loaded; pass False to skip it).
    """
    from safetensors import safe_open

    from .model import Qwen3ForCausalLM  # here, so that reading a checkpoint's files (MLX does) imports no torch network

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = resolve_checkpoint(name_or_path)
    config = Qwen3Config.from_json(folder / "config.json")
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    expected = {name: p.shape for name, p in model.named_parameters()}  # tied lm_head is not listed
    state, unexpected, misshaped = {}, [], []
    for file in safetensors_files(folder):
        if not file.exists():
            raise OrthrusError(f"{file}: shard listed in the index is missing")
        try:
            with safe_open(file, framework="pt", device=str(dev)) as f:
                for name in f.keys():
                    if name not in expected:
                        if not (name == "lm_head.weight" and config.tie_word_embeddings):
                            unexpected.append(name)
                        continue
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != tuple(expected[name]):
                        misshaped.append(f"{name} has shape {shape}, expected {tuple(expected[name])}")
                        continue
                    state[name] = f.get_tensor(name).to(dt)
        except OrthrusError:
            raise
        except Exception as e:  # truncated or corrupt file
            raise OrthrusError(f"{file}: cannot read safetensors file ({type(e).__name__}: {e})") from None
    missing = model.load_state_dict(state, strict=False, assign=True).missing_keys  # torch names what it did not get
    missing = sorted(set(missing) & set(expected) - {n.split(" ")[0] for n in misshaped})  # a tied lm_head is not missing
    check_names(folder, missing, unexpected, misshaped)
    if check_weights:
        check_finite(folder, [name for name, t in state.items() if not all_finite(t)])
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # re-tie: assign=True replaced the embedding
    model.model.rotary_emb.build(dev)
    model.set_weight_layout()  # the layout this device's matmuls read fastest (fp32 on a CPU: column-major)
    model.eval().requires_grad_(False)
    if attn is None:
        attn = "triton" if dev.type == "cuda" and _triton_available() else "torch"
    model.set_attn_backend(attn)
    return model


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def save_model(model: nn.Module, folder: str | os.PathLike) -> None:
    """Writes a `Qwen3ForCausalLM`'s `config.json` and `model.safetensors` in the Hugging Face / Orthrus layout."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of t is finite: its smallest and largest are (a NaN anywhere makes both NaN).
    One vectorised pass, no tensor-sized temporary: 25x faster than `isfinite(t).all()` on a CPU."""
    return t.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())


def num_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["load_model", "save_model", "check_names", "resolve_device", "resolve_dtype", "resolve_checkpoint", "safetensors_files",
           "check_finite", "generation_defaults", "num_parameters", "DEFAULT_MODEL", "DTYPES", "CHECKPOINT_PATTERNS"]
