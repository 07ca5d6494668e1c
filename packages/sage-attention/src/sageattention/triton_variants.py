"""Triton kernels behind upstream's ``*_cuda`` names (``variants.KERNELS``).

Importing this module registers :func:`qk_int8_pv_fp16_kernel` as
``variants.KERNELS["sageattn_qk_int8_pv_fp16_cuda"]``, so on CUDA tensors
``sageattn_qk_int8_pv_fp16_cuda(...)`` (and ``sageattn`` on sm80) runs the Triton INT8 attention
(``triton.pipeline.run_modes``) instead of the O(N²) reference. The kernel computes exactly the maths
of :func:`sageattention.modes.sage_attention_mode` for the configs it supports (same quantizers bit
for bit, same dequantization order ``(Q8·K8ᵀ · q_scale[row]) · k_scale[col] · sm_scale·log2 e``,
same key blocks of 64 for the online softmax; the attention output differs only by the last bits of
``exp2`` and of the float32 summation order: ``|ΔO| <= 1e-3·max|V|`` in the tests):

* ``pv_dtype="fp16"`` with ``pv_accum_dtype="fp32"``;
* ``qk_quant_gran`` ``per_block`` (Q groups of ``blkq``), ``per_warp`` (``warpq``), ``per_thread``
  (the ``mma`` fragment groups of ``modes.py``), ``per_token``; K groups of ``blkk = 64`` (or any
  ``warpk`` for per_thread);
* ``smooth_k`` on/off, ``prescale_q`` either way, causal, additive/bool masks, GQA/MQA, Nq ≠ Nk,
  head dims ≤ 256, fp16/bf16/fp32 inputs, HND/NHD;
* ``smooth_q`` (``blkq`` a multiple of 128) and ``qk_rotation``: Q/K are then transformed and
  quantized by ``modes._prepare_qk`` itself (PyTorch, ``O(N·D)``, bit-exact by construction), the
  ``mean(Q)·K'ᵀ`` correction is one float32 matmul per 128-query block, added to the scores inside
  the Triton kernel (``QC_BLK``).

Anything else (``smooth_v``, FP8 P·V, other accumulators, other tile sizes, head dims > 256) makes :func:`triton_attention` raise ``NotImplementedError`` naming the
option; the registered :func:`qk_int8_pv_fp16_kernel` then runs ``modes.sage_attention_mode`` (the
same maths ``backend="torch"`` runs: slower, never different) and logs that at DEBUG level.
CPU tensors run the kernel only under ``TRITON_INTERPRET=1`` (tests); otherwise the reference.
"""

from __future__ import annotations

import logging
import os

import torch

from . import modes, variants
from .core import Prepared

__all__ = ["qk_int8_pv_fp16_kernel", "supported", "triton_attention"]

_log = logging.getLogger(__name__)
_MAX_D = 256


def _groups(role: str, cfg: modes.SageConfig):
    """Quantization groups for ``triton.pipeline.run_modes``: an int (a scale per group of tokens)
    or ``(tile, t, c)`` (a scale per token, ``modes._group_shape``)."""
    gran = cfg.qk_quant_gran
    if gran in ("per_thread", "per_token"):
        return modes._group_shape(role, gran, cfg)
    if role == "q":
        return cfg.warpq if gran == "per_warp" else cfg.blkq
    return cfg.blkk


def _dim(d: int, cfg: modes.SageConfig) -> int:
    """Q/K head dim the kernel sees (the Hadamard rotation zero-pads to 64, 128 or k·128)."""
    if cfg.qk_rotation is None:
        return d
    return 64 if d <= 64 else 128 if d <= 128 else -(-d // 128) * 128


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def supported(p: Prepared, cfg: modes.SageConfig) -> str | None:
    """None if the Triton kernel reproduces ``modes.sage_attention_mode(cfg)`` for ``p``, else the
    name and value of the first unsupported option."""
    checks = (
        ("pv_dtype", cfg.pv_dtype, cfg.pv_dtype == "fp16"),
        ("pv_accum_dtype", cfg.pv_accum_dtype, cfg.pv_accum_dtype in ("fp32", "fp16+fp32", "fp16")),
        ("smooth_q", f"{cfg.smooth_q} with blkq={cfg.blkq}", not cfg.smooth_q or cfg.blkq % 128 == 0),
        ("pv_block", cfg.pv_block, cfg.pv_block == 64),
        ("blkk", cfg.blkk, cfg.blkk == 64 or cfg.qk_quant_gran in ("per_thread", "per_token")),
        ("warpq", cfg.warpq, cfg.qk_quant_gran not in ("per_thread", "per_warp") or _pow2(cfg.warpq)),
        ("blkq", cfg.blkq, cfg.qk_quant_gran != "per_block" or _pow2(cfg.blkq)),
        ("warpk", cfg.warpk, cfg.qk_quant_gran != "per_thread" or _pow2(cfg.warpk)),
        (
            "head dim",
            max(_dim(p.q.shape[3], cfg), p.v.shape[3]),
            max(_dim(p.q.shape[3], cfg), p.v.shape[3]) <= _MAX_D,
        ),
        ("device", p.q.device, p.q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"),
    )
    for name, val, ok in checks:
        if not ok:
            return f"{name}={val!r}"
    return None


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def triton_attention(p: Prepared, cfg: modes.SageConfig):
    """``modes.sage_attention_mode(cfg)`` on the Triton kernels; the result as ``p.finish``.

    Raises ``NotImplementedError`` naming the option the kernel does not implement.
    """
    why = supported(p, cfg)
    if why is not None:
        raise NotImplementedError(f"the Triton kernel does not implement {why}")
    if p.is_empty:
        return p.empty_result()
    from .triton import pipeline  # lazy: sageattention imports without triton

    q, k, v = (_last_contiguous(x) for x in (p.q, p.k, p.v))
    if cfg.smooth_q or cfg.qk_rotation is not None:
        o, lse = pipeline.run_torch_quantized(q, k, v, p.mask, p.is_causal, p.sm_scale, cfg)
        return p.finish(o, lse)
    o, lse = pipeline.run_modes(
        q, k, v, p.mask, p.is_causal, p.sm_scale, cfg.smooth_k,
        q_groups=_groups("q", cfg), k_groups=_groups("k", cfg),
        add_eps=cfg.qk_quant_gran == "per_thread", prescale_q=cfg.prescale_q, pv_accum=cfg.pv_accum_dtype,
        smooth_v=cfg.smooth_v,
    )  # fmt: skip
    return p.finish(o, lse)


def qk_int8_pv_fp16_kernel(p: Prepared, cfg: modes.SageConfig):
    """``variants.KERNELS["sageattn_qk_int8_pv_fp16_cuda"]``: the Triton kernel where it implements
    ``cfg`` (:func:`supported`), else ``modes.sage_attention_mode`` (the same maths in PyTorch)."""
    why = supported(p, cfg)
    if why is None:
        return triton_attention(p, cfg)
    _log.debug("sageattn_qk_int8_pv_fp16_cuda: %s has no Triton kernel, running the reference", why)
    if p.is_empty:
        return p.empty_result()
    o, lse = modes.sage_attention_mode(
        p.q, p.k, p.v, sm_scale=p.sm_scale, cfg=cfg, is_causal=p.is_causal, mask=p.mask
    )
    return p.finish(o, lse)


# appended to the variant's chain (behind a compiled kernel registered first), whatever the import order
variants.register_kernel("sageattn_qk_int8_pv_fp16_cuda", qk_int8_pv_fp16_kernel)
