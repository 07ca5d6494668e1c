"""``sageattn``'s opt-in 4-bit paths: ``qk_quant_dtype="int4"`` (SageAttention2's INT4 Q·Kᵀ) and
``qk_quant_dtype="nvfp4"`` (SageAttention3: NVFP4 Q, K, P and V).

``sageattn`` never picks these by itself: 4-bit attention loses accuracy an end-to-end metric must
accept (package README, "INT4" and "SageAttention3" tables), so the caller opts in by name.

* ``"int4"``: the INT4 variants of :mod:`sageattention.int4` (per-thread INT4 Q/K with Q and K
  smoothing). On CUDA the P·V format follows the device as ``sageattn``'s INT8 dispatch does: fp16
  P·V on sm80/sm86/sm87 (``sageattn_qk_int4_pv_fp16_cuda``), FP8 P·V with two-level float32
  accumulation on sm89 and newer (``sageattn_qk_int4_pv_fp8_cuda``: INT4 MMA runs natively on
  sm80-sm89; on sm90/sm100 ptxas emulates it with INT8 MMA, same maths, no speed-up). On the CPU the
  same maths in PyTorch with fp16 P·V.
* ``"nvfp4"``: :func:`sageattention.sageattn3_blackwell` (its Triton ``tl.dot_scaled`` kernel on
  devices with FP4 tensor cores, else the same maths in PyTorch). K is always mean-smoothed there.

Both are inference-only, as the variants they call: with q, k or v requiring grad, INT4 returns its
forward and raises at backward; NVFP4 raises at the call.
"""

from __future__ import annotations

import torch

from .core import _check_bool, _resolve_scale

__all__ = ["QK_QUANT_DTYPES", "sageattn_low_bit"]

#: ``sageattn``'s ``qk_quant_dtype`` values; "int8" is SageAttention2 (the default path of core.py).
QK_QUANT_DTYPES = ("int8", "int4", "nvfp4")


def check_qk_quant_dtype(qk_quant_dtype: object) -> str:
    if not isinstance(qk_quant_dtype, str):
        raise TypeError(f"qk_quant_dtype must be a str, got {type(qk_quant_dtype).__name__}")
    if qk_quant_dtype not in QK_QUANT_DTYPES:
        raise ValueError(f"qk_quant_dtype must be one of {QK_QUANT_DTYPES}, got {qk_quant_dtype!r}")
    return qk_quant_dtype


def _int4_on(device: torch.device):
    """The INT4 variant and its P·V accumulation for ``device`` (see the module docstring)."""
    from .int4 import sageattn_qk_int4_pv_fp8_cuda, sageattn_qk_int4_pv_fp16_cuda

    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        return sageattn_qk_int4_pv_fp8_cuda, "fp32+fp32"
    return sageattn_qk_int4_pv_fp16_cuda, "fp32"


def sageattn_low_bit(
    qk_quant_dtype: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str,
    is_causal: bool,
    sm_scale: float | None,
    return_lse: bool,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    smooth_k: bool,
    backend: str,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``sageattn`` with ``qk_quant_dtype`` ``"int4"`` or ``"nvfp4"`` (arguments already checked by
    ``sageattn`` except the tensors). ``backend``: ``"auto"`` (the kernel where it runs, else the
    PyTorch maths) or ``"torch"``; ``"cpu"`` (the fused INT8 CPU kernel) has no 4-bit version."""
    if backend == "cpu":
        raise ValueError(
            f"backend='cpu' is the fused INT8 CPU kernel; qk_quant_dtype={qk_quant_dtype!r} runs with "
            f"backend='auto' or 'torch' (the same maths in PyTorch on the CPU)"
        )
    # only the ``scale`` alias is resolved here: the variants validate the tensors, layout and mask
    # themselves (preparing them here too would convert a bool mask to float twice)
    sm_scale = _resolve_scale(sm_scale, scale, q.shape[-1] if isinstance(q, torch.Tensor) else 1)
    if qk_quant_dtype == "nvfp4":
        if not _check_bool("smooth_k", smooth_k):
            raise ValueError(
                "smooth_k=False is not available with qk_quant_dtype='nvfp4': SageAttention3 always "
                "subtracts mean(K) (exact: softmax is invariant to it)"
            )
        from .sa3 import sageattn3_blackwell

        return sageattn3_blackwell(
            q, k, v, attn_mask, is_causal, sm_scale=sm_scale, return_lse=return_lse,
            tensor_layout=tensor_layout, backend=backend,
        )  # fmt: skip
    fn, accum = _int4_on(q.device if isinstance(q, torch.Tensor) else torch.device("cpu"))
    return fn(
        q, k, v, tensor_layout, is_causal, "per_thread", sm_scale, accum, smooth_k, False, return_lse,
        attn_mask=attn_mask, backend=backend,
    )  # fmt: skip
