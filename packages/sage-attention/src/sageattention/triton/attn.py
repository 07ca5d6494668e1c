"""Triton SageAttention forward: INT8 ``Q·Kᵀ``, exp2 online softmax, fp16 or FP8 ``P·V``.

One program per ``BLOCK_M`` queries of one (batch, query head); it walks the keys in blocks of
``BLOCK_N = 64`` (= BLKK, one K scale per block). Per key block, as in ``sageattention.reference``:

    S   = float32(int32(Q8 · K8ᵀ)) · q_scale[row] · k_scale[block]      (log2 units: Q carries
          (+ mask · log2 e; bool masks and padded/causal keys give -inf)   sm_scale·log2 e)
          (``KS_PER_COL``: k_scale[column]; ``POST_SCALE``: S · sm_scale·log2 e after dequantizing)
    m'  = max(m, rowmax S);  P = exp2(S - m');  α = exp2(m - m');  l = l·α + rowsum P
    fp16 PV: O = O·α + fp16(P) · fp16(V / v_pow2)      fp32 accumulation (tensor-core MMA), or
             O = O·α + fp16(fp16(P) · fp16(V / v_pow2))  fp16 accumulation per key block (PV_ACC16)
    FP8  PV: O = O·α + e4m3(448·P) · V8                 fp32 accumulation, V8 = e4m3(V / v_scale)

and at the end ``O = O / l · v_pow2`` (fp16) or ``O = O / l · v_scale / 448`` (FP8), ``lse2 = m +
log2 l`` (log2 units, smoothed K; the caller adds ``sm_scale·q·mean(K)`` and converts to natural
log). Rows with every key masked give ``O = 0`` and ``lse2 = -inf``. Padded keys (``j >= Nk``) are
scored ``-inf``, not 0 (the short-sequence bug of upstream 1.0.6). Causal masking is top-left (key
``j`` visible to query ``i`` iff ``j <= i``, SDPA's convention) and key blocks above the diagonal are
skipped. ``v_pow2`` is the per-channel power of two that keeps ``|V / v_pow2| <= 256``, so bf16 or
fp32 V of any range never overflows fp16. Head dims that are not a power of two are zero-padded in
registers (masked loads), so any ``D, Dv <= 256`` works without copies.

Roofline per call (non-causal; causal halves the FLOPs): ``2·B·Hq·Nq·Nk·D`` INT8 ops (QKᵀ) plus
``2·B·Hq·Nq·Nk·Dv`` fp16 or FP8 FLOPs (PV). Compulsory DRAM bytes ``B·Hq·Nq·D`` (Q8) +
``B·Hkv·Nk·(D + s_v·Dv)`` (K8, V with s_v = 2 for fp16/bf16, 1 for FP8) + ``2·B·Hq·Nq·Dv`` (O) + the
scales; K/V are re-read once per query block, from L2. Example ``B=1, H=32, N=16384, D=128``:
2.2 T INT8 ops + 2.2 TFLOP in PV against 0.4 GB of compulsory traffic (0.7 GB more in the quantizer
passes: ~0.3 ms on H100, ~1 ms on a 4090), i.e. compute bound. Dense tensor-core
peaks: H100 SXM 1979 INT8 / 989 fp16 / 1979 FP8 (3.35 TB/s) → ≥ 3.3 ms with fp16 PV, ≥ 2.2 ms with
FP8 PV; RTX 4090 661 INT8 / 165 fp16·fp32-acc / 330 FP8·fp32-acc (1.0 TB/s) → ≥ 16.7 ms (fp16 PV),
≥ 10 ms (FP8 PV). The fp32-accumulating fp16 PV is the bottleneck on consumer GPUs, which is why
upstream accumulates P·V in fp16 there (not done here: exactness against the reference first).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .quant import e4m3_rne

LOG2E = tl.constexpr(1.4426950408889634)
BLOCK_N_KEYS = 64  # = reference.BLKK: one K scale per key block


@triton.jit
def _kstep16(blk, p_i, v_base, i, n_left, stride_vn, dv, dvmask, vsc):
    """``fp16(blk + P_i · V_i)``: the i-th 16-key slice's float32 partial sum rounded into blk."""
    r = i * 16 + tl.arange(0, 16)
    vt = tl.load(
        v_base + r[:, None] * stride_vn + dv[None, :], mask=(r < n_left)[:, None] & dvmask[None, :], other=0.0
    )
    v16 = (vt.to(tl.float32) * vsc[None, :]).to(tl.float16)
    return (blk + tl.dot(p_i, v16)).to(tl.float16).to(tl.float32)


@triton.jit
def sage_attn_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    qs_ptr,
    ks_ptr,
    vs_ptr,
    mask_ptr,
    o_ptr,
    lse_ptr,
    cu_q_ptr,
    cu_k_ptr,
    blk_ptr,
    goff_ptr,
    NQ,
    NK,
    HQ,
    HKV,
    D,
    DV,
    NQG,
    NKB,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_on,
    stride_mb,
    stride_mh,
    stride_mm,
    score_mul,
    qc_ptr,
    QGROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_MODE: tl.constexpr,  # 0 none, 1 additive float (natural log), 2 bool (nonzero = attend)
    PV_FP8: tl.constexpr,
    PV_ACC16: tl.constexpr,  # fp16 PV: each 64-key block's P·V accumulated in fp16, then added in fp32
    INTERPRET: tl.constexpr,  # Triton interpreter: exact fp8 rounding emulated, exact fp32 dots
    STORE_LSE: tl.constexpr,
    VARLEN: tl.constexpr,  # packed sequences: B = 1, rows/keys of sequence s in [cu[s], cu[s+1])
    KS_PER_COL: tl.constexpr = False,  # one K scale per key (ks [.., NKB = NK]) instead of per block
    POST_SCALE: tl.constexpr = False,  # scores times score_mul (sm_scale·log2 e) after dequantizing
    QC_BLK: tl.constexpr = 0,  # > 0: add qc[b, h, row // QC_BLK, key] (smooth_q's mean(Q)·Kᵀ, log2 units)
    ACC_KSTEP: tl.constexpr = 0,  # fp16 PV: 1 fp16+fp32, 2 fp16 accumulator, rounded per 16-key k-step
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    bh64 = bh.to(tl.int64)
    bhk64 = (b * HKV + hk).to(tl.int64)

    if VARLEN:  # this program's (sequence, first packed row); the sequence's bounds and scale offsets
        seq = tl.load(blk_ptr + 2 * pid_m)
        row0 = tl.load(blk_ptr + 2 * pid_m + 1)
        q_lo = tl.load(cu_q_ptr + seq)
        n_q = tl.load(cu_q_ptr + seq + 1) - q_lo
        k_lo = tl.load(cu_k_ptr + seq)
        n_k = tl.load(cu_k_ptr + seq + 1) - k_lo
        qg0 = tl.load(goff_ptr + 2 * seq)
        kg0 = tl.load(goff_ptr + 2 * seq + 1)
        vsb = seq  # V scales per (sequence, kv head)
    else:
        row0 = pid_m * BLOCK_M
        q_lo = 0
        n_q = NQ
        k_lo = 0
        n_k = NK
        qg0 = 0
        kg0 = 0
        vsb = b
    # 64-bit scalar base pointers, 32-bit offsets inside a tile (fewer registers)
    tr = tl.arange(0, BLOCK_M)
    rows = row0 - q_lo + tr  # within the sequence
    rmask = rows < n_q
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    dvmask = dv < DV
    kb = tl.arange(0, BLOCK_N)

    q = tl.load(
        q_ptr + (bh64 * NQ + row0) * D + tr[:, None] * D + dq[None, :],
        mask=rmask[:, None] & (dq < D)[None, :],
        other=0,
    )
    qs = tl.load(qs_ptr + bh64 * NQG + qg0 + rows // QGROUP, mask=rmask, other=0.0)
    # per-channel V factor: 1 / v_pow2 (fp16 PV: scales each V tile, exact) or v_scale / 448 (FP8 PV:
    # V8 is already scaled, the factor is applied in the epilogue)
    vsc = tl.load(vs_ptr + (vsb * HKV + hk).to(tl.int64) * DV + dv, mask=dvmask, other=1.0)

    k_base = k_ptr + (bhk64 * NK + k_lo) * D
    v_base = v_ptr + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh + k_lo * stride_vn
    m_base = (
        mask_ptr + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh + row0.to(tl.int64) * stride_mm
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    hi = n_k
    if IS_CAUSAL:
        hi = tl.minimum(n_k, row0 - q_lo + BLOCK_M)
    for start in range(0, hi, BLOCK_N):
        cols = start + kb
        cmask = cols < n_k
        kt = tl.load(
            k_base + kb[None, :] * D + dq[:, None],
            mask=cmask[None, :] & (dq < D)[:, None],
            other=0,
        )
        if INTERPRET:  # exact too (|sum| <= 127^2 * 256 < 2^24) and BLAS-fast in numpy
            s_int = tl.dot(q.to(tl.float32), kt.to(tl.float32)).to(tl.int32)
        else:
            s_int = tl.dot(q, kt, out_dtype=tl.int32)
        if KS_PER_COL:
            ks = tl.load(ks_ptr + bhk64 * NKB + kg0 + cols, mask=cmask, other=0.0)
            s = (s_int.to(tl.float32) * qs[:, None]) * ks[None, :]
        else:
            ks = tl.load(ks_ptr + bhk64 * NKB + kg0 + start // BLOCK_N)
            s = (s_int.to(tl.float32) * qs[:, None]) * ks
        if POST_SCALE:
            s = s * score_mul
        if QC_BLK > 0:  # BLOCK_M divides QC_BLK: one Q block per program
            qc_row = (bh64 * tl.cdiv(NQ, QC_BLK) + row0 // QC_BLK) * NK
            qc = tl.load(qc_ptr + qc_row + cols, mask=cmask, other=0.0)
            s = s + qc[None, :]
        keep = cmask[None, :] & rmask[:, None]
        if MASK_MODE == 1:
            mk = tl.load(m_base + tr[:, None] * stride_mm + kb[None, :], mask=keep, other=0.0)
            s = s + mk * LOG2E
        if MASK_MODE == 2:
            mk = tl.load(m_base + tr[:, None] * stride_mm + kb[None, :], mask=keep, other=0)
            keep = keep & (mk != 0)
        if IS_CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        keep = keep | ~rmask[:, None]  # padded query rows: never stored, keep them finite
        s = tl.where(keep & cmask[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)

        if ACC_KSTEP > 0:
            # modes.softmax_pv's k-step emulation: each 16-key partial sum (float32) is rounded into
            # an fp16 accumulator; P split into its four 16-key slices (reshape/permute/split)
            p16 = p.to(tl.float16)
            pa, pb = tl.split(tl.permute(tl.reshape(p16, [BLOCK_M, 2, BLOCK_N // 2]), (0, 2, 1)))
            p0, p1 = tl.split(tl.permute(tl.reshape(pa, [BLOCK_M, 2, BLOCK_N // 4]), (0, 2, 1)))
            p2, p3 = tl.split(tl.permute(tl.reshape(pb, [BLOCK_M, 2, BLOCK_N // 4]), (0, 2, 1)))
            if ACC_KSTEP == 1:  # fp16+fp32: a fresh fp16 accumulator per key block
                blk = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
            else:  # fp16: the whole accumulator in fp16
                blk = (acc * alpha[:, None]).to(tl.float16).to(tl.float32)
            n_left = n_k - start
            blk = _kstep16(blk, p0, v_base, 0, n_left, stride_vn, dv, dvmask, vsc)
            blk = _kstep16(blk, p1, v_base, 1, n_left, stride_vn, dv, dvmask, vsc)
            blk = _kstep16(blk, p2, v_base, 2, n_left, stride_vn, dv, dvmask, vsc)
            blk = _kstep16(blk, p3, v_base, 3, n_left, stride_vn, dv, dvmask, vsc)
            if ACC_KSTEP == 1:
                acc = acc * alpha[:, None] + blk
            else:
                acc = blk
        else:
            vt = tl.load(
                v_base + kb[:, None] * stride_vn + dv[None, :],
                mask=cmask[:, None] & dvmask[None, :],
                other=0.0,
            )
            if PV_FP8:
                if INTERPRET:
                    pv = tl.dot(e4m3_rne(p * 448.0), vt.to(tl.float32))
                else:
                    pv = tl.dot((p * 448.0).to(tl.float8e4nv), vt)
            else:
                v16 = (vt.to(tl.float32) * vsc[None, :]).to(tl.float16)
                if PV_ACC16:  # |block sum| <= 64 · 1 · 256 = 16384: no fp16 overflow
                    pv = tl.dot(p.to(tl.float16), v16, out_dtype=tl.float16).to(tl.float32)
                else:
                    pv = tl.dot(p.to(tl.float16), v16)
            acc = acc * alpha[:, None] + pv
        m_i = m_new
        k_base += BLOCK_N * D
        v_base += BLOCK_N * stride_vn
        m_base += BLOCK_N

    empty = l_i == 0.0
    o = tl.div_rn(acc, tl.where(empty, 1.0, l_i)[:, None])
    o = tl.where(empty[:, None], 0.0, o)
    if PV_FP8:
        o = o * vsc[None, :]  # vsc = v_scale / 448 for the FP8 path
    else:
        o = tl.div_rn(o, vsc[None, :])  # exact: times v_pow2
    o_ptrs = o_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + row0.to(tl.int64) * stride_on
    o_ptrs = o_ptrs + tr[:, None] * stride_on + dv[None, :]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=rmask[:, None] & dvmask[None, :])
    if STORE_LSE:
        lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
        tl.store(lse_ptr + bh64 * NQ + row0 + tr, lse2, mask=rmask)


def tile_m(
    d: int,
    dv: int,
    has_mask: bool,
    interp: bool,
    acc16: bool = False,
    cc: tuple[int, int] = (9, 0),
    k_per_col: bool = False,
    acc_kstep: int = 0,
) -> int:
    """Query rows per program. Register budgets checked by tools/kernel_report (kernel_specs.py):
    128 x 64 keys with 8 warps; 64 for head dims > 128, whenever a mask tile is loaded, and for the
    fp16-accumulator PV or per-key K scales on sm100 (which spill at 128), and for the k-step
    emulated fp16 accumulators (``acc_kstep``: spills at 128 on sm90)."""
    if interp:
        return 128
    sm100_tight = (acc16 or k_per_col) and cc >= (10, 0)
    return 128 if (max(d, dv) <= 128 and not has_mask and not sm100_tight and not acc_kstep) else 64


def num_stages(d: int, dv: int, interp: bool, cc: tuple[int, int] = (9, 0)) -> int:
    """Software-pipeline stages: 3, but 2 for head dims > 128 on the GPUs with 99 KB of shared memory
    per block (sm86, sm89, sm12x): at 3 stages the d256 program needs 120 KB there (kernel report's
    shared-memory check), at 2 about 74 KB. The interpreter runs 1."""
    if interp:
        return 1
    small_smem = cc in ((8, 6), (8, 9)) or cc[0] == 12
    return 2 if (small_smem and max(d, dv) > 128) else 3


def launch(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_factor: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    lse2: torch.Tensor | None,
    *,
    q_group: int,
    is_causal: bool,
    pv_fp8: bool,
    pv_acc16: bool = False,
    varlen: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    k_per_col: bool = False,
    score_mul: float | None = None,
    q_corr: tuple[torch.Tensor, int] | None = None,
    acc_kstep: int = 0,
) -> None:
    """Run the kernel.

    ``varlen = (cu_q, cu_k, blk, goff)`` (int32): B = 1 and the tensors are packed sequences;
    ``blk [nblocks, 2]`` = (sequence, first packed row) of each ``tile_m(...)``-row query tile,
    ``goff [S, 2]`` = offsets of each sequence's first Q / K scale; v_factor is ``[S, Hkv, Dv]``.

    q8 ``[B, Hq, Nq, D]`` and k8 ``[B, Hkv, Nk, D]`` contiguous int8; q_scale ``[B, Hq,
    ceil(Nq/q_group)]``, k_scale ``[B, Hkv, ceil(Nk/64)]``; v ``[B, Hkv, Nk, Dv]`` (any float
    dtype, strided, last dim contiguous; float8_e4m3fn contiguous when ``pv_fp8``); v_factor
    ``[B, Hkv, Dv]`` float32 = ``1 / v_pow2`` (fp16 PV) or ``v_scale / 448`` (FP8 PV); mask None or
    ``[B, Hq, Nq, Nk]`` (expanded view; float32 additive or bool); out ``[B, Hq, Nq, Dv]`` strided
    view; lse2 ``[B, Hq, Nq]`` float32 contiguous or None.

    Scale vectors: ``q_group=1`` with ``q_scale [B, Hq, Nq]`` is one scale per query row;
    ``k_per_col`` with ``k_scale [B, Hkv, Nk]`` one scale per key (per_thread / per_token modes).
    ``score_mul`` (float32 ``sm_scale·log2 e``): scores are multiplied by it after dequantizing
    (``modes.SageConfig(prescale_q=False)``, upstream's CUDA kernels); None: Q carries it.
    ``q_corr = (qc, blk)``: float32 ``qc [B, Hq, ceil(Nq / blk), Nk]`` contiguous added to the scores
    of the queries of each ``blk``-row block (smooth_q; ``blk`` a multiple of 128), not with varlen.
    ``acc_kstep`` (fp16 PV): 1 = ``"fp16+fp32"``, 2 = ``"fp16"`` accumulation as ``modes.softmax_pv``
    emulates it (each 16-key partial sum rounded into an fp16 accumulator).
    """
    b, hq, nq, d = q8.shape
    hkv, nk, dv = k8.shape[1], k8.shape[2], v.shape[3]
    interp = not q8.is_cuda
    block_d = max(32, triton.next_power_of_2(d))
    block_dv = max(32, triton.next_power_of_2(dv))
    cc = (0, 0) if interp else torch.cuda.get_device_capability(q8.device)
    block_m = tile_m(d, dv, mask is not None, interp, pv_acc16, cc, k_per_col, acc_kstep)
    num_warps = 8
    if mask is None:
        mode, mptr, mstr = 0, q_scale, (0, 0, 0)
    else:
        mode = 2 if mask.dtype == torch.bool else 1
        if mask.stride(-1) != 1:  # the kernel reads mask rows as contiguous key vectors
            mask = (
                mask[..., :1, :].contiguous().expand(mask.shape)
                if mask.stride(-2) == 0
                else mask.contiguous()
            )
        mptr = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
        mstr = mask.stride()[:3]
    # interpreter: fp32 -> bf16 stores truncate, so write float32 there and let torch round
    dst = out
    if interp and out.dtype == torch.bfloat16:
        dst = torch.empty(out.shape, dtype=torch.float32, device=out.device)
    grid = (triton.cdiv(nq, block_m) if varlen is None else varlen[2].shape[0], b * hq)
    cu_q, cu_k, blk, goff = varlen if varlen is not None else (q_scale,) * 4
    sage_attn_fwd_kernel[grid](
        q8,
        k8,
        v,
        q_scale,
        k_scale,
        v_factor,
        mptr,
        dst,
        lse2 if lse2 is not None else q_scale,
        cu_q,
        cu_k,
        blk,
        goff,
        nq,
        nk,
        hq,
        hkv,
        d,
        dv,
        q_scale.shape[-1],
        k_scale.shape[-1],
        *v.stride()[:3],
        *dst.stride()[:3],
        *mstr,
        float(score_mul) if score_mul is not None else 1.0,
        q_corr[0] if q_corr is not None else q_scale,
        QGROUP=q_group,
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N_KEYS,
        BLOCK_D=block_d,
        BLOCK_DV=block_dv,
        IS_CAUSAL=is_causal,
        MASK_MODE=mode,
        PV_FP8=pv_fp8,
        PV_ACC16=pv_acc16,
        INTERPRET=interp,
        STORE_LSE=lse2 is not None,
        VARLEN=varlen is not None,
        KS_PER_COL=k_per_col,
        POST_SCALE=score_mul is not None,
        QC_BLK=q_corr[1] if q_corr is not None else 0,
        ACC_KSTEP=acc_kstep,
        num_warps=num_warps,
        num_stages=num_stages(d, dv, interp, cc),
    )
    if dst is not out:
        out.copy_(dst)
