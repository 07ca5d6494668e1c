"""Registries of the two hook points of ``TetraJetLinear``: GEMM backends and gradient-path
transforms.

GEMM backend: ``fn(a, b) -> Tensor`` computes C = A·B in float32 (the accumulator) for
  a: QuantizedOperand of logical shape [M, K], b: QuantizedOperand of logical shape [K, N].
  With ``blocks="reduction"`` specs (what hardware supports) a is blocked along K in 1xB row
  blocks (``a.axis == -1``) and b along K in Bx1 column blocks (``b.axis == -2``) -- the
  ``tl.dot_scaled`` / tcgen05 block-scaled convention -- and both quantized payloads are zero
  padded along K to the same length (an fmt "none" operand's payload is the unpadded
  high-precision tensor; a backend that cannot mix it says so through ``supports``). Payloads may be transposed views (``QuantizedOperand.t()``); call
  ``.contiguous()`` on them if the kernel needs it. ``supports(a_spec, b_spec) -> str | None``
  returns None when the backend can run the pair, else the reason it cannot.
  "emulated" (built in): dequantize both operands to float32 and matmul; any device, any specs.
  FLOPs 2MNK; bytes: reads the packed operands, writes 4(MK + KN) B of dequantized copies + 4MN.

Gradient transform: ``fn(t, *, dim, seed, size, side) -> Tensor`` applied to both operands of the
  dX and dW GEMMs along their reduction dim ``dim`` (length a multiple of ``size``) before Q3..Q6,
  with ``side="left"`` for the operand whose columns are reduced and ``side="right"`` for the one
  whose rows are reduced; it must satisfy T_left(A) · T_right(B) = A · B for the same seed (e.g.
  A·(D·H) and (D·H)ᵀ·B for a random-sign Hadamard D·H). "none" is built in; TetraJet-v2 registers
  "rht".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .fake_quant import QuantizedOperand
from .recipe import QuantizerSpec

__all__ = [
    "available_gemm_backends",
    "available_grad_transforms",
    "get_gemm_backend",
    "get_grad_transform",
    "register_gemm_backend",
    "register_grad_transform",
]

GemmFn = Callable[[QuantizedOperand, QuantizedOperand], torch.Tensor]
SupportsFn = Callable[[QuantizerSpec, QuantizerSpec], "str | None"]

_GEMMS: dict[str, tuple[GemmFn, SupportsFn | None]] = {}
_TRANSFORMS: dict[str, Callable[..., torch.Tensor]] = {}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    return name


def register_gemm_backend(
    name: str, fn: GemmFn, *, supports: SupportsFn | None = None, replace: bool = False
) -> None:
    """Register ``fn`` as GEMM backend ``name`` (see the module docstring for the contract)."""
    _check_name(name)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if supports is not None and not callable(supports):
        raise TypeError(f"supports must be callable or None, got {type(supports).__name__}")
    if name in _GEMMS and not replace:
        raise ValueError(f"GEMM backend {name!r} is already registered (pass replace=True to override)")
    _GEMMS[name] = (fn, supports)


def get_gemm_backend(name: str) -> tuple[GemmFn, SupportsFn | None]:
    """(fn, supports) of a registered GEMM backend; ValueError naming the registered ones otherwise."""
    _check_name(name)
    if name not in _GEMMS:
        raise ValueError(
            f"gemm_backend={name!r} is not registered; registered: {available_gemm_backends()} "
            "(import the module that registers it, e.g. tetrajet.gemm, first)"
        )
    return _GEMMS[name]


def available_gemm_backends() -> list[str]:
    """Names of the registered GEMM backends."""
    return sorted(_GEMMS)


def register_grad_transform(name: str, fn: Callable[..., torch.Tensor], *, replace: bool = False) -> None:
    """Register ``fn`` as gradient-path transform ``name`` (see the module docstring)."""
    _check_name(name)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if name in _TRANSFORMS and not replace:
        raise ValueError(f"grad transform {name!r} is already registered (pass replace=True to override)")
    _TRANSFORMS[name] = fn


def get_grad_transform(name: str) -> Callable[..., torch.Tensor] | None:
    """The transform registered as ``name`` (None for "none")."""
    _check_name(name)
    if name == "none":
        return None
    if name not in _TRANSFORMS:
        raise ValueError(
            f"grad_transform={name!r} is not registered; registered: {available_grad_transforms()} "
            "(import tetrajet.v2 to register 'rht')"
        )
    return _TRANSFORMS[name]


def available_grad_transforms() -> list[str]:
    """Names of the registered gradient transforms ("none" included)."""
    return ["none", *sorted(_TRANSFORMS)]


def emulated_gemm(a: QuantizedOperand, b: QuantizedOperand) -> torch.Tensor:
    """C = dequant(A) · dequant(B) in float32 (exact operand values; float32 accumulation)."""
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dims differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    return a.dequantize(torch.float32) @ b.dequantize(torch.float32)


def _emulated_supports(a: QuantizerSpec, b: QuantizerSpec) -> Any:
    return None


register_gemm_backend("emulated", emulated_gemm, supports=_emulated_supports)
