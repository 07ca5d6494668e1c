"""SageAttention2/2++ quantization modes in plain PyTorch (the oracle of every upstream variant).

Tensors in ``HND`` layout as in ``reference.py`` (``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``,
``v [B, Hkv, Nk, Dv]``, GQA by head repetition, ``mask`` float32 additive natural-log units).
A :class:`SageConfig` selects every knob; ``SageConfig()`` is the default per-block mode and gives
bit-identical results to ``reference.sage_attention`` (tested).

**INT8 Q/K granularity** (``scale = max|x| / 127`` over a group, ``x8 = round_half_away(x / scale)``;
upstream quant kernels ``per_block_int8``, ``per_warp_int8``, ``per_thread_int8``):

* ``per_block``: one Q scale per ``blkq`` tokens, one K scale per ``blkk`` tokens;
* ``per_warp``: one Q scale per ``warpq`` consecutive tokens (the rows one warp owns inside the
  ``blkq``-token CTA tile), one K scale per ``blkk`` tokens;
* ``per_thread`` (SageAttention2, tied to the ``mma.m16n8k32`` int8 fragments): in the
  ``mma`` C fragment lane ``l`` holds rows ``l//4`` and ``l//4 + 8`` of each 16-row tile and columns
  ``2·(l%4) + {0, 1}`` of each 8-column tile. So inside each ``warpq``-token Q group the tokens with
  the same ``n % 8`` share a scale (8 Q scales per warp, ``warpq/8`` tokens each), and inside each
  ``warpk``-token K group the tokens with the same ``(n % 8) // 2`` share a scale (4 K scales per
  ``warpk`` tokens, ``warpk/4`` tokens each). Scales get ``+1e-7`` as upstream's Triton kernel;
* ``per_token`` (extension, no upstream kernel): one scale per token of Q and of K.

**INT4 Q/K** (``qk_quant_dtype="int4"``, SageAttention2's 4-bit option, ``int4.py``): the same groups,
``scale = max|x| / 7``, values in ``[-7, 7]``; best with ``smooth_q`` (``int4.int4_config``).

**Q/K transforms** (exact in real arithmetic; they change only what is quantized):

* ``smooth_k``: ``K' = K - mean_tokens(K)`` (softmax is invariant to the per-row ``q·mean(K)``);
* ``smooth_q`` (SageAttention2 section 3.2): ``Q' = Q - mean_blk(Q)`` per ``blkq``-token block;
  ``S = deq(Q'8·K'8ᵀ) + mean_blk(Q)·K'ᵀ`` with the correction as a float32 GEMV of the
  unquantized ``K'``;
* ``qk_rotation="hadamard"`` (or ``"random_hadamard"``: random ±1 signs, seed 0):
  ``Q ← Q·H``, ``K' ← K'·H`` with the orthonormal block-diagonal Walsh-Hadamard matrix ``H``
  (``shared_kernels.hadamard_transform``, blocks of ``min(Dp, 128)`` after zero-padding D to
  ``Dp`` = 64, 128 or a multiple of 128); ``Q·K'ᵀ`` is unchanged, channel outliers are spread;
* ``prescale_q``: ``True`` folds ``sm_scale·log2 e`` into Q before quantizing (upstream's Triton
  per-block path); ``False`` multiplies the dequantized scores instead (upstream's CUDA paths).

**P·V** (online ``exp2`` softmax over key blocks of ``pv_block``; running max/sum in float32 from
the float32 ``P``):

* ``pv_dtype="fp16"``: ``P`` and ``V / v_scale`` rounded to fp16, ``v_scale`` a per-channel power of
  two (``reference.v_channel_scale``, or so that ``Nk·max|V| <= 2^14`` for pure fp16
  accumulation: overflow safety, upstream has none);
* ``pv_dtype="fp8"``: ``P`` as E4M3 of ``P·448`` (upstream: ``exp2(s - m + 8.807)``, the same
  scaling; the row sum comes from the unrounded ``P``), ``V`` E4M3 per channel with
  ``scale = amax / v_scale_max`` (448, or 2.25 for SageAttention2++ ``fp32+fp16``) through
  ``shared_kernels.quantize_fp8``;
* accumulation, emulated per MMA k-step of ``kstep`` keys (16 for fp16, 32 for fp8; the k-step's
  products summed in float32, then rounded once into the accumulator):
  ``fp32`` (fp16 PV: float32 accumulator; fp8 PV: the MMA accumulator is also the output register,
  kept at *fp22* precision), ``fp16+fp32`` / ``fp32+fp32`` / ``fp32+fp16`` (a per-``pv_block``
  accumulator in fp16 / fp22 / fp16, added into float32 after each key block: two-level),
  ``fp16`` (the whole accumulator in fp16, rescaled and rounded in fp16).
  *fp22* = float32 truncated to 13 mantissa bits (1-8-13, SageAttention2 paper's description of
  the Ada/Hopper FP8 MMA accumulator); the real hardware's internal alignment and rounding of the
  products are not public, so this is an emulation of the precision, not of the exact bits.
* ``smooth_v``: ``V' = V - mean_tokens(V)`` before rounding/quantizing, ``mean(V)`` added back to
  the output in float32 (exact since the softmax weights sum to 1; not added to fully masked rows).

Output ``o = acc / l · v_scale (/ 448 for fp8) (+ mean V)``, lse as ``reference.lse_natural``.
"""

from __future__ import annotations

import dataclasses

import torch
from shared_kernels import hadamard_transform, quantize_fp8, random_hadamard_signs

from . import reference as ref

__all__ = [
    "GRANULARITIES",
    "PV_ACCUM",
    "QK_QUANT_DTYPES",
    "ROTATIONS",
    "SageConfig",
    "quantize_int8_groups",
    "rotate_hadamard",
    "sage_attention_mode",
    "softmax_pv",
]

GRANULARITIES = ("per_block", "per_warp", "per_thread", "per_token")
PV_ACCUM = {"fp16": ("fp32", "fp16+fp32", "fp16"), "fp8": ("fp32", "fp32+fp32", "fp32+fp16")}
ROTATIONS = (None, "hadamard", "random_hadamard")
QK_QUANT_DTYPES = ("int8", "int4")
_QMAX = {"int8": 127, "int4": 7}
P_FP8_SCALE = 448.0
_FP16_ACC_BUDGET = 2.0**14


@dataclasses.dataclass(frozen=True)
class SageConfig:
    """Every knob of the SageAttention2 maths; the defaults are the per-block Triton path."""

    qk_quant_gran: str = "per_block"
    blkq: int = 128
    warpq: int = 32
    blkk: int = 64
    warpk: int = 64
    prescale_q: bool = True
    smooth_k: bool = True
    smooth_q: bool = False
    qk_rotation: str | None = None
    pv_dtype: str = "fp16"
    pv_accum_dtype: str = "fp32"
    smooth_v: bool = False
    pv_block: int = 64
    v_scale_max: float = 448.0
    qk_quant_dtype: str = "int8"

    def __post_init__(self) -> None:
        if self.qk_quant_dtype not in QK_QUANT_DTYPES:
            raise ValueError(f"qk_quant_dtype must be one of {QK_QUANT_DTYPES}, got {self.qk_quant_dtype!r}")
        if self.qk_quant_gran not in GRANULARITIES:
            raise ValueError(f"qk_quant_gran must be one of {GRANULARITIES}, got {self.qk_quant_gran!r}")
        if self.qk_rotation not in ROTATIONS:
            raise ValueError(f"qk_rotation must be one of {ROTATIONS}, got {self.qk_rotation!r}")
        if self.pv_dtype not in PV_ACCUM:
            raise ValueError(f"pv_dtype must be one of {tuple(PV_ACCUM)}, got {self.pv_dtype!r}")
        if self.pv_accum_dtype not in PV_ACCUM[self.pv_dtype]:
            raise ValueError(
                f"pv_accum_dtype must be one of {PV_ACCUM[self.pv_dtype]} with {self.pv_dtype} P·V, "
                f"got {self.pv_accum_dtype!r}"
            )
        if self.blkq % self.warpq or self.warpq % 8 or self.warpk % 8 or self.pv_block % 32:
            raise ValueError(f"inconsistent tile sizes in {self}")

    @property
    def is_default(self) -> bool:
        return self == SageConfig()


def _group_shape(role: str, gran: str, cfg: SageConfig) -> tuple[int, int, int]:
    """``(tile, t, c)``: a tile of ``tile`` consecutive tokens viewed as ``[tile // (t·c), t, c]``
    has one scale per index of the ``t`` dim (per_thread Q: ``t = 8`` scales for rows ``n % 8``;
    per_thread K: ``t = 4`` scales for the column pairs ``(n % 8) // 2``)."""
    if gran == "per_token":
        return 1, 1, 1
    if gran == "per_thread":
        return (cfg.warpq, 8, 1) if role == "q" else (cfg.warpk, 4, 2)
    if gran == "per_warp" and role == "q":
        return cfg.warpq, 1, 1
    return (cfg.blkq, 1, 1) if role == "q" else (cfg.blkk, 1, 1)


def quantize_int8_groups(
    y: torch.Tensor, role: str, gran: str, cfg: SageConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 of float32 ``y [..., N, D]`` with ``role`` ``"q"``/``"k"`` groups of ``gran``.

    Returns ``(x8 as float32 integers [..., N, D], scale of every token [..., N])``. A NaN/inf in a
    group makes its scale NaN (and its int8 values 0), so the scores it touches are NaN.
    """
    return quantize_groups(y, role, gran, cfg, 127)


def quantize_groups(
    y: torch.Tensor, role: str, gran: str, cfg: SageConfig, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_int8_groups` with integers in ``[-qmax, qmax]`` (``scale = max|x| / qmax``)."""
    n = y.shape[-2]
    tile, t, c = _group_shape(role, gran, cfg)
    nt = -(-n // tile)
    amax_tok = torch.nn.functional.pad(y.abs().amax(dim=-1), (0, nt * tile - n))
    g = amax_tok.reshape(*y.shape[:-2], nt, tile // (t * c), t, c).amax(dim=(-3, -1), keepdim=True)
    amax = g.expand(*y.shape[:-2], nt, tile // (t * c), t, c).reshape(*y.shape[:-2], nt * tile)[..., :n]
    scale = torch.where(torch.isfinite(amax), amax / float(qmax), torch.full_like(amax, float("nan")))
    if gran == "per_thread":
        scale = scale + 1e-7
    s = scale[..., None]
    x8 = torch.trunc(y / s + torch.copysign(torch.full_like(y, 0.5), y)).clamp(-float(qmax), float(qmax))
    return torch.where(s > 0, x8, torch.zeros_like(x8)), scale


def rotate_hadamard(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x [..., D]`` float32 zero-padded to Dp (64, 128 or a multiple of 128) times the orthonormal
    block-diagonal Hadamard matrix (blocks of ``min(Dp, 128)``; random ±1 signs for
    ``"random_hadamard"``)."""
    d = x.shape[-1]
    dp = 64 if d <= 64 else 128 if d <= 128 else -(-d // 128) * 128
    bs = min(dp, 128)
    x = torch.nn.functional.pad(x, (0, dp - d)).contiguous()
    signs = random_hadamard_signs(bs, 0, device=x.device) if kind == "random_hadamard" else None
    return hadamard_transform(x, bs, signs=signs)


def _v_scale_pow2(v: torch.Tensor, vmax: float) -> torch.Tensor:
    amax = v.abs().amax(dim=-2, keepdim=True)
    exp = torch.ceil(torch.log2(amax / vmax)).clamp(min=0.0)
    return torch.where(amax > 0, torch.exp2(exp), torch.ones_like(amax))


def _round_fp22(x: torch.Tensor) -> torch.Tensor:
    """float32 truncated to 13 explicit mantissa bits (sign 1, exponent 8, mantissa 13)."""
    return (x.view(torch.int32) & -1024).view(torch.float32)


def _round_acc(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "fp16":
        return x.half().float()
    return _round_fp22(x) if kind == "fp22" else x


def softmax_pv(
    s: torch.Tensor, vq: torch.Tensor, cfg: SageConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online exp2 softmax over key blocks of ``cfg.pv_block`` and the emulated P·V accumulation.

    ``s`` float32 ``[..., M, Nk]`` (log2 units), ``vq`` float32 ``[..., Nk, Dv]`` holding the fp16
    or E4M3 V operand values. Returns ``(acc [..., M, Dv], l [..., M], lse2 [..., M])`` with ``acc``
    not yet divided by ``l``.
    """
    fp8, accum = cfg.pv_dtype == "fp8", cfg.pv_accum_dtype
    kstep = 32 if fp8 else 16
    inner = {"fp32": "fp22" if fp8 else None, "fp16": "fp16", "fp16+fp32": "fp16"}.get(accum)
    inner = {"fp32+fp32": "fp22", "fp32+fp16": "fp16"}.get(accum, inner)
    one_level = accum in ("fp32", "fp16")
    nk, dv = s.shape[-1], vq.shape[-1]
    m = torch.full(s.shape[:-1], float("-inf"), dtype=torch.float32, device=s.device)
    lsum = torch.zeros_like(m)
    acc = torch.zeros((*s.shape[:-1], dv), dtype=torch.float32, device=s.device)
    for j0 in range(0, nk, cfg.pv_block):
        sb = s[..., j0 : j0 + cfg.pv_block]
        m_new = torch.maximum(m, sb.amax(dim=-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(sb - m_use[..., None])
        alpha = torch.exp2(m - m_use)
        lsum = lsum * alpha + p.sum(dim=-1)
        m = m_new
        pq = (p * P_FP8_SCALE).to(torch.float8_e4m3fn).float() if fp8 else p.half().float()
        vb = vq[..., j0 : j0 + cfg.pv_block, :]
        if inner is None:  # fp16 x fp16 products are exact in float32: one float32 GEMM per block
            acc = acc * alpha[..., None] + torch.matmul(pq, vb)
            continue
        w = sb.shape[-1]
        nks = -(-w // kstep)
        pad = nks * kstep - w
        pk = torch.nn.functional.pad(pq, (0, pad)).unflatten(-1, (nks, kstep)).transpose(-2, -3)
        vk = torch.nn.functional.pad(vb, (0, 0, 0, pad)).unflatten(-2, (nks, kstep))
        parts = torch.matmul(pk, vk)  # [..., nks, M, Dv]: each k-step's float32 partial sum
        blk = _round_acc(acc * alpha[..., None], inner) if one_level else torch.zeros_like(acc)
        for i in range(nks):
            blk = _round_acc(blk + parts[..., i, :, :], inner)
        acc = blk if one_level else acc * alpha[..., None] + blk
    empty = lsum == 0
    lse2 = torch.where(
        empty, torch.full_like(m, float("-inf")), m + torch.log2(torch.where(empty, 1.0, lsum))
    )
    return acc, lsum, lse2


def _prepare_qk(q, k, sm_scale: float, cfg: SageConfig):
    """Quantized Q/K (float32 integers), per-token scales, the score multiplier, Q-smoothing
    pieces and K's token mean (for the lse)."""
    c = sm_scale * ref.LOG2E
    nk = k.shape[-2]
    kf = k.float()
    km = None
    if cfg.smooth_k:
        km = (k.double().sum(dim=-2, keepdim=True) / nk).float() if nk else None
        if km is not None:
            kf = kf - km
    qf = q.float()
    if cfg.qk_rotation is not None:
        qf, kf = rotate_hadamard(qf, cfg.qk_rotation), rotate_hadamard(kf, cfg.qk_rotation)
    if cfg.prescale_q:
        qf = qf * torch.tensor(c, dtype=torch.float32, device=q.device)
    qmean = None
    if cfg.smooth_q:
        nq = qf.shape[-2]
        nb = -(-nq // cfg.blkq)
        qp = torch.nn.functional.pad(qf, (0, 0, 0, nb * cfg.blkq - nq)).unflatten(-2, (nb, cfg.blkq))
        cnt = torch.clamp(nq - torch.arange(nb, device=q.device) * cfg.blkq, max=cfg.blkq)
        qmean = qp.double().sum(dim=-2) / cnt[:, None].double()  # [..., nb, D]
        qmean = qmean.float()
        qf = qf - qmean.repeat_interleave(cfg.blkq, dim=-2)[..., :nq, :]
    qmax = _QMAX[cfg.qk_quant_dtype]
    q8, qs = quantize_groups(qf, "q", cfg.qk_quant_gran, cfg, qmax)
    k8, ks = quantize_groups(kf, "k", cfg.qk_quant_gran, cfg, qmax)
    return q8, qs, k8, ks, kf, qmean, km, (1.0 if cfg.prescale_q else c)


def sage_attention_mode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    cfg: SageConfig = SageConfig(),
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
    q_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 in the mode ``cfg`` (HND): returns ``(O float32, lse natural log)``.

    ``q_chunk`` (a multiple of ``cfg.blkq``, default ``cfg.blkq``) is how many query rows are
    processed per step; rows are independent, so it changes speed and memory, not the maths.
    """
    q_chunk = cfg.blkq if q_chunk is None else q_chunk
    if q_chunk < 1 or q_chunk % cfg.blkq:
        raise ValueError(f"q_chunk must be a positive multiple of blkq={cfg.blkq}, got {q_chunk}")
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    k, v = ref._expand_heads(k, hq), ref._expand_heads(v, hq)
    q8, qs, k8, ks, kf, qmean, km, c = _prepare_qk(q, k, sm_scale, cfg)
    vf = v.float()
    vm = None
    if cfg.smooth_v and nk:
        vm = (v.double().sum(dim=-2, keepdim=True) / nk).float()
        vf = vf - vm
    if cfg.pv_dtype == "fp8":
        codes, vsc = quantize_fp8(vf.contiguous(), "e4m3", "per_channel", scale_max=cfg.v_scale_max)
        vq, vs = codes.float(), vsc[..., None, :] / P_FP8_SCALE
    else:
        budget = min(ref.V_MAX, _FP16_ACC_BUDGET / max(nk, 1)) if cfg.pv_accum_dtype == "fp16" else ref.V_MAX
        vs = ref.v_channel_scale(vf) if budget == ref.V_MAX else _v_scale_pow2(vf, budget)
        vq = (vf / vs).half().float()
    if mask is not None:
        mask = mask.expand(b, hq, nq, nk)
    o = torch.empty((b, hq, nq, v.shape[-1]), dtype=torch.float32, device=q.device)
    lse2 = torch.empty((b, hq, nq), dtype=torch.float32, device=q.device)
    ks_tok = ks[..., None, :]
    k8t = k8.transpose(-1, -2)
    for i0 in range(0, nq, q_chunk):
        i1 = min(i0 + q_chunk, nq)
        acc = torch.matmul(q8[..., i0:i1, :], k8t)  # integers below 2^24: exact in float32
        s = (acc * qs[..., i0:i1, None]) * ks_tok
        if c != 1.0:
            s = s * c
        if qmean is not None:
            qm = qmean[..., i0 // cfg.blkq : -(-i1 // cfg.blkq), :]  # the chunk's blocks
            corr = torch.matmul(qm, kf.transpose(-1, -2)).repeat_interleave(cfg.blkq, dim=-2)[
                ..., : i1 - i0, :
            ]
            s = s + (corr * c if c != 1.0 else corr)
        if mask is not None:
            s = s + mask[..., i0:i1, :] * ref.LOG2E
        if is_causal:
            s = s.masked_fill(~ref.causal_keep(i0, i1, nk, q.device), float("-inf"))
        acc_pv, lsum, lse2[..., i0:i1] = softmax_pv(s, vq, cfg)
        empty = lsum == 0
        ob = torch.where(
            empty[..., None], torch.zeros_like(acc_pv), acc_pv / torch.where(empty, 1.0, lsum)[..., None]
        )
        ob = ob * vs
        if vm is not None:
            ob = torch.where(empty[..., None], ob, ob + vm)
        o[..., i0:i1, :] = ob
    return o, ref.lse_natural(lse2, q, km, sm_scale)
