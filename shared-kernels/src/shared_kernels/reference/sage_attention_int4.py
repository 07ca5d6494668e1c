"""SageAttention2 forward with INT4 Q·Kᵀ (the paper's 4-bit option; reference, plain PyTorch, float64).

Packing (what the CUDA kernel reads): a signed INT4 tensor ``x [..., D]`` (values in ``[-7, 7]``, D even)
is stored as uint8 ``[..., D / 2]`` with element ``2i`` in the **low** nibble and ``2i + 1`` in the
**high** nibble of byte ``i``, each nibble two's complement. This is the element order of the
``mma.m16n8k64.s4`` fragments (the lower element index in the lower bits of a 32-bit register).

Operands: ``q`` packed ``[B, Hq, Nq, D/2]`` and ``k`` packed ``[B, Hkv, Nk, D/2]`` with the per-thread
scale layouts of the INT8 kernel (``shared_kernels.reference.sage_attention``: row ``r`` ->
``q_scale[(r // warp_q)·8 + r % 8]`` with ``sm_scale·log2 e`` folded in, key ``n`` ->
``k_scale[(n // 64)·4 + (n % 8) // 2]``), INT4 scales ``amax / 7`` (SageAttention2, Zhang et al. 2025,
section 3: ``δ = max|x| / 7``, ``x̂ = round(x / δ)``), ``v`` float16 or float8_e4m3fn as for INT8, and an
optional ``bias`` float32 ``[B, Hq, ceil(Nq / bias_rows), Nk]``: the exact correction of Q smoothing
(SageAttention2 eq. 4: ``γ(Q) = Q − q̄`` per block of ``bias_rows`` rows, ``S = γ(Q)Kᵀ + q̄Kᵀ``), in the
log2 domain (``bias = q̄·Kᵀ·sm_scale·log2 e``)::

    S[i, j] = (Σ_d q[i, d]·k[j, d])·q_scale[grp_q(i)]·k_scale[grp_k(j)] + bias[i // bias_rows, j]

then the softmax and P·V of :func:`shared_kernels.reference.sage_attention.attention_from_scores`.
"""

from __future__ import annotations

import torch

from . import sage_attention as _sa

__all__ = [
    "INT4_MAX",
    "pack_int4",
    "q_mean_bias",
    "quantize_k_per_thread_int4",
    "quantize_q_per_thread_int4",
    "sage_attention_fwd_int4",
    "smooth_q_per_block",
    "unpack_int4",
]

INT4_MAX = 7


def pack_int4(x: torch.Tensor) -> torch.Tensor:
    """int8 ``[..., D]`` with values in ``[-8, 7]``, D even -> uint8 ``[..., D / 2]`` (element ``2i`` in the
    low nibble of byte ``i``)."""
    if x.dtype != torch.int8:
        raise TypeError(f"x has dtype {x.dtype}; supported: int8 (values in [-8, 7])")
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"x must have an even last dimension, got shape {tuple(x.shape)}")
    if x.numel() and (x.min().item() < -8 or x.max().item() > 7):
        raise ValueError("x has values outside the int4 range [-8, 7]")
    n = x.to(torch.int16) & 0xF
    return (n[..., 0::2] | (n[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., D / 2]`` -> int8 ``[..., D]``, the inverse of :func:`pack_int4`."""
    if p.dtype != torch.uint8:
        raise TypeError(f"p has dtype {p.dtype}; supported: uint8 (two int4 per byte)")
    w = p.to(torch.int16)
    lo, hi = w & 0xF, (w >> 4) & 0xF
    both = torch.stack((lo, hi), dim=-1).flatten(-2)
    return torch.where(both >= 8, both - 16, both).to(torch.int8)


def quantize_q_per_thread_int4(q: torch.Tensor, warp_q: int = 32, sm_scale: float | None = None):
    """``q`` float ``[B, H, N, D]`` -> (packed uint8 ``[B, H, N, D/2]``, q_scale ``[B, H, ceil(N/warp_q)·8]``
    with ``sm_scale·log2 e`` folded in; ``sm_scale`` defaults to ``D ** -0.5``); scale ``amax / 7``."""
    n, d = q.shape[-2], q.shape[-1]
    sm = d**-0.5 if sm_scale is None else sm_scale
    qi, sc = _sa._quantize_groups(
        q, _sa.q_group_index(n, warp_q, q.device), _sa.num_q_groups(n, warp_q), sm * _sa.LOG2E, INT4_MAX
    )
    return pack_int4(qi), sc


def quantize_k_per_thread_int4(k: torch.Tensor):
    """``k`` float ``[B, H, N, D]`` (smoothed) -> (packed uint8 ``[B, H, N, D/2]``, k_scale
    ``[B, H, ceil(N/64)·4]``); scale ``amax / 7``."""
    n = k.shape[-2]
    qi, sc = _sa._quantize_groups(k, _sa.k_group_index(n, k.device), _sa.num_k_groups(n), 1.0, INT4_MAX)
    return pack_int4(qi), sc


def smooth_q_per_block(q: torch.Tensor, bias_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q − q̄, q̄)``: ``q̄ [B, H, ceil(N / bias_rows), D]`` float32, the mean of each block of
    ``bias_rows`` rows (the last block: of its rows)."""
    n = q.shape[-2]
    nb = -(-n // bias_rows)
    qf = q.double()
    qp = torch.nn.functional.pad(qf, (0, 0, 0, nb * bias_rows - n)).unflatten(-2, (nb, bias_rows))
    cnt = torch.clamp(n - torch.arange(nb, device=q.device) * bias_rows, max=bias_rows)
    qm = qp.sum(dim=-2) / cnt[:, None].double()
    return (qf - qm.repeat_interleave(bias_rows, dim=-2)[..., :n, :]).float(), qm.float()


def q_mean_bias(q_mean: torch.Tensor, k: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """``bias [B, Hq, nblk, Nk]`` float32 = ``q̄·Kᵀ·sm_scale·log2 e`` (GQA: k ``[B, Hkv, Nk, D]`` expanded)."""
    rep = q_mean.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(rep, dim=1)
    return (torch.matmul(q_mean.double(), kk.transpose(-1, -2)) * (sm_scale * _sa.LOG2E)).float()


def sage_attention_fwd_int4(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    bias_rows: int = 64,
    is_causal: bool = False,
    warp_q: int = 32,
    out_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, Hq, Nq, D] out_dtype, lse [B, Hq, Nq] float32)``, see the module docstring."""
    s = _sa.dequant_scores(unpack_int4(q), unpack_int4(k), q_scale, k_scale, warp_q)
    if bias is not None:
        nq = s.shape[-2]
        s = s + bias.double().repeat_interleave(bias_rows, dim=-2)[..., :nq, :]
    return _sa.attention_from_scores(s, v, v_scale, is_causal, out_dtype)
