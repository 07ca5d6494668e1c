"""FP8 (E4M3 / E5M2) quantization with per-channel, per-block or per-tensor float32 scales."""

from __future__ import annotations

import math

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec
from ..reference import fp8_quant as ref

__all__ = ["dequantize_fp8", "quantize_fp8"]

_OP = "quantize_fp8"
_backend.register_op(
    _OP, backends=("cuda", "cpu", "torch"), summary="FP8 e4m3/e5m2 quantization, amax scales"
)

FORMATS = ("e4m3", "e5m2")
GRANULARITIES = ("per_channel", "per_block", "per_tensor")
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_FMT_CODE = {"e4m3": 1, "e5m2": 2}
_GRAN_CODE = {"per_channel": 0, "per_block": 1, "per_tensor": 2}
_FP8_DTYPE = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}

CUDA_SPECS = [
    CudaKernelSpec(
        "quantize_fp8 amax (per-group atomic max)",
        "fp8_amax_kernel",
        {a: ("none",) for a in (80, 89, 90, 100)},
    ),
    CudaKernelSpec(
        "quantize_fp8 scale finalize", "fp8_scale_kernel", {a: ("none",) for a in (80, 89, 90, 100)}
    ),
    CudaKernelSpec("quantize_fp8 encode", "fp8_encode_kernel", {a: ("none",) for a in (80, 89, 90, 100)}),
]


def scale_shape(shape: torch.Size, granularity: str, block_size: int) -> tuple[int, ...]:
    if granularity == "per_channel":
        return (*shape[:-2], shape[-1])
    if granularity == "per_block":
        return (*shape[:-2], -(-shape[-2] // block_size))
    return ()


@torch.library.custom_op("shared_kernels::quantize_fp8", mutates_args=())
def _quantize_fp8_op(
    x: torch.Tensor, fmt: str, granularity: str, block_size: int, scale_max: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "torch":
        return ref.quantize_fp8(x, fmt, granularity, block_size, scale_max)
    q = _alloc.new_empty(x.shape, _FP8_DTYPE[fmt], x.device)
    scale = _alloc.new_empty(scale_shape(x.shape, granularity, block_size), torch.float32, x.device)
    if x.numel() == 0:
        return q, scale.fill_(0.0)
    n, d = x.shape[-2], x.shape[-1]
    b = x.numel() // (n * d)
    args = (_lib.ptr(x), _DTYPE_CODE[x.dtype], b, n, d, _GRAN_CODE[granularity], block_size, scale_max)
    args += (_FMT_CODE[fmt], _lib.ptr(q), _lib.ptr(scale))
    _lib.launch("quantize_fp8", x, *args)
    return q, scale


@_quantize_fp8_op.register_fake
def _(x, fmt, granularity, block_size, scale_max, backend):
    q = torch.empty(x.shape, dtype=_FP8_DTYPE[fmt], device=x.device)
    return q, x.new_empty(scale_shape(x.shape, granularity, block_size), dtype=torch.float32)


def _check_scale_max(scale_max: object, fmt: str) -> float:
    if scale_max is None:
        return ref.FP8[fmt][0].max_value
    if isinstance(scale_max, bool) or not isinstance(scale_max, (int, float)):
        raise TypeError(f"scale_max must be a float or None, got {type(scale_max).__name__}")
    if not (math.isfinite(scale_max) and scale_max > 0):
        raise ValueError(f"scale_max must be a finite positive number, got {scale_max}")
    return float(scale_max)


def quantize_fp8(
    x: torch.Tensor,
    fmt: str = "e4m3",
    granularity: str = "per_channel",
    block_size: int = 128,
    scale_max: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 quantization ``q = encode_rne_sat(float32(x) / scale)``, ``scale = amax(|x|) / scale_max``.

    x: [..., N, D] float32/float16/bfloat16, contiguous. ``granularity``: "per_channel" (scale
    [..., D], amax over the N tokens: SageAttention's V), "per_block" (scale [..., ceil(N /
    block_size)], blocks of tokens along dim -2 over all D), "per_tensor" (scale []).
    ``scale_max`` defaults to the format max (448 for e4m3, 57344 for e5m2; SageAttention2++ uses
    2.25). Returns (q as torch.float8_e4m3fn / float8_e5m2, float32 scale). An all-zero group has
    scale 0 and q = 0. Non-finite input: a NaN makes its group's scale NaN and its q NaN (0x7F); an
    inf makes the scale inf, the finite values of the group 0 and the inf NaN.
    Cost: ~2 flops/element, reads x twice (amax pass + encode pass), writes 1 byte/element.
    """
    _validate.check_tensor("x", x, dtypes=tuple(_DTYPE_CODE), min_ndim=2, contiguous=True)
    _validate.check_choice("fmt", fmt, FORMATS)
    _validate.check_choice("granularity", granularity, GRANULARITIES)
    _validate.check_int("block_size", block_size, minimum=1)
    smax = _check_scale_max(scale_max, fmt)
    be = _backend.resolve_backend(_OP, backend, x.device)
    return torch.ops.shared_kernels.quantize_fp8(x, fmt, granularity, block_size, smax, be)


def dequantize_fp8(
    q: torch.Tensor,
    scale: torch.Tensor,
    granularity: str = "per_channel",
    block_size: int = 128,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``float32(q) * scale`` broadcast per group (the inverse of :func:`quantize_fp8`), cast to
    ``out_dtype``. PyTorch only."""
    _validate.check_tensor("q", q, dtypes=tuple(_FP8_DTYPE.values()), min_ndim=2)
    _validate.check_choice("granularity", granularity, GRANULARITIES)
    _validate.check_int("block_size", block_size, minimum=1)
    _validate.check_tensor("scale", scale, dtypes=(torch.float32,), device=q.device)
    want = scale_shape(q.shape, granularity, block_size)
    if tuple(scale.shape) != want:
        raise ValueError(
            f"scale has shape {tuple(scale.shape)}; {granularity} of q {tuple(q.shape)} needs {want}"
        )
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    return ref.dequantize_fp8(q, scale, granularity, block_size, out_dtype)
