"""Microscaling references (plain PyTorch): minifloat codecs, OCP MX v1.0 (MXFP4 / MXFP8) and
NVIDIA NVFP4 quantization. The oracle of ``include/shared_kernels/{minifloat,microscaling}.h``.

Minifloat encoding (float32 -> code), written on the grid: in the binade ``e = max(floor(log2|v|),
emin)`` the grid step is ``q = 2^(e - mbits)``; ``n = |v| / q`` (exact) is rounded to an integer,
either to nearest-even (RNE) or stochastically (up iff ``r < floor(frac(n) * 2^32)`` for 32 random
bits ``r``), and the magnitude code is ``(e - emin) * 2^mbits + n`` (a carry into the next binade
and the subnormal -> normal step fall out of the addition). ``|v| >= max`` (and +-inf) saturates to
+-max; NaN encodes to the canonical 0x7F (E4M3/E5M2) or to +0 (E2M1, which has no NaN); the sign of
zero is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .philox import philox_bits


@dataclass(frozen=True)
class Minifloat:
    name: str
    ebits: int
    mbits: int
    bias: int
    max_value: float
    max_code: int  # magnitude code of max_value
    nan_code: int  # 0 when the format has no NaN
    has_inf: bool

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:  # exponent of the largest binade (floor(log2(max_value)))
        return math.frexp(self.max_value)[1] - 1

    @property
    def sign_shift(self) -> int:
        return self.ebits + self.mbits


E2M1 = Minifloat("e2m1", 2, 1, 1, 6.0, 0x7, 0x0, False)
E4M3 = Minifloat("e4m3", 4, 3, 7, 448.0, 0x7E, 0x7F, False)
E5M2 = Minifloat("e5m2", 5, 2, 15, 57344.0, 0x7B, 0x7F, True)
FORMATS = {"e2m1": E2M1, "e4m3": E4M3, "e5m2": E5M2}


def encode(
    v: torch.Tensor, fmt: Minifloat, rounding: str = "rne", bits: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 ``v`` -> int64 codes (sign at bit ``fmt.sign_shift``); ``bits``: int64 in [0, 2^32)
    for ``rounding="sr"``."""
    v = v.to(torch.float32)
    a = v.abs().double()
    _mant, exp = torch.frexp(a)  # a = mant * 2^exp, mant in [0.5, 1)
    e = torch.where(a == 0, fmt.emin, exp - 1).clamp(min=fmt.emin)  # binade (0: the subnormal one)
    q = torch.ldexp(torch.ones_like(a), (e - fmt.mbits).double())
    t = a / q  # exact: power-of-two scaling
    if rounding == "rne":
        n = torch.round(t)  # half to even
    elif rounding == "sr":
        n = torch.floor(t)
        threshold = torch.floor((t - n) * 2.0**32)
        n = n + (bits.double() < threshold).double()
    else:
        raise ValueError(rounding)
    mag = (e.to(torch.int64) - fmt.emin) * (1 << fmt.mbits) + n.to(torch.int64)
    mag = torch.where(a >= fmt.max_value, torch.full_like(mag, fmt.max_code), mag)  # satfinite, +-inf
    sign = torch.signbit(v).to(torch.int64) << fmt.sign_shift
    code = mag | sign
    return torch.where(torch.isnan(v), torch.full_like(code, fmt.nan_code), code)


def decode_table(fmt: Minifloat) -> torch.Tensor:
    """float32 value of every code of ``fmt`` (2^(1+ebits+mbits) entries)."""
    vals = []
    for code in range(1 << (1 + fmt.ebits + fmt.mbits)):
        mag = code & ((1 << fmt.sign_shift) - 1)
        neg = code >> fmt.sign_shift
        ef, m = mag >> fmt.mbits, mag & ((1 << fmt.mbits) - 1)
        if fmt.nan_code and mag == fmt.nan_code:
            val = float("nan")
        elif fmt.has_inf and mag > fmt.max_code:
            val = float("inf") if mag == fmt.max_code + 1 else float("nan")
        elif ef == 0:
            val = m * 2.0 ** (fmt.emin - fmt.mbits)
        else:
            val = (1 + m / 2**fmt.mbits) * 2.0 ** (ef - fmt.bias)
        vals.append(-val if neg else val)
    return torch.tensor(vals, dtype=torch.float32)


def decode(codes: torch.Tensor, fmt: Minifloat) -> torch.Tensor:
    table = decode_table(fmt).to(codes.device)
    return table[codes.to(torch.int64) & ((1 << (1 + fmt.sign_shift)) - 1)]


def decode_e8m0(b: torch.Tensor) -> torch.Tensor:
    """E8M0 byte -> 2^(b - 127) as float32 (2^-127 is a float32 subnormal), 0xFF -> NaN."""
    b = b.to(torch.int64)
    val = torch.ldexp(torch.ones(b.shape, dtype=torch.float64, device=b.device), (b - 127).double())
    return torch.where(b == 255, float("nan"), val).to(torch.float32)


# ------------------------------------------------------------------------------------------ MX
MX_ELEMENT = {"mxfp4": E2M1, "mxfp8_e4m3": E4M3, "mxfp8_e5m2": E5M2}
MX_BLOCK = 32


def mx_shared_exponent(amax: torch.Tensor, elem: Minifloat, scale_rule: str) -> torch.Tensor:
    """E8M0 byte of each block from its float32 amax.

    floor (OCP MX v1.0, torchao FLOOR): e = floor(log2 amax) - emax_elem, with floor(log2) read
    from the float32 exponent field (so float32 subnormals count as 2^-127 and inf as 2^128).
    truncation_free (TetraJet): e = ceil(log2(amax / max_elem)), i.e. the smallest e with
    amax <= max_elem * 2^e, computed exactly as floor(log2 amax) - emax_elem + [mantissa(amax) >
    mantissa(max_elem)]. amax == 0 -> e = -127 (byte 0) under both rules. e is clamped to
    [-127, 127]; a NaN amax gives the NaN byte 0xFF.
    """
    bits = amax.to(torch.float32).view(torch.int32).to(torch.int64)
    e_amax = ((bits >> 23) & 0xFF) - 127
    e = e_amax - elem.emax
    if scale_rule == "truncation_free":
        max_mant = torch.tensor(elem.max_value, dtype=torch.float32).view(torch.int32).item() & 0x7FFFFF
        e = e + ((bits & 0x7FFFFF) > max_mant).to(torch.int64)
    elif scale_rule != "floor":
        raise ValueError(scale_rule)
    e = torch.where(amax == 0, torch.full_like(e, -127), e).clamp(-127, 127)
    byte = e + 127
    return torch.where(torch.isnan(amax), torch.full_like(byte, 255), byte)


def _random_bits_like(x: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Philox bits of every element of ``x`` indexed by its flat (row-major) position."""
    return philox_bits(x.numel(), seed, offset, x.device).reshape(x.shape)


def pack_fp4(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Two E2M1 codes per byte along ``dim``: low nibble = even index, high nibble = odd index."""
    c = codes.movedim(dim, -1).to(torch.uint8)
    packed = c[..., 0::2] | (c[..., 1::2] << 4)
    return packed.movedim(-1, dim).contiguous()


def unpack_fp4(packed: torch.Tensor, dim: int) -> torch.Tensor:
    p = packed.movedim(dim, -1).to(torch.int64)
    codes = torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)
    return codes.movedim(-1, dim)


def quantize_mx(
    x: torch.Tensor,
    fmt: str = "mxfp4",
    axis: int = -1,
    scale_rule: str = "floor",
    rounding: str = "rne",
    seed: int = 0,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MX: blocks of 32 along ``axis`` share an E8M0 scale 2^e; elements encode(x / 2^e).

    Returns (data, scales): mxfp4 data are uint8 with two codes per byte along ``axis``; mxfp8 data
    are float8 tensors; scales are uint8 E8M0 bytes with the axis size divided by 32.
    """
    elem = MX_ELEMENT[fmt]
    dim = axis % x.dim()
    xf = x.to(torch.float32)
    xm = xf.movedim(dim, -1)
    blocks = xm.reshape(*xm.shape[:-1], xm.shape[-1] // MX_BLOCK, MX_BLOCK)
    amax = blocks.abs().amax(-1)
    scale_byte = mx_shared_exponent(amax, elem, scale_rule)
    scaled = blocks / decode_e8m0(scale_byte).unsqueeze(-1)
    bits = None
    if rounding == "sr":
        bits = _random_bits_like(xf, seed, offset).movedim(dim, -1).reshape(blocks.shape)
    codes = encode(scaled, elem, rounding, bits).reshape(xm.shape).movedim(-1, dim)
    scales = scale_byte.to(torch.uint8).movedim(-1, dim).contiguous()
    if elem is E2M1:
        data = pack_fp4(codes, dim)
    else:
        dtype = torch.float8_e4m3fn if elem is E4M3 else torch.float8_e5m2
        data = codes.to(torch.uint8).contiguous().view(dtype)
    return data, scales


def dequantize_mx(data: torch.Tensor, scales: torch.Tensor, fmt: str, axis: int) -> torch.Tensor:
    """float32 decode(element) * 2^e, the scale broadcast over its 32 elements along ``axis``."""
    elem = MX_ELEMENT[fmt]
    dim = axis % data.dim()
    codes = unpack_fp4(data, dim) if elem is E2M1 else data.view(torch.uint8).to(torch.int64)
    vals = decode(codes, elem)
    scale = decode_e8m0(scales).repeat_interleave(MX_BLOCK, dim=dim)
    return vals * scale


# --------------------------------------------------------------------------------------- NVFP4
NVFP4_BLOCK = 16
NVFP4_OUTER_BLOCK = 128
NVFP4_OUTER_DIVISOR = 448.0 * 6.0


def quantize_nvfp4(
    x: torch.Tensor,
    axis: int = -1,
    outer: str = "tensor",
    rounding: str = "rne",
    seed: int = 0,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4: 16-element blocks along ``axis``, E2M1 elements, E4M3 block scale, FP32 outer scale.

    outer = amax_tensor / 2688 ("tensor"), amax_128 / 2688 per 128 elements along ``axis``
    ("block128"), or 1 ("none"). block_scale = E4M3_rne_sat(amax_16 / (6 * outer)); elements =
    E2M1(x / (decode(block_scale) * outer)). A zero outer scale or a block scale that decodes to 0
    gives block scale code 0 and element codes 0. Returns (packed data, E4M3 block scales, outer).
    """
    dim = axis % x.dim()
    xf = x.to(torch.float32)
    xm = xf.movedim(dim, -1)
    n = xm.shape[-1]
    blocks = xm.reshape(*xm.shape[:-1], n // NVFP4_BLOCK, NVFP4_BLOCK)
    amax16 = blocks.abs().amax(-1)
    if outer == "tensor":
        amax = xf.abs().amax() if xf.numel() else xf.new_zeros(())
        outer_scale = amax / NVFP4_OUTER_DIVISOR
        outer16 = outer_scale.expand(amax16.shape)
    elif outer == "block128":
        outer_scale = xm.reshape(*xm.shape[:-1], n // NVFP4_OUTER_BLOCK, NVFP4_OUTER_BLOCK).abs().amax(-1)
        outer_scale = outer_scale / NVFP4_OUTER_DIVISOR
        outer16 = outer_scale.repeat_interleave(NVFP4_OUTER_BLOCK // NVFP4_BLOCK, dim=-1)
    elif outer == "none":
        outer_scale = torch.ones((), dtype=torch.float32, device=x.device)
        outer16 = outer_scale.expand(amax16.shape)
    else:
        raise ValueError(outer)
    outer_scale = torch.where(torch.isnan(outer_scale), float("nan"), outer_scale)  # canonical NaN bits
    outer16 = torch.where(torch.isnan(outer16), float("nan"), outer16)
    scale_code = encode(amax16 / (outer16 * 6.0), E4M3)
    scale_code = torch.where(outer16 == 0, torch.zeros_like(scale_code), scale_code)
    denom = decode(scale_code, E4M3) * outer16
    bits = None
    if rounding == "sr":
        bits = _random_bits_like(xf, seed, offset).movedim(dim, -1).reshape(blocks.shape)
    codes = encode(blocks / denom.unsqueeze(-1), E2M1, rounding, bits)
    codes = torch.where((denom == 0).unsqueeze(-1), torch.zeros_like(codes), codes)
    data = pack_fp4(codes.reshape(xm.shape).movedim(-1, dim), dim)
    scales = scale_code.to(torch.uint8).movedim(-1, dim).contiguous().view(torch.float8_e4m3fn)
    if outer == "block128":
        outer_scale = outer_scale.movedim(-1, dim).contiguous()
    return data, scales, outer_scale.to(torch.float32)


def dequantize_nvfp4(
    data: torch.Tensor, scales: torch.Tensor, outer_scale: torch.Tensor | None, axis: int
) -> torch.Tensor:
    """float32 decode(element) * decode(block_scale) * outer."""
    dim = axis % data.dim()
    vals = decode(unpack_fp4(data, dim), E2M1)
    block = decode(scales.view(torch.uint8).to(torch.int64), E4M3)
    if outer_scale is not None:
        if outer_scale.dim() == 0:
            block = block * outer_scale
        else:
            block = block * outer_scale.repeat_interleave(NVFP4_OUTER_BLOCK // NVFP4_BLOCK, dim=dim)
    return vals * block.repeat_interleave(NVFP4_BLOCK, dim=dim)
