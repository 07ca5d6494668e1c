"""Fused INT8 attention forward (SageAttention2: INT8 per-block Q·Kᵀ, online exp2 softmax, fp16 P·V).

The oracle of ``ops.int8_attention``, written step by step in float32 torch operations so that the
compiled kernel reproduces it bit for bit. Layout ``HND``: ``q8 [B, Hq, Nq, D]`` and ``k8 [B, Hkv,
Nk, D]`` int8, query head ``h`` reads kv head ``h // (Hq // Hkv)``. For each query row, over key blocks
of ``BLOCK_K = 64`` (``jb``):

1. ``s = (float32(int32(q8·k8ᵀ)) · q_scale[i // block_q]) · k_scale[jb]`` (log2 units: the caller
   folded ``sm_scale·log2(e)`` into Q), ``s += mask · log2(e)`` (additive mask in natural-log
   units), ``s = -inf`` where ``j > i`` when causal (top-left, like SDPA); a causal row skips the key
   blocks that start after it;
2. online softmax: ``m' = max(m, max_j s)`` (NaN propagates), ``mu = m'`` (0 when ``-inf``),
   ``p = exp2(s - mu)``, ``alpha = exp2(m - mu)``, ``l = l·alpha + Σ p`` (Σ over the 64 keys in the
   fixed tree of ``row_sum``);
3. ``acc = acc·alpha + Σ_j fp16(p_j)·v16_j`` with ``v16 = fp16(v / v_scale)`` (float32; the block
   sum runs over ``j`` ascending, each product of two fp16 values is exact in float32);
4. ``o = acc / l · v_scale`` and ``lse2 = m + log2(l)`` (log2 units; the caller converts), 0 and
   ``-inf`` on rows whose keys are all masked.

``exp2`` is ``exp2_neg`` below (a degree-6 polynomial times ``2^n``, relative error < 1.2e-7, 0 below
2^-125) rather than ``torch.exp2``, whose last bit depends on the CPU's vector library. Every
multiply and add is a separate float32 operation (no FMA), like the kernel.
"""

from __future__ import annotations

import torch

__all__ = ["BLOCK_K", "LOG2E", "exp2_neg", "int8_attention", "row_sum"]

BLOCK_K = 64
LOG2E = 1.4426950408889634  # rounded to float32 where it multiplies a float32 tensor
EXP2_MIN = -125.0
# exp2(f) on [-0.5, 0.5], c0 = 1 (float32 values; the same hex literals as the C++ header)
EXP2_COEFFS = tuple(
    float.fromhex(h)
    for h in (
        "0x1.41d334p-13",
        "0x1.5f456ap-10",
        "0x1.3b2dbcp-7",
        "0x1.c6aed4p-5",
        "0x1.ebfbdap-3",
        "0x1.62e430p-1",
    )
)


def exp2_neg(x: torch.Tensor) -> torch.Tensor:
    """``2^x`` for float32 ``x <= 0``: ``n = round(x)``, ``f = x - n``, Horner polynomial in ``f``
    times ``2^n``; 0 where ``x < -125`` (and ``-inf``), NaN where NaN."""
    n = torch.round(x)
    f = x - n
    p = torch.full_like(x, EXP2_COEFFS[0])
    for c in (*EXP2_COEFFS[1:], 1.0):
        p = p * f + c
    ok = x >= EXP2_MIN
    e = ((torch.where(ok, n, 0.0).to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(ok | torch.isnan(x), p * e, 0.0)


def row_sum(p: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of 64 in a fixed order: lanes ``c = ((p[c] + p[16+c]) + p[32+c]) +
    p[48+c]``, then halves 16 → 8 → 4 → 2 → 1."""
    t = ((p[..., 0:16] + p[..., 16:32]) + p[..., 32:48]) + p[..., 48:64]
    for w in (8, 4, 2, 1):
        t = t[..., :w] + t[..., w : 2 * w]
    return t[..., 0]


def int8_attention(
    q8: torch.Tensor,
    k8: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    block_q: int = 128,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o float32 [B, Hq, Nq, Dv], lse2 float32 [B, Hq, Nq])``; see the module docstring. ``v_scale``
    float32 ``[B, Hkv, Dv]`` or broadcastable to ``[B, Hkv, 1, Dv]``; ``mask`` float32 broadcastable
    to ``[B, Hq, Nq, Nk]``."""
    b, hq, nq, _ = q8.shape
    hkv, nk, dv = k8.shape[1], k8.shape[2], v.shape[-1]
    g = hq // hkv
    vs = None
    if v_scale is not None:
        vs = (v_scale[:, :, None, :] if v_scale.dim() == 3 else v_scale).expand(b, hkv, 1, dv)
    v16 = (v.float() / vs if vs is not None else v.float()).half().float()
    k8, v16 = k8.repeat_interleave(g, dim=1), v16.repeat_interleave(g, dim=1)
    ks = k_scale.repeat_interleave(g, dim=1)
    qs = q_scale[..., torch.arange(nq) // block_q][..., None]  # [B, Hq, Nq, 1]
    rows = torch.arange(nq)
    m = torch.full((b, hq, nq), float("-inf"))
    lsum = torch.zeros(b, hq, nq)
    acc = torch.zeros(b, hq, nq, dv)
    for jb, j0 in enumerate(range(0, nk, BLOCK_K)):
        j1 = min(j0 + BLOCK_K, nk)
        dot = torch.matmul(q8.double(), k8[..., j0:j1, :].double().transpose(-1, -2))  # exact
        s = (dot.float() * qs) * ks[..., jb, None, None]
        if mask is not None:
            s = s + mask.float().expand(b, hq, nq, nk)[..., j0:j1] * LOG2E
        if is_causal:
            s = s.masked_fill(torch.arange(j0, j1)[None, :] > rows[:, None], float("-inf"))
        s = torch.nn.functional.pad(s, (0, BLOCK_K - (j1 - j0)), value=float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1))
        mu = torch.where(m_new == float("-inf"), 0.0, m_new)
        p = exp2_neg(s - mu[..., None])
        alpha = exp2_neg(m - mu)
        l_new = lsum * alpha + row_sum(p)
        p16 = p.half().float()
        pv = torch.zeros_like(acc)
        for jj in range(j1 - j0):
            pv = pv + p16[..., jj, None] * v16[:, :, None, j0 + jj, :]  # exact product, float32 sum
        acc_new = acc * alpha[..., None] + pv
        live = rows >= j0 if is_causal else torch.ones(nq, dtype=torch.bool)  # causal rows skip later blocks
        m = torch.where(live, m_new, m)
        lsum = torch.where(live, l_new, lsum)
        acc = torch.where(live[..., None], acc_new, acc)
    empty = lsum == 0
    o = torch.where(empty[..., None], 0.0, acc / torch.where(empty, 1.0, lsum)[..., None])
    if vs is not None:
        o = o * vs.repeat_interleave(g, dim=1)
    lse2 = torch.where(empty, float("-inf"), m + torch.log2(lsum.double()).float())
    return o, lse2
