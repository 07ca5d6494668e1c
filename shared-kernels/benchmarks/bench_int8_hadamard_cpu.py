"""CPU throughput of the compiled INT8 per-block quantizer and Walsh-Hadamard transform against the
PyTorch reference backend, measured side by side on the same inputs (best of 5 after a warm-up).

GB/s counts the bytes an ideal kernel moves: input read once plus outputs written once. The
"torch" and "cpu" columns call the public API (output allocation included: fresh multi-MB
allocations can cost first-touch page faults); the "kernel" columns call the compiled kernel on
preallocated outputs, AVX-512 and scalar paths.

    python shared-kernels/benchmarks/bench_int8_hadamard_cpu.py [--csv out.csv] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import platform

import shared_kernels as sk
import torch
from shared_kernels import _lib
from shared_kernels.benchmarking import best_of


def _int8_kernel(x, mean: bool):
    b, n, d = x.shape
    q = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.empty(b, n // 128)
    mu = torch.empty(b, 1, d)
    native = _lib.native()

    def run(force_scalar: bool):
        native.quantize_int8_per_block_cpu(
            x.data_ptr(), q.data_ptr(), scale.data_ptr(), mu.data_ptr() if mean else 0,
            b, n, d, 128, 0, 1.0, force_scalar,
        )  # fmt: skip

    return run


def _hadamard_kernel(h):
    y = torch.empty_like(h)
    code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[h.dtype]
    native = _lib.native()

    def run(force_scalar: bool):
        native.hadamard_transform_cpu(
            h.data_ptr(), y.data_ptr(), 0, h.numel() // 128, 128, code, True, force_scalar
        )

    return run


def cases(quick: bool):
    b, n, d = (2, 1024, 128) if quick else (8, 4096, 128)
    x = torch.randn(b, n, d)
    q_bytes = x.numel() * 4 + x.numel() + b * (n // 128) * 4
    for mean in (False, True):
        yield (
            f"int8 per-block [{b},{n},{d}] fp32 bs=128 mean={mean}",
            q_bytes + (b * d * 4 if mean else 0),
            lambda be, x=x, mean=mean: sk.quantize_int8_per_block(x, 128, subtract_mean=mean, backend=be),
            _int8_kernel(x, mean),
        )
    rows = 1024 if quick else 4096
    for dtype in (torch.float32, torch.bfloat16):
        h = torch.randn(rows, 4096).to(dtype)
        yield (
            f"hadamard [{rows},4096] {str(dtype).replace('torch.', '')} bs=128",
            2 * h.numel() * h.element_size(),
            lambda be, h=h: sk.hadamard_transform(h, 128, backend=be),
            _hadamard_kernel(h),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", help="write the table as CSV to this path")
    ap.add_argument("--quick", action="store_true", help="smaller inputs (smoke run)")
    args = ap.parse_args()

    feats = _lib.native().cpu_features()
    isa = "avx512" if feats["avx512_enabled"] else "scalar"
    print(
        f"Measured on CPU: {platform.processor() or platform.machine()}, "
        f"{_lib.native().num_threads()} OpenMP threads (torch: {torch.get_num_threads()} threads), "
        f"compiled path: {isa}. No GPU timing here."
    )
    header = [
        "case", "torch_ms", "cpu_ms", "torch_GBps", "cpu_GBps", "speedup",
        "kernel_avx512_ms", "kernel_avx512_GBps", "kernel_scalar_ms", "kernel_scalar_GBps",
    ]  # fmt: skip
    rows = []
    for name, nbytes, api, kernel in cases(args.quick):
        t_ref = best_of(lambda api=api: api("torch"))
        t_cpu = best_of(lambda api=api: api("cpu"))
        t_vec = best_of(lambda kernel=kernel: kernel(False))
        t_sca = best_of(lambda kernel=kernel: kernel(True))
        gbps = [nbytes / t / 1e9 for t in (t_ref, t_cpu, t_vec, t_sca)]
        rows.append([name, t_ref * 1e3, t_cpu * 1e3, gbps[0], gbps[1], t_ref / t_cpu])
        rows[-1] += [t_vec * 1e3, gbps[2], t_sca * 1e3, gbps[3]]
    w = max(len(r[0]) for r in rows)
    print(
        f"{'case':<{w}}  {'torch ms':>9}  {'cpu ms':>8}  {'torch GB/s':>10}  {'cpu GB/s':>9}  {'speed-up':>8}"
        f"  {'kernel avx512 ms (GB/s)':>23}  {'kernel scalar ms (GB/s)':>23}"
    )
    for r in rows:
        print(
            f"{r[0]:<{w}}  {r[1]:9.2f}  {r[2]:8.2f}  {r[3]:10.2f}  {r[4]:9.2f}  {r[5]:7.1f}x"
            f"  {r[6]:14.2f} ({r[7]:5.1f})  {r[8]:14.2f} ({r[9]:5.1f})"
        )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(header)
            wr.writerows([[r[0], *(f"{v:.4f}" for v in r[1:])] for r in rows])
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
