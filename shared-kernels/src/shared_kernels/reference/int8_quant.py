"""INT8 per-block quantization, SageAttention's Q/K quantizer (reference, plain PyTorch).

For ``x`` of shape ``[..., N, D]`` and blocks of ``block_size`` consecutive tokens (dim -2):

- optional per-channel mean over all N tokens, accumulated in float64 and rounded to float32:
  ``mean = float32(sum_n float64(x[..., n, :]) / N)``, shape ``[..., 1, D]``;
- ``y = (float32(x) - mean) * multiplier`` (without mean ``y = float32(x) * multiplier``);
- per block ``amax = max |y|``, ``scale = amax / 127``;
- ``q = clamp(trunc(y / scale + copysign(0.5, y)), -127, 127)`` (round half away from zero).

Edge cases: ``amax == 0`` gives scale 0 and q 0; a block holding inf/NaN (in ``y``) gives scale NaN
and q 0. Every step is a float32 op in this order, so the compiled kernels match bit for bit.
"""

from __future__ import annotations

import torch

__all__ = ["channel_mean", "quantize_int8_per_block"]


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over dim -2, accumulated in float64, rounded to float32: ``[..., 1, D]``."""
    return (x.double().sum(dim=-2, keepdim=True) / x.shape[-2]).float()


def quantize_int8_per_block(
    x: torch.Tensor,
    block_size: int = 128,
    *,
    subtract_mean: bool = False,
    multiplier: float = 1.0,
    mean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Reference quantizer: returns ``(q int8 [..., N, D], scale fp32 [..., ceil(N/block)], mean)``.

    ``mean`` (float32 ``[..., 1, D]``) replaces the computed mean (it implies ``subtract_mean``): the
    tests pass the kernel's own mean so q and scale can be compared bit for bit.
    """
    n, d = x.shape[-2], x.shape[-1]
    lead = x.shape[:-2]
    if mean is None and subtract_mean:
        mean = channel_mean(x)
    y = x.float()
    if mean is not None:
        y = y - mean.float()
    y = y * torch.tensor(multiplier, dtype=torch.float32, device=x.device)
    nb = -(-n // block_size)
    pad = nb * block_size - n
    yb = torch.nn.functional.pad(y, (0, 0, 0, pad)).reshape(*lead, nb, block_size, d)
    amax = yb.abs().amax(dim=(-2, -1))
    finite = torch.isfinite(amax)
    scale = torch.where(finite, amax / torch.full_like(amax, 127.0), torch.full_like(amax, float("nan")))
    s = scale[..., None, None]
    half = torch.copysign(torch.full_like(yb, 0.5), yb)
    v = torch.trunc(yb / s + half).clamp(-127.0, 127.0)
    v = torch.where(s > 0, v, torch.zeros_like(v))
    q = v.to(torch.int8).reshape(*lead, nb * block_size, d)[..., :n, :].contiguous()
    return q, scale, mean
