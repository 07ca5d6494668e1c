"""Fused Triton forward and backward of SLA's linear branch with the complement trick.

Maths (SLA paper, arXiv 2509.24006; ``reference.linear_attention_ref`` is the oracle). With ``φq = φ(Q)``,
``φk = φ(K)`` of feature dim ``C``, ``V`` of head dim ``D``, key blocks ``j`` of ``blkk`` tokens and
query blocks ``m`` of ``blkq`` tokens, ``sel(m)`` the key blocks the sparse branch took for ``m``::

    h_j = φk_jᵀ V_j  [C, D],   z_j = Σ_{t∈j} φk_t  [C]                      (state kernel)
    h_m = Σ_{j∉sel(m)} h_j = h_tot − Σ_{j∈sel(m)} h_j,   z_m likewise        (complement trick)
    o_i = φq_i h_m / (φq_i · z_m + eps)                                      (forward kernel)

The kernels walk whichever of ``sel(m)`` and its complement is shorter: ``h_tot − Σ_sel`` when
``|sel| <= Mk/2`` (the SLA regime: 5–20 % kept), ``Σ_{not sel}`` otherwise. So a row that selects
every block gets exactly ``h_m = 0`` and ``o = 0`` (as the reference), never a ratio of rounding
residues, and the cost per query block is ``min(|sel|, Mk − |sel|)`` state loads.

Backward, with ``do`` the output gradient, ``den_i = φq_i·z_m + eps`` and ``δ_i = do_i·o_i``::

    dφq_i = (do_i h_mᵀ − δ_i z_m) / den_i                  (dq kernel; stores den, δ per row)
    G_m = Σ_{i∈m} (φq_i / den_i)ᵀ do_i  [C, D],   g_m = −Σ_{i∈m} δ_i φq_i / den_i  [C]   (G kernel)
    dh_j = Σ_{m: j∉sel(m)} G_m,   dz_j likewise (complement trick over query blocks)
    dφk_t = dh_j v_t + dz_j,   dv_t = dh_jᵀ φk_t                              (key kernel)

A block row that selected every key block has ``h_m = 0`` exactly and contributes ``G_m = 0``.
The dq and G kernels are separate so that the two ``[C, D]`` fp32 tiles ``h_m`` and ``G_m`` never
share registers (together they spill on sm80/sm89 at C = D = 128).

States and their totals are float32; products run on tensor cores in the input dtype (bf16/fp16,
fp32 accumulation) or in fp32 for fp32 inputs. Under the interpreter every dot is fp32 (its bf16
``tl.dot`` is wrong).

Cost per (batch, head), ``L`` tokens, ``Mq``/``Mk`` blocks, ``s = min(|sel|, M − |sel|)`` averaged:

| kernel | FLOPs | bytes (bf16 inputs, fp32 state) |
|---|---|---|
| state   | ``2·L·C·D`` | ``2·L·(C+D)`` read, ``4·Mk·C·(D+1)`` written |
| forward | ``2·L·C·(D+1)`` + ``Mq·s·C·D`` adds | ``2·L·(C+D)`` + ``4·Mq·(s+1)·C·(D+1)`` read |
| dq      | ``4·L·C·D`` + ``Mq·s·C·D`` adds | ``2·L·(2C+D)`` + ``8·L`` + ``4·Mq·(s+1)·C·(D+1)`` |
| G       | ``2·L·C·D`` | ``2·L·(C+D)`` + ``8·L`` read, ``4·Mq·C·(D+1)`` written |
| dk, dv  | ``4·L·C·D`` + ``Mk·s·C·D`` adds | ``2·L·(2C+2D)`` + ``4·Mk·(s+1)·C·(D+1)`` |

The backward runs the state kernel again (the ``[Mk, C, D]`` states are not kept between passes).
The state traffic ``4·Mq·s·C·D`` bytes is ``C / blkk`` times the sparse branch's own K/V traffic
``4·Mq·|sel|·blkk·D`` (bf16 K and V) when ``s = |sel|``: 2× at ``C = 128, blkk = 64``. FLOPs are
negligible next to the sparse branch's ``4·L·|sel|·blkk·D``; dense attention costs ``4·L²·D``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from shared_kernels._alloc import new_empty

from .._checks import cdiv, check_block, check_block_map, check_tensor

__all__ = ["KERNEL_SPECS", "SUPPORTED_BLOCKS", "block_luts", "linear_attention_complement"]

SUPPORTED_BLOCKS = (16, 32, 64, 128)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _dot(a, b, LOWP: tl.constexpr, DT: tl.constexpr):
    """``a @ b`` with fp32 accumulation: tensor cores in ``DT`` (bf16/fp16) when LOWP, else fp32."""
    if LOWP:
        return tl.dot(a.to(DT), b.to(DT))
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _complement_state(
    htot_ptr, ztot_ptr, hblk_ptr, zblk_ptr, lut_ptr, cnt, NB,
    offs_c, offs_d, BC: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """Σ over the blocks NOT in ``lut[:cnt]`` of the per-block states ``[NB, BC, BD]`` / ``[NB, BC]``.

    ``lut`` is a permutation of the ``NB`` blocks with the selected ones first. Walks the shorter
    side: total minus the selected ones, or the sum of the non-selected ones.
    """
    sub = 2 * cnt <= NB
    hoff = offs_c[:, None] * BD + offs_d[None, :]
    h = tl.where(sub, tl.load(htot_ptr + hoff), 0.0)
    z = tl.where(sub, tl.load(ztot_ptr + offs_c), 0.0)
    sgn = tl.where(sub, -1.0, 1.0)
    lo = tl.where(sub, 0, cnt)
    hi = tl.where(sub, cnt, NB)
    for t in range(lo, hi):
        j = tl.load(lut_ptr + t).to(tl.int64)
        h += sgn * tl.load(hblk_ptr + j * (BC * BD) + hoff)
        z += sgn * tl.load(zblk_ptr + j * BC + offs_c)
    return h, z


@triton.jit
def linear_state_kernel(
    fk_ptr, v_ptr, h_ptr, z_ptr,
    L, C, D, NB,
    BLOCK_K: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    LOWP: tl.constexpr,
):  # fmt: skip
    """Per key block ``j``: ``h_j = φk_jᵀ V_j`` ``[BC, BD]`` and ``z_j = Σ φk_j`` ``[BC]`` (fp32).

    ``fk [BH, L, C]``, ``v [BH, L, D]`` contiguous; grid ``(NB, BH)``."""
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = j * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, BD)
    rmask = rows < L
    fk = tl.load(
        fk_ptr + bh * L * C + rows[:, None] * C + offs_c[None, :],
        mask=rmask[:, None] & (offs_c[None, :] < C), other=0.0,
    )  # fmt: skip
    v = tl.load(
        v_ptr + bh * L * D + rows[:, None] * D + offs_d[None, :],
        mask=rmask[:, None] & (offs_d[None, :] < D), other=0.0,
    )  # fmt: skip
    h = _dot(tl.trans(fk), v, LOWP, fk_ptr.dtype.element_ty)
    z = tl.sum(fk.to(tl.float32), axis=0)
    base = bh * NB + j
    tl.store(h_ptr + base * (BC * BD) + offs_c[:, None] * BD + offs_d[None, :], h)
    tl.store(z_ptr + base * BC + offs_c, z)


@triton.jit
def linear_fwd_kernel(
    fq_ptr, htot_ptr, ztot_ptr, h_ptr, z_ptr, lut_ptr, cnt_ptr, o_ptr,
    L, C, D, MQ, MK, eps,
    BLOCK_Q: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    LOWP: tl.constexpr,
):  # fmt: skip
    """``o = φq h_m / (φq·z_m + eps)`` for query block ``m``; grid ``(MQ, BH)``."""
    m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, BD)
    rows = m * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_m = bh * MQ + m
    cnt = tl.load(cnt_ptr + row_m)
    h, z = _complement_state(
        htot_ptr + bh * (BC * BD), ztot_ptr + bh * BC, h_ptr + bh * MK * (BC * BD), z_ptr + bh * MK * BC,
        lut_ptr + row_m * MK, cnt, MK, offs_c, offs_d, BC, BD,
    )  # fmt: skip
    rmask = rows < L
    fq = tl.load(
        fq_ptr + bh * L * C + rows[:, None] * C + offs_c[None, :],
        mask=rmask[:, None] & (offs_c[None, :] < C), other=0.0,
    )  # fmt: skip
    num = _dot(fq, h, LOWP, fq_ptr.dtype.element_ty)
    den = tl.sum(fq.to(tl.float32) * z[None, :], axis=1) + eps
    o = num / den[:, None]
    tl.store(
        o_ptr + bh * L * D + rows[:, None] * D + offs_d[None, :],
        o.to(o_ptr.dtype.element_ty), mask=rmask[:, None] & (offs_d[None, :] < D),
    )  # fmt: skip


@triton.jit
def linear_bwd_q_kernel(
    fq_ptr, do_ptr, htot_ptr, ztot_ptr, h_ptr, z_ptr, lut_ptr, cnt_ptr,
    dfq_ptr, den_ptr, delta_ptr,
    L, C, D, MQ, MK, eps,
    BLOCK_Q: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    LOWP: tl.constexpr,
):  # fmt: skip
    """Query block ``m``: ``dφq = (do h_mᵀ − δ z_m) / den``; stores ``den`` and ``δ = do·o`` per row
    for :func:`linear_bwd_g_kernel`; grid ``(MQ, BH)``."""
    m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, BD)
    rows = m * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_m = bh * MQ + m
    cnt = tl.load(cnt_ptr + row_m)
    h, z = _complement_state(
        htot_ptr + bh * (BC * BD), ztot_ptr + bh * BC, h_ptr + bh * MK * (BC * BD), z_ptr + bh * MK * BC,
        lut_ptr + row_m * MK, cnt, MK, offs_c, offs_d, BC, BD,
    )  # fmt: skip
    rmask = rows < L
    cmask = rmask[:, None] & (offs_c[None, :] < C)
    dmask = rmask[:, None] & (offs_d[None, :] < D)
    DT = fq_ptr.dtype.element_ty
    fq = tl.load(fq_ptr + bh * L * C + rows[:, None] * C + offs_c[None, :], mask=cmask, other=0.0)
    do = tl.load(do_ptr + bh * L * D + rows[:, None] * D + offs_d[None, :], mask=dmask, other=0.0)
    den = tl.sum(fq.to(tl.float32) * z[None, :], axis=1) + eps
    o = _dot(fq, h, LOWP, DT) / den[:, None]
    delta = tl.sum(do.to(tl.float32) * o, axis=1)
    dfq = (_dot(do, tl.trans(h), LOWP, DT) - delta[:, None] * z[None, :]) / den[:, None]
    tl.store(
        dfq_ptr + bh * L * C + rows[:, None] * C + offs_c[None, :], dfq.to(dfq_ptr.dtype.element_ty), mask=cmask
    )  # fmt: skip
    tl.store(den_ptr + bh * L + rows, den, mask=rmask)
    tl.store(delta_ptr + bh * L + rows, delta, mask=rmask)


@triton.jit
def linear_bwd_g_kernel(
    fq_ptr, do_ptr, den_ptr, delta_ptr, cnt_ptr, g_ptr, gz_ptr,
    L, C, D, MQ, MK,
    BLOCK_Q: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    LOWP: tl.constexpr,
):  # fmt: skip
    """Query block ``m``: ``G_m = Σ (φq/den)ᵀ do`` ``[BC, BD]`` and ``g_m = −Σ δ φq/den`` ``[BC]``
    (a separate kernel from the dφq one, so that ``h_m`` and ``G_m`` never share registers);
    grid ``(MQ, BH)``."""
    m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, BD)
    rows = m * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_m = bh * MQ + m
    cnt = tl.load(cnt_ptr + row_m)
    rmask = rows < L
    fq = tl.load(
        fq_ptr + bh * L * C + rows[:, None] * C + offs_c[None, :],
        mask=rmask[:, None] & (offs_c[None, :] < C), other=0.0,
    )  # fmt: skip
    do = tl.load(
        do_ptr + bh * L * D + rows[:, None] * D + offs_d[None, :],
        mask=rmask[:, None] & (offs_d[None, :] < D), other=0.0,
    )  # fmt: skip
    den = tl.load(den_ptr + bh * L + rows, mask=rmask, other=1.0)
    delta = tl.load(delta_ptr + bh * L + rows, mask=rmask, other=0.0)
    # padded rows have fq = 0 and add nothing; a block row that selected every key block has no
    # linear branch (h_m = 0 exactly): its G_m must be 0 too, not fq/eps (cancelled later in fp32)
    gq = tl.where(cnt < MK, fq.to(tl.float32) / den[:, None], 0.0)
    g = _dot(tl.trans(gq), do, LOWP, fq_ptr.dtype.element_ty)
    gz = -tl.sum(gq * delta[:, None], axis=0)
    tl.store(g_ptr + row_m * (BC * BD) + offs_c[:, None] * BD + offs_d[None, :], g)
    tl.store(gz_ptr + row_m * BC + offs_c, gz)


@triton.jit
def linear_bwd_kv_kernel(
    fk_ptr, v_ptr, gtot_ptr, gztot_ptr, g_ptr, gz_ptr, lutt_ptr, cntt_ptr,
    dfk_ptr, dv_ptr,
    L, C, D, MQ, MK,
    BLOCK_K: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    LOWP: tl.constexpr,
):  # fmt: skip
    """Key block ``j``: ``dh_j = Σ_{m: j∉sel(m)} G_m`` (complement over query blocks), then
    ``dφk = V dh_jᵀ + dz_j`` and ``dV = φk dh_j``; grid ``(MK, BH)``."""
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, BD)
    rows = j * BLOCK_K + tl.arange(0, BLOCK_K)
    row_j = bh * MK + j
    cnt = tl.load(cntt_ptr + row_j)
    dh, dz = _complement_state(
        gtot_ptr + bh * (BC * BD), gztot_ptr + bh * BC, g_ptr + bh * MQ * (BC * BD), gz_ptr + bh * MQ * BC,
        lutt_ptr + row_j * MQ, cnt, MQ, offs_c, offs_d, BC, BD,
    )  # fmt: skip
    rmask = rows < L
    cmask = rmask[:, None] & (offs_c[None, :] < C)
    dmask = rmask[:, None] & (offs_d[None, :] < D)
    DT = fk_ptr.dtype.element_ty
    fk = tl.load(fk_ptr + bh * L * C + rows[:, None] * C + offs_c[None, :], mask=cmask, other=0.0)
    v = tl.load(v_ptr + bh * L * D + rows[:, None] * D + offs_d[None, :], mask=dmask, other=0.0)
    dfk = _dot(v, tl.trans(dh), LOWP, DT) + dz[None, :]
    dv = _dot(fk, dh, LOWP, DT)
    tl.store(
        dfk_ptr + bh * L * C + rows[:, None] * C + offs_c[None, :],
        dfk.to(dfk_ptr.dtype.element_ty),
        mask=cmask,
    )
    tl.store(
        dv_ptr + bh * L * D + rows[:, None] * D + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=dmask
    )


def block_luts(block_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row LUTs of a bool ``[B, H, Mq, Mk]`` map, for the complement walks.

    Returns ``(lut [BH, Mq, Mk], cnt [BH, Mq], lut_t [BH, Mk, Mq], cnt_t [BH, Mk])`` int32: each
    ``lut`` row is a permutation of the key blocks with the selected ones first (ascending), ``cnt``
    how many are selected; ``lut_t``/``cnt_t`` the same for the transposed map (the query blocks that
    selected key block ``j``).
    """
    B, H, Mq, Mk = block_map.shape
    bm = block_map.reshape(B * H, Mq, Mk)

    def rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lut = torch.argsort((~x).to(torch.uint8), dim=-1, stable=True).to(torch.int32).contiguous()
        return lut, x.sum(dim=-1, dtype=torch.int32).contiguous()

    lut, cnt = rows(bm)
    lut_t, cnt_t = rows(bm.transpose(1, 2))
    return lut, cnt, lut_t, cnt_t


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _interpret() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _lowp(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16) and not _interpret()


def _warps(bc: int, bd: int) -> int:
    return 4 if bc * bd <= 64 * 64 else 8


class _LinearComplement(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi_q, phi_k, v, block_map, blkq, blkk, eps):
        B, H, L, C = phi_q.shape
        D = v.shape[-1]
        BH, Mq, Mk = B * H, cdiv(L, blkq), cdiv(L, blkk)
        BC, BD = _pow2(C), _pow2(D)
        fq = phi_q.reshape(BH, L, C).contiguous()
        fk = phi_k.reshape(BH, L, C).contiguous()
        vv = v.reshape(BH, L, D).contiguous()
        lut, cnt, lut_t, cnt_t = block_luts(block_map)
        lowp = _lowp(phi_q.dtype)
        warps = _warps(BC, BD)
        h, z, htot, ztot = _states(fk, vv, L, C, D, Mk, blkk, BC, BD, lowp, warps)
        o = new_empty((BH, L, D), v.dtype, v.device)
        linear_fwd_kernel[(Mq, BH)](
            fq, htot, ztot, h, z, lut, cnt, o, L, C, D, Mq, Mk, float(eps),
            BLOCK_Q=blkq, BC=BC, BD=BD, LOWP=lowp, num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(fq, fk, vv, lut, cnt, lut_t, cnt_t)
        ctx.meta = (B, H, L, C, D, Mq, Mk, blkq, blkk, float(eps), BC, BD, lowp, warps)
        return o.reshape(B, H, L, D)

    @staticmethod
    def backward(ctx, do):
        fq, fk, vv, lut, cnt, lut_t, cnt_t = ctx.saved_tensors
        B, H, L, C, D, Mq, Mk, blkq, blkk, eps, BC, BD, lowp, warps = ctx.meta
        BH = B * H
        do = do.reshape(BH, L, D).contiguous()
        h, z, htot, ztot = _states(fk, vv, L, C, D, Mk, blkk, BC, BD, lowp, warps)  # recomputed
        dfq = new_empty(fq.shape, fq.dtype, fq.device)
        den = new_empty((BH, L), torch.float32, fq.device)
        delta = new_empty((BH, L), torch.float32, fq.device)
        linear_bwd_q_kernel[(Mq, BH)](
            fq, do, htot, ztot, h, z, lut, cnt, dfq, den, delta, L, C, D, Mq, Mk, eps,
            BLOCK_Q=blkq, BC=BC, BD=BD, LOWP=lowp, num_warps=warps,
        )  # fmt: skip
        del h, z, htot, ztot
        g = new_empty((BH, Mq, BC, BD), torch.float32, fq.device)
        gz = new_empty((BH, Mq, BC), torch.float32, fq.device)
        linear_bwd_g_kernel[(Mq, BH)](
            fq, do, den, delta, cnt, g, gz, L, C, D, Mq, Mk,
            BLOCK_Q=blkq, BC=BC, BD=BD, LOWP=lowp, num_warps=warps,
        )  # fmt: skip
        gtot, gztot = g.sum(dim=1).contiguous(), gz.sum(dim=1).contiguous()
        dfk = new_empty(fk.shape, fk.dtype, fk.device)
        dv = new_empty(vv.shape, vv.dtype, vv.device)
        linear_bwd_kv_kernel[(Mk, BH)](
            fk, vv, gtot, gztot, g, gz, lut_t, cnt_t, dfk, dv, L, C, D, Mq, Mk,
            BLOCK_K=blkk, BC=BC, BD=BD, LOWP=lowp, num_warps=warps,
        )  # fmt: skip
        shp_c, shp_d = (B, H, L, C), (B, H, L, D)
        return dfq.reshape(shp_c), dfk.reshape(shp_c), dv.reshape(shp_d), None, None, None, None


def _states(fk, vv, L, C, D, Mk, blkk, BC, BD, lowp, warps):
    BH = fk.shape[0]
    h = new_empty((BH, Mk, BC, BD), torch.float32, fk.device)
    z = new_empty((BH, Mk, BC), torch.float32, fk.device)
    linear_state_kernel[(Mk, BH)](
        fk, vv, h, z, L, C, D, Mk, BLOCK_K=blkk, BC=BC, BD=BD, LOWP=lowp, num_warps=warps
    )
    return h, z, h.sum(dim=1).contiguous(), z.sum(dim=1).contiguous()


def linear_attention_complement(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    v: torch.Tensor,
    block_map: torch.Tensor | None = None,
    *,
    blkq: int = 64,
    blkk: int = 64,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Linear attention over the key blocks NOT selected in ``block_map`` (all keys if ``None``).

    ``o_i = φq_i h_m / (φq_i·z_m + eps)`` (module docstring), differentiable in ``phi_q``, ``phi_k``
    and ``v`` through fused Triton kernels. ``phi_q, phi_k [B, H, L, C]`` and ``v [B, H, L, D]``
    share dtype (fp16, bf16 or fp32) and device; ``block_map`` is bool ``[B, H, ceil(L/blkq),
    ceil(L/blkk)]``; ``blkq, blkk`` in :data:`SUPPORTED_BLOCKS`; ``C, D <= 256``. Returns ``o``
    ``[B, H, L, D]`` in ``v``'s dtype. Inputs are not modified.
    """
    for name, x in (("phi_q", phi_q), ("phi_k", phi_k), ("v", v)):
        check_tensor(name, x, ndim=4, dtypes=_KERNEL_DTYPES)
    if phi_q.shape != phi_k.shape:
        raise ValueError(
            f"phi_q and phi_k must have the same shape, got {tuple(phi_q.shape)}, {tuple(phi_k.shape)}"
        )
    if phi_q.shape[:3] != v.shape[:3]:
        raise ValueError(f"v must share [B, H, L] with phi_q, got {tuple(v.shape)} and {tuple(phi_q.shape)}")
    if phi_q.dtype != phi_k.dtype or phi_q.dtype != v.dtype:
        raise TypeError(f"phi_q, phi_k, v must share one dtype, got {phi_q.dtype}, {phi_k.dtype}, {v.dtype}")
    if phi_q.device != phi_k.device or phi_q.device != v.device:
        raise ValueError(
            f"phi_q, phi_k, v must be on one device, got {phi_q.device}, {phi_k.device}, {v.device}"
        )
    if phi_q.device.type != "cuda" and not _interpret():
        raise ValueError(
            f"linear_attention_complement runs on CUDA tensors (or under TRITON_INTERPRET=1), got "
            f"{phi_q.device}; use reference.linear_attention_ref on the CPU"
        )
    for name, blk in (("blkq", blkq), ("blkk", blkk)):
        check_block(name, blk)
        if blk not in SUPPORTED_BLOCKS:
            raise ValueError(f"{name} must be one of {SUPPORTED_BLOCKS} for the Triton kernel, got {blk}")
    B, H, L, C = phi_q.shape
    D = v.shape[-1]
    if min(B, H, L, C, D) == 0:
        raise ValueError(
            f"phi_q and v must have no empty dimension, got {tuple(phi_q.shape)}, {tuple(v.shape)}"
        )
    if B * H > 65535:
        raise ValueError(f"B * H must be <= 65535 (the kernels' grid axis 1), got B={B}, H={H}")
    if C > 256 or D > 256:
        raise ValueError(f"feature dim C and head dim D must be <= 256, got C={C}, D={D}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
    Mq, Mk = cdiv(L, blkq), cdiv(L, blkk)
    if block_map is None:
        block_map = torch.zeros((B, H, Mq, Mk), dtype=torch.bool, device=v.device)
    else:
        check_block_map(block_map, B, H, Mq, Mk, v.device)
    return _LinearComplement.apply(phi_q, phi_k, v, block_map, blkq, blkk, float(eps))


# --- kernel report (tools/kernel_report): the launches of a real bf16 run, blocks of 64 ------------
def _specs():
    from shared_kernels.kernel_specs import TritonKernelSpec

    tc = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}
    p, f, i = "*bf16", "*fp32", "*i32"
    ints = {"L": "i32", "C": "i32", "D": "i32"}
    mqk = {"MQ": "i32", "MK": "i32"}
    kernels = [
        ("state", lambda: linear_state_kernel,
         {"fk_ptr": p, "v_ptr": p, "h_ptr": f, "z_ptr": f, **ints, "NB": "i32"}, {"BLOCK_K": 64}),
        ("fwd", lambda: linear_fwd_kernel,
         {"fq_ptr": p, "htot_ptr": f, "ztot_ptr": f, "h_ptr": f, "z_ptr": f, "lut_ptr": i, "cnt_ptr": i,
          "o_ptr": p, **ints, **mqk, "eps": "fp32"}, {"BLOCK_Q": 64}),
        ("bwd_q", lambda: linear_bwd_q_kernel,
         {"fq_ptr": p, "do_ptr": p, "htot_ptr": f, "ztot_ptr": f, "h_ptr": f, "z_ptr": f, "lut_ptr": i,
          "cnt_ptr": i, "dfq_ptr": p, "den_ptr": f, "delta_ptr": f, **ints, **mqk, "eps": "fp32"},
         {"BLOCK_Q": 64}),
        ("bwd_g", lambda: linear_bwd_g_kernel,
         {"fq_ptr": p, "do_ptr": p, "den_ptr": f, "delta_ptr": f, "cnt_ptr": i, "g_ptr": f, "gz_ptr": f,
          **ints, **mqk}, {"BLOCK_Q": 64}),
        ("bwd_kv", lambda: linear_bwd_kv_kernel,
         {"fk_ptr": p, "v_ptr": p, "gtot_ptr": f, "gztot_ptr": f, "g_ptr": f, "gz_ptr": f, "lutt_ptr": i,
          "cntt_ptr": i, "dfk_ptr": p, "dv_ptr": p, **ints, **mqk}, {"BLOCK_K": 64}),
    ]  # fmt: skip
    return [
        TritonKernelSpec(
            name=f"sla_linear_{name}_d{d}",
            fn=fn,
            signature=sig,
            constexprs={"BC": d, "BD": d, "LOWP": True, **cx},
            expect=dict(tc),
            divisible_by_16=(*(k for k, t in sig.items() if t.startswith("*")), "C", "D"),
            num_warps=_warps(d, d),
            num_stages=3,
        )
        for d in (128, 64)
        for name, fn, sig, cx in kernels
    ]


KERNEL_SPECS = _specs()
