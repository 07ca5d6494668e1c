"""Output allocation. With ``SHARED_KERNELS_POISON=1`` (set by the test suites) every output is
filled with a poison value before a kernel writes it, so elements a kernel forgets to write show up
as NaN (floats) or an impossible bit pattern (integers) instead of stale zeros."""

from __future__ import annotations

import os

import torch


def poison_enabled() -> bool:
    return os.environ.get("SHARED_KERNELS_POISON", "0") == "1"


def new_empty(shape, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if poison_enabled() and out.numel() > 0:
        if dtype.is_floating_point and dtype.itemsize >= 2:
            out.fill_(float("nan"))
        else:  # integers, uint8-packed FP4/E8M0, fp8: all bits set
            out.view(torch.uint8).fill_(0xFF) if dtype.itemsize == 1 else out.fill_(-1)
    return out
