"""Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) in plain
PyTorch int64 arithmetic (every 32-bit word held in an int64 and masked), the oracle of
``include/shared_kernels/philox.h``.

Element convention shared by every stochastic-rounding kernel: the 32 random bits of element
``g = offset + i`` are word ``g % 4`` of ``philox4x32_10(counter=(lo32(g // 4), hi32(g // 4), 0, 0),
key=(lo32(seed), hi32(seed)))``.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * b, computed without int64 overflow by
    splitting a into 16-bit halves."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    p_lo = b * a_lo  # < 2^48
    p_hi = b * a_hi  # < 2^48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # low 48 bits of the product plus a carry
    lo = t & MASK32
    hi = ((p_hi >> 16) + (t >> 32)) & MASK32
    return hi, lo


def philox4x32_10(counter: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    """Ten Philox rounds on four int64 tensors of 32-bit words with a 64-bit key (two words)."""
    c0, c1, c2, c3 = (c & MASK32 for c in counter)
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return [c0, c1, c2, c3]


def philox_bits(n: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """32 random bits (as int64 in [0, 2^32)) for elements ``offset .. offset + n - 1``."""
    g = torch.arange(n, dtype=torch.int64, device=device) + offset
    ctr = g >> 2
    zero = torch.zeros_like(ctr)
    words = philox4x32_10([ctr & MASK32, ctr >> 32, zero, zero], (seed & MASK32, (seed >> 32) & MASK32))
    stacked = torch.stack(words, dim=-1)
    return stacked.gather(-1, (g & 3).unsqueeze(-1)).squeeze(-1)
