"""Input checks shared by the loss functions (shapes, dtypes, devices, value ranges)."""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_choice",
    "check_finite_number",
    "check_float_tensor",
    "check_mask",
    "check_row_tensor",
    "check_same_device",
    "compute_dtype",
]


def check_float_tensor(name: str, x: object, *, ndim: int) -> torch.Tensor:
    """``x`` is a floating-point tensor with ``ndim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_mask(name: str, mask: object, shape: torch.Size) -> torch.Tensor:
    """``mask`` is a bool/integer/float tensor of ``shape`` holding only 0 and 1."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be bool, integer or floating point, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (same as the log-probs), got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool and mask.numel() > 0 and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1 (1 = completion token, 0 = padding)")
    return mask


def check_row_tensor(
    name: str, x: object, batch: int | None, *, low: float | None = None, high: float | None = None
) -> torch.Tensor:
    """``x`` is a real tensor of shape ``(batch,)`` (any length if None) with finite values in ``[low, high]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_complex:
        raise TypeError(f"{name} must be bool, integer or floating point, got {x.dtype}")
    if batch is None and x.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one value per completion), got shape {tuple(x.shape)}")
    if batch is not None and x.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) (one value per completion), got {tuple(x.shape)}"
        )
    if x.numel() == 0:
        return x
    xf = x.to(torch.float64) if x.dtype == torch.bool else x
    if x.is_floating_point() and not bool(torch.isfinite(xf).all()):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    if low is not None and bool((xf < low).any()):
        raise ValueError(f"{name} must be >= {low}, got min {float(xf.min())}")
    if high is not None and bool((xf > high).any()):
        raise ValueError(f"{name} must be <= {high}, got max {float(xf.max())}")
    return x


def check_same_device(**tensors: torch.Tensor) -> None:
    """All tensors live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on the same device, got {listing}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_finite_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` is a finite real number inside the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Float dtype of the computation: the promoted input dtype, at least float32 (half inputs are upcast)."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype
