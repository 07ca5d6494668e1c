"""SageAttention2 forward on pre-quantized operands (INT8 QKᵀ per-thread, FP16 or FP8 PV with
upstream's five P·V accumulation modes) as a torch custom op."""

from __future__ import annotations

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec
from ..reference import sage_attention as _ref
from . import _sage_checks as _checks

__all__ = ["sage_attention_fwd"]

_OP = "sage_attention_fwd"
_DTYPE_CODE = {torch.float16: 1, torch.bfloat16: 2}
_V_DTYPES = (torch.float16, torch.float8_e4m3fn)
HEAD_DIMS = (64, 128)
WARP_Q = (16, 32)
#: the kernel's ``pv_mode`` code of each (V dtype, ``pv_accum``)
_PV_MODE = {
    (torch.float16, "fp32"): 0,
    (torch.float8_e4m3fn, "fp32+fp32"): 1,
    (torch.float8_e4m3fn, "fp32+fp16"): 2,
    (torch.float16, "fp16+fp32"): 3,
    (torch.float16, "fp16"): 4,
}
PV_ACCUM = _ref.PV_ACCUM

_backend.register_op(
    _OP,
    backends=("torch", "cuda"),
    summary="SageAttention2 forward: INT8 QKᵀ with per-thread scales, FP16 or FP8 (sm89+) P·V "
    "(fp32, fp32+fp32, fp32+fp16, fp16+fp32 or fp16 accumulation), output + LSE",
)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """The kernel reads 16-byte vectors: a view at an odd offset is copied (the caller's tensor is untouched)."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _run_cuda(q, k, v, q_scale, k_scale, v_scale, is_causal, warp_q, out_dtype, pv_accum):
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    out = _alloc.new_empty((b, hq, nq, d), out_dtype, q.device)
    lse = _alloc.new_empty((b, hq, nq), torch.float32, q.device)
    if out.numel():
        q, k, v = _aligned(q), _aligned(k), _aligned(v)
        _lib.launch(
            "sage_attention_fwd", q,
            _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ptr(q_scale), _lib.ptr(k_scale), _lib.ptr(v_scale),
            _lib.ptr(out), _lib.ptr(lse), b, hq, hkv, nq, nk, d, q_scale.shape[-1], k_scale.shape[-1],
            warp_q, is_causal, _PV_MODE[(v.dtype, pv_accum)], _DTYPE_CODE[out_dtype],
        )  # fmt: skip
    return out, lse


@torch.library.custom_op("shared_kernels::sage_attention_fwd", mutates_args=())
def _sage_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor | None,
    is_causal: bool,
    warp_q: int,
    out_dtype: torch.dtype,
    pv_accum: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _run_cuda(q, k, v, q_scale, k_scale, v_scale, is_causal, warp_q, out_dtype, pv_accum)
    return _ref.sage_attention_fwd(q, k, v, q_scale, k_scale, v_scale, is_causal, warp_q, out_dtype, pv_accum)


@_sage_attention_fwd_op.register_fake
def _(q, k, v, q_scale, k_scale, v_scale, is_causal, warp_q, out_dtype, pv_accum, backend):
    return q.new_empty(q.shape, dtype=out_dtype), q.new_empty(q.shape[:-1], dtype=torch.float32)


def sage_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    warp_q: int = 32,
    out_dtype: torch.dtype = torch.float16,
    pv_accum: str | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 forward on pre-quantized operands; returns ``(out, lse)``.

    ``q`` int8 ``[B, Hq, Nq, D]`` with per-thread ``q_scale`` float32 ``[B, Hq, >= ceil(Nq / warp_q) · 8]``
    (row ``r`` -> entry ``(r // warp_q) · 8 + r % 8``; ``sm_scale · log2 e`` folded in), ``k`` int8
    ``[B, Hkv, Nk, D]`` (smoothed) with ``k_scale`` float32 ``[B, Hkv, >= ceil(Nk / 64) · 4]`` (key ``n`` ->
    entry ``(n // 64) · 4 + (n % 8) // 2``), ``v`` float16 (FP16 PV) or float8_e4m3fn with ``v_scale``
    float32 ``[B, Hkv, D]`` (FP8 PV, ``V ≈ v · v_scale``, CUDA needs sm89+). ``D`` in {64, 128},
    ``Hq % Hkv == 0`` (GQA), any ``Nq >= 0``, ``Nk >= 1``; ``is_causal`` masks key ``j > i`` (top-left).
    Maths (``S`` in the log2 domain, ``c = 1`` for FP16 PV, 448 for FP8 PV, P rounded to fp16 / e4m3)::

        O = rowsum⁻¹(c·2^(S - m)) · round(c·2^(S - m)) · V,   lse = ln2 · (m + log2(Σ_j 2^(S - m)))

    (spelled out in ``shared_kernels.reference.sage_attention``). ``pv_accum`` (upstream's
    ``pv_accum_dtype``) is how the kernel sums P·V per 64-key block: fp16 ``v``: ``"fp32"`` (default, fp32
    MMA accumulator), ``"fp16+fp32"`` (f16 MMA accumulator per block, added into fp32), ``"fp16"`` (f16
    accumulator throughout, rescaled in fp32 and rounded back); FP8 ``v``: ``"fp32+fp32"`` (default, a
    fresh fp32 accumulator per block added into fp32), ``"fp32+fp16"`` (SageAttention2++: f16 MMA
    accumulator per block; scale V to max 2.25 so a block sum stays below 65504). Upstream uses the f16
    modes for speed: GeForce Ampere/Ada GPUs run f16-accumulating MMA at twice the f32-accumulating
    rate (not measured here). The reference rounds where the kernel's accumulator rounds (sm90a/sm100a
    have no f16-accumulating FP8 mma.sync: ptxas converts to f16 and rounds after every 16 keys, not 32).
    ``out`` ``[B, Hq, Nq, D]`` in ``out_dtype`` (float16 or bfloat16), ``lse`` float32 ``[B, Hq, Nq]``,
    natural log, of the scores as given (add ``q·mean(k)·sm_scale`` for the un-smoothed K). Scales must
    be finite: the kernel does not check them (no device sync) and non-finite scales give undefined rows.
    Cost: ``4·B·Hq·Nq·Nk·D`` ops (half INT8, half FP16/FP8; about half of that when causal); bytes at
    least ``B·Hq·Nq·D·(1 + 2) + B·Hkv·Nk·D·(1 + itemsize(v)) + 4·B·Hq·Nq`` (+ scales), so the kernel is
    compute-bound. Roofline for B=1, H=32, N=8192, D=128 (1.1e12 ops, ~0.2 GB): H100 SXM (dense peaks
    1979 INT8 TOPS, 989 FP16 TFLOPS, 3.35 TB/s) >= 0.28 + 0.56 = 0.83 ms (FP8 PV runs as HMMA there,
    same bound; mma.sync reaches only part of these wgmma-era peaks); RTX 4090 (661 INT8 TOPS,
    165 FP16-with-fp32-accumulate TFLOPS, 330 FP8 TFLOPS, 1 TB/s) >= 0.83 + 3.3 = 4.2 ms (FP16 PV) or
    0.83 + 1.7 = 2.5 ms (FP8 PV).
    """
    _validate.check_tensor("q", q, dtypes=(torch.int8,), ndim=4, contiguous=True)
    _validate.check_tensor("k", k, dtypes=(torch.int8,), ndim=4, contiguous=True, device=q.device)
    _validate.check_tensor("v", v, dtypes=_V_DTYPES, ndim=4, contiguous=True, device=q.device)
    _validate.check_tensor(
        "q_scale", q_scale, dtypes=(torch.float32,), ndim=3, contiguous=True, device=q.device
    )
    _validate.check_tensor(
        "k_scale", k_scale, dtypes=(torch.float32,), ndim=3, contiguous=True, device=q.device
    )
    is_causal = _validate.check_bool("is_causal", is_causal)
    warp_q = _validate.check_int("warp_q", warp_q, allowed=WARP_Q)
    out_dtype = _checks.check_out_dtype(out_dtype)
    b, hq, nq, d = q.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"q has head dim {d}; supported: 64, 128 (pad smaller head dims)")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k must be [B={b}, Hkv, Nk, D={d}] like q, got shape {tuple(k.shape)}")
    hkv, nk = _checks.check_kv_heads(hq, k)
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    _checks.check_scale_groups(
        q_scale, k_scale, b, hq, hkv, _ref.num_q_groups(nq, warp_q), _ref.num_k_groups(nk), warp_q, 64
    )
    _checks.check_v_scale(v, v_scale, b, hkv, d)
    pv_accum = _ref.resolve_pv_accum(v.dtype, pv_accum)
    resolved = _backend.resolve_backend(_OP, backend, q.device)
    return torch.ops.shared_kernels.sage_attention_fwd(
        q, k, v, q_scale, k_scale, v_scale, is_causal, warp_q, out_dtype, pv_accum, resolved
    )


_ALL_ARCHS = {80: ("mma",), 89: ("mma",), 90: ("mma",), 100: ("mma",)}
_FP8_ARCHS = {80: ("none",), 89: ("mma",), 90: ("mma",), 100: ("mma",)}

CUDA_SPECS = [
    # INT8 QK (IMMA) + FP16 PV (HMMA) on every arch: "fp32" (HMMA.16816.F32), "fp16+fp32" and "fp16"
    # (HMMA.16816.F16: f16 accumulator)
    CudaKernelSpec(name="sage_attn_fwd_fp16pv", match="sk_sage_attn_fwd_f16pv_kernel", expect=_ALL_ARCHS),
    CudaKernelSpec(
        name="sage_attn_fwd_fp16pv_f16acc", match="sk_sage_attn_fwd_f16pv_f16acc_kernel", expect=_ALL_ARCHS
    ),
    CudaKernelSpec(
        name="sage_attn_fwd_fp16pv_f16", match="sk_sage_attn_fwd_f16pv_f16_kernel", expect=_ALL_ARCHS
    ),
    # INT8 QK + FP8 PV: QMMA on sm89; sm90a/100a run fp8 mma.sync as HMMA (ptxas emulation); the sm80
    # build is a __trap stub (the launcher refuses FP8 PV below sm89), hence "none"
    CudaKernelSpec(
        name="sage_attn_fwd_fp8pv",
        match="sk_sage_attn_fwd_f8pv_kernel",
        expect=_FP8_ARCHS,
    ),
    # "fp32+fp16" (SageAttention2++): QMMA.16832.F16.E4M3.E4M3 on sm89; sm90a/100a: HMMA.16816.F16
    CudaKernelSpec(
        name="sage_attn_fwd_fp8pv_f16acc", match="sk_sage_attn_fwd_f8pv_f16acc_kernel", expect=_FP8_ARCHS
    ),
]
