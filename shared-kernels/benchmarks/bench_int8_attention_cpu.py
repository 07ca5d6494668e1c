"""CPU throughput of the compiled fused INT8 attention kernel (AVX-512 VNNI and scalar paths) against
its PyTorch reference backend and against ``torch.nn.functional.scaled_dot_product_attention`` on
float32 operands of the same shape (the peer a CPU user would pick), on the same inputs.

GOPS counts ``4·B·H·Nq·Nk·D`` (Q·Kᵀ and P·V, a multiply-add as 2 ops). GB/s counts the bytes the
kernel must move once: int8 Q and K, fp16 V, float32 O and lse. The "kernel" rows call the compiled
entry point through ``ops.int8_attention._run_native`` (output allocation included); "torch
(reference)" is the step-by-step reference (a Python loop over keys: slow by design, best of 1);
"SDPA fp32" is the float32 attention on the unquantized inputs.

    python shared-kernels/benchmarks/bench_int8_attention_cpu.py [--csv out.csv] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import importlib
import platform

import shared_kernels as sk
import torch
import torch.nn.functional as F
from shared_kernels import _lib
from shared_kernels.benchmarking import best_of

ops_mod = importlib.import_module("shared_kernels.ops.int8_attention")
LOG2E = 1.4426950408889634


def run_case(b: int, h: int, n: int, d: int, with_reference: bool):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    q8, qs, _ = sk.quantize_int8_per_block(q, 128, multiplier=d**-0.5 * LOG2E)
    k8, ks, _ = sk.quantize_int8_per_block(k, 64, subtract_mean=True)
    v16 = v.half()
    native = _lib.native()

    def kernel(force_scalar: bool):
        return ops_mod._run_native(q8, k8, qs, ks, v16, None, None, 128, False, force_scalar=force_scalar)

    rows = [
        (
            "kernel vnni" if native.int8_attention_cpu_vnni() else "kernel (no VNNI here)",
            lambda: kernel(False),
            5,
        ),
        ("kernel scalar", lambda: kernel(True), 1),
        ("SDPA fp32", lambda: F.scaled_dot_product_attention(q, k, v), 5),
    ]
    if with_reference:
        rows.append(("torch (reference)", lambda: sk.int8_attention(q8, k8, qs, ks, v16, backend="torch"), 1))
    times = {name: best_of(fn, repeats=r) for name, fn, r in rows}
    ops = 4.0 * b * h * n * n * d
    nbytes = b * h * n * (d + d + 2 * d + 4 * d + 4)
    return ops, nbytes, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    ap.add_argument("--quick", action="store_true", help="one small shape")
    args = ap.parse_args()
    shapes = [(1, 2, 512, 64)] if args.quick else [(1, 2, 2048, 128), (1, 2, 2048, 64)]
    print(
        f"# {platform.machine()}, torch threads {torch.get_num_threads()}; best of 5 (scalar, reference: 1)"
    )
    table = []
    for b, h, n, d in shapes:
        ops, nbytes, times = run_case(b, h, n, d, with_reference=True)
        base = times["torch (reference)"]
        sdpa = times["SDPA fp32"]
        print(f"\nB={b} H={h} N={n} D={d}")
        print(f"{'backend':<24}{'ms':>10}{'GOPS':>9}{'GB/s':>8}{'vs ref':>9}{'vs SDPA':>9}")
        for name, t in times.items():
            row = {
                "shape": f"{b}x{h}x{n}x{d}",
                "backend": name,
                "ms": t * 1e3,
                "gops": ops / t / 1e9,
                "gb_per_s": nbytes / t / 1e9,
                "speedup_vs_reference": base / t,
                "speedup_vs_sdpa_fp32": sdpa / t,
            }
            table.append(row)
            print(
                f"{name:<24}{row['ms']:>10.1f}{row['gops']:>9.1f}{row['gb_per_s']:>8.3f}"
                f"{row['speedup_vs_reference']:>9.1f}{row['speedup_vs_sdpa_fp32']:>9.2f}"
            )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)


if __name__ == "__main__":
    main()
