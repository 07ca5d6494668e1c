"""``python -m sageattention.demo``: sageattn vs SDPA on a 2x8x1024x128 CPU input (accuracy, time)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import sageattn
from .reference import attention_exact


def _best_of(fn, reps: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _metrics(o: torch.Tensor, e: torch.Tensor) -> tuple[float, float]:
    o, e = o.double().flatten(), e.double().flatten()
    return float(F.cosine_similarity(o, e, dim=0)), float((o - e).abs().sum() / e.abs().sum())


def main() -> None:
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 2, 8, 1024, 128
    print(
        f"sageattn (SageAttention2 maths, INT8 per-block QK, fp16 PV) vs SDPA, CPU, [B,H,N,D]={[b, h, n, d]}"
    )
    print(f"{'dtype':9} {'fn':18} {'cosine':>9} {'rel L1':>8} {'time ms':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(b, h, n, d, generator=g).to(dtype)
        k = (torch.randn(b, h, n, d, generator=g) + 2 * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
        v = torch.randn(b, h, n, d, generator=g).to(dtype)
        exact, _ = attention_exact(q, k, v)
        for name, fn in (
            ("sdpa", lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)),
            ("sageattn[cpu]", lambda q=q, k=k, v=v: sageattn(q, k, v, backend="cpu")),
            ("sageattn[torch]", lambda q=q, k=k, v=v: sageattn(q, k, v, backend="torch")),
        ):
            cos, rel = _metrics(fn(), exact)
            print(f"{str(dtype)[6:]:9} {name:18} {cos:9.6f} {rel:8.5f} {1e3 * _best_of(fn):9.1f}")
    print(f"torch threads: {torch.get_num_threads()}; best of 3; exact = float64 attention")


if __name__ == "__main__":
    main()
