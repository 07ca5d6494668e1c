"""TetraJetLinear GEMM backends over MX payloads (the ``tetrajet.backends`` contract).

"triton_scaled": ``tl.dot_scaled`` kernel of ``tetrajet.gemm.triton_scaled`` (CUDA tensors, or the
    CPU under ``TRITON_INTERPRET=1``); MXFP4 / MXFP8 E4M3 / MXFP8 E5M2 operands, mixed pairs allowed.
"cutlass_sm100": the CUTLASS block-scaled GEMM of shared-kernels (``shared_kernels.mx_gemm``,
    backend "cuda"): sm100a GPUs only; MXFP4 x MXFP4 or MXFP8 E4M3 x E4M3.

Both take a: QuantizedOperand [M, K] blocked along K (1x32 rows) and b: QuantizedOperand [K, N]
blocked along K (32x1 columns), both padded along K to the same length, and return the float32
product [M, N]. Cost: 2·M·N·K FLOPs; bytes: the packed operands and scales + 4·M·N (plus, for
"cutlass_sm100", a K-major copy of a transposed payload and the scale re-layout).
"""

from __future__ import annotations

import torch
from shared_kernels import MXQuantized, mx_gemm

from ..backends import available_gemm_backends, register_gemm_backend
from ..fake_quant import QuantizedOperand
from ..recipe import QuantizerSpec
from .triton_scaled import MX_FORMATS, mx_matmul

__all__ = ["cutlass_sm100_gemm", "register_backends", "triton_scaled_gemm"]

_CUTLASS_PAIRS = (("mxfp4", "mxfp4"), ("mxfp8_e4m3", "mxfp8_e4m3"))


def _mx_payloads(a: object, b: object) -> tuple[MXQuantized, MXQuantized]:
    for name, op, axis in (("a", a, -1), ("b", b, -2)):
        if not isinstance(op, QuantizedOperand):
            raise TypeError(f"{name} must be a QuantizedOperand, got {type(op).__name__}")
        if not isinstance(op.payload, MXQuantized):
            raise ValueError(
                f"{name} must carry an MX payload ({MX_FORMATS}), got fmt={op.spec.fmt!r}; use the 'emulated' backend"
            )
        if op.axis != axis:
            raise ValueError(
                f"{name} must be blocked along the reduction dim (axis {axis} for {name}), got axis {op.axis}"
            )
    pa, pb = a.payload, b.payload
    if pa.shape[-1] != pb.shape[-2]:
        raise ValueError(
            f"a and b payloads must be padded to the same K: a payload {tuple(pa.shape)}, b payload {tuple(pb.shape)}"
        )
    return pa, pb


def triton_scaled_gemm(a: QuantizedOperand, b: QuantizedOperand) -> torch.Tensor:
    """C = A·B in float32 with the ``tl.dot_scaled`` kernel (payloads read in place, any strides)."""
    pa, pb = _mx_payloads(a, b)
    # b [K, N] blocked along K is Bᵀ [N, K] blocked along its rows' K: the transposed views.
    c = mx_matmul(pa.data, pa.scales, pb.data.t(), pb.scales.t(), pa.fmt, pb.fmt, torch.float32)
    return c[: a.shape[0], : b.shape[1]]


def cutlass_sm100_gemm(a: QuantizedOperand, b: QuantizedOperand) -> torch.Tensor:
    """C = A·B in float32 with shared-kernels' CUTLASS sm100a block-scaled GEMM (backend "cuda")."""
    pa, pb = _mx_payloads(a, b)
    if (pa.fmt, pb.fmt) not in _CUTLASS_PAIRS:
        raise ValueError(f"cutlass_sm100 runs {_CUTLASS_PAIRS}, got ({pa.fmt!r}, {pb.fmt!r})")
    c = mx_gemm(
        pa.data.contiguous(),
        pa.scales.contiguous(),
        pb.data.t().contiguous(),
        pb.scales.t().contiguous(),
        pa.fmt,
        out_dtype=torch.float32,
        backend="cuda",
    )
    return c[: a.shape[0], : b.shape[1]]


def _common(a: QuantizerSpec, b: QuantizerSpec) -> str | None:
    for name, s in (("a", a), ("b", b)):
        if s.fmt not in MX_FORMATS:
            return f"operand {name} has fmt={s.fmt!r}; this backend multiplies MX operands {MX_FORMATS} only"
        if s.blocks != "reduction":
            return f"operand {name} has blocks={s.blocks!r}; block-scaled MMA needs blocks along the reduction dim"
    return None


def _triton_supports(a: QuantizerSpec, b: QuantizerSpec) -> str | None:
    return _common(a, b)


def _cutlass_supports(a: QuantizerSpec, b: QuantizerSpec) -> str | None:
    why = _common(a, b)
    if why is None and (a.fmt, b.fmt) not in _CUTLASS_PAIRS:
        why = f"the CUTLASS sm100a GEMM is built for {_CUTLASS_PAIRS}, got ({a.fmt!r}, {b.fmt!r})"
    return why


def register_backends() -> None:
    """Register "triton_scaled" and "cutlass_sm100" (idempotent)."""
    have = set(available_gemm_backends())
    if "triton_scaled" not in have:
        register_gemm_backend("triton_scaled", triton_scaled_gemm, supports=_triton_supports)
    if "cutlass_sm100" not in have:
        register_gemm_backend("cutlass_sm100", cutlass_sm100_gemm, supports=_cutlass_supports)
