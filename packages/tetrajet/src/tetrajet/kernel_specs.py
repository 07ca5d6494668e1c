"""Kernels of ``tetrajet`` for ``tools/kernel_report`` (AOT-compiled for sm80/89/90a/100a).

The ``tl.dot_scaled`` MX GEMM (``tetrajet.gemm.triton_scaled``) must run on tensor cores on every
arch. On sm100a Triton lowers it to the Blackwell block-scaled MMA: PTX
``tcgen05.mma.cta_group::1.kind::mxf4.block_scale`` (MXFP4 x MXFP4) or ``kind::mxf8f6f4.block_scale``
(MXFP8 and mixed FP8/FP4), SASS ``UTCOMMA`` / ``UTCQMMA`` with the two scale operands in tensor memory.
On sm80/89/90a there is no block-scaled MMA: Triton decodes the operands and applies the scales in
registers (bf16) and multiplies with ``mma.sync`` (HMMA, sm80/89) or ``wgmma`` (HGMMA, sm90a).
Shapes are those of a real launch (``tile_config``), bf16 output, K-major (unit k stride) operands.

The CUTLASS sm100a block-scaled GEMM that ``"cutlass_sm100"`` calls lives in shared-kernels
(``shared_kernels.ops.mx_gemm.CUDA_SPECS``).
"""

from __future__ import annotations

from shared_kernels.kernel_specs import TritonKernelSpec

_TC = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}

# PTX opcode prefix that proves the block-scaled form on sm100a, per (A format, B format).
BLOCK_SCALED_PTX = {
    ("e2m1", "e2m1"): "tcgen05.mma.cta_group::1.kind::mxf4.block_scale",
    ("e4m3", "e4m3"): "tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale",
    ("e4m3", "e2m1"): "tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale",
}


def _mx_matmul():
    from .gemm.triton_scaled import jit_kernel

    return jit_kernel()


_SIGNATURE = {
    "a_ptr": "*u8",
    "sa_ptr": "*u8",
    "b_ptr": "*u8",
    "sb_ptr": "*u8",
    "c_ptr": "*bf16",
    "M": "i32",
    "N": "i32",
    "K": "i32",
    "stride_am": "i32",
    "stride_ak": "constexpr",
    "stride_sam": "i32",
    "stride_sak": "constexpr",
    "stride_bn": "i32",
    "stride_bk": "constexpr",
    "stride_sbn": "i32",
    "stride_sbk": "constexpr",
    "stride_cm": "i32",
    "stride_cn": "constexpr",
}


def _spec(a_fmt: str, b_fmt: str, tile: tuple[int, int, int], warps: int, archs: tuple[int, ...]):
    sig = {k: v for k, v in _SIGNATURE.items() if v != "constexpr"}
    unit = {k: 1 for k, v in _SIGNATURE.items() if v == "constexpr"}  # K-major operands, row-major C
    bm, bn, bk = tile
    return TritonKernelSpec(
        name=f"tetrajet_mx_matmul_{a_fmt}x{b_fmt}_bf16_{bm}x{bn}x{bk}_w{warps}",
        fn=_mx_matmul,
        signature=sig,
        constexprs={**unit, "A_FMT": a_fmt, "B_FMT": b_fmt, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
        expect={a: _TC[a] for a in archs},
        divisible_by_16=(
            "a_ptr",
            "sa_ptr",
            "b_ptr",
            "sb_ptr",
            "c_ptr",
            "K",
            "stride_am",
            "stride_bn",
            "stride_cm",
        ),
        num_warps=warps,
        num_stages=3,
        archs=archs,
    )


# The tiles ``tetrajet.gemm.triton_scaled.tile_config`` launches: 128x128x128 / 4 warps on sm100a,
# 128x128x64 / 8 warps before Blackwell. Triton has no e4m3 on sm80 (that arch is skipped for FP8).
TRITON_KERNELS = [_spec(a, b, (128, 128, 128), 4, (100,)) for a, b in BLOCK_SCALED_PTX] + [
    _spec(a, b, (128, 128, 64), 8, (80, 89, 90) if a == b == "e2m1" else (89, 90))
    for a, b in BLOCK_SCALED_PTX
]
CUDA_KERNELS: list = []
