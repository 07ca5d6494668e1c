"""FP8 quantization with per-channel / per-block / per-tensor float32 scales (plain PyTorch).

x [..., N, D]; the scale of a group is amax(|x|) / scale_max over the group:
per_channel (SageAttention's V): one scale per channel d over the N tokens, shape [..., D];
per_block: one scale per block of ``block_size`` tokens along dim -2 (all D channels), shape
[..., ceil(N / block_size)]; per_tensor: one scale, shape []. q = encode_rne_sat(float32(x) / scale)
(minifloat rules of ``reference/microscaling.py``); a zero scale gives q = +0.
Non-finite inputs: amax propagates NaN, so a NaN makes its group's scale NaN and every q of the
group NaN (0x7F); an inf makes the scale inf, the group's finite values +-0 and the infs NaN.
"""

from __future__ import annotations

import torch

from .microscaling import E4M3, E5M2, decode, encode

FP8 = {"e4m3": (E4M3, torch.float8_e4m3fn), "e5m2": (E5M2, torch.float8_e5m2)}


def group_amax(xf: torch.Tensor, granularity: str, block_size: int) -> torch.Tensor:
    a = xf.abs()
    if a.numel() == 0:  # empty groups have amax 0
        shape = {"per_channel": (*a.shape[:-2], a.shape[-1]), "per_tensor": ()}
        return a.new_zeros(shape.get(granularity, (*a.shape[:-2], -(-a.shape[-2] // block_size))))
    if granularity == "per_channel":
        return a.amax(dim=-2)
    if granularity == "per_tensor":
        return a.amax()
    n = a.shape[-2]
    nblk = -(-n // block_size)
    pad = nblk * block_size - n
    padded = torch.nn.functional.pad(a, (0, 0, 0, pad))  # zeros do not change an amax of |x|
    return padded.reshape(*a.shape[:-2], nblk, block_size * a.shape[-1]).amax(dim=-1)


def expand_scale(scale: torch.Tensor, shape: torch.Size, granularity: str, block_size: int) -> torch.Tensor:
    """The scale of every element of a tensor of ``shape``."""
    if granularity == "per_channel":
        return scale.unsqueeze(-2).expand(shape)
    if granularity == "per_tensor":
        return scale.expand(shape)
    return scale.repeat_interleave(block_size, dim=-1)[..., : shape[-2]].unsqueeze(-1).expand(shape)


def quantize_fp8(
    x: torch.Tensor,
    fmt: str = "e4m3",
    granularity: str = "per_channel",
    block_size: int = 128,
    scale_max: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    elem, dtype = FP8[fmt]
    smax = torch.tensor(elem.max_value if scale_max is None else scale_max, dtype=torch.float32)
    xf = x.to(torch.float32)
    scale = group_amax(xf, granularity, block_size) / smax.to(x.device)
    scale = torch.where(torch.isnan(scale), float("nan"), scale)  # canonical NaN bits on every device
    s = expand_scale(scale, xf.shape, granularity, block_size)
    codes = encode(xf / s, elem)
    codes = torch.where(s == 0, torch.zeros_like(codes), codes)
    return codes.to(torch.uint8).view(dtype), scale


def dequantize_fp8(
    q: torch.Tensor,
    scale: torch.Tensor,
    granularity: str,
    block_size: int = 128,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """float32(q) * scale (broadcast per group), cast to ``out_dtype``."""
    elem = E4M3 if q.dtype == torch.float8_e4m3fn else E5M2
    vals = decode(q.view(torch.uint8).to(torch.int64), elem)
    return (vals * expand_scale(scale.to(torch.float32), q.shape, granularity, block_size)).to(out_dtype)
