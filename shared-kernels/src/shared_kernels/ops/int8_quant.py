"""INT8 per-block quantization (SageAttention's Q/K quantizer) as a torch custom op."""

from __future__ import annotations

import math

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec, TritonKernelSpec
from ..reference import int8_quant as _ref

__all__ = ["quantize_int8_per_block"]

_OP = "quantize_int8_per_block"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_backend.register_op(
    _OP,
    backends=("torch", "cpu", "cuda", "triton"),
    summary="INT8 per-block quantization of [..., N, D] with optional per-channel mean subtraction",
)


def _shapes(x: torch.Tensor, block_size: int) -> tuple[int, int, int, int]:
    n, d = x.shape[-2], x.shape[-1]
    b = math.prod(x.shape[:-2])
    return b, n, d, -(-n // block_size)


def _alloc_outputs(x: torch.Tensor, block_size: int, subtract_mean: bool):
    _, _, d, nb = _shapes(x, block_size)
    lead = tuple(x.shape[:-2])
    q = _alloc.new_empty(x.shape, torch.int8, x.device)
    scale = _alloc.new_empty((*lead, nb), torch.float32, x.device)
    mean = _alloc.new_empty((*lead, 1, d) if subtract_mean else (0,), torch.float32, x.device)
    return q, scale, mean


def _run_native(
    x: torch.Tensor, block_size: int, subtract_mean: bool, multiplier: float, force_scalar: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compiled CPU or CUDA kernel for ``x``'s device; ``force_scalar`` skips the CPU's AVX-512
    path (tests compare both)."""
    q, scale, mean = _alloc_outputs(x, block_size, subtract_mean)
    b, n, d, _ = _shapes(x, block_size)
    if x.numel():
        _lib.launch(
            "quantize_int8_per_block", x,
            _lib.ptr(x), _lib.ptr(q), _lib.ptr(scale), _lib.ptr(mean) if subtract_mean else 0,
            b, n, d, block_size, _DTYPE_CODE[x.dtype], multiplier,
            force_scalar=force_scalar,
        )  # fmt: skip
    return q, scale, mean


def _run_triton(x, block_size, subtract_mean, multiplier):
    from ..triton_kernels import int8_quant as tk

    q, scale, _ = _alloc_outputs(x, block_size, False)
    b, n, d, _ = _shapes(x, block_size)
    # The mean is computed by the PyTorch reference (float64 accumulation), then passed in.
    mean = _ref.channel_mean(x) if subtract_mean else x.new_empty((0,), dtype=torch.float32)
    if x.numel():
        tk.launch(x, mean if subtract_mean else None, q, scale, b, n, d, block_size, multiplier)
    return q, scale, mean


@torch.library.custom_op("shared_kernels::quantize_int8_per_block", mutates_args=())
def _quantize_int8_per_block_op(
    x: torch.Tensor, block_size: int, subtract_mean: bool, multiplier: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend in ("cpu", "cuda"):
        return _run_native(x, block_size, subtract_mean, multiplier)
    if backend == "triton":
        return _run_triton(x, block_size, subtract_mean, multiplier)
    q, scale, mean = _ref.quantize_int8_per_block(
        x, block_size, subtract_mean=subtract_mean, multiplier=multiplier
    )
    return q, scale, mean if mean is not None else x.new_empty((0,), dtype=torch.float32)


@_quantize_int8_per_block_op.register_fake
def _(x, block_size, subtract_mean, multiplier, backend):
    lead = tuple(x.shape[:-2])
    nb = -(-x.shape[-2] // block_size)
    q = x.new_empty(x.shape, dtype=torch.int8)
    scale = x.new_empty((*lead, nb), dtype=torch.float32)
    mean = x.new_empty((*lead, 1, x.shape[-1]) if subtract_mean else (0,), dtype=torch.float32)
    return q, scale, mean


def quantize_int8_per_block(
    x: torch.Tensor,
    block_size: int = 128,
    *,
    subtract_mean: bool = False,
    multiplier: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """INT8 per-block quantization of ``x [..., N, D]`` (SageAttention's Q/K quantizer).

    Blocks are ``block_size`` consecutive tokens along dim -2 per leading index (the last may be
    short). ``y = (float32(x) - mean) * multiplier`` where ``mean`` is the per-channel mean over all
    N tokens (float64 accumulation, rounded to float32) if ``subtract_mean`` else absent; per block
    ``scale = max|y| / 127`` and ``q = clamp(trunc(y / scale + copysign(0.5, y)), -127, 127)``.
    A block with max|y| = 0 gives scale 0 and q 0; a block holding inf/NaN gives scale NaN and q 0.
    ``multiplier`` folds e.g. ``sm_scale * log2(e)`` into Q.

    Returns ``(q int8 [..., N, D], scale float32 [..., ceil(N / block_size)], mean)``, ``mean``
    float32 ``[..., 1, D]`` or None. Cost: ~8 FLOPs per element; bytes moved ``2·|x| + numel + 4·#blocks``
    (``x`` is read twice, once more for the mean).
    """
    _validate.check_tensor("x", x, dtypes=_DTYPES, min_ndim=2, contiguous=True)
    block_size = _validate.check_int("block_size", block_size, minimum=1)
    subtract_mean = _validate.check_bool("subtract_mean", subtract_mean)
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float, torch.SymFloat)):
        raise TypeError(f"multiplier must be a float, got {type(multiplier).__name__}")
    if not torch.compiler.is_compiling():  # traced with dynamic shapes it may be a symbol: no checks
        multiplier = float(multiplier)
        if not math.isfinite(multiplier):
            raise ValueError(f"multiplier must be finite, got {multiplier}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"x must have at least one token (dim -2) and one channel (dim -1), got shape {tuple(x.shape)}"
        )
    resolved = _backend.resolve_backend(_OP, backend, x.device)
    q, scale, mean = torch.ops.shared_kernels.quantize_int8_per_block(
        x, block_size, subtract_mean, multiplier, resolved
    )
    return q, scale, (mean if subtract_mean else None)


def _triton_kernel():
    from ..triton_kernels.int8_quant import int8_quant_kernel

    return int8_quant_kernel


TRITON_SPECS = [
    TritonKernelSpec(
        name="int8_quant_per_block_fp16_mean",
        fn=_triton_kernel,
        signature={
            "x_ptr": "*fp16",
            "mean_ptr": "*fp32",
            "q_ptr": "*i8",
            "scale_ptr": "*fp32",
            "N": "i32",
            "D": "i32",
            "NB": "i32",
            "BS": "i32",
            "multiplier": "fp32",
        },
        constexprs={"HAS_MEAN": True, "CHUNK_N": 32, "BLOCK_D": 128},
        expect={80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)},
        divisible_by_16=("x_ptr", "mean_ptr", "q_ptr", "scale_ptr", "D"),
        num_warps=4,
        num_stages=1,
    ),
]

CUDA_SPECS = [
    CudaKernelSpec(
        name="int8_channel_mean",
        match="sk_int8_channel_mean_kernel",
        expect={80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)},
    ),
    CudaKernelSpec(
        name="int8_quant_block",
        match="sk_int8_quant_block_kernel",
        expect={80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)},
    ),
]
