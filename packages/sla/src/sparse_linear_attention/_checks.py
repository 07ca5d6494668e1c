"""Input checks shared by the reference, the Triton wrappers and the module (clear errors that name
the argument, never a silent fix)."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x: object, *, ndim: int | None = None, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """``x`` must be a tensor with ``ndim`` dims and one of ``dtypes``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    return x


def check_qkv(q: object, k: object, v: object, *, names=("q", "k", "v")) -> tuple[int, int, int, int]:
    """Self-attention inputs ``[B, H, L, D]``: same shape, dtype and device; returns ``(B, H, L, D)``."""
    nq, nk, nv = names
    check_tensor(nq, q, ndim=4)
    check_tensor(nk, k, ndim=4)
    check_tensor(nv, v, ndim=4)
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"{nq}, {nk}, {nv} must all have the same shape [B, H, L, D] (self-attention), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"{nq}, {nk}, {nv} must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"{nq}, {nk}, {nv} must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, L, D = q.shape
    if min(B, H, L, D) == 0:
        raise ValueError(f"{nq} must have no empty dimension, got shape {tuple(q.shape)}")
    return B, H, L, D


def check_block(name: str, blk: object) -> int:
    """A block size: a positive int (bool rejected)."""
    if isinstance(blk, bool) or not isinstance(blk, int):
        raise TypeError(f"{name} must be an int, got {type(blk).__name__}")
    if blk <= 0:
        raise ValueError(f"{name} must be > 0, got {blk}")
    return blk


def check_topk(name: str, topk: object) -> float:
    """A kept fraction in (0, 1]."""
    if isinstance(topk, bool) or not isinstance(topk, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(topk).__name__}")
    topk = float(topk)
    if not (0.0 < topk <= 1.0):
        raise ValueError(f"{name} must be in (0, 1] (the fraction of key blocks kept), got {topk}")
    return topk


def check_block_map(
    block_map: object, B: int, H: int, Mq: int, Mk: int, device: torch.device
) -> torch.Tensor:
    """A bool ``[B, H, Mq, Mk]`` block map on ``device``."""
    check_tensor("block_map", block_map, ndim=4, dtypes=(torch.bool,))
    if tuple(block_map.shape) != (B, H, Mq, Mk):
        raise ValueError(
            f"block_map must have shape [B, H, ceil(L/blkq), ceil(L/blkk)] = {(B, H, Mq, Mk)}, "
            f"got {tuple(block_map.shape)}"
        )
    if block_map.device != device:
        raise ValueError(f"block_map must be on {device} (the device of q), got {block_map.device}")
    return block_map


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
