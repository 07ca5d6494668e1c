"""SageAttention2 forward on pre-quantized operands (reference, plain PyTorch, float64).

Operands (``Hq % Hkv == 0``, query head ``h`` reads kv head ``h // (Hq // Hkv)``):

- ``q`` int8 ``[B, Hq, Nq, D]`` with per-thread scales ``q_scale`` float32 ``[B, Hq, Lq]``,
  ``Lq >= ceil(Nq / warp_q) * 8``: row ``r`` uses ``q_scale[(r // warp_q) * 8 + r % 8]``
  (``warp_q`` in {16, 32}). These are the rows one lane of an ``mma.m16n8k32`` A fragment holds
  (``g``, ``g + 8``, and ``g + 16``, ``g + 24`` for ``warp_q = 32``). ``sm_scale · log2(e)`` is folded
  into ``q_scale``, so the dequantized scores are in the log2 domain.
- ``k`` int8 ``[B, Hkv, Nk, D]`` (K already smoothed) with ``k_scale`` float32 ``[B, Hkv, Lk]``,
  ``Lk >= ceil(Nk / 64) * 4``: key ``n`` uses ``k_scale[(n // 64) * 4 + (n % 8) // 2]`` (the key columns
  ``2t, 2t + 1`` of every n8 tile that lane ``t`` holds in the score fragment of a 64-key block).
  Both layouts equal upstream's ``per_thread_int8`` (WARPQ = warp_q, BLKK = WARPK = 64).
- ``v`` float16 ``[B, Hkv, Nk, D]`` (FP16 PV), or float8_e4m3fn with a per-channel ``v_scale``
  float32 ``[B, Hkv, D]`` (FP8 PV, ``V ≈ v · v_scale``).

Maths (per row ``i``; keys ``j >= Nk`` do not exist; ``is_causal`` masks ``j > i``, top-left aligned)::

    S[i, j] = (Σ_d q[i, d] · k[j, d]) · q_scale[grp_q(i)] · k_scale[grp_k(j)]      (log2 domain)
    m_i = max_j S[i, j],  E[i, j] = c · 2^(S[i, j] - m_i),  l_i = Σ_j E[i, j]
    FP16 PV: c = 1,   O[i] = Σ_j fp16(E[i, j]) · v[j] / l_i
    FP8 PV:  c = 448, O[i] = (Σ_j e4m3(E[i, j]) · v[j]) ⊙ v_scale / l_i      (P scaled to e4m3's max)
    lse_i = ln 2 · (m_i + log2(l_i / c))            (natural log of Σ_j exp(ln2 · S[i, j]))

``O`` is rounded to ``out_dtype`` (float16 or bfloat16), ``lse`` is float32. The CUDA kernel takes the
max over the keys seen so far (online softmax) when it rounds P, so its P rounding differs from this
one by at most one rounding step per element; the tests compare within that tolerance.

``pv_accum`` (upstream's ``pv_accum_dtype``) picks how ``Σ_j P[i, j] · v[j]`` is accumulated. ``"fp32"``
(fp16 V) and ``"fp32+fp32"`` (FP8 V), the defaults, are the formulas above, summed exactly (float64).
The f16-accumulating modes have rounding points that depend on the kernel's block order, so for them
the reference walks the keys in 64-key blocks with the running max ``m_b`` (online softmax, as the
kernel and ``sageattention.modes.softmax_pv``) and rounds where the kernel's MMA accumulator rounds,
once per MMA k-step of ``ks`` keys (16 for fp16 V, 32 for FP8 V; the step's products summed exactly)::

    E_b = c · 2^(S_b - m_b),  α_b = 2^(m_(b-1) - m_b),  l_b = α_b · l_(b-1) + Σ_j E_b[j]
    "fp16+fp32" (fp16 V) / "fp32+fp16" (FP8 V, SageAttention2++):
        A_b = f16(... f16(f16(0 + P_b[:ks] · v_b[:ks]) + P_b[ks:2ks] · v_b[ks:2ks]) ...),
        O_b = α_b · O_(b-1) + A_b                                     (f16 block sum, exact outer sum)
    "fp16" (fp16 V): O_b = f16(... f16(f16(α_b · O_(b-1)) + P_b[:ks] · v_b[:ks]) ...)  (f16 throughout)

with ``P_b = fp16(E_b)`` or ``e4m3(E_b)``; ``O = O_last / l_last`` (⊙ ``v_scale`` for FP8 V). An f16
accumulator overflows past 65504: FP8 V for ``"fp32+fp16"`` should be scaled to max 2.25 (64 · 448 ·
2.25 < 65504; ``quantize_v_per_channel_fp8(v, 2.25)``), fp16 V for ``"fp16"`` so that ``Nk · max|v|``
stays below 65504.

``quantize_q_per_thread``, ``quantize_k_per_thread`` and ``quantize_v_per_channel_fp8`` produce such
operands (for the tests; the production quantizers live elsewhere).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "BLOCK_K",
    "FP8_P_SCALE",
    "LOG2E",
    "PV_ACCUM",
    "attention_from_scores",
    "dequant_scores",
    "k_group_index",
    "num_k_groups",
    "num_q_groups",
    "q_group_index",
    "quantize_k_per_thread",
    "quantize_q_per_thread",
    "quantize_v_per_channel_fp8",
    "resolve_pv_accum",
    "sage_attention_fwd",
]

LOG2E = 1.4426950408889634
FP8_P_SCALE = 448.0
BLOCK_K = 64
#: the P·V accumulation modes of each V dtype (first: the default); upstream's ``pv_accum_dtype`` values
#: (FP8 V ``"fp32"``, upstream's single-level accumulator, is not among them)
PV_ACCUM = {
    torch.float16: ("fp32", "fp16+fp32", "fp16"),
    torch.float8_e4m3fn: ("fp32+fp32", "fp32+fp16"),
}


def resolve_pv_accum(v_dtype: torch.dtype, pv_accum: str | None) -> str:
    """``pv_accum`` checked against the V dtype's modes (:data:`PV_ACCUM`); None gives the default."""
    modes = PV_ACCUM.get(v_dtype)
    if modes is None:
        raise TypeError(f"v has dtype {v_dtype}; supported: float16, float8_e4m3fn")
    if pv_accum is None:
        return modes[0]
    if not isinstance(pv_accum, str):
        raise TypeError(f"pv_accum must be a str or None, got {type(pv_accum).__name__}")
    if pv_accum not in modes:
        kind = "FP8 (float8_e4m3fn)" if v_dtype == torch.float8_e4m3fn else "fp16"
        raise ValueError(f"pv_accum={pv_accum!r} is not supported with {kind} v; supported: {modes}")
    return pv_accum


def num_q_groups(nq: int, warp_q: int) -> int:
    return -(-nq // warp_q) * 8


def num_k_groups(nk: int) -> int:
    return -(-nk // BLOCK_K) * 4


def q_group_index(nq: int, warp_q: int, device=None) -> torch.Tensor:
    """``[Nq]`` int64: the q_scale entry of every query row."""
    r = torch.arange(nq, device=device)
    return (r // warp_q) * 8 + r % 8


def k_group_index(nk: int, device=None) -> torch.Tensor:
    """``[Nk]`` int64: the k_scale entry of every key."""
    n = torch.arange(nk, device=device)
    return (n // BLOCK_K) * 4 + (n % 8) // 2


def _quantize_groups(x: torch.Tensor, idx: torch.Tensor, groups: int, multiplier: float, qmax: int = 127):
    """Symmetric integers in ``[-qmax, qmax]`` (127: INT8, 7: INT4) with one scale per group of rows
    (dim -2): ``scale = amax / qmax``, round half away from zero."""
    xf = x.float()
    amax_rows = xf.abs().amax(dim=-1)  # [..., N]
    amax = torch.zeros((*x.shape[:-2], groups), dtype=torch.float32, device=x.device)
    amax = amax.scatter_reduce(-1, idx.expand_as(amax_rows), amax_rows, reduce="amax", include_self=True)
    scale = amax / float(qmax)
    s_rows = scale.gather(-1, idx.expand_as(amax_rows))[..., None]
    y = torch.where(s_rows > 0, xf / s_rows, torch.zeros_like(xf))
    qi = torch.clamp(torch.trunc(y + torch.copysign(torch.full_like(y, 0.5), y)), -qmax, qmax).to(torch.int8)
    return qi, (scale * multiplier).float()


def quantize_q_per_thread(q: torch.Tensor, warp_q: int = 32, sm_scale: float | None = None):
    """``q`` float ``[B, H, N, D]`` -> (int8, q_scale ``[B, H, ceil(N / warp_q) * 8]`` with ``sm_scale · log2 e``
    folded in; ``sm_scale`` defaults to ``D ** -0.5``)."""
    n, d = q.shape[-2], q.shape[-1]
    sm = d**-0.5 if sm_scale is None else sm_scale
    return _quantize_groups(q, q_group_index(n, warp_q, q.device), num_q_groups(n, warp_q), sm * LOG2E)


def quantize_k_per_thread(k: torch.Tensor):
    """``k`` float ``[B, H, N, D]`` (smooth it first if wanted) -> (int8, k_scale ``[B, H, ceil(N / 64) * 4]``)."""
    n = k.shape[-2]
    return _quantize_groups(k, k_group_index(n, k.device), num_k_groups(n), 1.0)


def quantize_v_per_channel_fp8(v: torch.Tensor, scale_max: float = 448.0):
    """``v`` float ``[B, H, N, D]`` -> (float8_e4m3fn, v_scale float32 ``[B, H, D]``), ``v ≈ v8 · v_scale``;
    an all-zero channel gets scale 1."""
    amax = v.float().abs().amax(dim=-2)
    scale = torch.where(amax > 0, amax / scale_max, torch.ones_like(amax))
    return (v.float() / scale[..., None, :]).to(torch.float8_e4m3fn), scale.float()


def dequant_scores(q, k, q_scale, k_scale, warp_q: int = 32) -> torch.Tensor:
    """``S`` float64 ``[B, Hq, Nq, Nk]`` in the log2 domain (GQA expanded)."""
    nq, nk = q.shape[-2], k.shape[-2]
    rep = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1).double()
    ks = k_scale.repeat_interleave(rep, dim=1).double()
    acc = torch.matmul(q.double(), kk.transpose(-1, -2))  # exact: |acc| <= 128 * 128 * D < 2^53
    qs = q_scale.double()[..., q_group_index(nq, warp_q, q.device)]
    ksr = ks[..., k_group_index(nk, k.device)]
    return acc * qs[..., :, None] * ksr[..., None, :]


def sage_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor | None = None,
    is_causal: bool = False,
    warp_q: int = 32,
    out_dtype: torch.dtype = torch.float16,
    pv_accum: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, Hq, Nq, D] out_dtype, lse [B, Hq, Nq] float32)``, see the module docstring."""
    s = dequant_scores(q, k, q_scale, k_scale, warp_q)
    return attention_from_scores(s, v, v_scale, is_causal, out_dtype, pv_accum)


def attention_from_scores(
    s: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor | None,
    is_causal: bool,
    out_dtype: torch.dtype,
    pv_accum: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax and P·V half of :func:`sage_attention_fwd` on float64 log2-domain scores
    ``s [B, Hq, Nq, Nk]`` (shared with the INT4 reference)."""
    nq, nk = s.shape[-2], s.shape[-1]
    fp8 = v.dtype == torch.float8_e4m3fn
    c = FP8_P_SCALE if fp8 else 1.0
    pv_accum = resolve_pv_accum(v.dtype, pv_accum)
    if is_causal:
        keep = torch.ones(nq, nk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    if pv_accum not in ("fp32", "fp32+fp32"):
        return _f16_accumulated(s, v, v_scale, c, pv_accum, out_dtype)
    m = s.amax(dim=-1, keepdim=True)
    e = c * torch.exp2(s - m)
    lsum = e.sum(dim=-1, keepdim=True)
    rep = s.shape[1] // v.shape[1]
    vv = v.repeat_interleave(rep, dim=1)
    if fp8:
        p = e.to(torch.float8_e4m3fn).double()
        o = torch.matmul(p, vv.double()) * v_scale.repeat_interleave(rep, dim=1).double()[..., None, :]
    else:
        p = e.to(torch.float16).double()
        o = torch.matmul(p, vv.double())
    out = (o / lsum).to(out_dtype)
    lse = ((m + torch.log2(lsum / c)) * math.log(2.0)).squeeze(-1).float()
    return out, lse


def _round_f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).double()


def _f16_accumulated(
    s: torch.Tensor, v: torch.Tensor, v_scale: torch.Tensor | None, c: float, pv_accum: str, out_dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_from_scores` for the f16-accumulating ``pv_accum`` modes: 64-key blocks, running
    max, an f16 rounding per MMA k-step (module docstring)."""
    fp8 = v.dtype == torch.float8_e4m3fn
    kstep = 32 if fp8 else 16
    one_level = pv_accum == "fp16"
    rep = s.shape[1] // v.shape[1]
    vv = v.repeat_interleave(rep, dim=1).double()
    m = torch.full(s.shape[:-1], float("-inf"), dtype=torch.float64, device=s.device)
    lsum = torch.zeros_like(m)
    acc = torch.zeros((*s.shape[:-1], v.shape[-1]), dtype=torch.float64, device=s.device)
    for j0 in range(0, s.shape[-1], BLOCK_K):
        sb = s[..., j0 : j0 + BLOCK_K]
        m_new = torch.maximum(m, sb.amax(dim=-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)  # no key yet: all 0
        alpha = torch.exp2(m - m_use)[..., None]
        e = c * torch.exp2(sb - m_use[..., None])
        lsum = lsum * alpha[..., 0] + e.sum(dim=-1)
        p = e.to(torch.float8_e4m3fn).double() if fp8 else _round_f16(e)
        vb = vv[..., j0 : j0 + BLOCK_K, :]
        blk = _round_f16(acc * alpha) if one_level else torch.zeros_like(acc)
        for i0 in range(0, sb.shape[-1], kstep):
            blk = _round_f16(blk + torch.matmul(p[..., i0 : i0 + kstep], vb[..., i0 : i0 + kstep, :]))
        acc = blk if one_level else acc * alpha + blk
        m = m_new
    o = acc / lsum[..., None]
    if fp8:
        o = o * v_scale.repeat_interleave(rep, dim=1).double()[..., None, :]
    lse = (m + torch.log2(lsum / c)) * math.log(2.0)
    return o.to(out_dtype), lse.float()
