"""INT8 GEMM with per-block scales (SageAttention's S = Q·Kᵀ on INT8 operands) as a torch custom op."""

from __future__ import annotations

import math

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec, TritonKernelSpec
from ..reference import int8_gemm as _ref

__all__ = ["int8_gemm"]

_OP = "int8_gemm"
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MAX_K = 131071  # K * 128 * 128 <= 2^31 - 1: int32 accumulation exact for every int8 input

_backend.register_op(
    _OP,
    backends=("torch", "cpu", "cuda", "triton"),
    summary="INT8 GEMM a[..., M, K] · b[..., N, K]ᵀ with per-block float32 scales of a and b",
)


def _sizes(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int, int]:
    return math.prod(a.shape[:-2]), a.shape[-2], b.shape[-2], a.shape[-1]


def _new_out(a, b, out_dtype):
    return _alloc.new_empty((*a.shape[:-1], b.shape[-2]), out_dtype, a.device)


def _run_native(
    a, b, a_scale, b_scale, block_m, block_n, out_dtype, force_scalar: bool = False
) -> torch.Tensor:
    """The compiled CPU or CUDA kernel for the operands' device; ``force_scalar`` skips the CPU's AVX-512
    VNNI path (tests compare both)."""
    out = _new_out(a, b, out_dtype)
    bsz, m, n, k = _sizes(a, b)
    if out.numel():
        _lib.launch(
            "int8_gemm", a,
            _lib.ptr(a), _lib.ptr(b), _lib.ptr(a_scale), _lib.ptr(b_scale), _lib.ptr(out),
            bsz, m, n, k, block_m, block_n, _DTYPE_CODE[out_dtype],
            force_scalar=force_scalar,
        )  # fmt: skip
    return out


def _run_triton(a, b, a_scale, b_scale, block_m, block_n, out_dtype) -> torch.Tensor:
    from ..triton_kernels import int8_gemm as tk

    out = _new_out(a, b, out_dtype)
    bsz, m, n, k = _sizes(a, b)
    if out.numel():
        tk.launch(a, b, a_scale, b_scale, out, bsz, m, n, k, block_m, block_n)
    return out


@torch.library.custom_op("shared_kernels::int8_gemm", mutates_args=())
def _int8_gemm_op(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    block_m: int,
    block_n: int,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    if backend in ("cpu", "cuda"):
        return _run_native(a, b, a_scale, b_scale, block_m, block_n, out_dtype)
    if backend == "triton":
        return _run_triton(a, b, a_scale, b_scale, block_m, block_n, out_dtype)
    return _ref.int8_gemm(a, b, a_scale, b_scale, block_m, block_n, out_dtype)


@_int8_gemm_op.register_fake
def _(a, b, a_scale, b_scale, block_m, block_n, out_dtype, backend):
    return a.new_empty((*a.shape[:-1], b.shape[-2]), dtype=out_dtype)


def int8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    block_m: int = 128,
    block_n: int = 64,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """INT8 GEMM with per-block scales: SageAttention's ``S = Q·Kᵀ`` on INT8 operands.

    ``a`` int8 ``[..., M, K]`` and ``b`` int8 ``[..., N, K]`` (both row-major over K, ``b`` stored
    like SageAttention's K) with equal leading dims; ``a_scale`` float32 ``[..., ceil(M / block_m)]``,
    ``b_scale`` float32 ``[..., ceil(N / block_n)]`` (exactly what ``quantize_int8_per_block``
    returns; defaults are SageAttention's BLKQ = 128 and BLKK = 64)::

        out[..., i, j] = (float32(sum_k int32(a[i, k]) * int32(b[j, k])) * a_scale[i // block_m])
                         * b_scale[j // block_n]

    rounded to ``out_dtype`` (float32, float16 or bfloat16). The int32 sum is exact for
    ``K <= 131071`` (the whole int8 range, -128 included), so every backend matches bit for bit;
    non-finite scales propagate (NaN/inf) like the formula says. Returns ``[..., M, N]``.
    Cost: ``2·B·M·N·K`` integer ops; bytes moved ``B·(M·K + N·K + M·N·itemsize(out_dtype))``.
    """
    _validate.check_tensor("a", a, dtypes=(torch.int8,), min_ndim=2, contiguous=True)
    _validate.check_tensor("b", b, dtypes=(torch.int8,), min_ndim=2, contiguous=True, device=a.device)
    _validate.check_tensor("a_scale", a_scale, dtypes=(torch.float32,), contiguous=True, device=a.device)
    _validate.check_tensor("b_scale", b_scale, dtypes=(torch.float32,), contiguous=True, device=a.device)
    block_m = _validate.check_int("block_m", block_m, minimum=1)
    block_n = _validate.check_int("block_n", block_n, minimum=1)
    if not isinstance(out_dtype, torch.dtype):
        raise TypeError(f"out_dtype must be a torch.dtype, got {type(out_dtype).__name__}")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype} is not supported; supported: float32, float16, bfloat16")
    lead, (m, k) = tuple(a.shape[:-2]), a.shape[-2:]
    if tuple(b.shape[:-2]) != lead or b.dim() != a.dim():
        raise ValueError(
            f"b must have the leading dims of a {lead} (no broadcasting), got b of shape {tuple(b.shape)}"
        )
    n = b.shape[-2]
    if b.shape[-1] != k:
        raise ValueError(f"b must have K = {k} columns like a (b is [..., N, K]), got shape {tuple(b.shape)}")
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"a and b need M, N, K >= 1, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if k > MAX_K:
        raise ValueError(f"a and b have K = {k}; at most {MAX_K} keeps the int32 accumulation exact")
    for name, s, rows, blk in (("a_scale", a_scale, m, block_m), ("b_scale", b_scale, n, block_n)):
        want = (*lead, -(-rows // blk))
        if tuple(s.shape) != want:
            raise ValueError(
                f"{name} must have shape {want} (one scale per {blk} rows), got {tuple(s.shape)}"
            )
    resolved = _backend.resolve_backend(_OP, backend, a.device)
    return torch.ops.shared_kernels.int8_gemm(a, b, a_scale, b_scale, block_m, block_n, out_dtype, resolved)


def _triton_kernel():
    from ..triton_kernels.int8_gemm import int8_gemm_kernel

    return int8_gemm_kernel


TRITON_SPECS = [
    TritonKernelSpec(
        name="int8_gemm_fp16_out",
        fn=_triton_kernel,
        signature={
            "a_ptr": "*i8",
            "b_ptr": "*i8",
            "sa_ptr": "*fp32",
            "sb_ptr": "*fp32",
            "c_ptr": "*fp16",
            "M": "i32",
            "N": "i32",
            "K": "i32",
            "NBM": "i32",
            "NBN": "i32",
            "BLK_M": "i32",
            "BLK_N": "i32",
        },
        constexprs={"BM": 128, "BN": 64, "BK": 64},
        expect={80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)},
        divisible_by_16=("a_ptr", "b_ptr", "sa_ptr", "sb_ptr", "c_ptr", "K"),
        num_warps=4,
        num_stages=3,
    ),
]

CUDA_SPECS = [
    CudaKernelSpec(
        name="int8_gemm_mma",
        match="sk_int8_gemm_kernel",
        expect={80: ("mma",), 89: ("mma",), 90: ("mma",), 100: ("mma",)},
    ),
]
