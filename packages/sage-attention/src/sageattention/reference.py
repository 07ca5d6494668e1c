"""SageAttention2 forward (INT8 per-block QK, fp16 PV) in plain PyTorch, and exact fp64 attention.

Tensors are in ``HND`` layout: ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``, ``v [B, Hkv, Nk, Dv]``,
``Hq`` a multiple of ``Hkv`` (GQA/MQA: query head ``h`` uses kv head ``h // (Hq // Hkv)``).
``mask`` is None or a float32 additive mask (natural-log units, ``-inf`` = masked) broadcastable to
``[B, Hq, Nq, Nk]``; causal masking is top-left aligned like SDPA (query ``i`` sees keys ``j <= i``).

SageAttention2 with per-block granularity (upstream's Triton path, SA2 paper section 3):

1. smooth K: ``K' = K - mean_tokens(K)`` per (b, kv head, channel). Softmax is invariant to the
   per-row constant ``q·mean(K)`` it removes, so only the LSE needs a correction (step 6);
2. ``Q' = Q · sm_scale · log2(e)`` (so the softmax can use ``exp2``), quantized to INT8 per block of
   ``BLKQ = 128`` tokens; ``K'`` quantized per block of ``BLKK = 64`` tokens:
   ``scale = max|x| / 127``, ``x8 = round_half_away(x / scale)``;
3. ``S = float32(int32(Q8 · K8ᵀ)) · q_scale · k_scale`` (log2 domain), plus mask · log2(e);
4. online softmax over key blocks of 64 with ``exp2``: running max ``m``, running sum ``l``
   (float32, from the float32 ``P``);
5. ``O += fp16(P) · fp16(V / v_scale)`` accumulated in float32, ``O = O / l · v_scale``.
   Emulated: fp16 products accumulated in float32 (exact products, float32 sums), like upstream's
   ``pv_accum_dtype="fp32"`` CUDA path. Upstream's Triton kernel accumulates each 64-key block in
   fp16 (``tl.dot(..., out_dtype=float16)``) before adding it into float32; that inner fp16
   accumulation is *not* emulated here. ``v_scale`` is a per-(b, head, channel) power of two with
   ``max|V / v_scale| <= 256`` (so V never overflows fp16, whatever the input range, and even a
   64-term fp16 sum of ``P <= 1`` times it stays ``<= 16384``); a power of two leaves the fp16
   rounding of V unchanged wherever V was already in the fp16 normal range;
6. ``lse = (m + log2(l)) · ln(2) + sm_scale · (q · mean(K))`` in natural log, referring to the
   un-smoothed K: ``q'·k = q'·(k - km) + q'·km`` with ``q' = q·sm_scale·log2(e)``, so
   ``log2 Σ exp2(q'·k) = log2 Σ exp2(q'·(k-km)) + q'·km``; times ``ln 2`` gives natural log, and
   ``q'·km · ln 2 = sm_scale · q·km``.

Rows whose keys are all masked give output 0 and lse ``-inf``. Queries are processed in blocks of
``BLKQ`` (one CTA per block in the GPU kernel), which bounds the memory to ``B·Hq·BLKQ·Nk`` floats.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "BLKK",
    "BLKQ",
    "LOG2E",
    "attention_exact",
    "blocked_softmax_pv",
    "causal_keep",
    "lse_natural",
    "quantize_int8_per_block",
    "sage_attention",
    "v_channel_scale",
]

BLKQ = 128
BLKK = 64
LOG2E = 1.4426950408889634
V_MAX = 256.0


def quantize_int8_per_block(x: torch.Tensor, block: int, *, smooth: bool = False, multiplier: float = 1.0):
    """Per-block INT8 of ``x [..., N, D]`` along tokens: ``(x8, scale [..., ceil(N/block)], mean)``.

    ``mean`` is the per-channel token mean (float64 sum, rounded to float32) when ``smooth``.
    """
    n, d = x.shape[-2], x.shape[-1]
    y = x.float()
    mean = None
    if smooth:
        mean = (x.double().sum(dim=-2, keepdim=True) / n).float()
        y = y - mean
    y = y * torch.tensor(multiplier, dtype=torch.float32, device=x.device)
    nb = -(-n // block)
    yb = torch.nn.functional.pad(y, (0, 0, 0, nb * block - n)).reshape(*x.shape[:-2], nb, block, d)
    amax = yb.abs().amax(dim=(-2, -1))
    scale = torch.where(torch.isfinite(amax), amax / 127.0, torch.full_like(amax, float("nan")))
    s = scale[..., None, None]
    x8 = torch.trunc(yb / s + torch.copysign(torch.full_like(yb, 0.5), yb)).clamp(-127.0, 127.0)
    x8 = torch.where(s > 0, x8, torch.zeros_like(x8)).to(torch.int8)
    return x8.reshape(*x.shape[:-2], nb * block, d)[..., :n, :], scale, mean


def v_channel_scale(v: torch.Tensor) -> torch.Tensor:
    """Power-of-two per-channel scale ``[..., 1, Dv]`` with ``max_tokens |v / scale| <= 256``."""
    amax = v.float().abs().amax(dim=-2, keepdim=True)
    exp = torch.ceil(torch.log2(amax / V_MAX)).clamp(min=0.0)
    return torch.where(amax > 0, torch.exp2(exp), torch.ones_like(amax))


def causal_keep(i0: int, i1: int, nk: int, device: torch.device) -> torch.Tensor:
    """Bool ``[i1 - i0, nk]``: query ``i`` keeps key ``j`` iff ``j <= i`` (SDPA's top-left alignment)."""
    i = torch.arange(i0, i1, device=device)[:, None]
    return torch.arange(nk, device=device)[None, :] <= i


def blocked_softmax_pv(s: torch.Tensor, v16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online exp2 softmax over key blocks of ``BLKK`` and ``P·V`` (fp16 operands, float32 sums).

    ``s`` float32 ``[..., M, Nk]`` in log2 units (``-inf`` = masked), ``v16`` fp16 ``[..., Nk, Dv]``
    (already divided by its channel scale). Returns ``(O [..., M, Dv] float32 un-normalised by
    v_scale, lse2 [..., M])`` with ``O = 0`` and ``lse2 = -inf`` on rows with every key masked.
    """
    nk = s.shape[-1]
    m = torch.full(s.shape[:-1], float("-inf"), dtype=torch.float32, device=s.device)
    lsum = torch.zeros_like(m)
    acc = torch.zeros((*s.shape[:-1], v16.shape[-1]), dtype=torch.float32, device=s.device)
    for j0 in range(0, nk, BLKK):
        sb = s[..., j0 : j0 + BLKK]
        m_new = torch.maximum(m, sb.amax(dim=-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(sb - m_use[..., None])
        alpha = torch.exp2(m - m_use)
        lsum = lsum * alpha + p.sum(dim=-1)
        acc = acc * alpha[..., None] + torch.matmul(p.half().float(), v16[..., j0 : j0 + BLKK, :].float())
        m = m_new
    empty = lsum == 0
    o = torch.where(empty[..., None], torch.zeros_like(acc), acc / torch.where(empty, 1.0, lsum)[..., None])
    lse2 = torch.where(
        empty, torch.full_like(m, float("-inf")), m + torch.log2(torch.where(empty, 1.0, lsum))
    )
    return o, lse2


def _expand_heads(x: torch.Tensor, hq: int) -> torch.Tensor:
    return x.repeat_interleave(hq // x.shape[1], dim=1) if x.shape[1] != hq else x


def sage_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
    smooth_k: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 (per-block INT8 QK, fp16 PV) in HND: returns ``(O float32, lse natural log)``."""
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    k, v = _expand_heads(k, hq), _expand_heads(v, hq)
    q8, qs, _ = quantize_int8_per_block(q, BLKQ, multiplier=sm_scale * LOG2E)
    k8, ks, km = quantize_int8_per_block(k, BLKK, smooth=smooth_k)
    vs = v_channel_scale(v)
    v16 = (v.float() / vs).half()
    if mask is not None:
        mask = mask.expand(b, hq, nq, nk)
    o = torch.empty((b, hq, nq, v.shape[-1]), dtype=torch.float32, device=q.device)
    lse2 = torch.empty((b, hq, nq), dtype=torch.float32, device=q.device)
    ks_tok = ks.repeat_interleave(BLKK, dim=-1)[..., None, :nk]
    for i0 in range(0, nq, BLKQ):
        i1 = min(i0 + BLKQ, nq)
        acc = torch.matmul(q8[..., i0:i1, :].double(), k8.double().transpose(-1, -2))  # exact int32 sums
        s = (acc.float() * qs[..., i0 // BLKQ, None, None]) * ks_tok
        if mask is not None:
            s = s + mask[..., i0:i1, :] * LOG2E
        if is_causal:
            s = s.masked_fill(~causal_keep(i0, i1, nk, q.device), float("-inf"))
        o[..., i0:i1, :], lse2[..., i0:i1] = blocked_softmax_pv(s, v16)
    return o * vs, lse_natural(lse2, q, km, sm_scale)


def lse_natural(
    lse2: torch.Tensor, q: torch.Tensor, km: torch.Tensor | None, sm_scale: float
) -> torch.Tensor:
    """Natural-log LSE of the un-smoothed scores from the log2 LSE of the smoothed ones (step 6)."""
    lse = lse2 * math.log(2.0)
    if km is None:
        return lse
    km = km.repeat_interleave(q.shape[1] // km.shape[1], dim=1) if km.shape[1] != q.shape[1] else km
    corr = torch.matmul(q.float(), km.transpose(-1, -2))[..., 0] * sm_scale
    return lse + corr


def attention_exact(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float | None = None,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention in float64 (HND, GQA by head repetition): ``(O, lse natural log)``.

    ``mask`` is bool (True = attend) or additive float. Fully masked rows give 0 and lse ``-inf``.
    """
    hq, nq, nk = q.shape[1], q.shape[2], k.shape[2]
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    k, v = _expand_heads(k, hq).double(), _expand_heads(v, hq).double()
    s = torch.matmul(q.double(), k.transpose(-1, -2)) * sm_scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    if is_causal:
        s = s.masked_fill(~causal_keep(0, nq, nk, q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = lse == float("-inf")
    p = torch.exp(s - torch.where(empty, 0.0, lse)[..., None])
    o = torch.matmul(p, v)
    return torch.where(empty[..., None], torch.zeros_like(o), o), lse
