"""Timing helper shared by the demo and the benchmark scripts of every package."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time in seconds of ``repeats`` calls of ``fn`` after one warm-up call (CUDA work is
    synchronized before the clock stops)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best
