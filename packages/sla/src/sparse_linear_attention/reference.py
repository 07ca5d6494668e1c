"""SLA in plain PyTorch: the oracle of every test and the CPU fallback (float32/float64 capable).

Notation (SLA paper, arXiv 2509.24006). Inputs ``q, k, v`` are ``[B, H, L, D]`` (upstream's
layout), self-attention. Queries are cut into ``Mq = ceil(L / blkq)`` blocks, keys into
``Mk = ceil(L / blkk)`` blocks; the last block of each may be partial (only its valid tokens count).

1. Block selection (upstream ``utils.get_block_map``)::

       score = mean_pool(Q, blkq) · mean_pool(K − mean_L(K), blkk)ᵀ        [B, H, Mq, Mk]
       M[m, j] = 1  for the ``count`` largest scores of row m,  count = min(Mk, max(1, int(topk·Mk)))

   No softmax and no ``1/sqrt(D)`` (both monotone per row, so the top-k is the same). Upstream uses
   ``min(Mk, int(topk·Mk))``, which is 0 when ``topk·Mk < 1``: every row then selects nothing and the
   sparse branch divides by zero. We keep at least one block per row (``max(1, ·)``); for
   ``topk·Mk >= 1`` both rules agree. ``int()`` truncates like upstream (``int(0.29·100) = 28``).

2. Sparse branch (critical blocks, exact softmax over the selected blocks' keys only)::

       P = softmax_rows(Q Kᵀ · sm_scale  masked to M),   O_s = P V,   lse = log Σ_selected exp(·)

   ``lse`` is in natural log. A row whose block row selects nothing (only possible with a
   caller-made ``block_map``) gets ``O_s = 0`` and ``lse = −inf``.

3. Linear branch (marginal blocks)::

       O_l[i] = φ(q_i) Σ_{j ∉ M[m(i)]} h_j / (φ(q_i) · Σ_{j ∉ M[m(i)]} z_j + eps),
       h_j = φ(K_j)ᵀ V_j,   z_j = Σ_{t ∈ block j} φ(k_t)

   (``block_map=None``: the sums run over every key, upstream's main-branch behaviour.) Written
   here as a direct sum over the non-selected blocks, not as the kernel's "total minus selected"
   (the complement trick), so the test compares two different formulations. If every block is
   selected the numerator is 0 and ``O_l = 0`` (upstream's fused kernel divides by ``inf``).

4. Output: ``O = O_s + proj_l(O_l)`` with ``proj_l`` a ``Linear(D, D)`` (zero-initialised in the
   module, so SLA starts as sparse attention).

5. Optional third class (the paper: critical / marginal / negligible; upstream's kernels implement
   only the first two): :func:`block_map_skip` marks, per query block, the lowest-scoring
   ``int(skip_topk · Mk)`` non-selected blocks as negligible; the linear branch then covers the
   blocks neither selected nor skipped.

Compute precision: float64 for float64 inputs, float32 otherwise; outputs are cast back to the
input dtype (``lse`` stays in the compute dtype). Inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import cdiv, check_block, check_block_map, check_qkv, check_tensor, check_topk
from .feature_maps import get_feature_map

__all__ = [
    "LINEAR_SCOPES",
    "block_map_skip",
    "block_map_topk",
    "block_scores",
    "block_sparse_attention_ref",
    "compute_dtype",
    "expand_block_map",
    "linear_attention_ref",
    "mean_pool",
    "sla_reference",
    "topk_count",
]

LINEAR_SCOPES = ("complement", "all")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def topk_count(topk: float, num_blocks: int) -> int:
    """Key blocks kept per query block: ``min(Mk, max(1, int(topk · Mk)))``."""
    topk = check_topk("topk", topk)
    return min(num_blocks, max(1, int(topk * num_blocks)))


def mean_pool(x: torch.Tensor, blk: int) -> torch.Tensor:
    """Mean over each block of ``blk`` tokens along dim -2: ``[B, H, L, D] -> [B, H, ceil(L/blk), D]``.

    The last, partial block is averaged over its valid tokens only. Computed in float32/float64.
    """
    check_tensor("x", x, ndim=4)
    blk = check_block("blk", blk)
    B, H, L, D = x.shape
    M = cdiv(L, blk)
    xc = x.to(compute_dtype(x.dtype))
    pad = M * blk - L
    if pad:
        xc = torch.nn.functional.pad(xc, (0, 0, 0, pad))
    sums = xc.reshape(B, H, M, blk, D).sum(dim=3)
    counts = torch.full((M,), float(blk), dtype=xc.dtype, device=x.device)
    counts[-1] = blk - pad
    return sums / counts[:, None]


def block_scores(q: torch.Tensor, k: torch.Tensor, blkq: int, blkk: int) -> torch.Tensor:
    """Block scores ``mean_pool(q, blkq) · mean_pool(k − mean_L(k), blkk)ᵀ`` ``[B, H, Mq, Mk]`` (SLA's
    ``get_block_map``: K smoothed like SageAttention; no scale, no softmax, both monotone per row)."""
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, ndim=4)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got {q.device} and {k.device}")
    blkq = check_block("blkq", blkq)
    blkk = check_block("blkk", blkk)
    kc = k.to(compute_dtype(k.dtype))
    pq = mean_pool(q.to(kc.dtype), blkq)
    pk = mean_pool(kc - kc.mean(dim=-2, keepdim=True), blkk)
    return pq @ pk.transpose(-1, -2)


def block_map_topk(q: torch.Tensor, k: torch.Tensor, topk: float, blkq: int, blkk: int) -> torch.Tensor:
    """Bool ``[B, H, Mq, Mk]`` map of the ``count`` highest-scoring key blocks per query block
    (:func:`block_scores`), ``count = min(Mk, max(1, int(topk · Mk)))`` (see module docstring)."""
    topk = check_topk("topk", topk)
    score = block_scores(q, k, blkq, blkk)
    count = topk_count(topk, score.shape[-1])
    idx = torch.topk(score, count, dim=-1, sorted=False).indices
    block_map = torch.zeros(score.shape, dtype=torch.bool, device=q.device)
    block_map.scatter_(-1, idx, True)
    return block_map


def block_map_skip(
    q: torch.Tensor, k: torch.Tensor, skip_topk: float, blkq: int, blkk: int, block_map: torch.Tensor
) -> torch.Tensor:
    """The paper's third class: bool ``[B, H, Mq, Mk]`` map of the negligible key blocks, skipped by
    both branches. Per query block, the ``min(int(skip_topk · Mk), Mk − |selected|)`` lowest-scoring
    blocks among those ``block_map`` did not select. ``skip_topk`` in ``[0, 1)``; 0 gives no block."""
    if isinstance(skip_topk, bool) or not isinstance(skip_topk, (int, float)):
        raise TypeError(f"skip_topk must be a float in [0, 1), got {type(skip_topk).__name__}")
    if not (0.0 <= float(skip_topk) < 1.0):
        raise ValueError(f"skip_topk must be in [0, 1) (the fraction of key blocks skipped), got {skip_topk}")
    score = block_scores(q, k, blkq, blkk)
    B, H, Mq, Mk = score.shape
    check_block_map(block_map, B, H, Mq, Mk, q.device)
    n_skip = (Mk - block_map.sum(dim=-1, keepdim=True)).clamp(max=int(float(skip_topk) * Mk))
    order = torch.argsort(score.masked_fill(block_map, float("inf")), dim=-1, stable=True)
    rank = torch.argsort(order, dim=-1)  # rank of each block, lowest score first
    return (rank < n_skip) & ~block_map


def expand_block_map(block_map: torch.Tensor, blkq: int, blkk: int, L: int) -> torch.Tensor:
    """Token-level bool mask ``[B, H, L, L]`` of a block map (query ``i`` sees key ``t`` iff
    ``block_map[.., i // blkq, t // blkk]``)."""
    check_tensor("block_map", block_map, ndim=4, dtypes=(torch.bool,))
    blkq = check_block("blkq", blkq)
    blkk = check_block("blkk", blkk)
    m = block_map.repeat_interleave(blkq, dim=-2)[..., :L, :]
    return m.repeat_interleave(blkk, dim=-1)[..., :L]


def _check_map_for(q: torch.Tensor, block_map: torch.Tensor, blkq: int, blkk: int) -> None:
    B, H, L, _ = q.shape
    check_block_map(block_map, B, H, cdiv(L, blkq), cdiv(L, blkk), q.device)


def _scale(sm_scale: float | None, D: int) -> float:
    if sm_scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
    if not math.isfinite(sm_scale) or sm_scale <= 0:
        raise ValueError(f"sm_scale must be a finite float > 0, got {sm_scale}")
    return float(sm_scale)


def block_sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_map: torch.Tensor,
    *,
    blkq: int,
    blkk: int,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention restricted to the selected key blocks: ``(o [B,H,L,D], lse [B,H,L])``.

    ``o_i = Σ_{t ∈ sel(i)} exp(s_it − lse_i) v_t``, ``s_it = q_i·k_t · sm_scale`` (default
    ``1/sqrt(D)``), ``lse_i = log Σ_{t ∈ sel(i)} exp(s_it)`` (natural log). Rows with nothing
    selected: ``o = 0``, ``lse = −inf`` (gradients there are 0, never NaN). Memory ``O(B·H·L²)``.
    """
    _B, _H, L, D = check_qkv(q, k, v)
    blkq = check_block("blkq", blkq)
    blkk = check_block("blkk", blkk)
    _check_map_for(q, block_map, blkq, blkk)
    scale = _scale(sm_scale, D)
    cd = compute_dtype(q.dtype)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    mask = expand_block_map(block_map, blkq, blkk, L)
    row_any = mask.any(dim=-1, keepdim=True)
    s = (qc @ kc.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    s = torch.where(row_any, s, torch.zeros_like(s))  # finite lse (and grads) for empty rows
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    p = torch.where(mask, torch.exp(s - lse), torch.zeros_like(s))
    o = p @ vc
    lse = torch.where(row_any, lse, torch.full_like(lse, float("-inf"))).squeeze(-1)
    return o.to(q.dtype), lse


def linear_attention_ref(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_map: torch.Tensor | None = None,
    blkq: int = 64,
    blkk: int = 64,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Linear attention ``o_i = φq_i S / (φq_i · z + eps)`` over all keys (``block_map=None``) or
    over the keys of the blocks NOT selected in ``block_map`` (the complement; see module docstring).

    ``phi_q, phi_k``: ``[B, H, L, C]`` (already feature-mapped), ``v``: ``[B, H, L, D]``. Output
    ``[B, H, L, D]`` in ``v``'s dtype. Memory ``O(B·H·(Mq + Mk)·C·D)``, never ``L²``.
    """
    check_tensor("phi_q", phi_q, ndim=4)
    check_tensor("phi_k", phi_k, ndim=4)
    check_tensor("v", v, ndim=4)
    if phi_q.shape != phi_k.shape:
        raise ValueError(
            f"phi_q and phi_k must have the same shape, got {tuple(phi_q.shape)}, {tuple(phi_k.shape)}"
        )
    if phi_q.shape[:3] != v.shape[:3]:
        raise ValueError(f"v must share [B, H, L] with phi_q, got {tuple(v.shape)} and {tuple(phi_q.shape)}")
    if phi_q.device != phi_k.device or phi_q.device != v.device:
        raise ValueError("phi_q, phi_k and v must be on one device")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
    B, H, L, C = phi_q.shape
    D = v.shape[-1]
    cd = compute_dtype(v.dtype) if v.dtype == torch.float64 else compute_dtype(phi_q.dtype)
    fq, fk, vc = phi_q.to(cd), phi_k.to(cd), v.to(cd)
    if block_map is None:
        s = fk.transpose(-1, -2) @ vc  # [B, H, C, D]
        z = fk.sum(dim=-2)  # [B, H, C]
        o = (fq @ s) / ((fq * z[:, :, None, :]).sum(-1, keepdim=True) + eps)
        return o.to(v.dtype)
    blkq = check_block("blkq", blkq)
    blkk = check_block("blkk", blkk)
    Mq, Mk = cdiv(L, blkq), cdiv(L, blkk)
    check_block_map(block_map, B, H, Mq, Mk, phi_q.device)
    pk = Mk * blkk - L
    fkb = torch.nn.functional.pad(fk, (0, 0, 0, pk)).reshape(B, H, Mk, blkk, C)
    vb = torch.nn.functional.pad(vc, (0, 0, 0, pk)).reshape(B, H, Mk, blkk, D)
    h = torch.einsum("bhjtc,bhjtd->bhjcd", fkb, vb)  # h_j = φ(K_j)ᵀ V_j
    z = fkb.sum(dim=3)  # z_j = Σ_t φ(k_t)
    keep = (~block_map).to(cd)  # the complement: blocks left to the linear branch
    hq = torch.einsum("bhmj,bhjcd->bhmcd", keep, h)
    zq = torch.einsum("bhmj,bhjc->bhmc", keep, z)
    pq = Mq * blkq - L
    fqb = torch.nn.functional.pad(fq, (0, 0, 0, pq)).reshape(B, H, Mq, blkq, C)
    num = torch.einsum("bhmtc,bhmcd->bhmtd", fqb, hq)
    den = torch.einsum("bhmtc,bhmc->bhmt", fqb, zq) + eps
    o = (num / den[..., None]).reshape(B, H, Mq * blkq, D)[:, :, :L]
    return o.to(v.dtype)


FeatureMap = str | Callable[[torch.Tensor], torch.Tensor]


def _as_feature_map(name: str, fm: object) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(fm, str):
        return get_feature_map(fm)
    if callable(fm):
        return fm
    raise TypeError(f"{name} must be a feature-map name or a callable, got {type(fm).__name__}")


def sla_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_l_weight: torch.Tensor,
    proj_l_bias: torch.Tensor | None,
    *,
    topk: float,
    blkq: int = 64,
    blkk: int = 64,
    feature_map: FeatureMap = "softmax",
    feature_map_k: FeatureMap | None = None,
    linear_scope: str = "complement",
    sm_scale: float | None = None,
    eps: float = 1e-5,
    block_map: torch.Tensor | None = None,
    skip_topk: float = 0.0,
) -> torch.Tensor:
    """SLA forward ``O = O_s + (O_l W_lᵀ + b_l)`` (paper eq. for the combined output).

    ``block_map``: the critical blocks; ``None`` computes :func:`block_map_topk` from ``topk``.
    ``linear_scope='complement'``: the linear branch covers exactly the non-selected blocks (the
    paper's SLA); ``'all'``: every key (upstream's main-branch module). ``feature_map_k`` defaults to
    ``feature_map``. ``skip_topk > 0`` adds the paper's third class (:func:`block_map_skip`): those
    blocks are left out of both branches (``linear_scope='complement'`` only). Returns ``o`` in the
    input dtype.
    """
    _B, _H, _L, D = check_qkv(q, k, v)
    check_tensor("proj_l_weight", proj_l_weight, ndim=2)
    if tuple(proj_l_weight.shape) != (D, D):
        raise ValueError(f"proj_l_weight must have shape (D, D) = {(D, D)}, got {tuple(proj_l_weight.shape)}")
    if proj_l_bias is not None:
        check_tensor("proj_l_bias", proj_l_bias, ndim=1)
        if tuple(proj_l_bias.shape) != (D,):
            raise ValueError(f"proj_l_bias must have shape (D,) = {(D,)}, got {tuple(proj_l_bias.shape)}")
    if linear_scope not in LINEAR_SCOPES:
        raise ValueError(f"linear_scope must be one of {LINEAR_SCOPES}, got {linear_scope!r}")
    fq = _as_feature_map("feature_map", feature_map)
    fk = fq if feature_map_k is None else _as_feature_map("feature_map_k", feature_map_k)
    if block_map is None:
        block_map = block_map_topk(q, k, topk, blkq, blkk)
    else:
        check_topk("topk", topk)
    cd = compute_dtype(q.dtype)
    o_s, _ = block_sparse_attention_ref(q, k, v, block_map, blkq=blkq, blkk=blkk, sm_scale=sm_scale)
    qc, kc = q.to(cd), k.to(cd)
    lin_map = block_map if linear_scope == "complement" else None
    if skip_topk:
        if linear_scope != "complement":
            raise ValueError(f"skip_topk > 0 needs linear_scope='complement', got {linear_scope!r}")
        lin_map = block_map | block_map_skip(q, k, skip_topk, blkq, blkk, block_map)
    o_l = linear_attention_ref(fq(qc), fk(kc), v.to(cd), block_map=lin_map, blkq=blkq, blkk=blkk, eps=eps)
    w = proj_l_weight.to(cd)
    o = o_s.to(cd) + o_l @ w.transpose(0, 1)
    if proj_l_bias is not None:
        o = o + proj_l_bias.to(cd)
    return o.to(q.dtype)
