"""CPU throughput of the compiled INT8 GEMM with per-block scales (AVX-512 VNNI and scalar paths)
against the PyTorch reference backend and against ``torch.matmul`` of float32 operands of the same
shape (the peer a CPU user would pick), side by side on the same inputs (best of 5 after a warm-up).

GOPS counts ``2·B·M·N·K`` multiply-adds as 2 ops each. The "torch" and "cpu" rows call the public
API (output allocation included); the "kernel" rows call the compiled kernel on a preallocated
output; "fp32 matmul" is ``torch.matmul(q, k.transpose(-1, -2))`` on float32 tensors.

    python shared-kernels/benchmarks/bench_int8_gemm_cpu.py [--csv out.csv] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import platform

import shared_kernels as sk
import torch
from shared_kernels import _lib
from shared_kernels.benchmarking import best_of


def shapes(quick: bool):
    if quick:
        return [(2, 256, 256, 64)]
    return [(8, 1024, 1024, 128), (8, 1024, 1024, 64)]


def run_case(bsz: int, m: int, n: int, k: int):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(bsz, m, k, generator=g)
    kk = torch.randn(bsz, n, k, generator=g)
    qi, qs, _ = sk.quantize_int8_per_block(q, 128)
    ki, ks, _ = sk.quantize_int8_per_block(kk, 64)
    out = torch.empty(bsz, m, n)
    native = _lib.native()

    def kernel(force_scalar: bool):
        native.int8_gemm_cpu(
            qi.data_ptr(), ki.data_ptr(), qs.data_ptr(), ks.data_ptr(), out.data_ptr(),
            bsz, m, n, k, 128, 64, 0, force_scalar,
        )  # fmt: skip

    ops = 2.0 * bsz * m * n * k
    rows = [
        ("torch (reference)", lambda: sk.int8_gemm(qi, ki, qs, ks, backend="torch")),
        ("cpu (public API)", lambda: sk.int8_gemm(qi, ki, qs, ks, backend="cpu")),
        ("kernel vnni" if native.int8_gemm_cpu_vnni() else "kernel (no VNNI here)", lambda: kernel(False)),
        ("kernel scalar", lambda: kernel(True)),
        ("fp32 matmul", lambda: torch.matmul(q, kk.transpose(-1, -2))),
    ]
    times = {name: best_of(fn, repeats=5 if name != "kernel scalar" else 2) for name, fn in rows}
    return ops, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    ap.add_argument("--quick", action="store_true", help="one small shape")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print("# scalar kernel: best of 2 (it is slow); others best of 5")
    table = []
    for bsz, m, n, k in shapes(args.quick):
        ops, times = run_case(bsz, m, n, k)
        ref_t = times["torch (reference)"]
        peer_t = times["fp32 matmul"]
        print(f"\n[{bsz}, {m}, {k}] x [{bsz}, {n}, {k}]ᵀ")
        print(f"{'backend':<24}{'ms':>10}{'GOPS':>10}{'vs ref':>10}{'vs fp32':>10}")
        for name, t in times.items():
            row = {
                "shape": f"{bsz}x{m}x{n}x{k}",
                "backend": name,
                "ms": t * 1e3,
                "gops": ops / t / 1e9,
                "speedup_vs_reference": ref_t / t,
                "speedup_vs_fp32_matmul": peer_t / t,
            }
            table.append(row)
            print(
                f"{name:<24}{row['ms']:>10.2f}{row['gops']:>10.1f}"
                f"{row['speedup_vs_reference']:>10.2f}{row['speedup_vs_fp32_matmul']:>10.2f}"
            )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)


if __name__ == "__main__":
    main()
