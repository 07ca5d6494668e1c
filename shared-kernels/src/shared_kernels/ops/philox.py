"""Counter-based random bits (Philox4x32-10) with the element convention of the stochastic-rounding
kernels: ``philox_random_bits(n, seed=s, offset=o)[i]`` are the bits that element ``o + i`` of a
stochastically rounded tensor uses (see ``reference/philox.py``).

Not a ``torch.library`` custom op: it takes no tensor input (nothing for the dispatcher to key on);
it is a utility for tests and for callers that want to reproduce the kernels' random draws.
"""

from __future__ import annotations

import torch

from .. import _alloc, _backend, _lib, _validate
from ..reference import philox as ref

__all__ = ["philox_random_bits"]

_backend.register_op("philox_random_bits", backends=("cpu", "torch"), summary="Philox4x32-10 random bits")

_U64 = 1 << 64


def check_seed_offset(seed: object, offset: object) -> tuple[int, int]:
    """Validate ``seed`` (0 <= seed < 2^64) and ``offset`` (0 <= offset < 2^62)."""
    _validate.check_int("seed", seed, minimum=0)
    _validate.check_int("offset", offset, minimum=0)
    if seed >= _U64:
        raise ValueError(f"seed must be < 2^64, got {seed}")
    if offset >= 1 << 62:
        raise ValueError(f"offset must be < 2^62, got {offset}")
    return seed, offset


def seed_as_int64(seed: int) -> int:
    """The 64-bit seed as a two's-complement int64 (how it crosses the custom-op schema)."""
    return seed - _U64 if seed >= 1 << 63 else seed


def philox_random_bits(
    n: int, *, seed: int = 0, offset: int = 0, device: torch.device | str = "cpu", backend: str = "auto"
) -> torch.Tensor:
    """32 random bits (int64 values in [0, 2^32)) of elements ``offset .. offset + n - 1``.

    Bits of element g: word g % 4 of Philox4x32-10(counter=(lo32(g // 4), hi32(g // 4), 0, 0),
    key=(lo32(seed), hi32(seed))). 10 rounds x 2 32-bit multiplies per 4 elements; writes 8n bytes.
    """
    _validate.check_int("n", n, minimum=0)
    seed, offset = check_seed_offset(seed, offset)
    device = torch.device(device)
    if n + offset >= 1 << 62:
        raise ValueError(f"offset + n must be < 2^62, got {offset + n}")
    be = _backend.resolve_backend("philox_random_bits", backend, device)
    if be == "torch":
        return ref.philox_bits(n, seed, offset, device)
    out = _alloc.new_empty((n,), torch.int64, device)
    if n:
        _lib.native().philox_bits_cpu(seed_as_int64(seed), offset, n, _lib.ptr(out))
    return out
