"""Walsh-Hadamard transform over groups of the last dimension (reference, plain PyTorch).

For each group ``x_g`` of ``n = block_size`` consecutive elements of the last dimension,
``y_g = c · H_n · (s ⊙ x_g)`` with the Sylvester (natural-order) Hadamard matrix
``H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]``, optional ±1 signs ``s`` and
``c = float32(1 / sqrt(n))`` when normalized (then the transform is orthonormal, and its own inverse
without signs). Computed in float32 with the butterfly stages ``h = 1, 2, 4, …, n/2`` — each maps a
pair ``(x[j], x[j + h])`` to ``(a + b, a - b)`` — in the order the CPU/CUDA kernels use, so they
agree bit for bit; the result is rounded to ``x.dtype``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hadamard_matrix", "hadamard_transform"]


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Sylvester Hadamard matrix ``H_n`` (entries ±1), built by the recursion."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def hadamard_transform(
    x: torch.Tensor, block_size: int = 128, *, signs: torch.Tensor | None = None, normalize: bool = True
) -> torch.Tensor:
    """Reference transform of ``x [..., D]`` in groups of ``block_size`` (D divisible by it)."""
    n = block_size
    y = x.float().reshape(-1, n)
    if signs is not None:
        y = y * signs.to(device=x.device, dtype=torch.float32)
    h = 1
    while h < n:
        pairs = y.reshape(-1, n // (2 * h), 2, h)
        a, b = pairs[:, :, 0], pairs[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2).reshape(-1, n)
        h *= 2
    if normalize:
        y = y * torch.tensor(1.0 / math.sqrt(n), dtype=torch.float32, device=x.device)
    return y.reshape(x.shape).to(x.dtype)
