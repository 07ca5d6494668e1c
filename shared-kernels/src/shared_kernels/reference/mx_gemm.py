"""MX GEMM reference (plain PyTorch): dequantize both operands exactly, multiply in float32.

    out[m, n] = sum_k (a[m, k] * 2^(sa[m, k // 32] - 127)) * (b[n, k] * 2^(sb[n, k // 32] - 127))

The oracle of the CUTLASS sm100a block-scaled GEMM (``ops/mx_gemm.py``) and its any-device fallback.
"""

from __future__ import annotations

import torch

from .microscaling import dequantize_mx


def mx_gemm(
    a_data: torch.Tensor,
    a_scales: torch.Tensor,
    b_data: torch.Tensor,
    b_scales: torch.Tensor,
    fmt: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """A [M, K] · B [N, K]ᵀ for operands blocked along K (axis -1); float32 accumulation."""
    a = dequantize_mx(a_data, a_scales, fmt, -1)
    b = dequantize_mx(b_data, b_scales, fmt, -1)
    return (a @ b.T).to(out_dtype)
