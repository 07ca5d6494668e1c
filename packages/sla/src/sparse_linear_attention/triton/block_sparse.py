"""Fused block-sparse softmax attention (SLA's sparse branch), forward and backward, in Triton.

For every Q block ``i`` (``blkq`` rows) the caller's ``block_map[b, h, i, :]`` selects K blocks
(``blkk`` keys each); the output of a row ``r`` in block ``i`` is softmax attention restricted to the
keys of the selected blocks ``S_i`` (SLA paper, Eq. 3-4, sparse branch)::

    s_rj = sm_scale · q_r·k_j,   lse_r = log Σ_{j ∈ S_i} exp(s_rj),
    o_r  = Σ_{j ∈ S_i} exp(s_rj − lse_r) v_j.

Kernels (FlashAttention-2 schedule, exp2 online softmax in fp32, ``t`` = selected key tiles):

- ``bsa_fwd_kernel``: one program per (Q tile, b·h), loops over the LUT of its Q block's selected K
  blocks. FLOPs ``4·L·D·(keys selected)`` per (b, h); bytes ``2·L·D`` (Q read, O written) +
  ``2·D·(keys selected)·(Q tiles)`` (K, V re-read per Q tile) times the element size, + 4·L (lse).
- ``bsa_bwd_preprocess_kernel``: ``Δ_r = Σ_d dO_rd·O_rd − dlse_r`` (fp32). FLOPs ``2·L·D``; bytes
  ``2·L·D`` elements + 8·L.
- ``bsa_bwd_dkdv_kernel``: one program per (K tile, b·h), loops over the transposed LUT (the Q blocks
  that selected its K block): ``P = exp2(s·log2e − lse·log2e)``, ``dV += Pᵀ dO``, ``dP = dO Vᵀ``,
  ``dS = P∘(dP − Δ)``, ``dK += dSᵀ Q·sm_scale``. FLOPs ``8·L·D·(keys selected)`` (4 matmuls);
  bytes ``4·L·D`` (K, V read, dK, dV written) + ``2·D·(rows selecting)·(K tiles)`` (Q, dO re-read).
- ``bsa_bwd_dq_kernel``: one program per (Q tile, b·h) over its LUT: ``dQ += dS K·sm_scale``. FLOPs
  ``6·L·D·(keys selected)`` (QKᵀ, dO Vᵀ, dS K); bytes ``3·L·D`` (Q, dO read, dQ written) +
  ``2·D·(keys selected)·(Q tiles)`` (K, V re-read).

Tiles (``BLOCK_M`` rows × ``BLOCK_N`` keys) divide the SLA blocks, so a program handles a slice of
one Q block (or K block) and its LUT row. Rows ≥ L are never stored, keys ≥ L get score −inf. Head
dims ≤ 128 are zero-padded to a power of two ≥ 16 in registers (masked loads); 64 and 128 need no
padding. A row whose block selects nothing gets ``o = 0`` and ``lse = −inf`` (the limit of an empty
softmax sum) and zero gradients. fp16/bf16 inputs run the matmuls on tensor cores with fp32
accumulation and P cast to the input dtype for ``P·V`` / ``Pᵀ·dO`` (as FlashAttention does); fp32
inputs run exact fp32 (``ieee``) matmuls. In the Triton interpreter (CPU tests) every tile is upcast
to fp32 first: the interpreter's bf16 ``tl.dot`` and fp32→bf16 stores are not faithful.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from shared_kernels._alloc import new_empty

from .._checks import cdiv, check_block, check_block_map, check_qkv, check_tensor

__all__ = [
    "MAX_HEAD_DIM",
    "SUPPORTED_BLOCKS",
    "LaunchConfig",
    "block_sparse_attention",
    "build_luts",
    "launch_config",
]

SUPPORTED_BLOCKS = (16, 32, 64, 128)
MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def bsa_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    lse_ptr,
    lut_ptr,
    cnt_ptr,
    L,
    H,
    MQ,
    MK,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_ob,
    stride_oh,
    stride_ol,
    qk_scale,  # sm_scale · log2(e)
    HEAD_DIM: tl.constexpr,
    BLKQ: tl.constexpr,
    BLKK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: tiles to fp32 before every dot
    DOT_PREC: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" (unused) for 16-bit inputs
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64: B·H·L·D may exceed 2**31
    h = (bh % H).to(tl.int64)
    qb = (pid_m * BLOCK_M) // BLKQ
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < L

    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh + offs_d[None, :]
    v_base = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :]
    row = bh.to(tl.int64) * MQ + qb
    n_sel = tl.load(cnt_ptr + row)
    lut_row = lut_ptr + row * MK

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    SUBS: tl.constexpr = BLKK // BLOCK_N
    for it in range(0, n_sel * SUBS):
        kb = tl.load(lut_row + it // SUBS)
        n_idx = kb * BLKK + (it % SUBS) * BLOCK_N + offs_n
        n_ok = n_idx < L
        k = tl.load(k_base + n_idx[:, None] * stride_kl, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + n_idx[:, None] * stride_vl, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        # the first tile of every selected block holds a key < L, so m_new is finite from here on
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    empty = l_i == 0.0  # no selected block: o = 0, lse = -inf
    inv = tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, l_i))
    o = acc * inv[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
    tl.store(
        o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :],
        o.to(o_ptr.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )
    tl.store(lse_ptr + bh.to(tl.int64) * L + offs_m, lse, mask=m_ok)


@triton.jit
def bsa_bwd_preprocess_kernel(
    o_ptr,
    do_ptr,
    dlse_ptr,
    delta_ptr,
    L,
    H,
    stride_ob,
    stride_oh,
    stride_ol,
    stride_dob,
    stride_doh,
    stride_dol,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64: B·H·L·D may exceed 2**31
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < L) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(
        o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :],
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol + offs_d[None, :],
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(dlse_ptr + bh.to(tl.int64) * L + offs_m, mask=offs_m < L, other=0.0)
    tl.store(delta_ptr + bh.to(tl.int64) * L + offs_m, delta, mask=offs_m < L)


@triton.jit
def bsa_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    lut_t_ptr,
    cnt_t_ptr,
    L,
    H,
    MQ,
    MK,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_dob,
    stride_doh,
    stride_dol,
    stride_dkb,
    stride_dkh,
    stride_dkl,
    stride_dvb,
    stride_dvh,
    stride_dvl,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLKQ: tl.constexpr,
    BLKK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64: B·H·L·D may exceed 2**31
    h = (bh % H).to(tl.int64)
    kb = (pid_n * BLOCK_N) // BLKK
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < L
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(
        k_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    v = tl.load(
        v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vl + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_base = q_ptr + b * stride_qb + h * stride_qh + offs_d[None, :]
    do_base = do_ptr + b * stride_dob + h * stride_doh + offs_d[None, :]
    stat_base = bh.to(tl.int64) * L
    col = bh.to(tl.int64) * MK + kb
    n_sel = tl.load(cnt_t_ptr + col)
    lut_col = lut_t_ptr + col * MQ
    qk_scale = sm_scale * 1.4426950408889634

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    SUBS: tl.constexpr = BLKQ // BLOCK_M
    for it in range(0, n_sel * SUBS):
        qb = tl.load(lut_col + it // SUBS)
        m_idx = qb * BLKQ + (it % SUBS) * BLOCK_M + offs_m
        m_ok = m_idx < L
        q = tl.load(q_base + m_idx[:, None] * stride_ql, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(do_base + m_idx[:, None] * stride_dol, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        # rows >= L: lse = +inf -> P = 0 (every row < L of a selecting Q block has a finite lse)
        lse2 = tl.load(lse_ptr + stat_base + m_idx, mask=m_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_ptr + stat_base + m_idx, mask=m_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(s_t - lse2[None, :])
        p_t = tl.where(n_ok[:, None], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)

    dk *= sm_scale
    tl.store(
        dk_ptr + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkl + offs_d[None, :],
        dk.to(dk_ptr.dtype.element_ty),
        mask=kv_mask,
    )
    tl.store(
        dv_ptr + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvl + offs_d[None, :],
        dv.to(dv_ptr.dtype.element_ty),
        mask=kv_mask,
    )


@triton.jit
def bsa_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    lut_ptr,
    cnt_ptr,
    L,
    H,
    MQ,
    MK,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_dob,
    stride_doh,
    stride_dol,
    stride_dqb,
    stride_dqh,
    stride_dql,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLKQ: tl.constexpr,
    BLKK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64: B·H·L·D may exceed 2**31
    h = (bh % H).to(tl.int64)
    qb = (pid_m * BLOCK_M) // BLKQ
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < L
    qd_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :],
        mask=qd_mask,
        other=0.0,
    )
    do = tl.load(
        do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol + offs_d[None, :],
        mask=qd_mask,
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    stat_base = bh.to(tl.int64) * L
    lse2 = tl.load(lse_ptr + stat_base + offs_m, mask=m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + stat_base + offs_m, mask=m_ok, other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh + offs_d[None, :]
    v_base = v_ptr + b * stride_vb + h * stride_vh + offs_d[None, :]
    row = bh.to(tl.int64) * MQ + qb
    n_sel = tl.load(cnt_ptr + row)
    lut_row = lut_ptr + row * MK
    qk_scale = sm_scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    SUBS: tl.constexpr = BLKK // BLOCK_N
    for it in range(0, n_sel * SUBS):
        kb = tl.load(lut_row + it // SUBS)
        n_idx = kb * BLKK + (it % SUBS) * BLOCK_N + offs_n
        n_ok = n_idx < L
        k = tl.load(k_base + n_idx[:, None] * stride_kl, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + n_idx[:, None] * stride_vl, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        p = tl.math.exp2(s - lse2[:, None])
        p = tl.where(n_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)

    dq *= sm_scale
    tl.store(
        dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dql + offs_d[None, :],
        dq.to(dq_ptr.dtype.element_ty),
        mask=qd_mask,
    )


# --------------------------------------------------------------------------------------------------
# Launch configuration


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class LaunchConfig(NamedTuple):
    """Tile shape and launch options of one kernel (``BLOCK_M`` rows × ``BLOCK_N`` keys)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def launch_config(kernel: str, blkq: int, blkk: int, head_dim: int, interpret: bool = False) -> LaunchConfig:
    """Launch configuration of ``kernel`` ∈ {"fwd", "dq", "dkdv"} for SLA blocks ``blkq × blkk``.

    Tiles divide the blocks. GPU (the shapes that ``kernel_specs`` compiles without spills): forward
    ``min(blkq, 128 if D ≤ 64 else 64) × min(blkk, 64)``; dQ ``min(blkq, 64) × min(blkk, 64 if D ≤ 64
    else 32)``; dK/dV ``min(blkq, 64 if D ≤ 64 else 32)`` rows × ``min(blkk, 64)`` keys (it holds
    K, V, dK and dV tiles). The interpreter takes whole blocks (fewer, larger numpy operations).
    """
    if kernel not in ("fwd", "dq", "dkdv"):
        raise ValueError(f"kernel={kernel!r} is not supported; supported: 'fwd', 'dq', 'dkdv'")
    if interpret:
        return LaunchConfig(blkq, blkk, 4, 1)
    small = head_dim <= 64
    if kernel == "fwd":
        bm, bn = min(blkq, 128 if small else 64), min(blkk, 64)
    elif kernel == "dq":
        bm, bn = min(blkq, 64), min(blkk, 64 if small else 32)
    else:
        bm, bn = min(blkq, 64 if small else 32), min(blkk, 64)
    warps = 8 if bm * bn >= 128 * 64 or (kernel == "dkdv" and not small) else 4
    return LaunchConfig(bm, bn, warps, 2)


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _dot_prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def build_luts(block_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LUTs of a boolean ``block_map [B, H, Mq, Mk]`` (int32, contiguous).

    Returns ``(lut [B,H,Mq,Mk], cnt [B,H,Mq], lut_t [B,H,Mk,Mq], cnt_t [B,H,Mk])``: ``lut[..., i, :cnt]``
    lists the K blocks selected by Q block ``i`` in ascending order (the rest is padding),
    ``lut_t[..., j, :cnt_t]`` the Q blocks that selected K block ``j``.
    """

    def one(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cnt = m.sum(-1, dtype=torch.int32)
        # stable sort of "not selected": selected indices first, each group in ascending order
        idx = torch.sort((~m).to(torch.uint8), dim=-1, stable=True).indices.to(torch.int32)
        return idx.contiguous(), cnt.contiguous()

    lut, cnt = one(block_map)
    lut_t, cnt_t = one(block_map.transpose(-1, -2))
    return lut, cnt, lut_t, cnt_t


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _out(shape, dtype, device, interpret):
    # interpreter: fp32 -> 16-bit stores are not faithfully rounded, so write fp32 and let torch round
    return new_empty(shape, torch.float32 if interpret else dtype, device)


def _forward(q, k, v, luts, sm_scale, blkq, blkk):
    b, h, seq, d = q.shape
    interpret = _interpreting()
    lut, cnt = luts[0], luts[1]
    mq, mk = lut.shape[2], lut.shape[3]
    cfg = launch_config("fwd", blkq, blkk, d, interpret)
    o = _out(q.shape, q.dtype, q.device, interpret)
    lse = new_empty((b, h, seq), torch.float32, q.device)
    bsa_fwd_kernel[(triton.cdiv(seq, cfg.block_m), b * h)](
        q,
        k,
        v,
        o,
        lse,
        lut,
        cnt,
        seq,
        h,
        mq,
        mk,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(o),
        sm_scale * _LOG2E,
        HEAD_DIM=d,
        BLKQ=blkq,
        BLKK=blkk,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=_block_d(d),
        UPCAST=interpret,
        DOT_PREC=_dot_prec(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return o.to(q.dtype), lse


def _backward(q, k, v, o, lse, do, dlse, luts, sm_scale, blkq, blkk):
    b, h, seq, d = q.shape
    interpret = _interpreting()
    lut, cnt, lut_t, cnt_t = luts
    mq, mk = lut.shape[2], lut.shape[3]
    bd = _block_d(d)
    prec = _dot_prec(q.dtype)

    delta = new_empty((b, h, seq), torch.float32, q.device)
    pre_m = 64 if not interpret else max(16, min(128, triton.next_power_of_2(seq)))
    bsa_bwd_preprocess_kernel[(triton.cdiv(seq, pre_m), b * h)](
        o,
        do,
        dlse if dlse is not None else delta,
        delta,
        seq,
        h,
        *_strides(o),
        *_strides(do),
        HEAD_DIM=d,
        BLOCK_M=pre_m,
        BLOCK_D=bd,
        HAS_DLSE=dlse is not None,
        num_warps=4,
    )

    dk = _out(k.shape, k.dtype, k.device, interpret)
    dv = _out(v.shape, v.dtype, v.device, interpret)
    cfg = launch_config("dkdv", blkq, blkk, d, interpret)
    bsa_bwd_dkdv_kernel[(triton.cdiv(seq, cfg.block_n), b * h)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        lut_t,
        cnt_t,
        seq,
        h,
        mq,
        mk,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dk),
        *_strides(dv),
        sm_scale,
        HEAD_DIM=d,
        BLKQ=blkq,
        BLKK=blkk,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=bd,
        UPCAST=interpret,
        DOT_PREC=prec,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )

    dq = _out(q.shape, q.dtype, q.device, interpret)
    cfg = launch_config("dq", blkq, blkk, d, interpret)
    bsa_bwd_dq_kernel[(triton.cdiv(seq, cfg.block_m), b * h)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        lut,
        cnt,
        seq,
        h,
        mq,
        mk,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dq),
        sm_scale,
        HEAD_DIM=d,
        BLKQ=blkq,
        BLKK=blkk,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=bd,
        UPCAST=interpret,
        DOT_PREC=prec,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------------
# Autograd and public API


class BlockSparseAttentionFunction(torch.autograd.Function):
    """``(q, k, v, block_map, sm_scale, blkq, blkk) -> (o, lse)``; gradients for q, k, v (and through
    ``lse`` when it is used: ``∂lse_r/∂s_rj = P_rj``, folded into Δ). Inputs are checked by
    :func:`block_sparse_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, block_map, sm_scale, blkq, blkk):
        luts = build_luts(block_map)
        o, lse = _forward(q, k, v, luts, sm_scale, blkq, blkk)
        ctx.save_for_backward(q, k, v, o, lse, *luts)
        ctx.cfg = (sm_scale, blkq, blkk)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, *luts = ctx.saved_tensors
        sm_scale, blkq, blkk = ctx.cfg
        if do is None:
            do = torch.zeros_like(o)
        do = do if do.stride(-1) == 1 else do.contiguous()
        if dlse is not None:
            dlse = dlse.float().contiguous()
        dq, dk, dv = _backward(q, k, v, o, lse, do, dlse, luts, sm_scale, blkq, blkk)
        return dq, dk, dv, None, None, None, None


def _check_inputs(q, k, v, block_map, sm_scale, blkq, blkk) -> float:
    _b, _h, seq, d = check_qkv(q, k, v)
    check_tensor("q", q, dtypes=_DTYPES)  # float64: use reference.block_sparse_attention_ref
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D={d} is not supported; supported: 1..{MAX_HEAD_DIM} (64, 128 unpadded)")
    for name, blk in (("blkq", blkq), ("blkk", blkk)):
        check_block(name, blk)
        if blk not in SUPPORTED_BLOCKS:
            raise ValueError(
                f"{name}={blk} is not supported; supported: {', '.join(map(str, SUPPORTED_BLOCKS))}"
            )
    check_block_map(block_map, _b, _h, cdiv(seq, blkq), cdiv(seq, blkk), q.device)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
    sm_scale = float(sm_scale)
    if not (math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale must be a finite float > 0, got {sm_scale}")
    if q.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"the Triton kernels need CUDA tensors, got {q.device} (on the CPU use "
            "reference.block_sparse_attention_ref, or set TRITON_INTERPRET=1 before importing triton "
            "to run them in the slow interpreter)"
        )
    return sm_scale


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_map: torch.Tensor,
    *,
    sm_scale: float | None = None,
    blkq: int = 64,
    blkk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse softmax attention over the K blocks that ``block_map`` selects (SLA Eq. 3-4).

    Args:
        q, k, v: ``[B, H, L, D]``, one dtype (fp16, bf16 or fp32), D ≤ 128, any strides with a
            contiguous last dim (others are copied).
        block_map: bool ``[B, H, ceil(L/blkq), ceil(L/blkk)]``; ``True`` = Q block attends K block.
        sm_scale: score scale, default ``D**-0.5``.
        blkq, blkk: SLA block sizes, each in {16, 32, 64, 128} (upstream: 64 or 128 × 64).

    Returns:
        ``o`` ``[B, H, L, D]`` in the input dtype and the natural-log ``lse`` ``[B, H, L]`` (fp32) of
        each row's selected scores. Rows of a Q block that selects nothing: ``o = 0``, ``lse = −inf``.
        Differentiable in q, k, v (also through ``lse``); ``block_map`` is not.
    """
    sm_scale = _check_inputs(q, k, v, block_map, sm_scale, blkq, blkk)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return BlockSparseAttentionFunction.apply(q, k, v, block_map, sm_scale, blkq, blkk)
