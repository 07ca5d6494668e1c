"""Upstream-named SageAttention2 variants with upstream signatures and defaults.

``sageattn_qk_int8_pv_fp16_cuda`` (sm80 kernel: INT8 QK, fp16 PV), ``sageattn_qk_int8_pv_fp8_cuda``
(sm89/sm120 kernel: INT8 QK, FP8 PV, SageAttention2++ with ``pv_accum_dtype="fp32+fp16"``) and
``sageattn_qk_int8_pv_fp8_cuda_sm90`` (Hopper wgmma kernel: Q tiles of 64, K tiles of 128).

Each computes the maths of its upstream kernel with :func:`sageattention.modes.sage_attention_mode`
(the tile sizes, granularities, P/V formats and accumulation of that kernel; see ``modes.py`` for
what is emulated). Kernels are registered in :data:`KERNELS` by name: with Triton installed,
``sageattention.triton_variants`` registers a Triton kernel for ``sageattn_qk_int8_pv_fp16_cuda``
(fp16 P·V; configurations it does not implement run this reference, the same maths). On CUDA
tensors ``backend="auto"`` (the default) uses the registered kernel, else the reference;
``backend="torch"`` always runs the reference; ``backend="cuda"`` without a registered kernel (or on
CPU tensors) raises a ``RuntimeError`` naming the device and the available backends: never silently
different maths.

Beyond upstream (keyword-only): ``attn_mask`` (bool or additive, broadcastable, not with
``is_causal``), ``smooth_q`` (SageAttention2 per-block Q smoothing with the exact ``mean(Q)·Kᵀ``
correction), ``qk_rotation`` (``None``, ``"hadamard"``, ``"random_hadamard"``), ``backend``;
``qk_quant_gran`` also takes ``"per_block"`` and ``"per_token"``; fp32 inputs are accepted; head
dims are any (the reference needs no padding; kernels will pad to 64/128/256). Unknown keywords are
a ``TypeError`` (upstream swallows them). ``smooth_v`` follows upstream: honoured only with
``pv_accum_dtype="fp16"`` (fp16 PV) or ``"fp32"`` (FP8 PV), otherwise ignored with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .core import prepare_inputs
from .modes import GRANULARITIES, ROTATIONS, SageConfig, sage_attention_mode

__all__ = [
    "KERNELS",
    "sageattn_qk_int8_pv_fp8_cuda",
    "sageattn_qk_int8_pv_fp8_cuda_sm90",
    "sageattn_qk_int8_pv_fp16_cuda",
]

BACKENDS = ("auto", "torch", "cuda")
#: compiled kernels by function name: ``fn(prepared, cfg) -> result``; none is built yet.
KERNELS: dict[str, Callable] = {}


def _check_choice(name: str, val: object, allowed: tuple) -> None:
    if val is not None and not isinstance(val, str):
        raise TypeError(f"{name} must be a str, got {type(val).__name__}")
    if val not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {val!r}")


def _check_flag(name: str, val: object) -> bool:
    if not isinstance(val, bool):
        raise TypeError(f"{name} must be a bool, got {type(val).__name__}")
    return val


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, sm{major}{minor})"
    return str(device)


def _run(name, q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask, cfg, backend):
    _check_choice("backend", backend, BACKENDS)
    p = prepare_inputs(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask)
    kernel = KERNELS.get(name)
    on_cuda = p.q.device.type == "cuda"
    if backend == "cuda" or (backend == "auto" and kernel is not None and on_cuda):
        if kernel is None or not on_cuda:
            raise RuntimeError(
                f"{name}: no compiled kernel for device {_device_name(p.q.device)} in this build; "
                f"available backends: 'torch' (the same maths in PyTorch, any device) and 'auto' "
                f"(the kernel where built, else 'torch')"
            )
        return kernel(p, cfg)
    if p.is_empty:
        return p.empty_result()
    o, lse = sage_attention_mode(
        p.q, p.k, p.v, sm_scale=p.sm_scale, cfg=cfg, is_causal=p.is_causal, mask=p.mask
    )
    return p.finish(o, lse)


def _padded_dim(d: int) -> int:
    return 64 if d <= 64 else 128 if d <= 128 else -(-d // 128) * 128


def _mode_args(qk_quant_gran, pv_accum_dtype, pv_allowed, smooth_q, qk_rotation, smooth_k) -> None:
    _check_choice("qk_quant_gran", qk_quant_gran, GRANULARITIES)
    _check_choice("pv_accum_dtype", pv_accum_dtype, pv_allowed)
    _check_choice("qk_rotation", qk_rotation, ROTATIONS)
    _check_flag("smooth_q", smooth_q)
    _check_flag("smooth_k", smooth_k)


def _smooth_v(smooth_v: object, pv_accum_dtype: str, honoured: str) -> bool:
    smooth_v = _check_flag("smooth_v", smooth_v)
    if smooth_v and pv_accum_dtype != honoured:
        warnings.warn(f"pv_accum_dtype is {pv_accum_dtype!r}, smooth_v will be ignored.", stacklevel=3)
        return False
    return smooth_v


def sageattn_qk_int8_pv_fp16_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32",
    smooth_k: bool = True,
    smooth_v: bool = False,
    return_lse: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    smooth_q: bool = False,
    qk_rotation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 with INT8 Q/K and fp16 P·V (upstream's sm80 CUDA kernel).

    Q tiles of 128 tokens with warps of 32 rows (16 when the padded head dim is 128 and
    ``pv_accum_dtype="fp16+fp32"``, as upstream), K tiles of 64; scores dequantized then times
    ``sm_scale·log2 e``. ``pv_accum_dtype``: ``"fp32"`` (fp16 MMA with float32 accumulator),
    ``"fp16+fp32"`` (fp16 accumulator per 64-key block added into float32), ``"fp16"`` (all in
    fp16; ``smooth_v`` subtracts mean(V) and adds it back). Returns ``o`` in q's dtype and layout,
    and with ``return_lse`` the natural-log lse ``[B, Hq, Nq]`` of the un-smoothed scores.
    Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs.
    """
    _mode_args(qk_quant_gran, pv_accum_dtype, ("fp32", "fp16+fp32", "fp16"), smooth_q, qk_rotation, smooth_k)
    sv = _smooth_v(smooth_v, pv_accum_dtype, "fp16")
    d = q.shape[-1] if isinstance(q, torch.Tensor) else 0
    warpq = 16 if (_padded_dim(d) == 128 and pv_accum_dtype == "fp16+fp32") else 32
    cfg = SageConfig(
        qk_quant_gran=qk_quant_gran, blkq=128, warpq=warpq, blkk=64, warpk=64, prescale_q=False,
        smooth_k=smooth_k, smooth_q=smooth_q, qk_rotation=qk_rotation, pv_dtype="fp16",
        pv_accum_dtype=pv_accum_dtype, smooth_v=sv, pv_block=64,
    )  # fmt: skip
    return _run(
        "sageattn_qk_int8_pv_fp16_cuda", q, k, v, tensor_layout, is_causal, sm_scale, return_lse,
        smooth_k, attn_mask, cfg, backend,
    )  # fmt: skip


def sageattn_qk_int8_pv_fp8_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32+fp16",
    smooth_k: bool = True,
    smooth_v: bool = False,
    return_lse: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    smooth_q: bool = False,
    qk_rotation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2/2++ with INT8 Q/K and FP8 (E4M3) P·V (upstream's sm89/sm120 CUDA kernel).

    Q tiles of 128 tokens, warps of 32 rows, K tiles of 64. ``P`` E4M3 of ``P·448``, V E4M3 per
    channel. ``pv_accum_dtype``: ``"fp32"`` (one level, the fp22-precision MMA accumulator; with
    ``smooth_v``), ``"fp32+fp32"`` (fp22 per 64-key block, then float32), ``"fp32+fp16"``
    (SageAttention2++, the default: fp16 accumulator per block, V scaled to max 2.25, then float32).
    Returns as :func:`sageattn_qk_int8_pv_fp16_cuda`. Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs.
    """
    _mode_args(
        qk_quant_gran, pv_accum_dtype, ("fp32", "fp32+fp32", "fp32+fp16"), smooth_q, qk_rotation, smooth_k
    )
    sv = _smooth_v(smooth_v, pv_accum_dtype, "fp32")
    cfg = SageConfig(
        qk_quant_gran=qk_quant_gran, blkq=128, warpq=32, blkk=64, warpk=64, prescale_q=False,
        smooth_k=smooth_k, smooth_q=smooth_q, qk_rotation=qk_rotation, pv_dtype="fp8",
        pv_accum_dtype=pv_accum_dtype, smooth_v=sv, pv_block=64,
        v_scale_max=2.25 if pv_accum_dtype == "fp32+fp16" else 448.0,
    )  # fmt: skip
    return _run(
        "sageattn_qk_int8_pv_fp8_cuda", q, k, v, tensor_layout, is_causal, sm_scale, return_lse,
        smooth_k, attn_mask, cfg, backend,
    )  # fmt: skip


def sageattn_qk_int8_pv_fp8_cuda_sm90(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32+fp32",
    smooth_k: bool = True,
    return_lse: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    smooth_q: bool = False,
    qk_rotation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 with INT8 Q/K and FP8 P·V (upstream's Hopper wgmma kernel).

    Q tiles of 64 tokens with warps of 16 rows, K tiles of 128 (per_thread K groups of 128 tokens),
    key blocks of 128 for the online softmax, V E4M3 per channel (max 448). Only
    ``pv_accum_dtype="fp32+fp32"`` (fp22 per 128-key block, then float32); ``"fp32"`` raises
    ``NotImplementedError`` as upstream. No ``smooth_v``. Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs.
    """
    _mode_args(qk_quant_gran, pv_accum_dtype, ("fp32", "fp32+fp32"), smooth_q, qk_rotation, smooth_k)
    if pv_accum_dtype == "fp32":
        raise NotImplementedError("Please use pv_accum_dtype='fp32+fp32' for sm90.")
    cfg = SageConfig(
        qk_quant_gran=qk_quant_gran, blkq=64, warpq=16, blkk=128, warpk=128, prescale_q=False,
        smooth_k=smooth_k, smooth_q=smooth_q, qk_rotation=qk_rotation, pv_dtype="fp8",
        pv_accum_dtype=pv_accum_dtype, pv_block=128,
    )  # fmt: skip
    return _run(
        "sageattn_qk_int8_pv_fp8_cuda_sm90", q, k, v, tensor_layout, is_causal, sm_scale, return_lse,
        smooth_k, attn_mask, cfg, backend,
    )  # fmt: skip
