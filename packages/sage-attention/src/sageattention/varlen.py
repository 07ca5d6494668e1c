"""``sageattn_varlen``: SageAttention2 on packed variable-length sequences (upstream signature)."""

from __future__ import annotations

import importlib.util
import itertools

import torch

from .core import sageattn

__all__ = ["sageattn_varlen"]


def _check_cu(name: str, cu: object, total: int, device: torch.device) -> list[int]:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D with batch_size + 1 >= 2 entries, got shape {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but q on {device}: put them on the same device")
    vals = cu.tolist()
    if vals[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {vals[0]}")
    if any(b < a for a, b in itertools.pairwise(vals)):
        raise ValueError(f"{name} must be non-decreasing, got {vals}")
    if vals[-1] != total:
        raise ValueError(f"{name}[-1] = {vals[-1]} must equal the number of packed tokens {total}")
    return vals


def _check_max(name: str, val: object, lens: list[int]) -> None:
    if isinstance(val, bool) or not isinstance(val, int):
        raise TypeError(f"{name} must be an int, got {type(val).__name__}")
    if val < max(lens):
        raise ValueError(f"{name}={val} is smaller than the longest sequence ({max(lens)})")


def sageattn_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    is_causal: bool = False,
    sm_scale: float | None = None,
    smooth_k: bool = True,
    *,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of each packed sequence ``i`` with itself: tokens ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``
    of ``q [total_q, Hq, D]`` against ``cu_seqlens_k[i]:cu_seqlens_k[i+1]`` of ``k [total_k, Hkv, D]``,
    ``v [total_k, Hkv, Dv]``; returns ``[total_q, Hq, Dv]`` in q's dtype (and with ``return_lse``
    the natural-log lse ``[Hq, total_q]`` float32, as flash-attn's varlen).

    The maths of ``sageattn`` per sequence (per-block INT8 QK, fp16 PV; the Q/K blocks start at each
    sequence's first token as in upstream's varlen kernel). ``cu_seqlens_*``: int32/int64, 1-D,
    ``[0, ..., total]``, non-decreasing (a repeated value is an empty sequence: zeros, lse ``-inf``);
    ``max_seqlen_*`` must be at least the longest sequence. ``is_causal`` is top-left aligned per
    sequence (like SDPA and ``sageattn``). Unlike upstream, ``smooth_k`` subtracts each sequence's
    own K mean (upstream's mean is over the whole packed batch); both are exact, this one quantizes
    better. ``backend``: ``"auto"`` (``"cpu"`` on the CPU; on CUDA the Triton varlen kernel
    :func:`sageattn_varlen_triton`, the same maths, or ``"torch"`` without Triton), ``"cpu"``, ``"torch"``. Cost: ``2·Hq·Σ_i Nq_i·Nk_i·(D + Dv)`` FLOPs.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name} must be packed [total_tokens, heads, head_dim], got {tuple(x.shape)}")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"k and v must have the same number of tokens, got {k.shape[0]} and {v.shape[0]}")
    if not isinstance(backend, str) or backend not in ("auto", "cpu", "torch"):
        raise ValueError(f"backend must be one of ('auto', 'cpu', 'torch'), got {backend!r}")
    cq = _check_cu("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    ck = _check_cu("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if len(cq) != len(ck):
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same batch, got {len(cq) - 1} and {len(ck) - 1} sequences"
        )
    lq = [b - a for a, b in itertools.pairwise(cq)]
    lk = [b - a for a, b in itertools.pairwise(ck)]
    _check_max("max_seqlen_q", max_seqlen_q, lq)
    _check_max("max_seqlen_k", max_seqlen_k, lk)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if backend == "auto":
        # The packed Triton kernel has no backward: with gradients, each sequence goes through sageattn,
        # which trains through SageBwd (its Triton kernels on CUDA).
        if needs_grad:
            backend = "auto" if q.device.type == "cuda" else "cpu"
        elif q.device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            from .triton_api import sageattn_varlen_triton  # the same per-block, per-sequence maths

            return sageattn_varlen_triton(
                q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal=is_causal,
                sm_scale=sm_scale, smooth_k=smooth_k, return_lse=return_lse,
            )  # fmt: skip
        else:
            backend = "cpu" if q.device.type == "cpu" else "torch"
    outs, lses = [], []
    for i in range(len(lq)):
        qi, ki, vi = (x[c[i] : c[i + 1]].unsqueeze(0) for x, c in ((q, cq), (k, ck), (v, ck)))
        o, lse = sageattn(
            qi, ki, vi, tensor_layout="NHD", is_causal=is_causal, sm_scale=sm_scale, return_lse=True,
            smooth_k=smooth_k, backend=backend,
        )  # fmt: skip
        outs.append(o[0])
        lses.append(lse[0])
    o = torch.cat(outs, dim=0)
    return (o, torch.cat(lses, dim=-1)) if return_lse else o
