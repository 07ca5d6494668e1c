"""``SparseLinearAttention``: the SLA module (upstream ``thu-ml/SLA`` API), fine-tunable.

``O = O_s + proj_l(O_l)`` (SLA paper, arXiv 2509.24006): ``O_s`` is softmax attention over the
top-k key blocks of each query block (critical), ``O_l`` linear attention
``φ(Q)(φ(K)ᵀV) / (φ(Q)·Σφ(K) + eps)`` over the key blocks the sparse branch did not select
(marginal; ``linear_scope='complement'``, the paper's SLA) or over every key (``linear_scope='all'``,
upstream's released module). ``proj_l`` is an fp32 ``Linear(head_dim, head_dim)`` initialised to
zero, so a fresh module computes sparse attention only and fine-tuning grows the linear correction.
See ``reference.py`` for the exact maths.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_qkv, check_topk
from .feature_maps import get_feature_map
from .reference import (
    LINEAR_SCOPES,
    block_map_skip,
    block_map_topk,
    block_sparse_attention_ref,
    compute_dtype,
    linear_attention_ref,
)

__all__ = ["BACKENDS", "KERNEL_BLOCKS", "KERNEL_MAX_HEAD_DIM", "SparseLinearAttention"]

BACKENDS = ("auto", "torch", "triton")
KERNEL_BLOCKS = (16, 32, 64, 128)  # BLKQ, BLKK of the Triton kernels (upstream: BLKQ 64/128, BLKK 64)
KERNEL_MAX_HEAD_DIM = 128  # the block-sparse Triton kernel's limit (64 and 128 unpadded)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


class SparseLinearAttention(nn.Module):
    """Sparse-linear attention over ``[B, H, L, D]`` self-attention inputs.

    Args:
        head_dim: D of q, k, v (and of ``proj_l``).
        topk: fraction of key blocks each query block keeps for the softmax branch, in (0, 1]
            (``1 − sparsity``; per row ``min(Mk, max(1, int(topk·Mk)))`` blocks).
        feature_map: φ of the linear branch, one of ``'softmax'`` (default), ``'elu'``, ``'relu'``;
            ``'hedgehog'`` raises ``NotImplementedError`` (as upstream).
        BLKQ, BLKK: query / key block sizes. Triton backend (and ``'auto'``): each in
            :data:`KERNEL_BLOCKS` (16, 32, 64, 128; upstream's kernel: BLKQ 64 or 128, BLKK 64).
            Torch backend: any positive int.
        use_bf16: compute dtype of the Triton backend, bf16 (True) or fp16 (False); q, k, v are
            cast to it inside the module and the output is cast back (as upstream). The torch
            backend computes in fp32 (fp64 for fp64 inputs) whatever this flag.
        tie_feature_map_qk: use one feature-map module for q and k. Upstream's flag only aliases
            ``feature_map_k`` to ``feature_map_q``; every supported φ is parameter-free, so the
            flag does not change the maths (it would matter for a learnable map such as hedgehog).
        linear_scope: ``'complement'`` (default; the paper's SLA: the linear branch covers exactly
            the non-selected blocks) or ``'all'`` (upstream's main-branch module: every key).
        backend: ``'auto'`` (Triton for CUDA tensors when triton is importable, else torch),
            ``'torch'`` (the reference: any device, differentiable) or ``'triton'`` (fused kernels:
            CUDA tensors, or CPU under ``TRITON_INTERPRET=1``).
        skip_topk: fraction of key blocks per query block skipped by both branches (the paper's
            third, negligible class: the lowest-scoring non-selected blocks), in [0, 1 − topk];
            default 0 (two classes, like upstream). Needs ``linear_scope='complement'``.
        eps: the linear branch's denominator guard (upstream 1e-5).

    ``forward(q, k, v, return_sparsity=False)``: q, k, v ``[B, H, L, head_dim]`` of one float dtype
    and device; returns ``o`` of the same shape and dtype, and with ``return_sparsity`` also the
    fraction of (query block, key block) pairs the softmax branch skipped, a float in [0, 1)
    (upstream returns the kept fraction ``real_topk / Mk`` under that name). Block selection has no
    gradient (a top-k); q, k, v, ``proj_l`` get gradients. ``L <= BLKK``: one key block, always
    selected, so the module computes exact dense attention plus ``proj_l``'s bias (the linear
    branch is empty, ``o_l = 0``) and sparsity is 0. Inputs are never modified.
    """

    def __init__(
        self,
        head_dim: int,
        topk: float,
        feature_map: str = "softmax",
        BLKQ: int = 64,
        BLKK: int = 64,
        use_bf16: bool = True,
        tie_feature_map_qk: bool = True,
        *,
        linear_scope: Literal["complement", "all"] = "complement",
        backend: Literal["auto", "torch", "triton"] = "auto",
        skip_topk: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int):
            raise TypeError(f"head_dim must be an int, got {type(head_dim).__name__}")
        if head_dim <= 0:
            raise ValueError(f"head_dim must be > 0, got {head_dim}")
        self.topk = check_topk("topk", topk)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if linear_scope not in LINEAR_SCOPES:
            raise ValueError(f"linear_scope must be one of {LINEAR_SCOPES}, got {linear_scope!r}")
        for name, blk in (("BLKQ", BLKQ), ("BLKK", BLKK)):
            if isinstance(blk, bool) or not isinstance(blk, int):
                raise TypeError(f"{name} must be an int, got {type(blk).__name__}")
            if blk <= 0:
                raise ValueError(f"{name} must be > 0, got {blk}")
            if backend != "torch" and blk not in KERNEL_BLOCKS:
                raise ValueError(
                    f"{name}={blk} is not supported by the Triton kernels (backend={backend!r}); "
                    f"supported: {KERNEL_BLOCKS}, or use backend='torch' for any block size"
                )
        if backend == "triton":
            if not _triton_available():
                raise ValueError("backend='triton' needs the triton package, which is not installed")
            if head_dim > KERNEL_MAX_HEAD_DIM:
                raise ValueError(
                    f"head_dim={head_dim} exceeds the Triton kernels' limit {KERNEL_MAX_HEAD_DIM}; "
                    "use backend='torch'"
                )
        if isinstance(skip_topk, bool) or not isinstance(skip_topk, (int, float)):
            raise TypeError(f"skip_topk must be a float, got {type(skip_topk).__name__}")
        if not (0.0 <= skip_topk < 1.0) or skip_topk + self.topk > 1.0 + 1e-9:
            raise ValueError(
                f"skip_topk must be in [0, 1 - topk] = [0, {1.0 - self.topk:g}], got {skip_topk}"
            )
        if skip_topk > 0 and linear_scope != "complement":
            raise ValueError(f"skip_topk > 0 needs linear_scope='complement', got {linear_scope!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 < eps < float("inf")):
            raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
        _check_flag("use_bf16", use_bf16)
        _check_flag("tie_feature_map_qk", tie_feature_map_qk)
        get_feature_map(feature_map)  # raises the precise error (hedgehog / unknown name / type)
        self.head_dim = head_dim
        self.feature_map = feature_map
        self.BLKQ = BLKQ
        self.BLKK = BLKK
        self.use_bf16 = use_bf16
        self.dtype = torch.bfloat16 if use_bf16 else torch.float16
        self.tie_feature_map_qk = tie_feature_map_qk
        self.linear_scope = linear_scope
        self.backend = backend
        self.skip_topk = float(skip_topk)
        self.eps = float(eps)
        self.proj_l = nn.Linear(head_dim, head_dim, dtype=torch.float32)
        self.feature_map_q = get_feature_map(feature_map)
        self.feature_map_k = self.feature_map_q if tie_feature_map_qk else get_feature_map(feature_map)
        self.init_weights_()

    def init_weights_(self) -> None:
        """Zero ``proj_l`` (weight and bias): the module starts as sparse attention."""
        with torch.no_grad():
            nn.init.zeros_(self.proj_l.weight)
            nn.init.zeros_(self.proj_l.bias)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, topk={self.topk}, feature_map={self.feature_map!r}, "
            f"BLKQ={self.BLKQ}, BLKK={self.BLKK}, use_bf16={self.use_bf16}, "
            f"tie_feature_map_qk={self.tie_feature_map_qk}, linear_scope={self.linear_scope!r}, "
            f"backend={self.backend!r}, skip_topk={self.skip_topk}"
        )

    def resolved_backend(self, device: torch.device) -> str:
        """The backend a forward on ``device`` uses: ``'triton'`` or ``'torch'``."""
        if self.backend == "auto":
            ok = device.type == "cuda" and _triton_available() and self.head_dim <= KERNEL_MAX_HEAD_DIM
            return "triton" if ok else "torch"
        return self.backend

    def block_maps(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(critical, excluded_from_linear)`` bool ``[B, H, Mq, Mk]`` maps for these inputs
        (``excluded`` is None for ``linear_scope='all'``)."""
        with torch.no_grad():
            q, k = q.detach(), k.detach()
            critical = block_map_topk(q, k, self.topk, self.BLKQ, self.BLKK)
            if self.linear_scope == "all":
                return critical, None
            if self.skip_topk > 0:
                return critical, critical | block_map_skip(
                    q, k, self.skip_topk, self.BLKQ, self.BLKK, critical
                )
            return critical, critical

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_sparsity: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, float]:
        check_qkv(q, k, v)
        if q.shape[-1] != self.head_dim:
            raise ValueError(
                f"q, k, v must have head dim {self.head_dim} (head_dim), got shape {tuple(q.shape)}"
            )
        _check_flag("return_sparsity", return_sparsity)
        w, b = self.proj_l.weight, self.proj_l.bias
        if w.device != q.device:
            raise ValueError(f"q is on {q.device} but the module (proj_l) is on {w.device}; move one of them")
        backend = self.resolved_backend(q.device)
        critical, excluded = self.block_maps(q, k)
        if backend == "torch":
            cd = compute_dtype(q.dtype)
            qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
            o_s, _ = block_sparse_attention_ref(qc, kc, vc, critical, blkq=self.BLKQ, blkk=self.BLKK)
            fq, fk = self.feature_map_q(qc), self.feature_map_k(kc)
            o_l = linear_attention_ref(
                fq, fk, vc, block_map=excluded, blkq=self.BLKQ, blkk=self.BLKK, eps=self.eps
            )
        else:
            from .triton.block_sparse import block_sparse_attention
            from .triton.linear_complement import linear_attention_complement

            cd = torch.float32
            qc, kc, vc = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)
            o_s, _ = block_sparse_attention(qc, kc, vc, critical, blkq=self.BLKQ, blkk=self.BLKK)
            fq = self.feature_map_q(qc).to(self.dtype)
            fk = self.feature_map_k(kc).to(self.dtype)
            o_l = linear_attention_complement(
                fq, fk, vc, excluded, blkq=self.BLKQ, blkk=self.BLKK, eps=self.eps
            )
        o = o_s.to(cd) + F.linear(o_l.to(cd), w.to(cd), None if b is None else b.to(cd))
        o = o.to(q.dtype)
        if return_sparsity:
            return o, 1.0 - critical.sum().item() / critical.numel()
        return o
