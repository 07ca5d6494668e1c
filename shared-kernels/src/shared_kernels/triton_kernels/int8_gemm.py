"""Triton INT8 GEMM with per-block scales (SageAttention's S = Q·Kᵀ): one program per output tile.

``tl.dot`` int8 × int8 → int32 (exact), then the epilogue ``(float32(acc) * a_scale) * b_scale``
(round-to-nearest int32 → float32 conversion, two float32 multiplications in this order), so the
result matches the reference bit for bit. ``b`` is ``[N, K]`` row-major: loaded as a ``[BK, BN]``
K-major tile, the layout tensor cores want for the second operand.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def int8_gemm_kernel(
    a_ptr,
    b_ptr,
    sa_ptr,
    sb_ptr,
    c_ptr,
    M,
    N,
    K,
    NBM,
    NBN,
    BLK_M,
    BLK_N,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    bat = tl.program_id(2).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_base = a_ptr + bat * M * K
    b_base = b_ptr + bat * N * K
    mmask = rm < M
    nmask = rn < N
    acc = tl.zeros([BM, BN], dtype=tl.int32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        kmask = kk < K
        a = tl.load(a_base + rm[:, None] * K + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0)
        b = tl.load(b_base + rn[None, :] * K + kk[:, None], mask=kmask[:, None] & nmask[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    sa = tl.load(sa_ptr + bat * NBM + rm // BLK_M, mask=mmask, other=0.0)
    sb = tl.load(sb_ptr + bat * NBN + rn // BLK_N, mask=nmask, other=0.0)
    c = (acc.to(tl.float32) * sa[:, None]) * sb[None, :]
    offs = bat * M * N + rm[:, None] * N + rn[None, :]
    tl.store(c_ptr + offs, c.to(c_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def launch(a, b, a_scale, b_scale, out, B: int, M: int, N: int, K: int, block_m: int, block_n: int) -> None:
    """a [B, M, K], b [B, N, K] int8, out [B, M, N]: all contiguous; scales [B, ceil(rows / block)]."""
    interp = not a.is_cuda
    # The interpreter's cost is per program and per op: one large tile there; 128x64x64 on a GPU.
    bm = max(16, min(128, triton.next_power_of_2(M))) if interp else 128
    bn = max(16, min(128, triton.next_power_of_2(N))) if interp else 64
    bk = max(16, min(128, triton.next_power_of_2(K))) if interp else 64
    grid = (triton.cdiv(N, bn), triton.cdiv(M, bm), B)
    # The interpreter's fp32 -> bf16 cast truncates instead of rounding to nearest even (a GPU's
    # cvt.rn.bf16.f32 rounds): there, write float32 and let torch round.
    dst = out.new_empty(out.shape, dtype=torch.float32) if interp and out.dtype == torch.bfloat16 else out
    int8_gemm_kernel[grid](
        a,
        b,
        a_scale,
        b_scale,
        dst,
        M,
        N,
        K,
        triton.cdiv(M, block_m),
        triton.cdiv(N, block_n),
        block_m,
        block_n,
        BM=bm,
        BN=bn,
        BK=bk,
        num_warps=4,
        num_stages=1 if interp else 3,
    )
    if dst is not out:
        out.copy_(dst)
