"""Specs that must fail the kernel report: wgmma cannot exist on sm80, and a spilling tile."""

from __future__ import annotations

from report_kernels import matmul_kernel
from shared_kernels.kernel_specs import CudaKernelSpec, TritonKernelSpec

_INTS = ("M", "N", "K", "stride_am", "stride_bk", "stride_cm")

TRITON_KERNELS = [
    TritonKernelSpec(
        name="bad_wgmma_on_sm80",
        fn=lambda: matmul_kernel,
        signature={"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", **dict.fromkeys(_INTS, "i32")},
        constexprs={"BM": 128, "BN": 128, "BK": 64, "ACC_INT": False},
        divisible_by_16=("a_ptr", "b_ptr", "c_ptr", *_INTS),
        expect={80: ("wgmma",)},
        num_warps=8,
        archs=(80,),
    ),
    # A 256x256 fp32 accumulator over 4 warps needs 512 registers per thread: it must spill.
    TritonKernelSpec(
        name="bad_spilling_matmul",
        fn=lambda: matmul_kernel,
        signature={"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", **dict.fromkeys(_INTS, "i32")},
        constexprs={"BM": 256, "BN": 256, "BK": 32, "ACC_INT": False},
        expect={80: ("mma",)},
        num_warps=4,
        num_stages=2,
        archs=(80,),
    ),
]

CUDA_KERNELS = [CudaKernelSpec("demo_missing", match="no_such_kernel_anywhere", expect={80: ("mma",)})]
