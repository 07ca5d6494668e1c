"""SageAttention3 forward as a Triton kernel with NVFP4 ``tl.dot_scaled`` (E2M1 operands, E4M3
scales per 16 elements) for ``Q·Kᵀ`` and ``P̃·V`` (maths: ``sa3/reference.py``).

Scale formats. Triton 3.9's ``tl.dot_scaled`` deduces the group size from the scale shape: with
``float8e4nv`` scales of shape ``[M, K/16]`` it is NVFP4 and compiles to
``tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.block16`` on sm100a and to
``mma.sync.aligned.m16n8k64...kind::mxf4nvf4.block_scale.scale_vec::4X...ue4m3`` on sm120a; on sm90
and older it is emulated (operands upcast to bf16, ``wgmma``/``mma`` bf16). So no folding of the
E4M3 scales is needed on hardware (``NATIVE=True``).

Triton 3.9's interpreter decodes every scale byte as E8M0 (``_dot_scaled_scale_to_f32``) and its
fp32 -> float8e4nv conversion mis-rounds, so under ``TRITON_INTERPRET=1`` the kernel runs with
``NATIVE=False``: the scales are folded outside the dot. ``tl.dot_scaled(A, None, "e2m1", I, None,
"fp16")`` against the identity decodes the packed E2M1 operand (checking the nibble order and the
K-packing of Q, K, P and V), each 16-group is multiplied by its decoded E4M3 scale (E2M1 × E4M3
products are exact in float32), and an IEEE float32 ``tl.dot`` does the product: the same sum as
the block-scaled MMA up to float32 summation order. E4M3 encoding (of P's scales) and decoding are
integer/float arithmetic in both modes, so the P quantizer tested here is the one that runs on GPUs.

Per program: one block of ``BLOCK_M`` queries of one (batch, head) against all keys in blocks of
``BLOCK_N = 128``. FLOPs ``2·BLOCK_M·Nk·(D + Dv)`` (FP4 tensor-core ops) + ~40·BLOCK_M·Nk (softmax,
P quantization); bytes ``BLOCK_M·D·(1/2 + 1/16)`` of Q + ``Nk·(D + Dv)·(1/2 + 1/16)`` of K, V +
``4·Nk`` of ΔS (+ ``4·BLOCK_M·Nk`` with a mask) + ``4·BLOCK_M·Dv`` written.
"""

from __future__ import annotations

import triton
import triton.language as tl
from shared_kernels.kernel_specs import TritonKernelSpec

__all__ = ["SA3_KERNEL_SPECS", "sa3_fwd_kernel"]


@triton.jit
def _e4m3_bits_to_f32(b):
    """Decode non-negative E4M3 codes (uint8 in int32) exactly: ``m·2^-9`` or ``(8+m)·2^(e-10)``."""
    e = (b >> 3) & 15
    m = (b & 7).to(tl.float32)
    pow2 = ((tl.maximum(e, 1) - 10 + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(e == 0, m * 0.001953125, (m + 8.0) * pow2)


@triton.jit
def _e4m3_rne(x):
    """Round non-negative float32 ``x`` (<= 448) to the E4M3 grid, nearest-even: step
    ``2^(max(floor(log2 x), -6) - 3)``; ``t + 2^23 - 2^23`` rounds ``t < 2^22`` to an integer, RNE."""
    ex = ((x.to(tl.int32, bitcast=True) >> 23) & 255) - 127
    ex = tl.maximum(ex, -6)
    q = ((ex - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv_q = ((3 - ex + 127) << 23).to(tl.float32, bitcast=True)
    t = x * inv_q  # exact: power of two
    n = (t + 8388608.0) - 8388608.0
    return tl.minimum(n * q, 448.0)


@triton.jit
def _e2m1_code(x):
    """E2M1 magnitude code (0..7) of non-negative ``x``, round to nearest even, saturating at 6."""
    c = (x > 0.25).to(tl.int32) + (x >= 0.75).to(tl.int32) + (x > 1.25).to(tl.int32)
    c += (x >= 1.75).to(tl.int32) + (x > 2.5).to(tl.int32) + (x >= 3.5).to(tl.int32) + (x > 5.0).to(tl.int32)
    return c


@triton.jit
def sa3_fwd_kernel(
    q_ptr, qs_ptr, k_ptr, ks_ptr, v_ptr, vs_ptr, delta_ptr, mask_ptr, smul_ptr, vmul_ptr, o_ptr, lse_ptr,
    NQ, NK, NQP, NKP, HQ, HKV, NQB,
    stride_mb, stride_mh, stride_mm, stride_mn,
    delta_mul,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    QGROUP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, NATIVE: tl.constexpr,
):  # fmt: skip
    """Layouts (contiguous, zero-padded): q [B,HQ,NQP,D/2] u8, qs [B,HQ,NQP,D/16] E4M3; k [B,HKV,NKP,D/2],
    ks [B,HKV,NKP,D/16]; v [B,HKV,NKP/2,DV] (packed along tokens), vs [B,HKV,NKP/16,DV]; delta
    [B,HQ,NQB,NKP] fp32 (q̄·K'ᵀ); smul [B,HQ] = sm_scale·log2e·g_q·g_k; vmul [B,HKV] = g_v;
    o [B,HQ,NQP,DV] fp32; lse [B,HQ,NQP] fp32 (log2, smoothed K)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    D2: tl.constexpr = BLOCK_D // 2
    DG: tl.constexpr = BLOCK_D // 16
    N2: tl.constexpr = BLOCK_N // 2
    NG: tl.constexpr = BLOCK_N // 16
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d2 = tl.arange(0, D2)
    offs_dg = tl.arange(0, DG)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n2 = tl.arange(0, N2)
    offs_ng = tl.arange(0, NG)
    qrow = (b * HQ + h).to(tl.int64) * NQP + offs_m
    q = tl.load(q_ptr + qrow[:, None] * D2 + offs_d2[None, :])
    q_sc = tl.load(qs_ptr + qrow[:, None] * DG + offs_dg[None, :])
    kbase = (b * HKV + hk).to(tl.int64) * NKP
    if not NATIVE:  # decode E2M1 with tl.dot_scaled against the identity, scale outside the dot
        ar_d = tl.arange(0, BLOCK_D)
        eye_d = (ar_d[:, None] == ar_d[None, :]).to(tl.float16)
        ar_n = tl.arange(0, BLOCK_N)
        eye_n = (ar_n[:, None] == ar_n[None, :]).to(tl.float16)
        qd = tl.dot_scaled(q, None, "e2m1", eye_d, None, "fp16")
        qsf = _e4m3_bits_to_f32(q_sc.to(tl.int32))
        qd = tl.reshape(tl.reshape(qd, [BLOCK_M, DG, 16]) * qsf[:, :, None], [BLOCK_M, BLOCK_D])
    smul = tl.load(smul_ptr + b * HQ + h)
    dbase = delta_ptr + ((b * HQ + h).to(tl.int64) * NQB + (pid_m * BLOCK_M) // QGROUP) * NKP
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    hi = NK
    if IS_CAUSAL:
        hi = tl.minimum(NK, (pid_m + 1) * BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_ptr + (kbase + offs_n)[:, None] * D2 + offs_d2[None, :])
        k_sc = tl.load(ks_ptr + (kbase + offs_n)[:, None] * DG + offs_dg[None, :])
        if NATIVE:
            s = tl.dot_scaled(q, q_sc, "e2m1", tl.trans(k), k_sc, "e2m1")
        else:
            kd = tl.dot_scaled(k, None, "e2m1", eye_d, None, "fp16")  # [BLOCK_N, D] E2M1 values
            ksf = _e4m3_bits_to_f32(k_sc.to(tl.int32))
            kd = tl.reshape(tl.reshape(kd, [BLOCK_N, DG, 16]) * ksf[:, :, None], [BLOCK_N, BLOCK_D])
            s = tl.dot(qd, tl.trans(kd), input_precision="ieee")
        s = s * smul + tl.load(dbase + offs_n)[None, :] * delta_mul
        if HAS_MASK:
            mrow = b * stride_mb + h * stride_mh + offs_m.to(tl.int64) * stride_mm
            mvals = tl.load(
                mask_ptr + mrow[:, None] + offs_n[None, :] * stride_mn,
                mask=(offs_m[:, None] < NQ) & (offs_n[None, :] < NK),
                other=0.0,
            )
            s += mvals * 1.4426950408889634
        keep = (offs_n < NK)[None, :]
        if IS_CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # two-level P quantization: row max -> 2688, then E4M3 scales blockmax/6 per 16 keys
        pr = tl.reshape(p * 2688.0, [BLOCK_M, NG, 16])
        # IEEE divisions (Triton's fp32 "/" is div.full, <= 2 ulp) so the codes match the reference
        psc = _e4m3_rne(tl.math.div_rn(tl.max(pr, axis=2), tl.full([BLOCK_M, NG], 6.0, tl.float32)))
        x = tl.math.div_rn(pr, tl.broadcast_to(tl.where(psc > 0, psc, 1.0)[:, :, None], [BLOCK_M, NG, 16]))
        code = tl.where(psc[:, :, None] > 0, _e2m1_code(x), 0)
        lo, hi_c = tl.split(tl.reshape(code, [BLOCK_M, N2, 2]))
        p8 = (lo | (hi_c << 4)).to(tl.uint8)
        vrow = (kbase // 2 + n0 // 2 + offs_n2).to(tl.int64)
        v = tl.load(v_ptr + vrow[:, None] * BLOCK_DV + offs_dv[None, :])
        vsrow = kbase // 16 + n0 // 16 + offs_ng
        v_sc = tl.load(vs_ptr + vsrow[None, :] * BLOCK_DV + offs_dv[:, None])  # [DV, NG]
        acc = acc * alpha[:, None]
        if NATIVE:
            acc = tl.dot_scaled(p8, psc.to(tl.float8e4nv), "e2m1", v, v_sc, "e2m1", acc=acc)
        else:
            pd = tl.dot_scaled(p8, None, "e2m1", eye_n, None, "fp16")  # [BLOCK_M, BLOCK_N]
            pd = tl.reshape(tl.reshape(pd, [BLOCK_M, NG, 16]) * psc[:, :, None], [BLOCK_M, BLOCK_N])
            vd = tl.dot_scaled(eye_n, None, "fp16", v, None, "e2m1")  # [BLOCK_N, DV]
            vsf = tl.trans(_e4m3_bits_to_f32(v_sc.to(tl.int32)))  # [NG, DV]
            vd = tl.reshape(tl.reshape(vd, [NG, 16, BLOCK_DV]) * vsf[:, None, :], [BLOCK_N, BLOCK_DV])
            acc += tl.dot(pd, vd, input_precision="ieee")
        m_i = m_new
    vmul = tl.load(vmul_ptr + b * HKV + hk)
    empty = l_i == 0.0
    o = acc * (vmul / (2688.0 * tl.where(empty, 1.0, l_i)))[:, None]
    o = tl.where(empty[:, None], 0.0, o)
    orow = (b * HQ + h).to(tl.int64) * NQP + offs_m
    tl.store(o_ptr + orow[:, None] * BLOCK_DV + offs_dv[None, :], o)
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(lse_ptr + orow, lse)


def _kernel():
    return sa3_fwd_kernel


def _spec(name: str, *, d: int = 128, causal: bool = False, mask: bool = False, archs=(100, 120)):
    sig = {
        "q_ptr": "*u8", "qs_ptr": "*fp8e4nv", "k_ptr": "*u8", "ks_ptr": "*fp8e4nv", "v_ptr": "*u8",
        "vs_ptr": "*fp8e4nv", "delta_ptr": "*fp32", "mask_ptr": "*fp32", "smul_ptr": "*fp32",
        "vmul_ptr": "*fp32", "o_ptr": "*fp32", "lse_ptr": "*fp32",
        **dict.fromkeys(("NQ", "NK", "NQP", "NKP", "HQ", "HKV", "NQB"), "i32"),
        **dict.fromkeys(("stride_mb", "stride_mh", "stride_mm", "stride_mn"), "i32"), "delta_mul": "fp32",
    }  # fmt: skip
    cx = dict(
        BLOCK_M=128,
        BLOCK_N=128,
        BLOCK_D=d,
        BLOCK_DV=d,
        QGROUP=128,
        IS_CAUSAL=causal,
        HAS_MASK=mask,
        NATIVE=True,
    )
    return TritonKernelSpec(
        name=name,
        fn=_kernel,
        signature=sig,
        constexprs=cx,
        expect={100: ("tcgen05",)} if 100 in archs else {},
        divisible_by_16=("q_ptr", "k_ptr", "v_ptr", "o_ptr", "delta_ptr", "NQP", "NKP"),
        num_warps=8,
        num_stages=2,
        archs=tuple(a for a in archs if a in (80, 89, 90, 100)),
    )


#: For ``tools/kernel_report`` (its arch list is 80/89/90/100): sm100a must show the block-scaled
#: ``tcgen05.mma ... kind::mxf4nvf4.block_scale.block16`` (SASS ``UTCOMMA.4X``). sm120a is not in the
#: report's arch list; compiled by hand it shows ``mma.sync...kind::mxf4nvf4.block_scale...ue4m3`` (SASS ``OMMA.SF.16864...UE4M3.4X``).
#: sm80/89/90 would compile too but only by upcasting to bf16 (no FP4 tensor cores), so they are not
#: listed: ``sageattn3_blackwell`` refuses the Triton backend there.
SA3_KERNEL_SPECS = [
    _spec("sa3_fwd_nvfp4_d128"),
    _spec("sa3_fwd_nvfp4_d64_causal", d=64, causal=True),
    _spec("sa3_fwd_nvfp4_d128_addmask", mask=True),
]
