"""Triton Walsh-Hadamard transform as a matrix product: each program takes BLOCK_M groups (rows of
the ``[G, n]`` view of x) and computes ``Y = c · X @ M`` (K in chunks of BLOCK_K) with ``M = diag(s) · H_n`` (entries ±1,
exact in fp16/bf16) on tensor cores: fp16/bf16 operands with fp32 accumulation, fp32 with
``input_precision="ieee"``. Under the interpreter bf16 operands are upcast to fp32 (its bf16
``tl.dot`` is wrong); the upcast is exact.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def hadamard_dot_kernel(
    x_ptr,
    m_ptr,
    y_ptr,
    G,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    N: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, N)
    offs = rows[:, None] * N + cols[None, :]
    rmask = (rows < G)[:, None]
    acc = tl.zeros([BLOCK_M, N], dtype=tl.float32)
    for k0 in tl.static_range(0, N, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * N + ks[None, :], mask=rmask, other=0.0)
        m = tl.load(m_ptr + ks[:, None] * N + cols[None, :])
        if UPCAST:
            x = x.to(tl.float32)
            m = m.to(tl.float32)
        if IEEE:
            acc = tl.dot(x, m, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, m, acc)
    acc = acc * scale
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=rmask)


def launch(x, m, y, groups: int, n: int, scale: float, interpreter: bool) -> None:
    """x, y: contiguous with ``groups * n`` elements; m: ``[n, n]`` ±1 in x's dtype."""
    import torch

    fp32 = x.dtype == torch.float32
    block_m = 32 if fp32 else 64  # fp32 runs on CUDA cores (ieee): smaller tiles keep it spill-free
    block_k = 16 if fp32 else n
    grid = (triton.cdiv(groups, block_m),)
    hadamard_dot_kernel[grid](
        x,
        m,
        y,
        groups,
        float(scale),
        BLOCK_M=block_m,
        BLOCK_K=block_k,
        N=n,
        IEEE=fp32,
        UPCAST=interpreter and x.dtype == torch.bfloat16,
        num_warps=4,
    )
