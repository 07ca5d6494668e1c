"""SageBwd (8-bit trainable attention) forward and backward maths in plain PyTorch.

Tensors are HND: ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``, ``v [B, Hkv, Nk, Dv]`` (GQA: query
head ``h`` uses kv head ``h // (Hq // Hkv)``). ``mask`` is None or a float additive mask (natural
log, ``-inf`` = masked) broadcastable to ``[B, Hq, Nq, Nk]``; causal is top-left aligned (SDPA).
``c = sm_scale``. INT8 quantization of a block ``X`` everywhere: ``s = max|X| / 127``,
``X8 = round(X / s)`` (round half away from zero, the package's quantizer, clamped to ±127; an
all-zero block has ``s = 0`` and zeros; a non-finite block has ``s = NaN``).

Forward (SageBwd paper, SageAttention3 §4, ``quantize=True``):

1. ``K' = K - mean_tokens(K)`` (``smooth_k``), ``Q8, sq`` per block of 128 queries of
   ``Q·c·log2 e``, ``K8, sk`` per block of 64 keys of ``K'``, ``V8, sv`` per block of 64 keys;
2. ``S = (Q8·K8ᵀ)·sq·sk + mask·log2 e`` (log2 units, int32 accumulation);
3. online softmax over key blocks of 64: ``m' = max(m, rowmax S_j)``, ``P̃ = exp2(S_j - m')``,
   ``l = l·exp2(m - m') + rowsum P̃`` (float32 ``P̃``);
4. ``P̃`` per token (row) INT8 reusing the maxima: ``sp = rowmax(P̃) / 127 = exp2(rowmax S_j - m') / 127``,
   ``O = O·exp2(m - m') + (P̃8·V8)·sp·sv`` (int32 accumulation), at the end ``O = O / l``,
   ``lse2 = m + log2 l`` (of the smoothed scores; the natural-log lse of the un-smoothed scores is
   ``lse2·ln 2 + c·q·mean(K)``).

Backward (FlashAttention-2 recomputation on tiles of ``BLOCK_M = 64`` queries × ``BLOCK_N = 64``
keys; ``dO`` the output gradient, ``dlse`` the natural-log lse gradient or 0):

5. ``P = exp2(S - lse2)`` (recomputed from the forward's Q8, K8), ``Δ = rowsum(dO∘O) - dlse``;
6. ``dP = dO·Vᵀ`` in **fp16** operands with float32 accumulation (the one matmul the paper keeps in
   16 bits: Table 1c, dQ cosine 0.9977 vs 0.9747 with INT8). ``dO`` is first multiplied by V's
   per-channel power of two ``vp`` (``V16 = fp16(V / vp)``, as the forward of SageAttention2) and
   divided by a per-(b, h) power of two ``g`` with ``max|dO·vp / g| ∈ (128, 256]``, so gradients
   of any magnitude neither underflow nor overflow fp16: ``dP = (fp16(dO·vp/g)·V16ᵀ)·g``;
7. ``dS = P∘(dP - Δ)`` (softmax backward, natural-log scores);
8. ``dV = Σ_tiles (P8ᵀ·dO8)·sP·sdO``: P per tile (``sP = max P_tile / 127``), dO per 64 rows;
9. ``dQ = c·Σ_tiles (dS8·K8)·sdS·sk + c·dlse·mean(K)``: dS per tile (``sdS = max|dS_tile| / 127``);
10. ``dK = Σ_tiles (dS8ᵀ·Q8)·sdS·sq / log2 e`` (Q8 carries ``c·log2 e``); GQA sums dK, dV over
    the query heads of each kv head.

Why K smoothing is exact for the gradient. The function is ``O = softmax(c·Q·Kᵀ)·V`` of the
un-smoothed K; subtracting ``mean(K)`` adds ``-c·q_i·mean(K)`` to every score of row ``i``, a
row constant that softmax ignores, so O (and hence ``dO``, ``P``, ``dS``) are unchanged.
``dK_j = c·Σ_i dS_ij q_i`` uses only ``dS`` and Q: no K appears. ``dQ_i = c·Σ_j dS_ij k_j =
c·Σ_j dS_ij k'_j + c·mean(K)·Σ_j dS_ij`` and ``Σ_j dS_ij = Σ_j P_ij dP_ij - Δ_i·Σ_j P_ij =
dO_i·O_i - Δ_i = dlse_i``: zero for the output's gradient, ``dlse_i`` when the lse is used,
which step 9 adds back. So the smoothed (better quantized) ``K8`` serves ``dQ`` without bias.

``quantize=False`` runs the same recomputation with no rounding at all, in float64 for float64
inputs (the exact gradient; used by ``gradcheck``).
"""

from __future__ import annotations

import math

import torch

from .. import reference as ref

__all__ = [
    "BLOCK_M",
    "BLOCK_N",
    "SageBwdSaved",
    "do_fp16",
    "quantize_tiles",
    "round_half_away",
    "sagebwd_backward",
    "sagebwd_forward",
]

BLOCK_M = 64  # backward query tile (divides reference.BLKQ = 128: one Q scale per tile)
BLOCK_N = 64  # key tile (= reference.BLKK: one K and one V scale per tile)
LOG2E = ref.LOG2E
DO_MAX = 256.0


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties away from zero (the package's INT8 rounding)."""
    return torch.trunc(x + torch.copysign(torch.full_like(x, 0.5), x))


def _q8(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """INT8 values (as float) of ``x`` with the broadcastable scale ``s`` (0 where ``s`` is 0)."""
    ok = s > 0
    y = round_half_away(x / torch.where(ok, s, torch.ones_like(s))).clamp(-127.0, 127.0)
    return torch.where(ok, y, torch.zeros_like(y))


def _scale(amax: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(amax), amax / 127.0, torch.full_like(amax, float("nan")))


def quantize_tiles(x: torch.Tensor, bm: int, bn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 of ``x [..., M, N]`` per tile of ``bm × bn``: ``(x8 as float, scale per element)``."""
    m, n = x.shape[-2:]
    pm, pn = -(-m // bm) * bm, -(-n // bn) * bn
    xp = torch.nn.functional.pad(x, (0, pn - n, 0, pm - m))
    t = xp.reshape(*x.shape[:-2], pm // bm, bm, pn // bn, bn)
    amax = t.abs().amax(dim=(-3, -1), keepdim=True)
    s = _scale(amax)
    x8 = _q8(t, s).reshape(xp.shape)[..., :m, :n]
    return x8, s.expand(t.shape).reshape(xp.shape)[..., :m, :n]


def _expand(x: torch.Tensor, hq: int) -> torch.Tensor:
    return x.repeat_interleave(hq // x.shape[1], dim=1) if x.shape[1] != hq else x


def _group_sum(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """Sum ``x [B, Hq, ...]`` over the query heads of each kv head (GQA): ``[B, Hkv, ...]``."""
    b, hq = x.shape[:2]
    return x.reshape(b, hkv, hq // hkv, *x.shape[2:]).sum(dim=2)


def _row_scale(s: torch.Tensor, block: int, n: int) -> torch.Tensor:
    """A per-block scale ``[..., nb]`` spread to one entry per token ``[..., n]``."""
    return s.repeat_interleave(block, dim=-1)[..., :n]


class SageBwdSaved:
    """What the forward keeps for the backward: Q8/K8 (int8 values and scales), ``mean(K)``, V,
    O (float32) and the log2 lse of the smoothed scores; ``quantize=False``: Q, K, V instead."""

    def __init__(self, **kw: torch.Tensor | None) -> None:
        self.__dict__.update(kw)


def _scores(q8, qs, k8, ks, mask, is_causal, nq, nk, exact_dtype):
    """``S`` in log2 units (step 2), ``-inf`` where masked or causal-hidden."""
    hq = q8.shape[1]
    if qs is None:  # un-quantized: q8, k8 are Q·c·log2 e and K
        s = torch.matmul(q8.to(exact_dtype), _expand(k8, hq).to(exact_dtype).transpose(-1, -2))
    else:
        acc = torch.matmul(q8.double(), _expand(k8, hq).double().transpose(-1, -2))  # exact int sums
        s = (acc.float() * _row_scale(qs, ref.BLKQ, nq)[..., :, None]) * _row_scale(
            _expand(ks, hq), BLOCK_N, nk
        )[..., None, :]
    if mask is not None:
        s = s + mask.to(s.dtype) * LOG2E
    if is_causal:
        s = s.masked_fill(~ref.causal_keep(0, nq, nk, s.device), float("-inf"))
    return s


def sagebwd_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
    smooth_k: bool = True,
    quantize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, SageBwdSaved]:
    """Steps 1-4: ``(O float32 (float64 un-quantized in float64), lse natural [B, Hq, Nq], saved)``.

    Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` INT8 ops (materialises S: a reference, not a kernel)."""
    b, hq, nq, _ = q.shape
    _hkv, nk = k.shape[1], k.shape[2]
    exact = torch.float64 if q.dtype == torch.float64 else torch.float32
    if quantize:
        q8, qs, _ = ref.quantize_int8_per_block(q, ref.BLKQ, multiplier=sm_scale * LOG2E)
        k8, ks, km = ref.quantize_int8_per_block(k, BLOCK_N, smooth=smooth_k)
        v8, vs, _ = ref.quantize_int8_per_block(v, BLOCK_N)
        s = _scores(q8, qs, k8, ks, mask, is_causal, nq, nk, exact)
        vq = _expand(v8, hq).double()
        vsr = _row_scale(_expand(vs, hq), BLOCK_N, nk)
        m = torch.full((b, hq, nq), float("-inf"), dtype=torch.float32, device=q.device)
        lsum = torch.zeros_like(m)
        acc = torch.zeros((b, hq, nq, v.shape[-1]), dtype=torch.float32, device=q.device)
        for j0 in range(0, nk, BLOCK_N):
            sb = s[..., j0 : j0 + BLOCK_N]
            m_new = torch.maximum(m, sb.amax(dim=-1))
            m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
            p = torch.exp2(sb - m_use[..., None])
            alpha = torch.exp2(m - m_use)
            lsum = lsum * alpha + p.sum(dim=-1)
            sp = p.amax(dim=-1) / 127.0  # = exp2(rowmax S_j - m') / 127: the online-softmax maxima
            p8 = _q8(p, sp[..., None])
            pv = torch.matmul(p8.double(), vq[..., j0 : j0 + BLOCK_N, :]).float()  # exact int32
            acc = acc * alpha[..., None] + (pv * sp[..., None]) * vsr[..., j0, None, None]
            m = m_new
        empty = lsum == 0
        o = torch.where(empty[..., None], 0.0, acc / torch.where(empty, 1.0, lsum)[..., None])
        lse2 = torch.where(empty, float("-inf"), m + torch.log2(torch.where(empty, 1.0, lsum)))
        saved = SageBwdSaved(q8=q8, qs=qs, k8=k8, ks=ks, km=km, v=v, o=o, lse2=lse2)
        return o, ref.lse_natural(lse2, q, km, sm_scale), saved
    qx = q.to(exact) * (sm_scale * LOG2E)
    s = _scores(qx, None, k.to(exact), None, mask, is_causal, nq, nk, exact)
    lse2 = torch.logsumexp(s * math.log(2.0), dim=-1) / math.log(2.0)
    empty = lse2 == float("-inf")
    p = torch.exp2(s - torch.where(empty, 0.0, lse2)[..., None])
    o = torch.matmul(p, _expand(v, hq).to(exact))
    saved = SageBwdSaved(q=q, k=k, v=v, o=o, lse2=lse2, km=None)
    return o, lse2 * math.log(2.0), saved


def do_fp16(do: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 6's fp16 operands: ``(fp16(dO·vp / g), V16 = fp16(V / vp), g [B, Hq, 1, 1])``.

    ``vp`` is V's per-(b, kv head, channel) power of two (``reference.v_channel_scale``), ``g`` a
    per-(b, q head) power of two with ``max|dO·vp / g| ∈ (128, 256]`` (1 for an all-zero dO)."""
    hq = do.shape[1]
    vp = ref.v_channel_scale(v)  # [B, Hkv, 1, Dv]
    x = do.float() * _expand(vp, hq)
    amax = x.abs().amax(dim=(-2, -1), keepdim=True)
    g = torch.where((amax > 0) & torch.isfinite(amax), torch.exp2(torch.ceil(torch.log2(amax / DO_MAX))), 1.0)
    return (x / g).half(), (v.float() / vp).half(), g


def sagebwd_backward(
    saved: SageBwdSaved,
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    *,
    sm_scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
    quantize: bool = True,
    dp_int8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 5-10: ``(dQ [B, Hq, Nq, D], dK, dV [B, Hkv, Nk, D/Dv])`` (float32, float64 un-quantized
    in float64). ``dlse`` is the gradient of the natural-log lse (None: 0). ``dp_int8`` (ablation of
    the paper's Table 1c, not SageBwd): ``dP = (dO8·V8ᵀ)·sdO·sV`` with dO per 64 rows and V per 64
    keys INT8 instead of step 6's fp16."""
    o, lse2, v = saved.o, saved.lse2, saved.v
    b, hq, nq = o.shape[:3]
    hkv, nk = v.shape[1], v.shape[2]
    exact = o.dtype
    dof = do.to(exact)
    delta = (dof * o).sum(dim=-1)
    if dlse is not None:
        dlse = torch.where(lse2 == float("-inf"), 0.0, dlse.to(exact))
        delta = delta - dlse
    empty = lse2 == float("-inf")
    lse_use = torch.where(empty, 0.0, lse2)
    if not quantize:
        qx = saved.q.to(exact) * (sm_scale * LOG2E)
        s = _scores(qx, None, saved.k.to(exact), None, mask, is_causal, nq, nk, exact)
        p = torch.exp2(s - lse_use[..., None])
        ve = _expand(v, hq).to(exact)
        dp = torch.matmul(dof, ve.transpose(-1, -2))
        ds = p * (dp - delta[..., None])
        dv = _group_sum(torch.matmul(p.transpose(-1, -2), dof), hkv)
        dq = sm_scale * torch.matmul(ds, _expand(saved.k, hq).to(exact))
        dk = _group_sum(sm_scale * torch.matmul(ds.transpose(-1, -2), saved.q.to(exact)), hkv)
        return dq, dk, dv
    s = _scores(saved.q8, saved.qs, saved.k8, saved.ks, mask, is_causal, nq, nk, exact)
    p = torch.exp2(s - lse_use[..., None])
    if dp_int8:
        do8, sdo, _ = ref.quantize_int8_per_block(do, BLOCK_M)
        v8, sv, _ = ref.quantize_int8_per_block(_expand(v, hq), BLOCK_N)
        dp = torch.matmul(do8.double(), v8.double().transpose(-1, -2)).float()
        dp = dp * _row_scale(sdo, BLOCK_M, nq)[..., :, None] * _row_scale(sv, BLOCK_N, nk)[..., None, :]
    else:
        do16, v16, g = do_fp16(do, v)
        dp = torch.matmul(do16.double(), _expand(v16, hq).double().transpose(-1, -2)).float() * g
    ds = p * (dp - delta[..., None])
    # dV = Pᵀ·dO: P per tile, dO per block of BLOCK_M rows (int32 accumulation per tile)
    p8, sp = quantize_tiles(p, BLOCK_M, BLOCK_N)
    do8, sdo, _ = ref.quantize_int8_per_block(do, BLOCK_M)
    ds8, sds = quantize_tiles(ds, BLOCK_M, BLOCK_N)
    nqt = -(-nq // BLOCK_M)
    dv = torch.zeros((b, hq, nk, v.shape[-1]), dtype=torch.float32, device=o.device)
    dk = torch.zeros((b, hq, nk, saved.k8.shape[-1]), dtype=torch.float32, device=o.device)
    q8 = saved.q8.double()
    for t in range(nqt):  # one query tile at a time: the kernel's order of float32 sums
        r0, r1 = t * BLOCK_M, min((t + 1) * BLOCK_M, nq)
        pt, dst = p8[..., r0:r1, :], ds8[..., r0:r1, :]
        pv = torch.matmul(pt.double().transpose(-1, -2), do8[..., r0:r1, :].double()).float()
        dv += (pv * sp[..., r0, :, None]) * sdo[..., t, None, None]
        kq = torch.matmul(dst.double().transpose(-1, -2), q8[..., r0:r1, :]).float()
        dk += (kq * sds[..., r0, :, None]) * saved.qs[..., r0 // ref.BLKQ, None, None]
    dv = _group_sum(dv, hkv)
    dk = _group_sum(dk, hkv) / LOG2E
    k8 = _expand(saved.k8, hq).double()
    ksr = _row_scale(_expand(saved.ks, hq), BLOCK_N, nk)
    dq = torch.zeros((b, hq, nq, k8.shape[-1]), dtype=torch.float32, device=o.device)
    for j0 in range(0, nk, BLOCK_N):  # one key tile at a time
        qk = torch.matmul(ds8[..., j0 : j0 + BLOCK_N].double(), k8[..., j0 : j0 + BLOCK_N, :]).float()
        dq += (qk * sds[..., :, j0, None]) * ksr[..., j0, None, None]
    dq = dq * sm_scale
    if dlse is not None and saved.km is not None:
        dq = dq + (sm_scale * dlse)[..., None] * _expand(saved.km, hq)
    return dq, dk, dv
