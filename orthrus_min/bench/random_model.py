"""A random Qwen3 checkpoint of a preset shape, to benchmark on without downloading weights.

    python -m orthrus_min.bench random-model --preset qwen3-1.7b --out /tmp/qwen3-1.7b
    python -m orthrus_min.bench ar --model /tmp/qwen3-1.7b
"""

from __future__ import annotations

from pathlib import Path

import torch

PRESETS = {
    # name: config fields of a random Qwen3 (vocab is Qwen3's real 151,936 only for the 1.7B shape)
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, tie_word_embeddings=True),
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
}


def make_random_model(preset: str, out: Path, seed: int = 0) -> Path:
    """Writes a random Qwen3 checkpoint (config.json + model.safetensors) of a preset shape to `out`."""
    from ..model import Qwen3Config, Qwen3ForCausalLM, save_model

    fields = dict(model_type="qwen3", max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1e6, eos_token_id=1,
                  **PRESETS[preset])
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embed" in name else 0.02)
    save_model(model, out)
    return out


def run_random_model(args) -> int:
    """`bench random-model`: writes the checkpoint and says where."""
    make_random_model(args.preset, args.out, args.seed)
    print(f"wrote a random {args.preset} Qwen3 to {args.out}")
    return 0
