"""Host side of the Triton SageAttention: quantize (``quant``), then attend (``attn``).

``run_dense`` serves ``[B, H, N, D]`` inputs (HND or NHD views, no copies); ``run_varlen`` packed
sequences. Both return ``(O, lse)`` with the natural-log LSE of the un-smoothed scores. Outputs are
allocated with ``shared_kernels._alloc.new_empty`` (poisoned in the tests).
"""

from __future__ import annotations

import math

import torch
from shared_kernels import _alloc

from .. import reference as ref
from . import attn, quant


def hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "NHD" else x


def _new_empty(shape, dtype, device) -> torch.Tensor:
    return _alloc.new_empty(shape, dtype, device)


def v_pow2(amax: torch.Tensor, vmax: float = ref.V_MAX) -> torch.Tensor:
    """``reference.v_channel_scale`` from the channel ``max|v|``: a power of two with ``|V / it| <= vmax``."""
    exp = torch.ceil(torch.log2(amax / vmax)).clamp(min=0.0)
    return torch.where(amax > 0, torch.exp2(exp), torch.ones_like(amax))


def run_dense(
    q, k, v, mask, tensor_layout, is_causal, sm_scale, smooth_k, q_group, pv_fp8, quant_backend, pv_acc16
):
    """Quantize, attend; q, k, v in the caller's layout. Returns ``(o, lse)`` (lse natural, float32)."""
    qh, kh, vh = (hnd(x, tensor_layout) for x in (q, k, v))
    b, hq, nq, d = qh.shape
    hkv, nk, dv = kh.shape[1], kh.shape[2], vh.shape[3]
    o = _new_empty((*q.shape[:-1], dv), q.dtype, q.device)
    lse2 = _new_empty((b, hq, nq), torch.float32, q.device)
    if nq == 0 or nk == 0:
        o.zero_()
        return o, lse2.fill_(float("-inf"))
    multiplier = sm_scale * ref.LOG2E
    if quant_backend == "cuda":
        from shared_kernels import quantize_int8_per_block

        q8, qs, _ = quantize_int8_per_block(qh.contiguous(), q_group, multiplier=multiplier, backend="cuda")
        k8, ks, km = quantize_int8_per_block(
            kh.contiguous(), ref.BLKK, subtract_mean=smooth_k, backend="cuda"
        )
        km = km[..., 0, :] if km is not None else None
    else:
        km = (
            quant.token_reduce(kh, _new_empty((b, hkv, d), torch.float32, q.device), True)
            if smooth_k
            else None
        )
        q8 = _new_empty((b, hq, nq, d), torch.int8, q.device)
        qs = _new_empty((b, hq, -(-nq // q_group)), torch.float32, q.device)
        quant.quant_int8(qh, None, q8, qs, q_group, multiplier)
        k8 = _new_empty((b, hkv, nk, d), torch.int8, q.device)
        ks = _new_empty((b, hkv, -(-nk // ref.BLKK)), torch.float32, q.device)
        quant.quant_int8(kh, km, k8, ks, ref.BLKK, 1.0)
    amax = quant.token_reduce(vh, _new_empty((b, hkv, dv), torch.float32, q.device), False)
    if pv_fp8:
        v_scale = amax / 448.0
        v_in = _new_empty((b, hkv, nk, dv), torch.float8_e4m3fn, q.device)
        quant.quant_fp8(vh, v_scale, v_in)
        v_factor = v_scale / 448.0
    else:
        v_in, v_factor = vh, 1.0 / v_pow2(amax)
    if mask is not None:
        mask = mask.expand(b, hq, nq, nk)
    attn.launch(
        q8, k8, v_in, qs, ks, v_factor, mask, hnd(o, tensor_layout), lse2,
        q_group=q_group, is_causal=is_causal, pv_fp8=pv_fp8, pv_acc16=pv_acc16,
    )  # fmt: skip
    lse = ref.lse_natural(lse2, qh, km[:, :, None, :] if km is not None else None, sm_scale)
    return o, lse


def varlen_tables(cu_q: torch.Tensor, cu_k: torch.Tensor, block_m: int, q_group: int):
    """Host-side tables (int32): query tiles ``(sequence, first row)``, Q and K quantization groups
    ``(start, end, sequence)`` that never straddle two sequences, per-sequence group offsets."""
    cq, ck = cu_q.tolist(), cu_k.tolist()
    blk, qg, kg, goff = [], [], [], []
    for s in range(len(cq) - 1):
        goff.append((len(qg), len(kg)))
        blk += [(s, r) for r in range(cq[s], cq[s + 1], block_m)]
        qg += [(r, min(r + q_group, cq[s + 1]), s) for r in range(cq[s], cq[s + 1], q_group)]
        kg += [(r, min(r + ref.BLKK, ck[s + 1]), s) for r in range(ck[s], ck[s + 1], ref.BLKK)]

    def t(rows, width):
        return torch.tensor(rows, dtype=torch.int32, device=cu_q.device).reshape(-1, width)

    return t(blk, 2), t(qg, 3), t(kg, 3), t(goff, 2)


def run_varlen(q, k, v, cu_q, cu_k, is_causal, sm_scale, smooth_k, q_group):
    tq, hq, d = q.shape
    tk, hkv, dv = k.shape[0], k.shape[1], v.shape[2]
    nseq = cu_q.numel() - 1
    qh, kh, vh = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, H, T, D] views
    o = _new_empty((tq, hq, dv), q.dtype, q.device)
    lse2 = _new_empty((1, hq, tq), torch.float32, q.device)
    interp = not q.is_cuda
    blk, qg, kg, goff = varlen_tables(cu_q, cu_k, attn.tile_m(d, dv, False, interp), q_group)
    if tq == 0 or blk.shape[0] == 0:
        return o, lse2[0]
    km = (
        quant.token_reduce(kh, _new_empty((nseq, hkv, d), torch.float32, q.device), True, cu=cu_k)
        if smooth_k
        else None
    )
    q8 = _new_empty((1, hq, tq, d), torch.int8, q.device)
    qs = _new_empty((1, hq, qg.shape[0]), torch.float32, q.device)
    quant.quant_int8(qh, None, q8, qs, q_group, sm_scale * ref.LOG2E, gtab=qg)
    k8 = torch.zeros((1, hkv, tk, d), dtype=torch.int8, device=q.device)
    ks = torch.zeros((1, hkv, max(kg.shape[0], 1)), dtype=torch.float32, device=q.device)
    if kg.shape[0]:
        quant.quant_int8(kh, km, k8, ks, ref.BLKK, 1.0, gtab=kg)
    amax = torch.zeros((nseq, hkv, dv), dtype=torch.float32, device=q.device)
    if tk:
        quant.token_reduce(vh, amax, False, cu=cu_k)
    attn.launch(
        q8, k8, vh, qs, ks, 1.0 / v_pow2(amax), None, o.transpose(0, 1)[None], lse2,
        q_group=q_group, is_causal=is_causal, pv_fp8=False, varlen=(cu_q, cu_k, blk, goff),
    )  # fmt: skip
    lse = lse2[0] * math.log(2.0)
    if km is not None:  # sm_scale · q · mean(K of the token's own sequence), as reference.lse_natural
        seq = torch.repeat_interleave(torch.arange(nseq, device=q.device), (cu_q[1:] - cu_q[:-1]).long())
        km_tok = km[seq].repeat_interleave(hq // hkv, dim=1)  # [Tq, Hq, D]
        corr = torch.matmul(q.float()[:, :, None, :], km_tok[:, :, :, None])[..., 0, 0] * sm_scale
        lse = lse + corr.transpose(0, 1)
    return o, lse


def _quant_qk(x, mean, groups, multiplier, add_eps):
    """INT8 of a ``[B, H, N, D]`` view: ``groups`` an int (one scale per ``groups`` tokens,
    ``[B, H, ceil(N / groups)]``) or ``(tile, t, c)`` (one scale per token, ``[B, H, N]``)."""
    b, h, n, d = x.shape
    x8 = _new_empty((b, h, n, d), torch.int8, x.device)
    if isinstance(groups, int):
        sc = _new_empty((b, h, -(-n // groups)), torch.float32, x.device)
        quant.quant_int8(x, mean, x8, sc, groups, multiplier)
    else:
        sc = _new_empty((b, h, n), torch.float32, x.device)
        quant.quant_int8_rows(x, mean, x8, sc, groups, multiplier, add_eps)
    return x8, sc


def run_modes(
    qh,
    kh,
    vh,
    mask,
    is_causal,
    sm_scale,
    smooth_k,
    *,
    q_groups,
    k_groups,
    add_eps,
    prescale_q,
    pv_accum="fp32",
    smooth_v=False,
):
    """``modes.sage_attention_mode`` (fp16 P·V, fp32 accumulation) on HND views (last dim
    contiguous). ``q_groups``: an int (per_block/per_warp Q, scales per group) or ``(tile, t, c)``
    (per_thread/per_token, a scale per row); ``k_groups``: 64 (a scale per key block) or
    ``(tile, t, c)`` (a scale per key). ``prescale_q``: ``sm_scale·log2 e`` folded into Q before
    quantizing, else the dequantized scores are multiplied by it. Returns float32 ``(o [B, Hq, Nq,
    Dv], lse natural [B, Hq, Nq])``; Nq, Nk > 0."""
    b, hkv, _, d = kh.shape
    c = sm_scale * ref.LOG2E
    km = quant.token_reduce(kh, _new_empty((b, hkv, d), torch.float32, qh.device), True) if smooth_k else None
    q8, qs = _quant_qk(qh, None, q_groups, c if prescale_q else 1.0, add_eps)
    k8, ks = _quant_qk(kh, km, k_groups, 1.0, add_eps)
    if isinstance(k_groups, int) and k_groups != attn.BLOCK_N_KEYS:
        raise ValueError(f"per-block K scales need groups of {attn.BLOCK_N_KEYS} keys, got {k_groups}")
    o, lse2 = _attend(
        q8, k8, vh, qs, ks, mask, is_causal, q_group=1 if not isinstance(q_groups, int) else q_groups,
        k_per_col=not isinstance(k_groups, int), score_mul=None if prescale_q else c, pv_accum=pv_accum,
        smooth_v=smooth_v,
    )  # fmt: skip
    return o, ref.lse_natural(lse2, qh, km[:, :, None, :] if km is not None else None, sm_scale)


def _attend(
    q8,
    k8,
    vh,
    qs,
    ks,
    mask,
    is_causal,
    *,
    q_group,
    k_per_col,
    score_mul,
    q_corr=None,
    pv_accum="fp32",
    smooth_v=False,
):
    """fp16 P·V attention of quantized Q/K; float32 ``(o [B, Hq, Nq, Dv], lse2 [B, Hq, Nq])``.

    ``pv_accum`` ``"fp32"``, ``"fp16+fp32"`` or ``"fp16"`` (V scaled so ``Nk·max|V| <= 2^14``);
    ``smooth_v``: ``V - mean(V)`` attended, the mean added back to rows with a key (``modes``)."""
    b, hq, nq, _ = q8.shape
    hkv, nk, dv = vh.shape[1], vh.shape[2], vh.shape[3]
    vm = None
    if smooth_v:
        vm = (vh.double().sum(dim=-2, keepdim=True) / nk).float()
        vh = vh.float() - vm
    amax = quant.token_reduce(vh, _new_empty((b, hkv, dv), torch.float32, q8.device), False)
    vmax = min(ref.V_MAX, 2.0**14 / max(nk, 1)) if pv_accum == "fp16" else ref.V_MAX
    o = _new_empty((b, hq, nq, dv), torch.float32, q8.device)
    lse2 = _new_empty((b, hq, nq), torch.float32, q8.device)
    attn.launch(
        q8, k8, vh, qs, ks, 1.0 / v_pow2(amax, vmax), None if mask is None else mask.expand(b, hq, nq, nk),
        o, lse2, q_group=q_group, is_causal=is_causal, pv_fp8=False, k_per_col=k_per_col,
        score_mul=score_mul, q_corr=q_corr, acc_kstep={"fp32": 0, "fp16+fp32": 1, "fp16": 2}[pv_accum],
    )  # fmt: skip
    if vm is not None:
        o = torch.where(torch.isneginf(lse2)[..., None], o, o + ref._expand_heads(vm, hq))
    return o, lse2


def run_torch_quantized(qh, kh, vh, mask, is_causal, sm_scale, cfg):
    """``modes.sage_attention_mode`` (fp16 P·V, fp32 accumulation) for the Q/K transforms the Triton
    quantizers lack (``smooth_q``, ``qk_rotation``): Q/K are transformed and quantized by
    ``modes._prepare_qk`` itself (PyTorch, ``O(N·D)``), the
    ``mean(Q)·K'ᵀ`` correction is one float32 matmul per Q block, and the attention runs on the
    Triton kernel. ``cfg.blkq`` a multiple of 128 when ``cfg.smooth_q``. Returns as :func:`run_modes`."""
    from .. import modes

    # per-head maths: the K heads need no expansion to the Q heads (GQA) except in the correction
    q8, qs, k8, ks, kf, qmean, km, c = modes._prepare_qk(qh, kh, sm_scale, cfg)
    q_corr = None
    if qmean is not None:
        corr = torch.matmul(qmean, ref._expand_heads(kf, qh.shape[1]).transpose(-1, -2))
        q_corr = ((corr * c if c != 1.0 else corr).contiguous(), cfg.blkq)  # [B, Hq, ceil(Nq/blkq), Nk]
    o, lse2 = _attend(
        q8.to(torch.int8).contiguous(), k8.to(torch.int8).contiguous(), vh, qs.contiguous(),
        ks.contiguous(), mask, is_causal, q_group=1, k_per_col=True,
        score_mul=c if c != 1.0 else None, q_corr=q_corr, pv_accum=cfg.pv_accum_dtype, smooth_v=cfg.smooth_v,
    )  # fmt: skip
    return o, ref.lse_natural(lse2, qh, km, sm_scale)
