"""SageAttention2's 4-bit option: INT4 Q·Kᵀ with per-thread groups, Q and K smoothing (Zhang et al. 2025,
"SageAttention2", sections 3.1-3.2; upstream ships INT4 MMA wrappers but no INT4 entry point).

Maths (``modes.sage_attention_mode`` with ``SageConfig(qk_quant_dtype="int4")``)::

    K' = K − mean_tokens(K)                       (smooth_k: softmax is invariant to q·mean(K))
    Q' = Q − q̄_b,  q̄_b = mean of Q over each block b of ``blkq`` tokens     (smooth_q)
    δ_g = max_{x ∈ g}|x| / 7,  x̂ = round(x / δ_g) ∈ [−7, 7]                 (per-thread groups g)
    S = (Q̂'·K̂'ᵀ)·δ_Q·δ_K·sm_scale + q̄_b·K'ᵀ·sm_scale                       (the correction is exact,
                                                                             a float32 GEMV, eq. 4)
    O = softmax(S)·V with P·V in fp16 or FP8 e4m3 as the INT8 variants (``modes.softmax_pv``)

The groups are the INT8 per-thread groups (``mma.m16n8k64`` s4 fragments have the same row/column
ownership as ``m16n8k32`` s8 ones): per ``warpq`` Q rows 8 scales (rows ``n % 8``), per ``warpk`` keys
4 scales (keys ``(n % 8) // 2``).

Public entry points :func:`sageattn_qk_int4_pv_fp16_cuda` and :func:`sageattn_qk_int4_pv_fp8_cuda`
(upstream-style names; the compiled kernel is ``shared_kernels.sage_attention_fwd_int4`` on sm80+,
``IMMA.16864.S4.S4``; elsewhere the same maths in PyTorch). ``backend="cuda"`` insists on the kernel.
"""

from __future__ import annotations

import dataclasses

import torch

from . import cuda_kernels, modes, variants
from .core import Prepared
from .sagebwd.autograd import no_backward

__all__ = [
    "INT4_MAX",
    "int4_config",
    "int4_kernel",
    "quantize_int4_groups",
    "sageattn_qk_int4_pv_fp8_cuda",
    "sageattn_qk_int4_pv_fp16_cuda",
]

INT4_MAX = 7
_FP16 = "sageattn_qk_int4_pv_fp16_cuda"
_FP8 = "sageattn_qk_int4_pv_fp8_cuda"
_MIN_CAPABILITY = {_FP16: (8, 0), _FP8: (8, 9)}


def quantize_int4_groups(
    y: torch.Tensor, role: str, gran: str, cfg: modes.SageConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 of float32 ``y [..., N, D]`` in the ``role`` (``"q"``/``"k"``) groups of ``gran``
    (``modes``' group machinery): ``(x4 as float32 integers in [-7, 7], scale of every token [..., N])``,
    ``scale = max|x| / 7`` (+1e-7 for ``per_thread``, as the INT8 per-thread quantizer)."""
    return modes.quantize_groups(y, role, gran, cfg, INT4_MAX)


def int4_config(
    head_dim: int,
    *,
    pv_dtype: str = "fp16",
    qk_quant_gran: str = "per_thread",
    pv_accum_dtype: str | None = None,
    smooth_k: bool = True,
    smooth_q: bool = True,
    smooth_v: bool = False,
    qk_rotation: str | None = None,
) -> modes.SageConfig:
    """The :class:`modes.SageConfig` of the INT4 variants: the INT8 variant's config for ``pv_dtype``
    (``"fp16"``: ``sageattn_qk_int8_pv_fp16_cuda``'s, default accumulation ``"fp32"``; ``"fp8"``:
    ``sageattn_qk_int8_pv_fp8_cuda``'s, default ``"fp32+fp32"``, the kernel's two-level accumulation)
    with ``qk_quant_dtype="int4"`` and ``smooth_q`` on by default (INT4 needs it: section 3.2)."""
    if not isinstance(pv_dtype, str) or pv_dtype not in ("fp16", "fp8"):
        raise ValueError(f"pv_dtype must be one of ('fp16', 'fp8'), got {pv_dtype!r}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    name = "sageattn_qk_int8_pv_fp16_cuda" if pv_dtype == "fp16" else "sageattn_qk_int8_pv_fp8_cuda"
    accum = pv_accum_dtype if pv_accum_dtype is not None else ("fp32" if pv_dtype == "fp16" else "fp32+fp32")
    cfg = variants.variant_config(
        name, head_dim, qk_quant_gran=qk_quant_gran, pv_accum_dtype=accum, smooth_k=smooth_k,
        smooth_v=smooth_v, smooth_q=smooth_q, qk_rotation=qk_rotation,
    )  # fmt: skip
    return dataclasses.replace(cfg, qk_quant_dtype="int4")


def int4_kernel(name: str):
    """The compiled-kernel entry ``fn(prepared, cfg)`` of the variant ``name`` (raises
    ``NotImplementedError`` where it cannot run: no CUDA build, device, unsupported option)."""
    if name not in _MIN_CAPABILITY:
        raise ValueError(f"name must be one of {tuple(_MIN_CAPABILITY)}, got {name!r}")

    def why(p: Prepared, cfg: modes.SageConfig) -> str | None:
        return cuda_kernels.device_reason(p.q.device, name) or cuda_kernels.supported(p, cfg)

    def kernel(p: Prepared, cfg: modes.SageConfig):
        reason = why(p, cfg)
        if reason is not None:
            raise NotImplementedError(f"{name}: the compiled INT4 kernel does not run here: {reason}")
        return cuda_kernels.compiled_attention(p, cfg, op_backend="cuda")

    kernel.supports = why
    kernel.__name__ = kernel.__qualname__ = f"{name}_kernel"
    return kernel


# the device check of cuda_kernels (build, compute capability, compiled archs) serves the INT4 kernels too
cuda_kernels.MIN_CAPABILITY.update(_MIN_CAPABILITY)
cuda_kernels.KERNEL_OPS.update(dict.fromkeys(_MIN_CAPABILITY, "sage_attention_fwd_int4"))
# the variants' runner looks kernels up by name in ``variants.KERNELS``
variants.KERNELS.setdefault(_FP16, int4_kernel(_FP16))
variants.KERNELS.setdefault(_FP8, int4_kernel(_FP8))


@no_backward
def sageattn_qk_int4_pv_fp16_cuda(
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
    smooth_q: bool = True,
    attn_mask: torch.Tensor | None = None,
    qk_rotation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 with INT4 Q/K (per-thread, ``max/7`` scales, Q and K smoothing) and fp16 P·V.

    Arguments as :func:`sageattention.sageattn_qk_int8_pv_fp16_cuda`; ``smooth_q`` (default True) subtracts
    the mean of each 128-token Q block and adds back the exact ``q̄·Kᵀ`` term. ``backend``: ``"auto"``
    (the compiled INT4 kernel on sm80+ where built and supported, else the same maths in PyTorch),
    ``"cuda"`` (the kernel or an error naming why), ``"torch"``. Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` ops.
    """
    cfg = int4_config(
        q.shape[-1] if isinstance(q, torch.Tensor) else 1, pv_dtype="fp16", qk_quant_gran=qk_quant_gran,
        pv_accum_dtype=pv_accum_dtype, smooth_k=smooth_k, smooth_v=smooth_v, smooth_q=smooth_q,
        qk_rotation=qk_rotation,
    )  # fmt: skip
    return variants._run(
        _FP16, q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask, cfg, backend
    )


@no_backward
def sageattn_qk_int4_pv_fp8_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32+fp32",
    smooth_k: bool = True,
    smooth_v: bool = False,
    return_lse: bool = False,
    *,
    smooth_q: bool = True,
    attn_mask: torch.Tensor | None = None,
    qk_rotation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 with INT4 Q/K (as :func:`sageattn_qk_int4_pv_fp16_cuda`) and FP8 e4m3 P·V
    (arguments as :func:`sageattention.sageattn_qk_int8_pv_fp8_cuda`; default accumulation
    ``"fp32+fp32"``, the compiled kernel's, sm89+). Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` ops."""
    cfg = int4_config(
        q.shape[-1] if isinstance(q, torch.Tensor) else 1, pv_dtype="fp8", qk_quant_gran=qk_quant_gran,
        pv_accum_dtype=pv_accum_dtype, smooth_k=smooth_k, smooth_v=smooth_v, smooth_q=smooth_q,
        qk_rotation=qk_rotation,
    )  # fmt: skip
    return variants._run(
        _FP8, q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask, cfg, backend
    )
