"""Plain-PyTorch oracles of the Triton variants that ``sageattention.reference`` does not cover.

Built from the reference's own pieces (``quantize_int8_per_block``, ``v_channel_scale``,
``blocked_softmax_pv``, ``lse_natural``), so with ``q_group=128, pv="fp16"`` this is exactly
``reference.sage_attention``. Two extensions:

- ``q_group=32`` (per-warp Q): one Q scale per 32 consecutive tokens (one warp's rows of a
  128-query block) instead of per 128;
- ``pv="fp16acc16"``: each key block's ``fp16(P)·V`` rounded once to fp16 before the float32 add
  (upstream's Triton kernel: an fp16 tensor-core accumulator per block; the hardware rounds inside
  the block too, so this is the oracle up to a few fp16 ulps);
- ``pv="fp8"``: V per channel to FP8 E4M3, ``v_scale = max_tokens|v| / 448``,
  ``V8 = e4m3(clamp(v / v_scale, ±448))``; ``P8 = e4m3(448·P)`` (P in (0, 1] after the running max
  is subtracted, so P8 in (0, 448]); ``O = O·α + P8·V8`` (exact products, float32 sums), and at the
  end ``O = O / l · (v_scale / 448)``; ``l`` sums the unquantized float32 P.
"""

from __future__ import annotations

import torch

from .. import reference as ref

FP8_MAX = 448.0


def fp8_channel_quant(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v8 float8_e4m3fn [..., N, D], v_scale float32 [..., D])`` per channel over the tokens."""
    amax = v.float().abs().amax(dim=-2)
    scale = amax / FP8_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    v8 = (v.float() / safe[..., None, :]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return v8, scale


def _blocked_softmax_pv_acc16(s: torch.Tensor, v16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ref.blocked_softmax_pv`` with each key block's ``fp16(P)·V`` rounded to fp16 before the fp32 add
    (an fp16 tensor-core accumulator, emulated as one rounding of the exact block product)."""
    m = torch.full(s.shape[:-1], float("-inf"), dtype=torch.float32, device=s.device)
    lsum = torch.zeros_like(m)
    acc = torch.zeros((*s.shape[:-1], v16.shape[-1]), dtype=torch.float32, device=s.device)
    for j0 in range(0, s.shape[-1], ref.BLKK):
        sb = s[..., j0 : j0 + ref.BLKK]
        m_new = torch.maximum(m, sb.amax(dim=-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(sb - m_use[..., None])
        alpha = torch.exp2(m - m_use)
        lsum = lsum * alpha + p.sum(dim=-1)
        blk = torch.matmul(p.half().double(), v16[..., j0 : j0 + ref.BLKK, :].double()).half().float()
        acc = acc * alpha[..., None] + blk
        m = m_new
    empty = lsum == 0
    o = torch.where(empty[..., None], torch.zeros_like(acc), acc / torch.where(empty, 1.0, lsum)[..., None])
    lse2 = torch.where(
        empty, torch.full_like(m, float("-inf")), m + torch.log2(torch.where(empty, 1.0, lsum))
    )
    return o, lse2


def _blocked_softmax_pv_fp8(s: torch.Tensor, v8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ref.blocked_softmax_pv`` with ``P8 = e4m3(448·P)`` and FP8 V; O still carries the 448."""
    m = torch.full(s.shape[:-1], float("-inf"), dtype=torch.float32, device=s.device)
    lsum = torch.zeros_like(m)
    acc = torch.zeros((*s.shape[:-1], v8.shape[-1]), dtype=torch.float32, device=s.device)
    vf = v8.float()
    for j0 in range(0, s.shape[-1], ref.BLKK):
        sb = s[..., j0 : j0 + ref.BLKK]
        m_new = torch.maximum(m, sb.amax(dim=-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(sb - m_use[..., None])
        alpha = torch.exp2(m - m_use)
        lsum = lsum * alpha + p.sum(dim=-1)
        p8 = (p * FP8_MAX).to(torch.float8_e4m3fn).float()
        acc = acc * alpha[..., None] + torch.matmul(p8, vf[..., j0 : j0 + ref.BLKK, :])
        m = m_new
    empty = lsum == 0
    o = torch.where(empty[..., None], torch.zeros_like(acc), acc / torch.where(empty, 1.0, lsum)[..., None])
    lse2 = torch.where(
        empty, torch.full_like(m, float("-inf")), m + torch.log2(torch.where(empty, 1.0, lsum))
    )
    return o, lse2


def sage_attention_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
    smooth_k: bool = True,
    q_group: int = ref.BLKQ,
    pv: str = "fp16",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 in HND with a Q group size and a PV precision: ``(O float32, lse natural log)``.

    ``mask``: None or float32 additive (natural log, ``-inf`` = masked) broadcastable to
    ``[B, Hq, Nq, Nk]``.
    """
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    k, v = ref._expand_heads(k, hq), ref._expand_heads(v, hq)
    q8, qs, _ = ref.quantize_int8_per_block(q, q_group, multiplier=sm_scale * ref.LOG2E)
    k8, ks, km = ref.quantize_int8_per_block(k, ref.BLKK, smooth=smooth_k)
    if pv in ("fp16", "fp16acc16"):
        vs = ref.v_channel_scale(v)
        vq = (v.float() / vs).half()
        post = vs
    elif pv == "fp8":
        vq, vscale = fp8_channel_quant(v)
        post = (vscale / FP8_MAX)[..., None, :]
    else:
        raise ValueError(f"pv must be 'fp16', 'fp16acc16' or 'fp8', got {pv!r}")
    if mask is not None:
        mask = mask.expand(b, hq, nq, nk)
    qs_rows = qs.repeat_interleave(q_group, dim=-1)[..., :nq, None]
    ks_tok = ks.repeat_interleave(ref.BLKK, dim=-1)[..., None, :nk]
    o = torch.empty((b, hq, nq, v.shape[-1]), dtype=torch.float32, device=q.device)
    lse2 = torch.empty((b, hq, nq), dtype=torch.float32, device=q.device)
    for i0 in range(0, nq, ref.BLKQ):
        i1 = min(i0 + ref.BLKQ, nq)
        acc = torch.matmul(q8[..., i0:i1, :].double(), k8.double().transpose(-1, -2))
        s = (acc.float() * qs_rows[..., i0:i1, :]) * ks_tok
        if mask is not None:
            s = s + mask[..., i0:i1, :] * ref.LOG2E
        if is_causal:
            s = s.masked_fill(~ref.causal_keep(i0, i1, nk, q.device), float("-inf"))
        if pv == "fp16":
            o[..., i0:i1, :], lse2[..., i0:i1] = ref.blocked_softmax_pv(s, vq)
        elif pv == "fp16acc16":
            o[..., i0:i1, :], lse2[..., i0:i1] = _blocked_softmax_pv_acc16(s, vq)
        else:
            o[..., i0:i1, :], lse2[..., i0:i1] = _blocked_softmax_pv_fp8(s, vq)
    return o * post, ref.lse_natural(lse2, q, km, sm_scale)


def sage_attention_varlen_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    sm_scale: float,
    is_causal: bool = False,
    smooth_k: bool = True,
    q_group: int = ref.BLKQ,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed sequences ``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D]``: ``sage_attention_variant`` (fp16 PV)
    on each sequence separately (its own K mean, blocks and V scales). Returns ``(O [Tq, Hq, Dv]
    float32, lse [Hq, Tq] natural log)``; a sequence without keys gives 0 and ``-inf``."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    o = torch.zeros((q.shape[0], q.shape[1], v.shape[-1]), dtype=torch.float32, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    for s in range(len(cq) - 1):
        if cq[s + 1] == cq[s] or ck[s + 1] == ck[s]:
            continue
        qs, ks, vs = (x[a:b].transpose(0, 1)[None] for x, a, b in ((q, *cq[s : s + 2]), (k, *ck[s : s + 2]),
                                                                   (v, *ck[s : s + 2])))  # fmt: skip
        os_, ls = sage_attention_variant(
            qs, ks, vs, sm_scale=sm_scale, is_causal=is_causal, smooth_k=smooth_k, q_group=q_group
        )
        o[cq[s] : cq[s + 1]] = os_[0].transpose(0, 1)
        lse[:, cq[s] : cq[s + 1]] = ls[0]
    return o, lse
