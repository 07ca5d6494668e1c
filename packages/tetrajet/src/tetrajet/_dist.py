"""Helpers for weights that FSDP2 (``fully_shard``) stores as sharded DTensors.

Q-EMA, the oscillation tracker, Q-Ramping and OsciReset work on the full (logical) weight so that
every rank computes the same statistics; these helpers gather a sharded weight and write a full
value back into the shards. Plain tensors (single process, DDP) pass through untouched.
"""

from __future__ import annotations

import torch

__all__ = ["assign_full", "full_tensor"]


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - distributed not built
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The full logical value of ``t`` (detached). A DTensor is all-gathered: a collective, so every
    rank must call it at the same point."""
    t = t.detach()
    if _is_dtensor(t):
        return t.full_tensor()
    return t


@torch.no_grad()
def assign_full(p: torch.Tensor, value: torch.Tensor) -> None:
    """Write the full logical ``value`` into ``p`` (a parameter or a DTensor parameter)."""
    if _is_dtensor(p):
        from torch.distributed.tensor import distribute_tensor

        p.copy_(distribute_tensor(value.to(p.dtype), p.device_mesh, p.placements))
    else:
        p.copy_(value.to(p.dtype))
