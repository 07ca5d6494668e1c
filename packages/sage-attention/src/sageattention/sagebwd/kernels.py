"""Triton kernels of SageBwd: INT8 forward that saves ``(O, lse2)``, and the FlashAttention-2 style
backward (``Δ`` preprocess, a dK/dV kernel, a dQ kernel). The maths, step numbers and notation are
those of :mod:`sageattention.sagebwd.reference` (bit for bit up to float32 summation order).

Every quantized matmul is ``tl.dot`` on int8 operands with int32 accumulation (the interpreter runs
it in float32, exact since ``|sum| <= 127²·256 < 2^24``); ``dP = dO·Vᵀ`` is ``tl.dot`` on fp16
operands with float32 accumulation. Tiles are ``BLOCK_M = 64`` queries × ``BLOCK_N = 64`` keys;
head dims are padded in registers to a power of two (masked loads), any ``D, Dv <= 256``.

Roofline (non-causal; causal halves the FLOPs), ``F = B·Hq·Nq·Nk``:

- forward: ``2·F·D`` INT8 ops (``S``) + ``2·F·Dv`` INT8 ops (``P̃8·V8``); compulsory bytes
  ``B·Hq·Nq·D`` (Q8) + ``B·Hkv·Nk·(D + Dv)`` (K8, V8) + ``4·B·Hq·Nq·(Dv + 1)`` (O, lse2 float32);
- backward: the dK/dV kernel ``2·F·D`` (S) + ``2·F·Dv`` fp16 (dP) + ``2·F·Dv`` (dV) + ``2·F·D``
  (dK) INT8 ops; the dQ kernel recomputes S and dP (``2·F·D`` INT8 + ``2·F·Dv`` fp16) and does
  ``2·F·D`` INT8 ops for dQ: in all ``8·F·D`` INT8 + ``4·F·Dv`` fp16 ops when ``D = Dv`` (FA2 does
  ``10·F·D`` fp16). Compulsory bytes per kernel: Q8, K8 (1 B), dO as fp16 and int8 (3 B), V16
  (2 B), lse2 and Δ (8 B per query), dQ/dK/dV float32 (4 B). Where the launch table picks
  ``TWO_PASS`` (sm80/89, sm90 with a mask) the dK/dV kernel recomputes ``S``: ``2·F·D`` more INT8
  ops and a second read of Q8 and lse2.

Launch options (``num_warps``, ``num_stages``, ``TWO_PASS``) come from one table by arch class, head
dim class and mask (:func:`launch_config`): every entry compiles with 0 spill bytes on sm80, sm89,
sm90a and sm100a (``tools/kernel_report.py``, rows from ``sagebwd/kernel_specs.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference as ref
from ..triton import quant
from . import reference as sref

LOG2E = tl.constexpr(1.4426950408889634)
FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _int8_round(x, scale):
    """``round_half_away(x / scale)`` clamped to ±127 as int8 (0 where ``scale`` is not > 0)."""
    ok = scale > 0.0
    y = tl.div_rn(x, tl.where(ok, scale, 1.0)) + tl.where(x < 0.0, -0.5, 0.5)
    y = tl.minimum(tl.maximum(y, -127.0), 127.0)
    return tl.where(ok, y, 0.0).to(tl.int32).to(tl.int8)


@triton.jit
def _tile_scale(x):
    """Per-tile INT8 scale ``max|x| / 127`` (NaN if the tile holds inf or NaN)."""
    a = tl.abs(x)
    a = tl.where(a <= FLT_MAX, a, float("inf"))
    amax = tl.max(tl.max(a, axis=1), axis=0)
    return tl.where(amax <= FLT_MAX, tl.div_rn(amax, 127.0), float("nan"))


@triton.jit
def _idot(a, b, INTERPRET: tl.constexpr):
    """int8 · int8 with int32 accumulation, as float32."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b, out_dtype=tl.int32).to(tl.float32)


@triton.jit
def _scores(q, kt, qs, ks, rows, cols, rmask, cmask, m_ptrs, MASK_MODE: tl.constexpr,
            IS_CAUSAL: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    """Step 2 on one tile: ``S = (Q8·K8ᵀ)·sq·sk (+ mask·log2 e)``, ``-inf`` outside."""
    s = (_idot(q, kt, INTERPRET) * qs) * ks
    keep = rmask[:, None] & cmask[None, :]
    if MASK_MODE == 1:
        s = s + tl.load(m_ptrs, mask=keep, other=0.0) * LOG2E
    if MASK_MODE == 2:
        keep = keep & (tl.load(m_ptrs, mask=keep, other=0) != 0)
    if IS_CAUSAL:
        keep = keep & (cols[None, :] <= rows[:, None])
    return tl.where(keep, s, float("-inf"))


@triton.jit
def sagebwd_fwd_kernel(
    q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, vs_ptr, mask_ptr, o_ptr, lse_ptr,
    NQ, NK, HQ, HKV, D, DV, NQB, NKB, stride_mb, stride_mh, stride_mm,
    QGROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_MODE: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """Steps 2-4, one program per ``BLOCK_M`` queries of one (b, q head): float32 ``O`` and ``lse2``."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    bh64 = bh.to(tl.int64)
    bhk64 = (b * HKV + hk).to(tl.int64)
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < NQ
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    kb = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + (bh64 * NQ + rows[:, None]) * D + dd[None, :],
                mask=rmask[:, None] & (dd < D)[None, :], other=0)  # fmt: skip
    qs = tl.load(qs_ptr + bh64 * NQB + row0 // QGROUP)
    m_base = mask_ptr + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    hi = NK
    if IS_CAUSAL:
        hi = tl.minimum(NK, row0 + BLOCK_M)
    m_off = (rows - row0)[:, None] * stride_mm + kb[None, :]  # int32 inside one tile
    for start in range(0, hi, BLOCK_N):
        cols = start + kb
        cmask = cols < NK
        kt = tl.load(k_ptr + (bhk64 * NK + cols[None, :]) * D + dd[:, None],
                     mask=cmask[None, :] & (dd < D)[:, None], other=0)  # fmt: skip
        ks = tl.load(ks_ptr + bhk64 * NKB + start // BLOCK_N)
        m_ptrs = (m_base + row0.to(tl.int64) * stride_mm + start) + m_off
        s = _scores(q, kt, qs, ks, rows, cols, rmask, cmask, m_ptrs, MASK_MODE, IS_CAUSAL, INTERPRET)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        sp = tl.div_rn(tl.max(p, axis=1), 127.0)  # exp2(rowmax S - m') / 127: per token
        p8 = _int8_round(p, sp[:, None])
        vt = tl.load(v_ptr + (bhk64 * NK + cols[:, None]) * DV + dv[None, :],
                     mask=cmask[:, None] & (dv < DV)[None, :], other=0)  # fmt: skip
        vs = tl.load(vs_ptr + bhk64 * NKB + start // BLOCK_N)
        acc = acc * alpha[:, None] + (_idot(p8, vt, INTERPRET) * sp[:, None]) * vs
        m_i = m_new
    empty = l_i == 0.0
    o = tl.where(empty[:, None], 0.0, tl.div_rn(acc, tl.where(empty, 1.0, l_i)[:, None]))
    tl.store(o_ptr + (bh64 * NQ + rows[:, None]) * DV + dv[None, :], o,
             mask=rmask[:, None] & (dv < DV)[None, :])  # fmt: skip
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(lse_ptr + bh64 * NQ + rows, lse2, mask=rmask)


@triton.jit
def sagebwd_preprocess_kernel(do_ptr, o_ptr, dlse_ptr, delta_ptr, NQ, DV, HAS_DLSE: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):  # fmt: skip
    """Step 5: ``Δ = rowsum(dO∘O) - dlse`` (float32), one program per ``BLOCK_M`` rows of one (b, h).
    Reads ``B·Hq·Nq·(8·Dv + 4)`` bytes, ``2·B·Hq·Nq·Dv`` FLOPs: memory bound."""
    pid_m = tl.program_id(0)
    bh64 = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < NQ
    dv = tl.arange(0, BLOCK_DV)
    m = rmask[:, None] & (dv < DV)[None, :]
    off = (bh64 * NQ + rows[:, None]) * DV + dv[None, :]
    do = tl.load(do_ptr + off, mask=m, other=0.0)
    o = tl.load(o_ptr + off, mask=m, other=0.0)
    delta = tl.sum(do * o, axis=1)
    if HAS_DLSE:
        delta = delta - tl.load(dlse_ptr + bh64 * NQ + rows, mask=rmask, other=0.0)
    tl.store(delta_ptr + bh64 * NQ + rows, delta, mask=rmask)


@triton.jit
def _dp_tile(do16, vt16, g, INTERPRET: tl.constexpr):
    """Step 6 on one tile: ``dP = (dO16·V16ᵀ)·g`` on fp16 tensor cores, float32 accumulation."""
    if INTERPRET:  # fp16 products are exact in float32: the same sums as the fp16 MMA
        return tl.dot(do16.to(tl.float32), vt16.to(tl.float32)) * g
    return tl.dot(do16, vt16) * g


@triton.jit
def _ds_tile(q, kt, qs, ks, rows, cols, rmask, cmask, m_ptrs, lse_use, delta, do16, vt16, g,
             MASK_MODE: tl.constexpr, IS_CAUSAL: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    """Steps 5-7 on one tile: ``(P, dS)`` float32."""
    s = _scores(q, kt, qs, ks, rows, cols, rmask, cmask, m_ptrs, MASK_MODE, IS_CAUSAL, INTERPRET)
    p = tl.math.exp2(s - lse_use[:, None])
    return p, p * (_dp_tile(do16, vt16, g, INTERPRET) - delta[:, None])


@triton.jit
def _dkdv_loop(
    q_ptr, qs_ptr, mask_ptr, lse_ptr, delta_ptr, do16_ptr, g_ptr, do8_ptr, sdo_ptr, kt, vt16, ks,
    col0, cols, cmask, b, hk, NQ, HQ, HKV, D, DV, NQB, NDOB, stride_mb, stride_mh, stride_mm,
    QGROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_MODE: tl.constexpr, INTERPRET: tl.constexpr,
    WANT_DV: tl.constexpr, WANT_DK: tl.constexpr,
):  # fmt: skip
    """The query loop of the dK/dV kernel for one key tile: ``(dK·log2 e, dV)`` float32, each only
    if asked (the other stays 0 and its work is compiled out)."""
    grp = HQ // HKV
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    tr = tl.arange(0, BLOCK_M)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dvacc = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    lo = 0
    if IS_CAUSAL:
        lo = (col0 // BLOCK_M) * BLOCK_M
    for gi in range(0, grp):
        h = hk * grp + gi
        bh64 = (b * HQ + h).to(tl.int64)
        m_base = mask_ptr + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
        for row0 in range(lo, NQ, BLOCK_M):
            rows = row0 + tr
            rmask = rows < NQ
            q = tl.load(q_ptr + (bh64 * NQ + rows[:, None]) * D + dd[None, :],
                        mask=rmask[:, None] & (dd < D)[None, :], other=0)  # fmt: skip
            qs = tl.load(qs_ptr + bh64 * NQB + row0 // QGROUP)
            lse = tl.load(lse_ptr + bh64 * NQ + rows, mask=rmask, other=0.0)
            lse_use = tl.where(lse == float("-inf"), 0.0, lse)
            m_ptrs = m_base + rows[:, None].to(tl.int64) * stride_mm + cols[None, :]
            s = _scores(q, kt, qs, ks, rows, cols, rmask, cmask, m_ptrs, MASK_MODE, IS_CAUSAL, INTERPRET)
            p = tl.math.exp2(s - lse_use[:, None])
            dmask = rmask[:, None] & (dv < DV)[None, :]
            do_off = (bh64 * NQ + rows[:, None]) * DV + dv[None, :]
            if WANT_DV:
                sp = _tile_scale(p)
                p8 = _int8_round(p, sp)
                do8 = tl.load(do8_ptr + do_off, mask=dmask, other=0)
                sdo = tl.load(sdo_ptr + bh64 * NDOB + row0 // BLOCK_M)
                dvacc += (_idot(tl.trans(p8), do8, INTERPRET) * sp) * sdo
            if WANT_DK:
                g = tl.load(g_ptr + bh64)
                delta = tl.load(delta_ptr + bh64 * NQ + rows, mask=rmask, other=0.0)
                do16 = tl.load(do16_ptr + do_off, mask=dmask, other=0.0)
                ds = p * (_dp_tile(do16, vt16, g, INTERPRET) - delta[:, None])
                sds = _tile_scale(ds)
                ds8 = _int8_round(ds, sds)
                dk += (_idot(tl.trans(ds8), q, INTERPRET) * sds) * qs
    return dk, dvacc


@triton.jit
def sagebwd_dkdv_kernel(
    q_ptr, k_ptr, v16_ptr, qs_ptr, ks_ptr, mask_ptr, lse_ptr, delta_ptr, do16_ptr, g_ptr, do8_ptr,
    sdo_ptr, dk_ptr, dv_ptr, NQ, NK, HQ, HKV, D, DV, NQB, NKB, NDOB, stride_mb, stride_mh, stride_mm,
    QGROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_MODE: tl.constexpr, INTERPRET: tl.constexpr,
    TWO_PASS: tl.constexpr,
):  # fmt: skip
    """Steps 8 and 10, one program per ``BLOCK_N`` keys of one (b, kv head), looping over the query
    heads of its GQA group and their query tiles (no atomics): float32 ``dK``, ``dV``.

    ``TWO_PASS``: a dV pass then a dK pass over the query tiles instead of one fused pass, so only
    one ``BLOCK_N × D`` accumulator is live at a time (no register spills where the fused loop
    spills); the price is recomputing ``S`` (``2·BLOCK_M·BLOCK_N·D`` more INT8 ops per tile and a
    second read of Q8 and lse). Same operations on every element and the same summation order."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    bhk64 = bhk.to(tl.int64)
    col0 = pid_n * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    cmask = cols < NK
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    kt = tl.load(k_ptr + (bhk64 * NK + cols[None, :]) * D + dd[:, None],
                 mask=cmask[None, :] & (dd < D)[:, None], other=0)  # fmt: skip
    ks = tl.load(ks_ptr + bhk64 * NKB + pid_n)
    vt16 = tl.load(v16_ptr + (bhk64 * NK + cols[None, :]) * DV + dv[:, None],
                   mask=cmask[None, :] & (dv < DV)[:, None], other=0.0)  # fmt: skip
    dk_ptrs = dk_ptr + (bhk64 * NK + cols[:, None]) * D + dd[None, :]
    dk_mask = cmask[:, None] & (dd < D)[None, :]
    dv_ptrs = dv_ptr + (bhk64 * NK + cols[:, None]) * DV + dv[None, :]
    dv_mask = cmask[:, None] & (dv < DV)[None, :]
    if TWO_PASS:
        _, dvacc = _dkdv_loop(
            q_ptr, qs_ptr, mask_ptr, lse_ptr, delta_ptr, do16_ptr, g_ptr, do8_ptr, sdo_ptr, kt, vt16,
            ks, col0, cols, cmask, b, hk, NQ, HQ, HKV, D, DV, NQB, NDOB, stride_mb, stride_mh,
            stride_mm, QGROUP, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, IS_CAUSAL, MASK_MODE, INTERPRET,
            True, False,
        )  # fmt: skip
        tl.store(dv_ptrs, dvacc, mask=dv_mask)
        dk, _ = _dkdv_loop(
            q_ptr, qs_ptr, mask_ptr, lse_ptr, delta_ptr, do16_ptr, g_ptr, do8_ptr, sdo_ptr, kt, vt16,
            ks, col0, cols, cmask, b, hk, NQ, HQ, HKV, D, DV, NQB, NDOB, stride_mb, stride_mh,
            stride_mm, QGROUP, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, IS_CAUSAL, MASK_MODE, INTERPRET,
            False, True,
        )  # fmt: skip
    else:
        dk, dvacc = _dkdv_loop(
            q_ptr, qs_ptr, mask_ptr, lse_ptr, delta_ptr, do16_ptr, g_ptr, do8_ptr, sdo_ptr, kt, vt16,
            ks, col0, cols, cmask, b, hk, NQ, HQ, HKV, D, DV, NQB, NDOB, stride_mb, stride_mh,
            stride_mm, QGROUP, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, IS_CAUSAL, MASK_MODE, INTERPRET,
            True, True,
        )  # fmt: skip
        tl.store(dv_ptrs, dvacc, mask=dv_mask)
    tl.store(dk_ptrs, dk / LOG2E, mask=dk_mask)


@triton.jit
def sagebwd_dq_kernel(
    q_ptr, k_ptr, v16_ptr, qs_ptr, ks_ptr, mask_ptr, lse_ptr, delta_ptr, do16_ptr, g_ptr, dq_ptr,
    NQ, NK, HQ, HKV, D, DV, NQB, NKB, stride_mb, stride_mh, stride_mm, sm_scale,
    QGROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_MODE: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """Step 9 (without the ``dlse·mean(K)`` term), one program per ``BLOCK_M`` queries of one
    (b, q head): float32 ``dQ``."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    bh64 = bh.to(tl.int64)
    bhk64 = (b * HKV + hk).to(tl.int64)
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < NQ
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    kb = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + (bh64 * NQ + rows[:, None]) * D + dd[None, :],
                mask=rmask[:, None] & (dd < D)[None, :], other=0)  # fmt: skip
    qs = tl.load(qs_ptr + bh64 * NQB + row0 // QGROUP)
    lse = tl.load(lse_ptr + bh64 * NQ + rows, mask=rmask, other=0.0)
    lse_use = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(delta_ptr + bh64 * NQ + rows, mask=rmask, other=0.0)
    do16 = tl.load(do16_ptr + (bh64 * NQ + rows[:, None]) * DV + dv[None, :],
                   mask=rmask[:, None] & (dv < DV)[None, :], other=0.0)  # fmt: skip
    g = tl.load(g_ptr + bh64)
    m_base = mask_ptr + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = NK
    if IS_CAUSAL:
        hi = tl.minimum(NK, row0 + BLOCK_M)
    for start in range(0, hi, BLOCK_N):
        cols = start + kb
        cmask = cols < NK
        kt = tl.load(k_ptr + (bhk64 * NK + cols[None, :]) * D + dd[:, None],
                     mask=cmask[None, :] & (dd < D)[:, None], other=0)  # fmt: skip
        ks = tl.load(ks_ptr + bhk64 * NKB + start // BLOCK_N)
        vt16 = tl.load(v16_ptr + (bhk64 * NK + cols[None, :]) * DV + dv[:, None],
                       mask=cmask[None, :] & (dv < DV)[:, None], other=0.0)  # fmt: skip
        m_ptrs = m_base + rows[:, None].to(tl.int64) * stride_mm + cols[None, :]
        _p, ds = _ds_tile(q, kt, qs, ks, rows, cols, rmask, cmask, m_ptrs, lse_use, delta, do16,
                         vt16, g, MASK_MODE, IS_CAUSAL, INTERPRET)  # fmt: skip
        sds = _tile_scale(ds)
        ds8 = _int8_round(ds, sds)
        dq += (_idot(ds8, tl.trans(kt), INTERPRET) * sds) * ks
    dq = dq * sm_scale
    tl.store(dq_ptr + (bh64 * NQ + rows[:, None]) * D + dd[None, :], dq,
             mask=rmask[:, None] & (dd < D)[None, :])  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Host side


def _mask_args(mask: torch.Tensor | None, shape: tuple[int, int, int, int], dummy: torch.Tensor):
    """``(mode, pointer, (stride_b, stride_h, stride_m))`` of an additive float32 or bool mask."""
    if mask is None:
        return 0, dummy, (0, 0, 0)
    mask = mask.expand(shape)
    if mask.stride(-1) != 1:
        mask = mask.contiguous()
    mode = 2 if mask.dtype == torch.bool else 1
    ptr = mask.view(torch.uint8) if mask.dtype == torch.bool else mask.float()
    if ptr.stride() != mask.stride():
        ptr = ptr.contiguous()
    return mode, ptr, ptr.stride()[:3]


def _blocks(d: int, dv: int) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))


ARCHS = (80, 89, 90, 100)
"""Arch classes of the launch table (``tools/kernel_report`` compiles sm80, sm89, sm90a, sm100a)."""

# Launch table: (kernel, arch class, head dim class, masked) -> (num_warps, num_stages, TWO_PASS of the
# dK/dV kernel). Head dim class "d64": max(BLOCK_D, BLOCK_DV) <= 64, "d128": <= 128, "d256": larger;
# masked: an additive or bool attn_mask is passed. Each d64/d128 entry is a config whose AOT compile
# for that arch has 0 spill bytes (``tools/kernel_report.py``; sageattention.sagebwd.kernel_specs
# builds its rows from this table and tests/test_sagebwd_specs.py checks them against the launches).
# d256 only fits shared memory (forward and dK/dV spill 0.06-1.2 KB there; not in the report). Levers: 8 warps
# and 1 stage for a masked forward (the mask tile is loaded in the MMA layout: 4 warps spill
# 0.7-3 KB), two dK/dV passes on sm80/89 (and sm90 with a mask), 2 stages for dK/dV on sm100 at d64.
# Shared memory stays <= 99 KB on the sm89 class (sm86/89: 99 KB per block) and, for d <= 128, on
# sm80 too (d256 dQ on sm80 uses 3 stages: 147 KB of A100's 163 KB, 0 spills).
_CLASSES = ("d64", "d128", "d256")


def _table_entry(kernel: str, arch: int, hclass: str, masked: bool) -> tuple[int, int, bool]:
    if kernel == "fwd":
        return (8, 1, False) if masked else (4, 3, False)
    if kernel == "preprocess":
        return (4, 1, False)
    if kernel == "dq":  # 3 stages with a mask at d128 need 104-129 KB of shared memory: > sm86/89's 99
        if hclass == "d256":
            return (8, {80: 2 if masked else 3, 89: 1}.get(arch, 2), False)
        return (4, 3, False) if hclass == "d64" else (8, 2 if masked else 3, False)
    if arch in (80, 89) or (arch == 90 and masked):  # dkdv
        return (8, 1, True)
    if arch == 100 and hclass == "d64":
        return (8, 2, False)
    return (8, 1, False)


KERNELS = ("fwd", "preprocess", "dkdv", "dq")
_LAUNCH: dict[tuple[str, int, str, bool], tuple[int, int, bool]] = {
    (k, a, c, m): _table_entry(k, a, c, m)
    for k in KERNELS
    for a in ARCHS
    for c in _CLASSES
    for m in (False, True)
}


def arch_class(capability: tuple[int, int]) -> int:
    """The launch-table arch of a CUDA compute capability: sm80/87 -> 80; sm86, sm89 and consumer
    Blackwell (sm120: mma.sync, 99 KB of shared memory per block like Ada) -> 89; sm90 -> 90;
    sm100/103/110 -> 100."""
    major, minor = capability
    if major == 8:
        return 89 if minor in (6, 9) else 80
    if major == 9:
        return 90
    if major in (10, 11):
        return 100
    return 89 if major >= 12 else 80


def head_class(d: int, dv: int) -> str:
    """``"d64"``, ``"d128"`` or ``"d256"``: the larger padded head dim is <= 64, <= 128 or more."""
    block = max(_blocks(d, dv))
    return "d64" if block <= 64 else "d128" if block <= 128 else "d256"


def launch_config(kernel: str, arch: int, d: int, dv: int, masked: bool = False) -> dict:
    """Launch options of one SageBwd kernel: ``num_warps``, ``num_stages`` (and ``TWO_PASS`` for
    ``"dkdv"``) for arch class ``arch`` (:data:`ARCHS`), head dims ``d``, ``dv`` and whether an
    attention mask is passed."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if not isinstance(d, int) or not isinstance(dv, int) or d < 1 or dv < 1:
        raise ValueError(f"head dims d, dv must be positive ints, got {d!r}, {dv!r}")
    warps, stages, two_pass = _LAUNCH[kernel, arch, head_class(d, dv), bool(masked)]
    cfg = {"num_warps": warps, "num_stages": stages}
    if kernel == "dkdv":
        cfg["TWO_PASS"] = two_pass
    return cfg


def _arch_of(x: torch.Tensor) -> int:
    """Launch-table arch of a tensor's device (80 off CUDA: the interpreter ignores it)."""
    return arch_class(torch.cuda.get_device_capability(x.device)) if x.is_cuda else 80


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    is_causal: bool,
    mask: torch.Tensor | None,
    smooth_k: bool,
) -> tuple[torch.Tensor, torch.Tensor, sref.SageBwdSaved]:
    """Step 1 with the package's Triton quantizers, then ``sagebwd_fwd_kernel``. HND views in
    (last dim contiguous); returns ``(O float32, lse natural, saved)`` as ``reference.sagebwd_forward``."""
    b, hq, nq, d = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[3]
    dev = q.device
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    km = (
        quant.token_reduce(k, torch.empty((b, hkv, d), dtype=torch.float32, device=dev), True)
        if smooth_k
        else None
    )
    q8 = torch.empty((b, hq, nq, d), dtype=torch.int8, device=dev)
    qs = torch.empty((b, hq, -(-nq // ref.BLKQ)), dtype=torch.float32, device=dev)
    quant.quant_int8(q, None, q8, qs, ref.BLKQ, sm_scale * ref.LOG2E)
    k8 = torch.empty((b, hkv, nk, d), dtype=torch.int8, device=dev)
    ks = torch.empty((b, hkv, -(-nk // sref.BLOCK_N)), dtype=torch.float32, device=dev)
    quant.quant_int8(k, km, k8, ks, sref.BLOCK_N, 1.0)
    v8 = torch.empty((b, hkv, nk, dv), dtype=torch.int8, device=dev)
    vs = torch.empty_like(ks)
    quant.quant_int8(v, None, v8, vs, sref.BLOCK_N, 1.0)
    o = torch.empty((b, hq, nq, dv), dtype=torch.float32, device=dev)
    lse2 = torch.empty((b, hq, nq), dtype=torch.float32, device=dev)
    mode, mptr, mstr = _mask_args(mask, (b, hq, nq, nk), qs)
    bd, bdv = _blocks(d, dv)
    sagebwd_fwd_kernel[(triton.cdiv(nq, sref.BLOCK_M), b * hq)](
        q8, k8, v8, qs, ks, vs, mptr, o, lse2, nq, nk, hq, hkv, d, dv, qs.shape[-1], ks.shape[-1], *mstr,
        QGROUP=ref.BLKQ, BLOCK_M=sref.BLOCK_M, BLOCK_N=sref.BLOCK_N, BLOCK_D=bd, BLOCK_DV=bdv,
        IS_CAUSAL=is_causal, MASK_MODE=mode, INTERPRET=not q.is_cuda,
        **launch_config("fwd", _arch_of(q), d, dv, mode != 0),
    )  # fmt: skip
    km4 = km[:, :, None, :] if km is not None else None
    saved = sref.SageBwdSaved(q8=q8, qs=qs, k8=k8, ks=ks, km=km4, v=v, o=o, lse2=lse2)
    return o, ref.lse_natural(lse2, q, km4, sm_scale), saved


def backward(
    saved: sref.SageBwdSaved,
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    *,
    sm_scale: float,
    is_causal: bool,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 5-10: preprocess, dK/dV kernel, dQ kernel. Returns float32 ``(dQ, dK, dV)`` as
    ``reference.sagebwd_backward``."""
    q8, k8, v, o, lse2 = saved.q8, saved.k8, saved.v, saved.o, saved.lse2
    b, hq, nq, d = q8.shape
    hkv, nk, dv = k8.shape[1], k8.shape[2], v.shape[3]
    dev = q8.device
    do = do.float().contiguous()
    do16, v16, g = sref.do_fp16(do, v)
    v16 = v16.contiguous()
    do8 = torch.empty((b, hq, nq, dv), dtype=torch.int8, device=dev)
    sdo = torch.empty((b, hq, -(-nq // sref.BLOCK_M)), dtype=torch.float32, device=dev)
    quant.quant_int8(do, None, do8, sdo, sref.BLOCK_M, 1.0)
    _, bdv = _blocks(d, dv)
    delta = torch.empty((b, hq, nq), dtype=torch.float32, device=dev)
    if dlse is not None:
        dlse = torch.where(lse2 == float("-inf"), 0.0, dlse.float()).contiguous()
    grid_q = (triton.cdiv(nq, sref.BLOCK_M), b * hq)
    arch = _arch_of(q8)
    sagebwd_preprocess_kernel[grid_q](
        do, o, dlse if dlse is not None else delta, delta, nq, dv, HAS_DLSE=dlse is not None,
        BLOCK_M=sref.BLOCK_M, BLOCK_DV=bdv, **launch_config("preprocess", arch, d, dv),
    )  # fmt: skip
    mode, mptr, mstr = _mask_args(mask, (b, hq, nq, nk), delta)
    bd, bdv = _blocks(d, dv)
    g = g.reshape(b, hq).contiguous()
    dk = torch.empty((b, hkv, nk, d), dtype=torch.float32, device=dev)
    dvv = torch.empty((b, hkv, nk, dv), dtype=torch.float32, device=dev)
    common = dict(
        QGROUP=ref.BLKQ, BLOCK_M=sref.BLOCK_M, BLOCK_N=sref.BLOCK_N, BLOCK_D=bd, BLOCK_DV=bdv,
        IS_CAUSAL=is_causal, MASK_MODE=mode, INTERPRET=not q8.is_cuda,
    )  # fmt: skip
    nqb, nkb = saved.qs.shape[-1], saved.ks.shape[-1]
    sagebwd_dkdv_kernel[(triton.cdiv(nk, sref.BLOCK_N), b * hkv)](
        q8, k8, v16, saved.qs, saved.ks, mptr, lse2, delta, do16, g, do8, sdo, dk, dvv,
        nq, nk, hq, hkv, d, dv, nqb, nkb, sdo.shape[-1], *mstr, **common,
        **launch_config("dkdv", arch, d, dv, mode != 0),
    )  # fmt: skip
    dq = torch.empty((b, hq, nq, d), dtype=torch.float32, device=dev)
    sagebwd_dq_kernel[grid_q](
        q8, k8, v16, saved.qs, saved.ks, mptr, lse2, delta, do16, g, dq,
        nq, nk, hq, hkv, d, dv, nqb, nkb, *mstr, float(sm_scale), **common,
        **launch_config("dq", arch, d, dv, mode != 0),
    )  # fmt: skip
    if dlse is not None and saved.km is not None:
        km = saved.km.repeat_interleave(hq // hkv, dim=1) if hkv != hq else saved.km
        dq = dq + (sm_scale * dlse)[..., None] * km
    return dq, dk, dvv
