"""Quantize -> dequantize helpers over shared-kernels' MX / NVFP4 quantizers, for 2-D GEMM operands.

Formats are never re-implemented here: ``shared_kernels.quantize_mx`` / ``quantize_nvfp4`` do the
work; this module adds (1) zero padding of the block axis to a multiple of the block size, (2) the
logical transpose of a packed operand (views only), (3) deterministic stochastic-rounding seeds and
(4) rounding of a weight toward a reference tensor (Q-EMA's forward rounding direction).

Padding rule: an operand whose block-axis length L is not a multiple of the block size is padded
with zeros to the next multiple before quantization. Zeros do not change a block's amax (so no
scale changes), quantize to exactly 0, and add 0 to every dot product along the reduction dim, so
the GEMM result equals the unpadded maths; ``dequantize()`` crops back to the logical shape.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from shared_kernels import (
    MXQuantized,
    NVFP4Quantized,
    dequantize_mx,
    dequantize_nvfp4,
    quantize_mx,
    quantize_nvfp4,
)
from shared_kernels.reference import microscaling as _mx_ref

from .recipe import QUANTIZER_NAMES, QuantizerSpec

__all__ = [
    "QuantizedOperand",
    "derive_seed",
    "fake_quantize",
    "quantize_operand",
    "quantize_toward",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK64 = (1 << 64) - 1


def derive_seed(global_seed: int, layer_id: int, quantizer: str, call: int) -> int:
    """64-bit Philox key for one stochastic-rounding draw: splitmix64 chain over (global seed,
    layer id, quantizer index, call counter). Different keys give independent Philox streams, so
    every draw uses offset 0 and draws never overlap. Pure function: reproducible across runs and
    identical on every DDP rank that holds the same counters."""
    for name, v in (("global_seed", global_seed), ("layer_id", layer_id), ("call", call)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if quantizer not in QUANTIZER_NAMES:
        raise ValueError(f"quantizer={quantizer!r} is not supported; supported: {QUANTIZER_NAMES}")
    h = global_seed & _MASK64
    for v in (layer_id, QUANTIZER_NAMES.index(quantizer), call):
        h = _splitmix64((h ^ (v * 0x9E3779B97F4A7C15)) & _MASK64)
    return h


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class QuantizedOperand(NamedTuple):
    """A 2-D GEMM operand after its quantizer.

    spec: the QuantizerSpec that made it. shape: logical (unpadded) 2-D shape.
    axis: block axis of the stored payload (-1: 1xB row blocks, -2: Bx1 column blocks).
    payload: MXQuantized / NVFP4Quantized (padded along ``axis`` to a multiple of the block size)
        or, for fmt "none", the high-precision tensor itself (never padded).
    """

    spec: QuantizerSpec
    shape: torch.Size
    axis: int
    payload: MXQuantized | NVFP4Quantized | torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values of the operand (cropped to ``shape``) as ``dtype``; exact in float32."""
        p = self.payload
        if isinstance(p, MXQuantized):
            out = dequantize_mx(p, torch.float32)
        elif isinstance(p, NVFP4Quantized):
            out = dequantize_nvfp4(p, torch.float32)
        else:
            return p.to(dtype)
        return out[: self.shape[0], : self.shape[1]].to(dtype)

    def t(self) -> QuantizedOperand:
        """Logical transpose: payload views with rows and columns swapped and the block axis
        flipped (a [K, N] operand blocked along K is a [N, K] operand blocked along K). No copy."""
        p = self.payload
        shape = torch.Size((self.shape[1], self.shape[0]))
        if isinstance(p, MXQuantized):
            p = MXQuantized(
                p.data.t(), p.scales.t(), p.fmt, -1 if p.axis == -2 else -2, torch.Size(p.shape[::-1])
            )
        elif isinstance(p, NVFP4Quantized):
            outer = p.outer_scale
            if outer is not None and outer.dim() == 2:
                outer = outer.t()
            p = NVFP4Quantized(
                p.data.t(),
                p.scales.t(),
                outer,
                p.outer,
                -1 if p.axis == -2 else -2,
                torch.Size(p.shape[::-1]),
            )
        else:
            p = p.t()
        return QuantizedOperand(self.spec, shape, -1 if self.axis == -2 else -2, p)

    @property
    def padded_shape(self) -> torch.Size:
        """Shape of the stored payload (logical shape with the block axis padded)."""
        return torch.Size(self.payload.shape)


def _check_2d(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}.dtype must be float32, float16 or bfloat16, got {x.dtype}")
    return x


def _check_axis(axis: object) -> int:
    if axis not in (-1, -2, 0, 1) or isinstance(axis, bool):
        raise ValueError(
            f"axis={axis!r} is not supported; supported: -1 (1xB row blocks), -2 (Bx1 column blocks)"
        )
    return -1 if axis in (-1, 1) else -2


def _pad(x: torch.Tensor, axis: int, multiple: int) -> torch.Tensor:
    n = x.shape[axis]
    extra = (-n) % multiple
    if extra == 0:
        return x.contiguous()
    return F.pad(x, (0, extra) if axis == -1 else (0, 0, 0, extra))


def quantize_operand(
    x: torch.Tensor,
    spec: QuantizerSpec,
    axis: int = -1,
    *,
    seed: int = 0,
    pad_multiple: int | None = None,
) -> QuantizedOperand:
    """Quantize a 2-D operand with ``spec`` in blocks along ``axis``.

    x: float32/float16/bfloat16 2-D tensor (not modified). The block axis is zero padded to a
    multiple of ``pad_multiple`` (default: ``spec.block_size``; must be a multiple of it, so two
    operands of one GEMM can share the padded reduction length). ``seed``: Philox key for
    stochastic rounding (offset 0; see ``derive_seed``). Cost: one quantizer pass (~5 ops/element,
    reads 2-4 B/element, writes 0.5-1 B/element + scales) plus a padded copy when needed.
    """
    _check_2d("x", x)
    if not isinstance(spec, QuantizerSpec):
        raise TypeError(f"spec must be a QuantizerSpec, got {type(spec).__name__}")
    axis = _check_axis(axis)
    if not spec.enabled:
        return QuantizedOperand(spec, x.shape, axis, x)
    multiple = spec.block_size if pad_multiple is None else pad_multiple
    if (
        isinstance(multiple, bool)
        or not isinstance(multiple, int)
        or multiple < 1
        or multiple % spec.block_size
    ):
        raise ValueError(
            f"pad_multiple={pad_multiple!r} must be a positive multiple of the block size {spec.block_size}"
        )
    xp = _pad(x, axis, multiple)
    if spec.fmt == "nvfp4":
        q = quantize_nvfp4(xp, axis=axis, outer=spec.effective_nvfp4_outer, rounding=spec.rounding, seed=seed)
    else:
        q = quantize_mx(
            xp, spec.fmt, axis=axis, scale_rule=spec.effective_scale_rule, rounding=spec.rounding, seed=seed
        )
    return QuantizedOperand(spec, x.shape, axis, q)


def fake_quantize(x: torch.Tensor, spec: QuantizerSpec, axis: int = -1, *, seed: int = 0) -> torch.Tensor:
    """Q(x) dequantized, same shape as ``x``, float32 (the exact quantized values; cast as needed).
    x: 2-D float32/float16/bfloat16; blocks along ``axis``; zero padding as in ``quantize_operand``."""
    return quantize_operand(x, spec, axis, seed=seed).dequantize(torch.float32)


def _element_format(spec: QuantizerSpec) -> _mx_ref.Minifloat:
    return _mx_ref.E2M1 if spec.fmt == "nvfp4" else _mx_ref.MX_ELEMENT[spec.fmt]


def _scale_per_element(q: MXQuantized | NVFP4Quantized) -> torch.Tensor:
    """float32 scale that multiplies each element code (padded shape)."""
    dim = q.axis % len(q.shape)
    if isinstance(q, MXQuantized):
        return _mx_ref.decode_e8m0(q.scales).repeat_interleave(32, dim=dim)
    block = q.scales.float()
    if q.outer_scale is not None:
        if q.outer_scale.dim() == 0:
            block = block * q.outer_scale
        else:
            block = block * q.outer_scale.repeat_interleave(8, dim=dim)
    return block.repeat_interleave(16, dim=dim)


def quantize_toward(
    x: torch.Tensor,
    reference: torch.Tensor,
    spec: QuantizerSpec,
    axis: int = -1,
    *,
    pad_multiple: int | None = None,
) -> QuantizedOperand:
    """Quantize ``x`` with its own block scales S (those of ``spec``), but of the two grid values
    bracketing x/S pick the one nearer to reference/S (Q-EMA, TetraJet Alg. 1: the EMA of the
    weights decides the rounding direction; ties go to the larger magnitude). Elements already on
    the grid stay; values beyond the format's max saturate as in RNE; where x or the reference is
    not finite, or the block scale is 0/NaN, the RNE code is kept. The result is a real packed
    operand (same scales as ``quantize_operand(x, spec)``), usable by any GEMM backend.

    x, reference: 2-D, same shape, float32/float16/bfloat16 (neither modified); spec: an enabled,
    deterministic (rne) quantizer. Cost: one quantizer pass + ~20 elementwise ops/element (PyTorch).
    """
    _check_2d("x", x)
    _check_2d("reference", reference)
    if reference.shape != x.shape:
        raise ValueError(f"reference.shape {tuple(reference.shape)} must equal x.shape {tuple(x.shape)}")
    if reference.device != x.device:
        raise ValueError(f"reference is on {reference.device}, x on {x.device}; they must share a device")
    if not isinstance(spec, QuantizerSpec):
        raise TypeError(f"spec must be a QuantizerSpec, got {type(spec).__name__}")
    if not spec.enabled or spec.rounding != "rne":
        raise ValueError(
            f"quantize_toward needs an enabled rne quantizer, got fmt={spec.fmt!r} rounding={spec.rounding!r}"
        )
    base = quantize_operand(x, spec, axis, pad_multiple=pad_multiple)
    q = base.payload
    axis = base.axis
    elem = _element_format(spec)
    xp = _pad(x.float(), axis, _multiple_of(base))
    rp = _pad(reference.float(), axis, _multiple_of(base))
    s = _scale_per_element(q)
    table = _mx_ref.decode_table(elem)[: elem.max_code + 1].to(x.device)  # non-negative grid, ascending
    ok = (s > 0) & torch.isfinite(s)
    s_safe = torch.where(ok, s, torch.ones_like(s))
    v = (xp.abs() / s_safe).clamp(max=elem.max_value)
    hi_idx = torch.searchsorted(table, v.contiguous(), right=False).clamp(max=elem.max_code)
    lo_idx = torch.searchsorted(table, v.contiguous(), right=True).sub(1).clamp(min=0)
    lo, hi = table[lo_idx], table[hi_idx]
    sign = torch.where(torch.signbit(xp), -1.0, 1.0)
    r = rp / s_safe * sign  # reference in x's sign frame
    pick_hi = (hi - r).abs() <= (r - lo).abs()
    mag = torch.where(pick_hi, hi, lo)
    codes = _mx_ref.encode(sign * mag, elem, "rne")
    rne_codes = _codes_of(q, elem)
    codes = torch.where(ok & torch.isfinite(xp) & torch.isfinite(rp), codes, rne_codes)
    dim = axis % 2
    if elem is _mx_ref.E2M1:
        data = _mx_ref.pack_fp4(codes, dim)
    else:
        data = codes.to(torch.uint8).view(q.data.dtype)
    return QuantizedOperand(spec, base.shape, axis, q._replace(data=data))


def _multiple_of(op: QuantizedOperand) -> int:
    """The padded block-axis length (the payload is padded to exactly this)."""
    return op.payload.shape[op.axis]


def _codes_of(q: MXQuantized | NVFP4Quantized, elem: _mx_ref.Minifloat) -> torch.Tensor:
    dim = q.axis % 2
    if elem is _mx_ref.E2M1:
        return _mx_ref.unpack_fp4(q.data, dim)
    return q.data.view(torch.uint8).to(torch.int64)
