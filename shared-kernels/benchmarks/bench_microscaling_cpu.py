"""CPU throughput of the compiled microscaling / FP8 kernels against the PyTorch reference.

Same input, same run: best-of-N wall time, effective GB/s (bytes read + written) and the speed-up of
the compiled kernel over the reference, plus a bit-exactness check of the two outputs.

    python shared-kernels/benchmarks/bench_microscaling_cpu.py [--size 4096] [--reps 5]
"""

from __future__ import annotations

import argparse
import time

import shared_kernels as sk
import torch


def best_of(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def flat(out) -> list[torch.Tensor]:
    ts = [t for t in out if isinstance(t, torch.Tensor)]
    return [t.reshape(-1).view(torch.uint8) for t in ts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--ref-reps", type=int, default=None, help="repetitions of the reference (default: --reps)"
    )
    p.add_argument("--cases", default="", help="comma-separated substrings selecting cases (default: all)")
    args = p.parse_args()
    ref_reps = args.reps if args.ref_reps is None else args.ref_reps
    n = args.size
    x = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    numel = x.numel()
    cases = [
        ("mxfp4 1x32 RNE", lambda be: sk.quantize_mx(x, "mxfp4", backend=be), 4 + 0.5 + 1 / 32),
        ("mxfp8_e4m3 1x32 RNE", lambda be: sk.quantize_mx(x, "mxfp8_e4m3", backend=be), 4 + 1 + 1 / 32),
        (
            "mxfp4 1x32 SR",
            lambda be: sk.quantize_mx(x, "mxfp4", rounding="stochastic", seed=1, backend=be),
            4.53,
        ),
        ("mxfp4 32x1 RNE", lambda be: sk.quantize_mx(x, "mxfp4", axis=-2, backend=be), 4 + 0.5 + 1 / 32),
        ("nvfp4 tensor RNE", lambda be: sk.quantize_nvfp4(x, backend=be), 8 + 0.5 + 1 / 16),
        ("fp8 e4m3 per_channel", lambda be: sk.quantize_fp8(x, backend=be), 8 + 1),
    ]
    if args.cases:
        cases = [c for c in cases if any(k in c[0] for k in args.cases.split(","))]
    threads = sk._lib.native().num_threads()
    print(
        f"CPU, {threads} OpenMP threads, input {n}x{n} float32, best of {args.reps} (reference: {ref_reps})"
    )
    print(
        f"{'op':24s} {'cpu ms':>9s} {'cpu GB/s':>9s} {'torch ms':>9s} {'torch GB/s':>10s} {'speed-up':>8s} bit-exact"
    )
    for name, fn, bytes_per_elem in cases:
        t_cpu = best_of(lambda fn=fn: fn("cpu"), args.reps)
        t_ref = best_of(lambda fn=fn: fn("torch"), ref_reps)
        same = all(torch.equal(a, b) for a, b in zip(flat(fn("cpu")), flat(fn("torch")), strict=True))
        gb = numel * bytes_per_elem / 1e9
        print(
            f"{name:24s} {t_cpu * 1e3:9.1f} {gb / t_cpu:9.2f} {t_ref * 1e3:9.1f} {gb / t_ref:10.2f}"
            f" {t_ref / t_cpu:7.1f}x {same}"
        )


if __name__ == "__main__":
    main()
