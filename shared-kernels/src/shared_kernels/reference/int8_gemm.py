"""INT8 GEMM with per-block scales, SageAttention's ``S = Q·Kᵀ`` on INT8 operands (reference).

For ``a`` int8 ``[..., M, K]`` and ``b`` int8 ``[..., N, K]`` (both row-major over K, ``b`` stored
like SageAttention's K), float32 scales ``a_scale [..., ceil(M / block_m)]`` and
``b_scale [..., ceil(N / block_n)]``:

    acc[i, j] = sum_k int32(a[i, k]) * int32(b[j, k])
    out[i, j] = (float32(acc[i, j]) * a_scale[i // block_m]) * b_scale[j // block_n]

then rounded to ``out_dtype``. The integer sum is computed with a float64 matmul, exact because every
partial sum is an integer below 2^53; ``float32(acc)`` rounds to nearest even and the two scale
products are float32 multiplications in the order written, so every backend matches bit for bit.
"""

from __future__ import annotations

import torch

__all__ = ["expand_scale", "int8_gemm"]


def expand_scale(scale: torch.Tensor, block: int, length: int) -> torch.Tensor:
    """Per-block scales ``[..., ceil(length / block)]`` repeated to one per row: ``[..., length]``."""
    return scale.repeat_interleave(block, dim=-1)[..., :length]


def int8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    block_m: int = 128,
    block_n: int = 64,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(float32(a @ bᵀ) * a_scale[i // block_m]) * b_scale[j // block_n]`` as ``out_dtype``."""
    acc = torch.matmul(a.double(), b.double().transpose(-1, -2)).float()  # exact integers, then RNE
    sa = expand_scale(a_scale.float(), block_m, a.shape[-2]).unsqueeze(-1)
    sb = expand_scale(b_scale.float(), block_n, b.shape[-2]).unsqueeze(-2)
    return ((acc * sa) * sb).to(out_dtype)
