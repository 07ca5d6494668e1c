"""CPU throughput of the compiled microscaling / FP8 kernels against the PyTorch reference.

Same input, same run: best-of-N wall time and effective GB/s (bytes read + written) of the compiled
kernel on its AVX-512 path ("cpu"), on its scalar path (force_scalar=True, the code before the
AVX-512 path existed) and of the reference ("torch"), the speed-ups, and a bit-exactness check of the
three outputs. ``--ref-reps 0`` skips the (slow) reference.

    python shared-kernels/benchmarks/bench_microscaling_cpu.py [--size 4096] [--reps 5] [--ref-reps 1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools

import shared_kernels as sk
import torch
from shared_kernels.benchmarking import best_of

_FORCEABLE = ("quantize_fp8_cpu", "quantize_mx_cpu", "quantize_nvfp4_cpu")


class _ForceScalar:
    """The compiled module, with force_scalar=True passed to the quantizer entry points."""

    def __init__(self, mod) -> None:
        self._mod = mod

    def __getattr__(self, name: str):
        fn = getattr(self._mod, name)
        return functools.partial(fn, force_scalar=True) if name in _FORCEABLE else fn


@contextlib.contextmanager
def scalar_path():
    """Run the ops' "cpu" backend on the scalar path of the compiled kernels."""
    native = sk._lib.native
    proxy = _ForceScalar(native())
    sk._lib.native = lambda: proxy
    try:
        yield
    finally:
        sk._lib.native = native


def run_scalar(fn):
    with scalar_path():
        return fn("cpu")


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
    xb = x.to(torch.bfloat16)
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
        ("mxfp8_e4m3 32x1 RNE", lambda be: sk.quantize_mx(x, "mxfp8_e4m3", axis=-2, backend=be), 5 + 1 / 32),
        ("mxfp4 1x32 RNE bf16", lambda be: sk.quantize_mx(xb, "mxfp4", backend=be), 2 + 0.5 + 1 / 32),
        ("nvfp4 block128 32x1", lambda be: sk.quantize_nvfp4(x, axis=-2, outer="block128", backend=be), 8.6),
        ("fp8 e4m3 per_channel", lambda be: sk.quantize_fp8(x, backend=be), 8 + 1),
        (
            "fp8 e5m2 per_block",
            lambda be: sk.quantize_fp8(x, "e5m2", granularity="per_block", block_size=64, backend=be),
            8 + 1,
        ),
        ("fp8 e4m3 per_tensor", lambda be: sk.quantize_fp8(x, granularity="per_tensor", backend=be), 8 + 1),
        (
            "fp8 e4m3 per_tensor bf16",
            lambda be: sk.quantize_fp8(xb, granularity="per_tensor", backend=be),
            4 + 1,
        ),
    ]
    if args.cases:
        cases = [c for c in cases if any(k in c[0] for k in args.cases.split(","))]
    threads = sk._lib.native().num_threads()
    print(
        f"CPU, {threads} OpenMP threads, input {n}x{n} float32, best of {args.reps} (reference: {ref_reps})"
    )
    print(
        f"{'op':25s} {'cpu ms':>7s} {'GB/s':>6s} {'scalar ms':>9s} {'GB/s':>6s} {'vs scalar':>9s}"
        f" {'torch ms':>9s} {'GB/s':>6s} {'vs torch':>8s} bit-exact"
    )
    for name, fn, bytes_per_elem in cases:
        gb = numel * bytes_per_elem / 1e9
        t_cpu = best_of(lambda fn=fn: fn("cpu"), args.reps)
        t_sc = best_of(lambda fn=fn: run_scalar(fn), args.reps)
        outs = [flat(fn("cpu")), flat(run_scalar(fn))]
        ref_cols = f"{'-':>9s} {'-':>6s} {'-':>8s}"
        if ref_reps > 0:
            t_ref = best_of(lambda fn=fn: fn("torch"), ref_reps)
            outs.append(flat(fn("torch")))
            ref_cols = f"{t_ref * 1e3:9.1f} {gb / t_ref:6.2f} {t_ref / t_cpu:7.1f}x"
        same = all(torch.equal(a, b) for other in outs[1:] for a, b in zip(outs[0], other, strict=True))
        print(
            f"{name:25s} {t_cpu * 1e3:7.1f} {gb / t_cpu:6.2f} {t_sc * 1e3:9.1f} {gb / t_sc:6.2f}"
            f" {t_sc / t_cpu:8.1f}x {ref_cols} {same}"
        )


if __name__ == "__main__":
    main()
