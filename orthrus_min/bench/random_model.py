"""A random Qwen3 checkpoint of a preset shape, to benchmark on without downloading weights.

    python -m orthrus_min.bench random-model --preset qwen3-1.7b --out /tmp/qwen3-1.7b
    python -m orthrus_min.bench ar --model /tmp/qwen3-1.7b
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import OrthrusError
from ..files import WriteFailed, check_replaceable, io_reason, listing

MODEL_FILES = ("config.json", "model.safetensors")

PRESETS = {
    # name: config fields of a random Qwen3 (vocab is Qwen3's real 151,936 only for the 1.7B shape)
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, tie_word_embeddings=True),
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
}


def check_model_out(out: Path, overwrite: bool) -> None:
    """--out must be new or empty; with --overwrite, config.json and model.safetensors there must be regular files."""
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if entries and not overwrite:
        raise OrthrusError(f"--out {out} is not empty ({listing(entries)}): pass --overwrite to replace its config.json and "
                           "model.safetensors (other files stay), or give a new folder")
    check_replaceable(out, "--out", dict.fromkeys(MODEL_FILES))


def random_qwen3(preset: str, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A random Qwen3 of a preset shape, built and initialised on `device` in `dtype` (in eval mode, no gradients)."""
    from ..config import Qwen3Config
    from ..model import Qwen3ForCausalLM

    fields = dict(model_type="qwen3", max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1e6, eos_token_id=1,
                  **PRESETS[preset])
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config.from_dict(fields)).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embed" in name else 0.02)
    model.model.rotary_emb.build(device)  # the RoPE tables stay fp32
    return model.eval().requires_grad_(False)


def make_random_model(preset: str, out: Path, seed: int = 0) -> Path:
    """Writes a random Qwen3 checkpoint (config.json + model.safetensors) of a preset shape to `out`: into a temporary
    folder first, then each file renamed into place, so a failed write (a full disk) leaves no half-written file."""
    from ..checkpoint import save_model

    model = random_qwen3(preset, seed)
    tmp = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".random-model-"))
        save_model(model, tmp)
        for name in MODEL_FILES:
            os.replace(tmp / name, out / name)
    except Exception as e:  # OSError, or safetensors' wrapper of one
        raise WriteFailed(f"--out {out}: cannot write the model ({io_reason(e)})") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_random_model(args) -> int:
    """`bench random-model`: writes the checkpoint and says where."""
    make_random_model(args.preset, args.out, args.seed)
    print(f"wrote a random {args.preset} Qwen3 to {args.out}")
    return 0
