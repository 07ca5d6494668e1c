"""SageAttention3 (NVFP4 attention, arXiv 2505.11594) forward in plain PyTorch, float32 or float64.

HND layout: ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``, ``v [B, Hkv, Nk, Dv]``; GQA/MQA by head
repetition (query head ``h`` uses kv head ``h // (Hq // Hkv)``). ``mask``: None or an additive mask
(natural-log units, ``-inf`` = masked) broadcastable to ``[B, Hq, Nq, Nk]``; causal masking is
top-left aligned like SDPA. The maths (SA3 paper §3, upstream ``sageattn3``):

1. K smoothing: ``K' = K - mean_tokens(K)`` (out of place; upstream subtracts in place). Softmax is
   invariant to the per-row constant ``q·mean(K)``; only the LSE carries it back (step 6).
2. Q smoothing: ``Q' = Q - q̄_b`` with ``q̄_b`` the mean of the query block ``b`` of ``BLKQ = 128``
   tokens (``per_block_mean``; else one mean over all tokens), and the exact correction
   ``ΔS = q̄_b · K'ᵀ`` (computed unquantized): ``Q·K'ᵀ = Q'·K'ᵀ + ΔS``.
3. NVFP4 microscaling of ``Q'`` and ``K'`` (groups of 16 along D) and of ``V`` (groups of 16 along
   tokens): E2M1 elements, E4M3 group scale ``amax_16 / 6`` (``shared_kernels.quantize_nvfp4`` with
   ``outer="none"``). Beyond upstream, each (batch, head) tensor is first divided by a power of two
   ``g = 2^ceil(log2(amax / 2688))`` (``range_guard``) so the largest group scale lands in
   (224, 448]: exact wherever upstream's E4M3 scales are normal, and it keeps small-valued V/Q/K out
   of the E4M3 subnormals (and large ones from saturating). ``g`` is multiplied back after the dot.
4. ``S = sm_scale · (deq(Q')·deq(K')ᵀ + ΔS) + mask`` (log2 units inside: times ``log2 e``).
5. Online softmax over key blocks of ``BLKK = 128`` with two-level P quantization: with the running
   row max ``m``, ``P̃ = 2688 · exp2(S - m)`` (level 1: the row max maps to 448·6), then NVFP4 per 16
   keys with E4M3 scales ``blockmax / 6`` (level 2); ``acc = acc·α + deq(P̃)·deq(V)``; the row sum
   ``l`` accumulates the unquantized ``exp2(S - m)``; ``O = acc / (2688·l)``.
6. ``lse = (m + log2 l)·ln 2 + sm_scale · q·mean(K)``: natural log of the un-smoothed scores.

Audited against upstream ``sageattn3`` (``api.py``, ``fp4_quantization_4d.cu``,
``softmax_fused.h``, ``mainloop_tma_ws.h``); the same: E4M3 scale ``RNE_sat(amax_16 / 6)``, E2M1
``RNE_sat`` (a scale rounded down puts ``amax/scale`` up to 6.375: saturated to 6, as
``cvt.rn.satfinite``), K mean over the valid tokens, ``ΔS`` unquantized in float32 added to the
FP4 ``Q'·K'ᵀ``, ``P̃ = 2688·exp2(S - m)``, per-16 P scales ``blockmax/6``, row sum of the
unquantized ``P̃``, two-level (per-block, then float32) P·V accumulation. Different on purpose
(options reproduce upstream where it matters for accuracy): upstream codes P against the unrounded
float32 ``blockmax/6`` and uses the E4M3-rounded scale only in the MMA (``p_code_scale="fp32"``);
it visits key blocks last to first (``key_order="reverse"``); it has no range guard
(``range_guard=False``); its Q block means divide by 128 including the zero rows that pad the last
block, and its smoothing runs in the input dtype (bf16/fp16), where ours uses the valid rows and
float32 (exact either way: the ``ΔS`` correction absorbs any mean).

Rows with every key masked give 0 and lse ``-inf``. ``quantize=False`` skips steps 3 and 5's FP4
rounding (so the result is exact attention through the smoothing algebra: a test of step 2).
Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs plus ``2·B·Hq·(Nq/128)·Nk·D`` for ΔS.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from shared_kernels import dequantize_mx, dequantize_nvfp4, quantize_mx, quantize_nvfp4
from shared_kernels.reference.microscaling import E2M1, E4M3, decode, encode

__all__ = [
    "BLKK",
    "BLKQ",
    "FORMATS",
    "FP4_PARTS",
    "KEY_ORDERS",
    "P_CODE_SCALES",
    "P_SCALE",
    "fp4_roundtrip",
    "mxfp4_roundtrip",
    "nvfp4_roundtrip",
    "nvfp4_roundtrip_fp32_codes",
    "pow2_range_scale",
    "q_block_mean",
    "sa3_attention",
]

BLKQ = 128
BLKK = 128
P_SCALE = 448.0 * 6.0  # 2688: the row max of P maps here (E4M3 max x E2M1 max)
LOG2E = 1.4426950408889634
FORMATS = ("nvfp4", "mxfp4")
FP4_PARTS = ("qk", "p", "v")
KEY_ORDERS = ("forward", "reverse")
P_CODE_SCALES = ("e4m3", "fp32")


def pow2_range_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-(batch, head) power of two ``g [B, H, 1, 1]`` with ``amax(x) / g`` in (1344, 2688]; 1 for
    an all-zero (or non-finite) head."""
    amax = x.abs().amax(dim=(-2, -1), keepdim=True).double()
    e = torch.ceil(torch.log2(amax / P_SCALE))
    g = torch.exp2(e)
    return torch.where(torch.isfinite(g) & (amax > 0), g, torch.ones_like(g))


def nvfp4_roundtrip(x: torch.Tensor, axis: int, guard: bool = True) -> torch.Tensor:
    """``deq(quant(x))`` for NVFP4 groups of 16 along ``axis`` (-1 or -2) in ``x``'s dtype; the axis and
    the last dim are zero-padded to multiples of 16 (zeros never change a group's amax)."""
    if axis not in (-1, -2):
        raise ValueError(f"axis must be -1 or -2, got {axis!r}")
    n_ax, d = x.shape[axis], x.shape[-1]
    pad_ax, pad_d = -n_ax % 16, -d % 16
    xp = torch.nn.functional.pad(x, (0, pad_d, 0, pad_ax if axis == -2 else 0))
    g = pow2_range_scale(xp) if guard else torch.ones((), dtype=torch.float64, device=x.device)
    xq = quantize_nvfp4((xp / g.to(xp.dtype)).float().contiguous(), axis=axis, outer="none")
    y = dequantize_nvfp4(xq).to(x.dtype) * g.to(x.dtype)
    return y[..., : x.shape[-2], :d] if axis == -2 else y[..., :d]


def nvfp4_roundtrip_fp32_codes(x: torch.Tensor) -> torch.Tensor:
    """Upstream's P quantizer (``softmax_fused.h``/``mainloop_tma_ws.h``) for non-negative ``x``
    along the last axis (size a multiple of 16): codes ``E2M1_rn_sat(x / s)`` against the
    **unrounded** float32 scale ``s = max_16(x) / 6``, decoded with ``E4M3_rn_sat(s)``. Our default
    (``nvfp4_roundtrip``) encodes against the decoded E4M3 scale instead, as for Q, K, V."""
    if x.dim() < 1 or x.shape[-1] % 16:
        raise ValueError(f"x.shape[-1] must be a multiple of 16 (NVFP4 groups), got shape {tuple(x.shape)}")
    if bool((x < 0).any()):
        raise ValueError("x must be non-negative (it is the P tile; signed inputs: use nvfp4_roundtrip)")
    xb = x.float().reshape(*x.shape[:-1], x.shape[-1] // 16, 16)
    s = xb.amax(dim=-1, keepdim=True) / 6.0
    y = torch.where(s > 0, xb / torch.where(s > 0, s, 1.0), 0.0)
    sq = decode(encode(s, E4M3), E4M3)
    return (decode(encode(y, E2M1), E2M1) * sq).reshape(x.shape).to(x.dtype)


def mxfp4_roundtrip(x: torch.Tensor, axis: int) -> torch.Tensor:
    """``deq(quant(x))`` for OCP MXFP4 (v1.0) groups of 32 along ``axis`` (-1 or -2): E2M1 elements,
    E8M0 scale ``2^(floor(log2 amax_32) - 2)`` (``shared_kernels.quantize_mx``, ``scale_rule="floor"``,
    elements saturate at 6), zero-padded like ``nvfp4_roundtrip``. No range guard: a power-of-two
    factor commutes exactly with an E8M0 scale."""
    if axis not in (-1, -2):
        raise ValueError(f"axis must be -1 or -2, got {axis!r}")
    n_ax, d = x.shape[axis], x.shape[-1]
    pad_ax, pad_d = -n_ax % 32, -d % 32
    xp = torch.nn.functional.pad(x, (0, pad_d, 0, pad_ax if axis == -2 else 0))
    y = dequantize_mx(quantize_mx(xp.float().contiguous(), "mxfp4", axis=axis, scale_rule="floor")).to(
        x.dtype
    )
    return y[..., : x.shape[-2], :d] if axis == -2 else y[..., :d]


def fp4_roundtrip(x: torch.Tensor, axis: int, fmt: str = "nvfp4", guard: bool = True) -> torch.Tensor:
    """``nvfp4_roundtrip`` (``guard``: the power-of-two range guard) or ``mxfp4_roundtrip``."""
    if fmt == "nvfp4":
        return nvfp4_roundtrip(x, axis, guard)
    if fmt == "mxfp4":
        return mxfp4_roundtrip(x, axis)
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def q_block_mean(q: torch.Tensor, per_block_mean: bool) -> torch.Tensor:
    """Per-row query mean ``[B, H, Nq, D]``: the mean of its 128-token block (valid rows only) or of
    all tokens."""
    nq = q.shape[-2]
    if not per_block_mean or nq == 0:
        return q.mean(dim=-2, keepdim=True).expand_as(q)
    nb = -(-nq // BLKQ)
    qp = torch.nn.functional.pad(q, (0, 0, 0, nb * BLKQ - nq)).reshape(*q.shape[:-2], nb, BLKQ, q.shape[-1])
    counts = torch.clamp(nq - torch.arange(nb, device=q.device) * BLKQ, max=BLKQ).to(q.dtype)
    means = qp.sum(dim=-2) / counts[:, None]
    return means.repeat_interleave(BLKQ, dim=-2)[..., :nq, :]


def _expand(x: torch.Tensor, hq: int) -> torch.Tensor:
    return x.repeat_interleave(hq // x.shape[1], dim=1) if x.shape[1] != hq else x


def _check_qkv(q: object, k: object, v: object) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{name} must be a 4-D floating-point tensor [B, H, N, D] (HND), got {got}")
    if k.shape[:3] != v.shape[:3] or k.shape[0] != q.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"shapes must be q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"the query heads ({q.shape[1]}) must be a multiple of the k/v heads ({k.shape[1]})")


def _check_options(fmt: object, fp4_parts: object, key_order: object, p_code_scale: object) -> frozenset:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if key_order not in KEY_ORDERS:
        raise ValueError(f"key_order must be one of {KEY_ORDERS}, got {key_order!r}")
    if p_code_scale not in P_CODE_SCALES:
        raise ValueError(f"p_code_scale must be one of {P_CODE_SCALES}, got {p_code_scale!r}")
    if isinstance(fp4_parts, str) or not isinstance(fp4_parts, Collection):
        raise TypeError(
            f"fp4_parts must be a collection of {FP4_PARTS} (e.g. ('qk', 'v')), got {fp4_parts!r}"
        )
    parts = frozenset(fp4_parts)
    if not parts <= set(FP4_PARTS):
        raise ValueError(f"fp4_parts must be a subset of {FP4_PARTS}, got {sorted(parts - set(FP4_PARTS))}")
    return parts


def sa3_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
    per_block_mean: bool = True,
    quantize: bool = True,
    range_guard: bool = True,
    smooth_q: bool = True,
    two_level_p: bool = True,
    dtype: torch.dtype = torch.float32,
    fmt: str = "nvfp4",
    fp4_parts: Collection[str] = FP4_PARTS,
    key_order: str = "forward",
    p_code_scale: str = "e4m3",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention3 forward (steps 1-6 above) computed in ``dtype`` (float32 or float64):
    returns ``(O [B, Hq, Nq, Dv], lse [B, Hq, Nq] natural log)`` in ``dtype``.

    Ablations (the paper's and ours, for benchmarks; the defaults are what the API and the Triton
    kernel compute): ``smooth_q=False`` skips step 2; ``two_level_p=False`` quantizes
    ``P = exp2(S - m)`` in [0, 1] directly with per-16 E4M3 scales (no 2688 level);
    ``fmt="mxfp4"``: OCP MXFP4 (E2M1, 1x32 groups, E8M0 scales, ``mxfp4_roundtrip``) in place of
    NVFP4 for Q, K, P and V; ``fp4_parts``: which of ``"qk"`` (Q' and K'), ``"p"``, ``"v"`` are
    quantized (the others stay float: a per-component error breakdown); ``key_order="reverse"``:
    visit key blocks last to first as upstream's kernel does (the running max at which each block's
    P is quantized changes); ``p_code_scale="fp32"``: upstream's P codes against the unrounded
    ``blockmax/6`` (``nvfp4_roundtrip_fp32_codes``; NVFP4 only)."""
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    parts = _check_options(fmt, fp4_parts, key_order, p_code_scale)
    _check_qkv(q, k, v)
    if p_code_scale == "fp32" and fmt != "nvfp4":
        raise ValueError(
            "p_code_scale='fp32' is an NVFP4 (E4M3 scale) option; fmt='mxfp4' has exact E8M0 scales"
        )
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    km = kf.mean(dim=-2, keepdim=True) if nk else torch.zeros_like(kf[..., :1, :])
    ks = kf - km  # step 1 (never in place)
    qm = q_block_mean(qf, per_block_mean) if smooth_q else torch.zeros_like(qf)
    qs = qf - qm  # step 2
    ksq, vq = ks, vf
    if quantize and "qk" in parts:  # step 3
        qs, ksq = fp4_roundtrip(qs, -1, fmt, range_guard), fp4_roundtrip(ks, -1, fmt, range_guard)
    if quantize and "v" in parts:
        vq = fp4_roundtrip(vf, -2, fmt, range_guard)
    quant_p = quantize and "p" in parts
    ks_e, ksq_e, vq_e = _expand(ks, hq), _expand(ksq, hq), _expand(vq, hq)
    s = torch.matmul(qs, ksq_e.transpose(-1, -2)) + torch.matmul(qm, ks_e.transpose(-1, -2))
    s = s * (sm_scale * LOG2E)  # step 4, log2 units
    if mask is not None:
        s = s + mask.to(dtype) * LOG2E
    if is_causal:
        keep = torch.arange(nk, device=q.device)[None, :] <= torch.arange(nq, device=q.device)[:, None]
        s = s.masked_fill(~keep, float("-inf"))
    m = torch.full((b, hq, nq), float("-inf"), dtype=dtype, device=q.device)
    lsum = torch.zeros_like(m)
    acc = torch.zeros((b, hq, nq, v.shape[-1]), dtype=dtype, device=q.device)
    starts = list(range(0, nk, BLKK))
    for j0 in reversed(starts) if key_order == "reverse" else starts:  # step 5
        sb = s[..., j0 : j0 + BLKK]
        m_new = torch.maximum(m, sb.amax(dim=-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(sb - m_use[..., None])
        alpha = torch.exp2(m - m_use)
        lsum = lsum * alpha + p.sum(dim=-1)
        pt = p * P_SCALE if two_level_p else p
        if quant_p and p_code_scale == "fp32":
            pad = -pt.shape[-1] % 16
            pt = nvfp4_roundtrip_fp32_codes(torch.nn.functional.pad(pt, (0, pad)))[..., : pt.shape[-1]]
        elif quant_p:
            pt = fp4_roundtrip(pt, -1, fmt, guard=False)
        acc = acc * alpha[..., None] + torch.matmul(pt, vq_e[..., j0 : j0 + BLKK, :])
        m = m_new
    empty = lsum == 0
    o = torch.where(
        empty[..., None],
        torch.zeros_like(acc),
        acc / ((P_SCALE if two_level_p else 1.0) * torch.where(empty, 1.0, lsum))[..., None],
    )
    lse2 = torch.where(
        empty, torch.full_like(m, float("-inf")), m + torch.log2(torch.where(empty, 1.0, lsum))
    )
    corr = torch.matmul(qf, _expand(km, hq).transpose(-1, -2))[..., 0] * sm_scale
    return o, lse2 * math.log(2.0) + corr  # step 6
