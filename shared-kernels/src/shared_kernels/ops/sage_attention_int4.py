"""SageAttention2 forward with INT4 QKᵀ (packed, per-thread scales, optional Q-smoothing bias) as a torch
custom op: the 4-bit option of SageAttention2 on ``mma.sync.m16n8k64.s4`` (SASS ``IMMA.16864.S4.S4``)."""

from __future__ import annotations

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec
from ..reference import sage_attention as _ref8
from ..reference import sage_attention_int4 as _ref
from . import _sage_checks as _checks
from .sage_attention import _DTYPE_CODE, _V_DTYPES, HEAD_DIMS, WARP_Q, _aligned

__all__ = ["pack_int4", "sage_attention_fwd_int4", "unpack_int4"]

_OP = "sage_attention_fwd_int4"

_backend.register_op(
    _OP,
    backends=("torch", "cuda"),
    summary="SageAttention2 forward with INT4 QKᵀ (packed, per-thread scales, Q-smoothing bias), FP16/FP8 P·V",
)

pack_int4 = _ref.pack_int4
unpack_int4 = _ref.unpack_int4


def _run_cuda(q, k, v, q_scale, k_scale, v_scale, bias, bias_rows, is_causal, warp_q, out_dtype):
    b, hq, nq, half = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    d = 2 * half
    out = _alloc.new_empty((b, hq, nq, d), out_dtype, q.device)
    lse = _alloc.new_empty((b, hq, nq), torch.float32, q.device)
    if out.numel():
        q, k, v = _aligned(q), _aligned(k), _aligned(v)
        _lib.launch(
            "sage_attention_fwd_int4", q,
            _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ptr(q_scale), _lib.ptr(k_scale), _lib.ptr(v_scale),
            _lib.ptr(out), _lib.ptr(lse), b, hq, hkv, nq, nk, d, q_scale.shape[-1], k_scale.shape[-1],
            warp_q, is_causal, int(v.dtype == torch.float8_e4m3fn), _DTYPE_CODE[out_dtype],
            _lib.ptr(bias), bias_rows,
        )  # fmt: skip
    return out, lse


@torch.library.custom_op("shared_kernels::sage_attention_fwd_int4", mutates_args=())
def _sage_attention_fwd_int4_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    bias_rows: int,
    is_causal: bool,
    warp_q: int,
    out_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _run_cuda(q, k, v, q_scale, k_scale, v_scale, bias, bias_rows, is_causal, warp_q, out_dtype)
    return _ref.sage_attention_fwd_int4(
        q, k, v, q_scale, k_scale, v_scale, bias, bias_rows, is_causal, warp_q, out_dtype
    )


@_sage_attention_fwd_int4_op.register_fake
def _(q, k, v, q_scale, k_scale, v_scale, bias, bias_rows, is_causal, warp_q, out_dtype, backend):
    b, hq, nq, half = q.shape
    return q.new_empty((b, hq, nq, 2 * half), dtype=out_dtype), q.new_empty((b, hq, nq), dtype=torch.float32)


def sage_attention_fwd_int4(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    bias_rows: int = 64,
    is_causal: bool = False,
    warp_q: int = 32,
    out_dtype: torch.dtype = torch.float16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 forward with INT4 QKᵀ on pre-quantized operands; returns ``(out, lse)``.

    ``q`` uint8 ``[B, Hq, Nq, D/2]`` and ``k`` uint8 ``[B, Hkv, Nk, D/2]`` hold signed int4 packed two per
    byte (element ``2i`` in the low nibble of byte ``i``: :func:`pack_int4`), values in ``[-7, 7]``
    (``-8`` is representable and multiplies correctly, the quantizers never produce it); ``q_scale``,
    ``k_scale``, ``v``, ``v_scale``, ``is_causal``, ``warp_q``, ``out_dtype`` as in
    :func:`shared_kernels.sage_attention_fwd` (per-thread groups of the MMA fragments; ``sm_scale·log2 e``
    folded into ``q_scale``). ``bias`` float32 ``[B, Hq, ceil(Nq / bias_rows), Nk]`` (optional) is added to
    the log2-domain scores of query rows ``[j·bias_rows, (j+1)·bias_rows)``: the exact ``q̄·Kᵀ`` correction
    of SageAttention2's Q smoothing (eq. 4), ``bias_rows`` a multiple of 16. Maths::

        S = (q·kᵀ)·q_scale·k_scale + bias,   O = softmax₂(S)·V,   lse = ln2·log2(Σ_j 2^S)

    spelled out in ``shared_kernels.reference.sage_attention_int4``. D in {64, 128}, GQA, any ``Nq >= 0``,
    ``Nk >= 1``. Cost: ``4·B·Hq·Nq·Nk·D`` ops (half INT4, half FP16/FP8; about half when causal); bytes at
    least ``B·Hq·Nq·D·(1/2 + 2) + B·Hkv·Nk·D·(1/2 + itemsize(v)) + 4·B·Hq·Nq`` (+ scales, + 4 bytes per
    bias element), so it is compute-bound; INT4 mma.sync has twice the INT8 rate on sm80/sm89 (A100
    1248 dense INT4 TOPS, RTX 4090 1321), so the QKᵀ half costs half of the INT8 kernel's.
    """
    _validate.check_tensor("q", q, dtypes=(torch.uint8,), ndim=4, contiguous=True)
    _validate.check_tensor("k", k, dtypes=(torch.uint8,), ndim=4, contiguous=True, device=q.device)
    _validate.check_tensor("v", v, dtypes=_V_DTYPES, ndim=4, contiguous=True, device=q.device)
    _validate.check_tensor(
        "q_scale", q_scale, dtypes=(torch.float32,), ndim=3, contiguous=True, device=q.device
    )
    _validate.check_tensor(
        "k_scale", k_scale, dtypes=(torch.float32,), ndim=3, contiguous=True, device=q.device
    )
    is_causal = _validate.check_bool("is_causal", is_causal)
    warp_q = _validate.check_int("warp_q", warp_q, allowed=WARP_Q)
    bias_rows = _validate.check_int("bias_rows", bias_rows, minimum=16)
    if bias_rows % 16:
        raise ValueError(
            f"bias_rows must be a multiple of 16 (one bias row per 16-row MMA tile), got {bias_rows}"
        )
    out_dtype = _checks.check_out_dtype(out_dtype)
    b, hq, nq, half = q.shape
    d = 2 * half
    if d not in HEAD_DIMS:
        raise ValueError(
            f"q has {half} packed bytes per row (head dim {d}); supported head dims: 64, 128 (32 or 64 bytes)"
        )
    if k.shape[0] != b or k.shape[3] != half:
        raise ValueError(f"k must be [B={b}, Hkv, Nk, D/2={half}] like q, got shape {tuple(k.shape)}")
    hkv, nk = _checks.check_kv_heads(hq, k)
    if tuple(v.shape) != (b, hkv, nk, d):
        raise ValueError(
            f"v must have shape {(b, hkv, nk, d)} (k's with the unpacked head dim), got {tuple(v.shape)}"
        )
    _checks.check_scale_groups(
        q_scale, k_scale, b, hq, hkv, _ref8.num_q_groups(nq, warp_q), _ref8.num_k_groups(nk), warp_q, 64
    )
    _checks.check_v_scale(v, v_scale, b, hkv, d)
    if bias is not None:
        _validate.check_tensor(
            "bias", bias, dtypes=(torch.float32,), ndim=4, contiguous=True, device=q.device
        )
        want = (b, hq, -(-nq // bias_rows), nk)
        if tuple(bias.shape) != want:
            raise ValueError(
                f"bias must have shape {want} ([B, Hq, ceil(Nq / bias_rows={bias_rows}), Nk]), "
                f"got {tuple(bias.shape)}"
            )
    resolved = _backend.resolve_backend(_OP, backend, q.device)
    return torch.ops.shared_kernels.sage_attention_fwd_int4(
        q, k, v, q_scale, k_scale, v_scale, bias, bias_rows, is_causal, warp_q, out_dtype, resolved
    )


CUDA_SPECS = [
    # INT4 QK (IMMA.16864.S4.S4 on sm80/sm89) + FP16 PV (HMMA)
    CudaKernelSpec(
        name="sage_attn_fwd_int4_fp16pv",
        match="sk_sage_attn_fwd_int4_f16pv_kernel",
        expect={80: ("mma",), 89: ("mma",), 90: ("mma",), 100: ("mma",)},
    ),
    # INT4 QK + FP8 PV (QMMA on sm89); the sm80 build is a __trap stub (the launcher refuses FP8 PV there)
    CudaKernelSpec(
        name="sage_attn_fwd_int4_fp8pv",
        match="sk_sage_attn_fwd_int4_f8pv_kernel",
        expect={80: ("none",), 89: ("mma",), 90: ("mma",), 100: ("mma",)},
    ),
]
