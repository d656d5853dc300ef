"""Where and how the MLX backend runs: the import guard, the device, the dtype, the command-line flags.

Mirrors the device / dtype half of `orthrus_min/checkpoint.py` (`resolve_device`, `resolve_dtype`) for
MLX. MLX has two devices: the Apple-silicon GPU (Metal) and the CPU; on Linux only the CPU
backend exists (`pip install "mlx[cpu]"`). Nothing here imports MLX at module import time,
so `check_backend_args` and the "MLX is not installed" error work without it.
"""

from __future__ import annotations

import sys

from ..errors import OrthrusError

INSTALL_HINT = ('pip install "orthrus-min[mlx]" (that extra is mlx[cpu] on Linux and plain mlx on macOS; '
                'directly: pip install "mlx[cpu]" on Linux, pip install mlx on macOS)')
MLX_DEVICES = ("auto", "cpu", "gpu")
MLX_DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def require_mlx():
    """Returns the `mlx.core` module, or raises a one-line `OrthrusError` naming the extra to install."""
    try:
        import mlx.core as mx
    except ImportError as e:
        raise OrthrusError(f"the MLX backend needs MLX, which is not installed ({e}): {INSTALL_HINT}") from None
    return mx


def check_backend_args(device: str | None = "auto", attn: str | None = "auto", dtype: str | None = "auto") -> None:
    """Validates the command line's --device, --attn and --dtype for `--backend mlx`; raises a one-line OrthrusError.

    device: auto, cpu or gpu (the Metal GPU); CUDA devices belong to the torch backend.
    attn: auto only; MLX always uses `mx.fast.scaled_dot_product_attention`, while "torch"
    (SDPA) and "triton" (our CUDA kernel) name the torch backend's. dtype: auto, float32,
    bfloat16 or float16.
    """
    if attn not in (None, "auto"):
        raise OrthrusError(f"--attn {attn} applies to the torch backend; the MLX backend always uses MLX's own attention "
                           f"(mx.fast.scaled_dot_product_attention): drop --attn or use --backend torch")
    if device not in (None, *MLX_DEVICES):
        hint = " (CUDA is the torch backend's: use --backend torch)" if str(device).startswith("cuda") else ""
        raise OrthrusError(f"--device {device} is not an MLX device{hint}; with --backend mlx choose one of {', '.join(MLX_DEVICES)}")
    if dtype not in (None, "auto", *MLX_DTYPES):
        raise OrthrusError(f"dtype {dtype!r} is unknown; choose one of auto, float32, bfloat16, float16")


def resolve_device(device: str | None):
    """"auto"/None -> the MLX default device (the GPU on Apple silicon, else the CPU); "cpu" or "gpu" -> that one."""
    mx = require_mlx()
    check_backend_args(device=device)
    if device in (None, "auto"):
        return mx.default_device()
    if device == "gpu" and not mx.is_available(mx.gpu):
        raise OrthrusError(f"device 'gpu' asked for, but MLX has no GPU backend on this machine ({sys.platform}); use --device cpu")
    return mx.Device(mx.gpu if device == "gpu" else mx.cpu)


def resolve_dtype(dtype: str | None, device):
    """"auto"/None -> bfloat16 on the GPU, float32 on the CPU (the torch backend's rule); else float32 / bfloat16 / float16."""
    mx = require_mlx()
    check_backend_args(dtype=dtype)
    if dtype in (None, "auto"):
        return mx.bfloat16 if device.type == mx.DeviceType.gpu else mx.float32
    return {"float32": mx.float32, "fp32": mx.float32, "bfloat16": mx.bfloat16, "bf16": mx.bfloat16,
            "float16": mx.float16, "fp16": mx.float16}[dtype]


def wide_float():
    """The widest float MLX can compute with on the current default device: float64 on the CPU, float32 on the GPU.

    MLX's Metal backend has no float64, so the sampler's cumulative sums and acceptance tests
    run in float32 there (see `orthrus_min/mlx/sampling.py`).
    """
    mx = require_mlx()
    return mx.float64 if mx.default_device().type == mx.DeviceType.cpu else mx.float32
