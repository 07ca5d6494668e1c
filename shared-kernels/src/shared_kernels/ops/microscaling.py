"""Microscaling quantization: OCP MX v1.0 (MXFP4, MXFP8 E4M3/E5M2) and NVIDIA NVFP4.

Storage (both ops): FP4 data are uint8 with two E2M1 codes per byte along the block axis, the LOW
nibble holding the even element (``tl.dot_scaled`` convention). For ``axis=-1`` a byte holds
elements (..., r, 2j) and (..., r, 2j+1), data shape [..., K/2]; for ``axis=-2`` it holds (..., 2i, c)
and (..., 2i+1, c), data shape [..., M/2, K]. MXFP8 data are float8 tensors of x's shape. Scales
have x's shape with the axis size divided by the block size.

Stochastic rounding (``rounding="stochastic"``) draws the 32 bits of element i (flat row-major
index in x) from Philox4x32-10 at ``offset + i`` with key ``seed`` (see ``ops/philox.py``), so every
backend gives the same bits for the same (seed, offset); callers advance ``offset`` by ``x.numel()``
between calls to get fresh draws.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec
from ..reference import microscaling as ref
from .philox import check_seed_offset, seed_as_int64

__all__ = [
    "MXQuantized",
    "NVFP4Quantized",
    "dequantize_mx",
    "dequantize_nvfp4",
    "quantize_mx",
    "quantize_nvfp4",
]

_backend.register_op(
    "quantize_mx", backends=("cuda", "cpu", "torch"), summary="MXFP4/MXFP8 (OCP MX v1.0) quantization"
)
_backend.register_op(
    "quantize_nvfp4", backends=("cuda", "cpu", "torch"), summary="NVFP4 (E2M1, E4M3 x FP32 scales)"
)

MX_FORMATS = ("mxfp4", "mxfp8_e4m3", "mxfp8_e5m2")
SCALE_RULES = ("floor", "truncation_free")
ROUNDINGS = ("rne", "stochastic")
OUTERS = ("tensor", "block128", "none")
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_ELEM_CODE = {"mxfp4": 0, "mxfp8_e4m3": 1, "mxfp8_e5m2": 2}
_FP8_DTYPE = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2}
_OUTER_CODE = {"tensor": 0, "block128": 1, "none": 2}
_ALL_ARCHS = (80, 89, 90, 100)

CUDA_SPECS = [
    CudaKernelSpec(
        "quantize_mx (one thread per 32-block)", "mx_quantize_kernel", {a: ("none",) for a in _ALL_ARCHS}
    ),
    CudaKernelSpec(
        "quantize_nvfp4 tensor amax", "nvfp4_tensor_amax_kernel", {a: ("none",) for a in _ALL_ARCHS}
    ),
    CudaKernelSpec(
        "quantize_nvfp4 outer finalize", "nvfp4_outer_finalize_kernel", {a: ("none",) for a in _ALL_ARCHS}
    ),
    CudaKernelSpec(
        "quantize_nvfp4 128-block outer scales", "nvfp4_outer128_kernel", {a: ("none",) for a in _ALL_ARCHS}
    ),
    CudaKernelSpec(
        "quantize_nvfp4 (one thread per 16-block)",
        "nvfp4_quantize_kernel",
        {a: ("none",) for a in _ALL_ARCHS},
    ),
]


class MXQuantized(NamedTuple):
    """MX tensor: ``data`` (uint8 packed E2M1 or float8), ``scales`` (uint8 E8M0), the format name,
    the block axis (-1 or -2) and the original shape."""

    data: torch.Tensor
    scales: torch.Tensor
    fmt: str
    axis: int
    shape: torch.Size


class NVFP4Quantized(NamedTuple):
    """NVFP4 tensor: packed E2M1 ``data``, E4M3 block ``scales`` (torch.float8_e4m3fn), FP32
    ``outer_scale`` ([] for "tensor", [..., n/128] along the axis for "block128", None for "none")."""

    data: torch.Tensor
    scales: torch.Tensor
    outer_scale: torch.Tensor | None
    outer: str
    axis: int
    shape: torch.Size


def _with_axis(shape: torch.Size, axis: int, divisor: int) -> tuple[int, ...]:
    s = list(shape)
    s[axis] //= divisor
    return tuple(s)


def _geometry(shape: torch.Size, axis: int) -> tuple[int, int, int, bool]:
    numel = 1
    for d in shape:
        numel *= d
    if axis == -1:
        k = shape[-1]
        return 1, numel // k if k else 0, k, False
    m, k = shape[-2], shape[-1]
    return (numel // (m * k) if m * k else 0), m, k, True


def _rounding_code(rounding: str) -> int:
    return 0 if rounding == "rne" else 1


def _ref_rounding(rounding: str) -> str:
    return "rne" if rounding == "rne" else "sr"


# ------------------------------------------------------------------------------------------ MX
@torch.library.custom_op("shared_kernels::quantize_mx", mutates_args=())
def _quantize_mx_op(
    x: torch.Tensor, fmt: str, axis: int, scale_rule: str, rounding: str, seed: int, offset: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    useed = seed % (1 << 64)
    if backend == "torch":
        return ref.quantize_mx(x, fmt, axis, scale_rule, _ref_rounding(rounding), useed, offset)
    if fmt == "mxfp4":
        data = _alloc.new_empty(_with_axis(x.shape, axis, 2), torch.uint8, x.device)
    else:
        data = _alloc.new_empty(x.shape, _FP8_DTYPE[fmt], x.device)
    scales = _alloc.new_empty(_with_axis(x.shape, axis, 32), torch.uint8, x.device)
    if x.numel() == 0:
        return data, scales
    b, m, k, along_rows = _geometry(x.shape, axis)
    args = (
        _lib.ptr(x),
        _DTYPE_CODE[x.dtype],
        b,
        m,
        k,
        along_rows,
        _ELEM_CODE[fmt],
        SCALE_RULES.index(scale_rule),
    )
    args += (_rounding_code(rounding), seed, offset, _lib.ptr(data), _lib.ptr(scales))
    _lib.launch("quantize_mx", x, *args)
    return data, scales


@_quantize_mx_op.register_fake
def _(x, fmt, axis, scale_rule, rounding, seed, offset, backend):
    if fmt == "mxfp4":
        data = x.new_empty(_with_axis(x.shape, axis, 2), dtype=torch.uint8)
    else:
        data = x.new_empty(x.shape, dtype=_FP8_DTYPE[fmt])
    return data, x.new_empty(_with_axis(x.shape, axis, 32), dtype=torch.uint8)


def _check_blocked_input(x: object, axis: object, block: int, what: str) -> tuple[torch.Tensor, int]:
    _validate.check_tensor("x", x, dtypes=tuple(_DTYPE_CODE), min_ndim=2, contiguous=True)
    _validate.check_int("axis", axis)
    if axis not in (-1, -2, x.dim() - 1, x.dim() - 2):
        raise ValueError(
            f"axis={axis} is not supported; supported: -1 (1x{block} row blocks), -2 ({block}x1 column blocks)"
        )
    axis = -1 if axis in (-1, x.dim() - 1) else -2
    if x.shape[axis] % block:
        raise ValueError(f"x.shape[{axis}]={x.shape[axis]} must be divisible by {block} ({what})")
    return x, axis


def quantize_mx(
    x: torch.Tensor,
    fmt: str = "mxfp4",
    *,
    axis: int = -1,
    scale_rule: str = "floor",
    rounding: str = "rne",
    seed: int = 0,
    offset: int = 0,
    backend: str = "auto",
) -> MXQuantized:
    """OCP MX v1.0 quantization: blocks of 32 consecutive elements along ``axis`` (-1: 1x32 row
    blocks, -2: 32x1 column blocks) share an E8M0 scale 2^e; elements = encode(x / 2^e) in E2M1
    ("mxfp4"), E4M3 ("mxfp8_e4m3") or E5M2 ("mxfp8_e5m2").

    ``scale_rule``: "floor" (OCP / torchao FLOOR: e = floor(log2 amax) - emax_elem, emax 2/8/15;
    elements saturate) or "truncation_free" (TetraJet: e = ceil(log2(amax / max_elem)), no
    clipping). An all-zero block gets e = -127 (scale byte 0) under both rules; e is clamped to
    [-127, 127]; a block holding NaN gets the NaN scale 0xFF; +-inf saturates to +-max_elem.
    ``rounding``: "rne" or "stochastic" (Philox bits of (seed, offset + flat index)).
    x: float32/float16/bfloat16, >= 2-D, contiguous, size along ``axis`` divisible by 32.
    Cost: ~5 ops/element (+ 10 Philox rounds per 4 elements for SR); reads 2-4 B/element, writes
    0.5 (mxfp4) or 1 (mxfp8) B/element + 1/32 B of scales.
    """
    x, axis = _check_blocked_input(x, axis, 32, "MX blocks are 32 elements")
    _validate.check_choice("fmt", fmt, MX_FORMATS)
    _validate.check_choice("scale_rule", scale_rule, SCALE_RULES)
    _validate.check_choice("rounding", rounding, ROUNDINGS)
    seed, offset = check_seed_offset(seed, offset)
    if offset + x.numel() >= 1 << 62:
        raise ValueError("offset + x.numel() must be < 2^62")
    be = _backend.resolve_backend("quantize_mx", backend, x.device)
    data, scales = torch.ops.shared_kernels.quantize_mx(
        x, fmt, axis, scale_rule, rounding, seed_as_int64(seed), offset, be
    )
    return MXQuantized(data, scales, fmt, axis, x.shape)


def dequantize_mx(mx: MXQuantized, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """decode(element) * 2^e, scale broadcast over its block (PyTorch; exact in float32)."""
    if not isinstance(mx, MXQuantized):
        raise TypeError(f"mx must be an MXQuantized, got {type(mx).__name__}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    return ref.dequantize_mx(mx.data, mx.scales, mx.fmt, mx.axis).to(out_dtype)


# --------------------------------------------------------------------------------------- NVFP4
@torch.library.custom_op("shared_kernels::quantize_nvfp4", mutates_args=())
def _quantize_nvfp4_op(
    x: torch.Tensor, axis: int, outer: str, rounding: str, seed: int, offset: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    useed = seed % (1 << 64)
    if backend == "torch":
        return ref.quantize_nvfp4(x, axis, outer, _ref_rounding(rounding), useed, offset)
    data = _alloc.new_empty(_with_axis(x.shape, axis, 2), torch.uint8, x.device)
    scales = _alloc.new_empty(_with_axis(x.shape, axis, 16), torch.float8_e4m3fn, x.device)
    outer_shape = _with_axis(x.shape, axis, 128) if outer == "block128" else ()
    outer_scale = _alloc.new_empty(outer_shape, torch.float32, x.device)
    if x.numel() == 0:
        return data, scales, outer_scale.fill_(0.0 if outer == "tensor" else 1.0)
    b, m, k, along_rows = _geometry(x.shape, axis)
    args = (
        _lib.ptr(x),
        _DTYPE_CODE[x.dtype],
        b,
        m,
        k,
        along_rows,
        _OUTER_CODE[outer],
        _rounding_code(rounding),
    )
    args += (seed, offset, _lib.ptr(data), _lib.ptr(scales), _lib.ptr(outer_scale))
    _lib.launch("quantize_nvfp4", x, *args)
    return data, scales, outer_scale


@_quantize_nvfp4_op.register_fake
def _(x, axis, outer, rounding, seed, offset, backend):
    data = x.new_empty(_with_axis(x.shape, axis, 2), dtype=torch.uint8)
    scales = x.new_empty(_with_axis(x.shape, axis, 16), dtype=torch.float8_e4m3fn)
    outer_shape = _with_axis(x.shape, axis, 128) if outer == "block128" else ()
    return data, scales, x.new_empty(outer_shape, dtype=torch.float32)


def quantize_nvfp4(
    x: torch.Tensor,
    *,
    axis: int = -1,
    outer: str = "tensor",
    rounding: str = "rne",
    seed: int = 0,
    offset: int = 0,
    backend: str = "auto",
) -> NVFP4Quantized:
    """NVIDIA NVFP4: 16-element blocks along ``axis``, E2M1 elements, E4M3 block scale, FP32 outer
    scale.

    outer: "tensor" (amax_tensor / (448 * 6), torchao per_tensor_amax_to_scale / TE), "block128"
    (one FP32 scale per 128 consecutive elements along ``axis``: amax_128 / (448 * 6), TetraJet-v2)
    or "none" (outer = 1: block scale = E4M3(amax_16 / 6)). block_scale = E4M3_rne_sat(amax_16 /
    (6 * outer)); elements = E2M1(x / (decode(block_scale) * outer)), RNE or stochastic. A zero
    outer scale or a block scale that decodes to 0 gives codes 0. Non-finite input: a NaN makes its
    outer group's scales NaN (0x7F); with outer="none" an inf saturates its block scale to 448.
    x: float32/float16/bfloat16, >= 2-D, contiguous, size along ``axis`` divisible by 16 (128 for
    "block128"). Cost: ~6 ops/element; reads 2-4 B/element (twice for outer="tensor"), writes
    0.5 B/element + 1/16 B of block scales.
    """
    _validate.check_choice("outer", outer, OUTERS)
    block = 128 if outer == "block128" else 16
    x, axis = _check_blocked_input(x, axis, block, "NVFP4 blocks are 16 elements, outer blocks 128")
    _validate.check_choice("rounding", rounding, ROUNDINGS)
    seed, offset = check_seed_offset(seed, offset)
    if offset + x.numel() >= 1 << 62:
        raise ValueError("offset + x.numel() must be < 2^62")
    be = _backend.resolve_backend("quantize_nvfp4", backend, x.device)
    data, scales, outer_scale = torch.ops.shared_kernels.quantize_nvfp4(
        x, axis, outer, rounding, seed_as_int64(seed), offset, be
    )
    return NVFP4Quantized(data, scales, None if outer == "none" else outer_scale, outer, axis, x.shape)


def dequantize_nvfp4(q: NVFP4Quantized, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """decode(element) * decode(block_scale) * outer (PyTorch)."""
    if not isinstance(q, NVFP4Quantized):
        raise TypeError(f"q must be an NVFP4Quantized, got {type(q).__name__}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    return ref.dequantize_nvfp4(q.data, q.scales, q.outer_scale, q.axis).to(out_dtype)
