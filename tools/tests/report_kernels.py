"""Kernel specs used by the tests of tools/kernel_report.py (and usable with --spec-module)."""

from __future__ import annotations

import triton
import triton.language as tl
from shared_kernels.kernel_specs import CudaKernelSpec, TritonKernelSpec


@triton.jit
def matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_bk,
    stride_cm,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    ACC_INT: tl.constexpr,
):
    """C = A @ B with unit inner strides; fp32 (or int32 for int8 inputs) accumulation."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    if ACC_INT:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * stride_am + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * stride_bk + rn[None, :])
        if ACC_INT:
            acc += tl.dot(a, b, out_dtype=tl.int32)
        else:
            acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc)


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


def _mm(name: str, a: str, c: str, acc_int: bool, expect, **kw) -> TritonKernelSpec:
    ints = ("M", "N", "K", "stride_am", "stride_bk", "stride_cm")
    return TritonKernelSpec(
        name=name,
        fn=lambda: matmul_kernel,
        signature={"a_ptr": a, "b_ptr": a, "c_ptr": c, **dict.fromkeys(ints, "i32")},
        constexprs={"BM": 128, "BN": 128, "BK": 64, "ACC_INT": acc_int},
        divisible_by_16=("a_ptr", "b_ptr", "c_ptr", *ints),
        expect=expect,
        **kw,
    )


TENSOR_CORES = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}

TRITON_KERNELS = [
    _mm("test_fp16_matmul", "*fp16", "*fp32", False, TENSOR_CORES, num_warps=8),
    _mm("test_int8_matmul", "*i8", "*i32", True, TENSOR_CORES, num_warps=8),
    TritonKernelSpec(
        name="test_add",
        fn=lambda: add_kernel,
        signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"},
        constexprs={"BLOCK": 1024},
        divisible_by_16=("x_ptr", "y_ptr", "out_ptr"),
        expect=dict.fromkeys((80, 89, 90, 100), ("none",)),
    ),
]

# For the CUDA fixture tools/tests/data/demo_kernels.cu (compiled by the tests with nvcc).
CUDA_KERNELS = [
    CudaKernelSpec("demo_wmma", match="wmma_fp16_kernel", expect={80: ("mma",), 90: ("mma",)}),
    CudaKernelSpec("demo_scale", match="demo::scale_kernel", expect={80: ("none",), 90: ("none",)}),
]
