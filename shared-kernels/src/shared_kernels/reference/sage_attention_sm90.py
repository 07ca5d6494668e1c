"""SageAttention2 forward of the Hopper (sm90, wgmma) kernel on pre-quantized operands (reference, float64).

It differs from ``reference.sage_attention`` in the quantization groups (upstream's sm90 tiles: 64-row Q
tiles of 4 warps x 16 rows, 128-key K tiles), the V layout (transposed) and the P rounding, which follows
the kernel's online softmax over 128-key blocks. Operands (``Hq % Hkv == 0``, query head ``h`` reads kv
head ``h // (Hq // Hkv)``):

- ``q`` int8 ``[B, Hq, Nq, D]``, ``q_scale`` float32 ``[B, Hq, Lq]``, ``Lq >= ceil(Nq / 16) * 8``: row ``r``
  uses ``q_scale[(r // 16) * 8 + r % 8]`` (the rows ``g``, ``g + 8`` one lane holds in the wgmma
  accumulator); ``sm_scale · log2(e)`` is folded in, so scores are in the log2 domain.
- ``k`` int8 ``[B, Hkv, Nk, D]`` (K already smoothed), ``k_scale`` float32 ``[B, Hkv, Lk]``,
  ``Lk >= ceil(Nk / 128) * 4``: key ``n`` uses ``k_scale[(n // 128) * 4 + (n % 8) // 2]``.
- ``v_t`` float8_e4m3fn ``[B, Hkv, D, Nkp]`` (V transposed, ``Nkp >= Nk``, a multiple of 16; columns
  ``>= Nk`` are ignored) with a per-channel ``v_scale`` float32 ``[B, Hkv, D]``: ``V[n, d] ≈ v_t[d, n] ·
  v_scale[d]``.

Maths (row ``i``; ``is_causal`` masks keys ``j > i``, top-left aligned; key blocks ``b`` of 128)::

    S[i, j] = (Σ_d q[i, d] · k[j, d]) · q_scale[grp_q(i)] · k_scale[grp_k(j)]
    m_b = max(S[i, j] : j in blocks 0..b)                         (running max, online softmax)
    P[i, j] = e4m3(448 · 2^(S[i, j] - m_b(j)))                     (rounded with its block's running max)
    l_i = Σ_j 448 · 2^(S[i, j] - m_last)                           (unrounded)
    O[i] = Σ_b 2^(m_b - m_last) · (Σ_{j in b} P[i, j] · v_t[:, j]) ⊙ v_scale / l_i
    lse_i = ln 2 · (m_last + log2(l_i / 448))

(each block's ``Σ_j P·v`` is the fresh wgmma accumulator of the two-level accumulation, added into the
float32 running output). ``O`` is rounded to ``out_dtype``, ``lse`` is float32; a row without keys gives
``O = 0`` and ``lse = -inf``. The kernel agrees up to the last bits of ``exp2`` and float32 sums (an element
of ``P`` on a rounding boundary may round to the neighbouring e4m3 value).

``quantize_q_sm90``, ``quantize_k_sm90`` and ``quantize_v_sm90`` produce such operands (tests, examples).
"""

from __future__ import annotations

import math

import torch

from .sage_attention import _quantize_groups

__all__ = [
    "BLOCK_K",
    "FP8_P_SCALE",
    "LOG2E",
    "WARP_Q",
    "dequant_scores",
    "k_group_index",
    "num_k_groups",
    "num_q_groups",
    "q_group_index",
    "quantize_k_sm90",
    "quantize_q_sm90",
    "quantize_v_sm90",
    "sage_attention_fwd_sm90",
]

LOG2E = 1.4426950408889634
FP8_P_SCALE = 448.0
WARP_Q = 16
BLOCK_K = 128
VT_ALIGN = 16


def num_q_groups(nq: int) -> int:
    return -(-nq // WARP_Q) * 8


def num_k_groups(nk: int) -> int:
    return -(-nk // BLOCK_K) * 4


def q_group_index(nq: int, device=None) -> torch.Tensor:
    """``[Nq]`` int64: the q_scale entry of every query row."""
    r = torch.arange(nq, device=device)
    return (r // WARP_Q) * 8 + r % 8


def k_group_index(nk: int, device=None) -> torch.Tensor:
    """``[Nk]`` int64: the k_scale entry of every key."""
    n = torch.arange(nk, device=device)
    return (n // BLOCK_K) * 4 + (n % 8) // 2


def quantize_q_sm90(q: torch.Tensor, sm_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` float ``[B, H, N, D]`` -> (int8, q_scale ``[B, H, ceil(N / 16) * 8]`` with ``sm_scale · log2 e``
    folded in; ``sm_scale`` defaults to ``D ** -0.5``). Scale ``amax / 127``, round half away from zero."""
    n, d = q.shape[-2], q.shape[-1]
    sm = d**-0.5 if sm_scale is None else sm_scale
    return _quantize_groups(q, q_group_index(n, q.device), num_q_groups(n), sm * LOG2E)


def quantize_k_sm90(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` float ``[B, H, N, D]`` (smooth it first if wanted) -> (int8, k_scale ``[B, H, ceil(N / 128) * 4]``)."""
    n = k.shape[-2]
    return _quantize_groups(k, k_group_index(n, k.device), num_k_groups(n), 1.0)


def quantize_v_sm90(v: torch.Tensor, scale_max: float = 448.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``v`` float ``[B, H, N, D]`` -> (``v_t`` float8_e4m3fn ``[B, H, D, ceil(N / 16) * 16]`` zero-padded,
    ``v_scale`` float32 ``[B, H, D]``), ``V ≈ v_t.mT · v_scale``; an all-zero channel gets scale 1."""
    n = v.shape[-2]
    vf = v.float()
    amax = vf.abs().amax(dim=-2)
    scale = torch.where(amax > 0, amax / scale_max, torch.ones_like(amax))
    codes = (vf / scale[..., None, :]).to(torch.float8_e4m3fn)
    nkp = -(-n // VT_ALIGN) * VT_ALIGN
    vt = torch.zeros((*v.shape[:-2], v.shape[-1], nkp), dtype=torch.float8_e4m3fn, device=v.device)
    vt[..., :n] = codes.transpose(-1, -2)
    return vt, scale.float()


def dequant_scores(q, k, q_scale, k_scale) -> torch.Tensor:
    """``S`` float64 ``[B, Hq, Nq, Nk]`` in the log2 domain (GQA expanded)."""
    nq, nk = q.shape[-2], k.shape[-2]
    rep = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1).double()
    ks = k_scale.repeat_interleave(rep, dim=1).double()
    acc = torch.matmul(q.double(), kk.transpose(-1, -2))  # exact: |acc| <= 128 * 128 * D < 2^53
    qs = q_scale.double()[..., q_group_index(nq, q.device)]
    ksr = ks[..., k_group_index(nk, k.device)]
    return acc * qs[..., :, None] * ksr[..., None, :]


def sage_attention_fwd_sm90(
    q: torch.Tensor,
    k: torch.Tensor,
    v_t: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    is_causal: bool = False,
    out_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, Hq, Nq, D] out_dtype, lse [B, Hq, Nq] float32)``, see the module docstring."""
    b, hq, nq, d = q.shape
    nk = k.shape[-2]
    rep = hq // k.shape[1]
    s = dequant_scores(q, k, q_scale, k_scale)
    if is_causal:
        keep = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    v = v_t[..., :nk].double().transpose(-1, -2).repeat_interleave(rep, dim=1)  # [B, Hq, Nk, D] codes
    m = torch.full((b, hq, nq), float("-inf"), dtype=torch.float64, device=q.device)
    lsum = torch.zeros_like(m)
    acc = torch.zeros((b, hq, nq, d), dtype=torch.float64, device=q.device)
    for j0 in range(0, nk, BLOCK_K):
        sb = s[..., j0 : j0 + BLOCK_K]
        m_new = torch.maximum(m, sb.amax(dim=-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        e = FP8_P_SCALE * torch.exp2(sb - m_use[..., None])
        alpha = torch.exp2(m - m_use)
        lsum = lsum * alpha + e.sum(dim=-1)
        p = e.to(torch.float8_e4m3fn).double()
        acc = acc * alpha[..., None] + torch.matmul(p, v[..., j0 : j0 + BLOCK_K, :])
        m = m_new
    empty = lsum == 0
    vs = v_scale.double().repeat_interleave(rep, dim=1)[..., None, :]
    out = torch.where(empty[..., None], 0.0, acc / torch.where(empty, 1.0, lsum)[..., None]) * vs
    lse = torch.where(
        empty,
        float("-inf"),
        (m + torch.log2(torch.where(empty, 1.0, lsum) / FP8_P_SCALE)) * math.log(2.0),
    )
    return out.to(out_dtype), lse.float()
