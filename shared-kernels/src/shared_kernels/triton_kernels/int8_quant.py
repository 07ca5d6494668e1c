"""Triton INT8 per-block quantizer (SageAttention's Q/K quantizer): one program per token block.

The per-channel mean (``subtract_mean=True``) is computed before the kernel by the PyTorch
reference (float64 accumulation) and passed in. Division is ``tl.div_rn`` (IEEE round to nearest),
so the result matches the reference bit for bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def int8_quant_kernel(
    x_ptr,
    mean_ptr,
    q_ptr,
    scale_ptr,
    N,
    D,
    NB,
    BS,
    multiplier,
    HAS_MEAN: tl.constexpr,
    CHUNK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // NB).to(tl.int64)
    k = pid % NB
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    if HAS_MEAN:
        mu = tl.load(mean_ptr + b * D + cols, mask=cmask, other=0.0)
    row0 = k * BS
    rows_here = tl.minimum(BS, N - row0)
    # pass 1: max |y| over the block, with inf/NaN counted as +inf (=> scale NaN)
    amax = tl.zeros([CHUNK_N, BLOCK_D], dtype=tl.float32)
    for r0 in range(0, rows_here, CHUNK_N):
        r = r0 + tl.arange(0, CHUNK_N)
        m = (r < rows_here)[:, None] & cmask[None, :]
        offs = (b * N + row0 + r)[:, None] * D + cols[None, :]
        y = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_MEAN:
            y = y - mu[None, :]
        y = y * multiplier
        a = tl.where(m, tl.abs(y), 0.0)
        amax = tl.maximum(amax, tl.where(a <= FLT_MAX, a, float("inf")))
    block_amax = tl.max(tl.max(amax, axis=1), axis=0)
    scale = tl.where(block_amax <= FLT_MAX, tl.div_rn(block_amax, 127.0), float("nan"))
    tl.store(scale_ptr + pid, scale)
    ok = scale > 0.0
    safe = tl.where(ok, scale, 1.0)
    # pass 2: quantize, round half away from zero
    for r0 in range(0, rows_here, CHUNK_N):
        r = r0 + tl.arange(0, CHUNK_N)
        m = (r < rows_here)[:, None] & cmask[None, :]
        offs = (b * N + row0 + r)[:, None] * D + cols[None, :]
        y = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_MEAN:
            y = y - mu[None, :]
        y = y * multiplier
        v = tl.div_rn(y, safe) + tl.where(y < 0.0, -0.5, 0.5)
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        v = tl.where(ok, v, 0.0)
        tl.store(q_ptr + offs, v.to(tl.int32).to(tl.int8), mask=m)


def launch(x, mean, q, scale, B: int, N: int, D: int, block_size: int, multiplier: float) -> None:
    """x, q: contiguous [B, N, D]; scale: [B * ceil(N / block_size)]; mean: [B, D] float32 or None."""
    nb = triton.cdiv(N, block_size)
    block_d = triton.next_power_of_2(D)
    chunk = max(1, min(triton.next_power_of_2(block_size), 4096 // block_d))
    grid = (B * nb,)
    int8_quant_kernel[grid](
        x,
        mean if mean is not None else scale,
        q,
        scale,
        N,
        D,
        nb,
        block_size,
        float(multiplier),
        HAS_MEAN=mean is not None,
        CHUNK_N=chunk,
        BLOCK_D=block_d,
        num_warps=4,
    )
