"""``python -m shared_kernels.demo``: what this build holds, and each first op run on the CPU against
its PyTorch reference (bit-exactness and speed, measured now on this machine)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import shared_kernels as sk
from shared_kernels.benchmarking import best_of
from shared_kernels.reference import int8_quant as ref_int8


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def print_capabilities() -> None:
    caps = sk.capabilities()
    cpu, cuda, tri = caps["cpu"], caps["cuda"], caps["triton"]
    print(f"shared-kernels {caps['version']}  (torch {caps['torch']})")
    if caps["native_import_error"]:
        print(f"  compiled module: MISSING ({caps['native_import_error']})")
    else:
        feats = [k for k in ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni") if cpu.get(k)]
        print(
            f"  CPU   : {cpu['machine']}, ISA paths {cpu['isa_paths']}, detected {feats}, "
            f"OpenMP {cpu['openmp']} ({cpu['threads']} threads)"
        )
    if cuda["compiled"]:
        print(
            f"  CUDA  : compiled for sm {', '.join(cuda['archs'])} with nvcc {cuda['cuda_version']}, "
            f"CUTLASS {cuda['cutlass_version']}; GPU present: {cuda['runtime_available']}"
        )
    else:
        print("  CUDA  : not compiled in this build")
    print(f"  Triton: {tri.get('version', 'missing')} (interpreter: {tri['interpreter']})")
    print("  ops and backends (usable here = *):")
    for name, info in caps["ops"].items():
        marks = ", ".join(b + ("*" if v["usable"] else "") for b, v in info["backends"].items())
        print(f"    {name:28s} {marks}")


def _case(
    name: str,
    run_cpu: Callable[[], object],
    run_ref: Callable[[], object],
    same: Callable[[object, object], bool],
    work: int,
    unit: str = "GB/s",
) -> tuple[str, bool, float, str, float]:
    """(name, bit-exact, throughput of the CPU kernel in ``unit`` (``work`` bytes or ops per call),
    unit, speed-up over the reference)."""
    out_cpu, out_ref = run_cpu(), run_ref()
    t_cpu, t_ref = best_of(run_cpu), best_of(run_ref)
    return name, same(out_cpu, out_ref), work / t_cpu / 1e9, unit, t_ref / t_cpu


def run_ops_on_cpu() -> list[tuple[str, bool, float, str, float]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 1000, 128, generator=g)
    x[0, 0, 3, 5] = 80.0  # an outlier
    rows = []
    if hasattr(sk, "quantize_int8_per_block"):

        def cpu_q():
            return sk.quantize_int8_per_block(x, 128, subtract_mean=True, backend="cpu")

        def ref_q(mean=None):
            return ref_int8.quantize_int8_per_block(x, 128, subtract_mean=True)

        def same_q(a, b):
            # the float64 mean is summed in a different order: compare q/scale given the kernel's mean
            qr, sr, _ = ref_int8.quantize_int8_per_block(x, 128, subtract_mean=True, mean=a[2])
            return (
                _bits_equal(a[0], qr)
                and _bits_equal(a[1], sr)
                and torch.allclose(a[2], b[2], rtol=1e-6, atol=1e-7)
            )

        rows.append(_case("int8 per-block (+mean)", cpu_q, ref_q, same_q, x.numel() * 5))
    if hasattr(sk, "hadamard_transform"):
        h = x.reshape(-1, 128)
        rows.append(
            _case(
                "hadamard 128",
                lambda: sk.hadamard_transform(h, 128, backend="cpu"),
                lambda: sk.hadamard_transform(h, 128, backend="torch"),
                _bits_equal,
                h.numel() * 8,
            )
        )
    if hasattr(sk, "quantize_fp8"):
        rows.append(
            _case(
                "fp8 e4m3 per-channel",
                lambda: sk.quantize_fp8(x, "e4m3", "per_channel", backend="cpu"),
                lambda: sk.quantize_fp8(x, "e4m3", "per_channel", backend="torch"),
                lambda a, b: all(_bits_equal(u, v) for u, v in zip(a, b, strict=True)),
                x.numel() * 5,
            )
        )
    if hasattr(sk, "quantize_mx"):
        m = x.reshape(-1, 128)
        rows.append(
            _case(
                "mxfp4 1x32 (RNE)",
                lambda: sk.quantize_mx(m, "mxfp4", backend="cpu"),
                lambda: sk.quantize_mx(m, "mxfp4", backend="torch"),
                lambda a, b: _bits_equal(a.data, b.data) and _bits_equal(a.scales, b.scales),
                m.numel() * 4 + m.numel() // 2,
            )
        )
    if hasattr(sk, "quantize_nvfp4"):
        m = x.reshape(-1, 128)
        rows.append(
            _case(
                "nvfp4 1x16 (RNE)",
                lambda: sk.quantize_nvfp4(m, backend="cpu"),
                lambda: sk.quantize_nvfp4(m, backend="torch"),
                lambda a, b: _bits_equal(a.data, b.data) and _bits_equal(a.scales, b.scales),
                m.numel() * 4 + m.numel() // 2,
            )
        )
    if hasattr(sk, "int8_gemm"):
        qa, sa, _ = sk.quantize_int8_per_block(x, 128, backend="cpu")
        kb, sb, _ = sk.quantize_int8_per_block(x.flip(2), 64, subtract_mean=True, backend="cpu")
        qa, kb = qa.reshape(-1, *qa.shape[-2:]), kb.reshape(-1, *kb.shape[-2:])
        sa, sb = sa.reshape(qa.shape[0], -1), sb.reshape(kb.shape[0], -1)
        ops = 2 * qa.shape[0] * qa.shape[1] * kb.shape[1] * qa.shape[2]
        rows.append(
            _case(
                "int8 gemm Q.K^T (VNNI)",
                lambda: sk.int8_gemm(qa, kb, sa, sb, backend="cpu"),
                lambda: sk.int8_gemm(qa, kb, sa, sb, backend="torch"),
                _bits_equal,
                ops,
                "GOPS",
            )
        )
    return rows


def main() -> None:
    print_capabilities()
    print("\nCPU kernels vs the PyTorch reference on this machine (input 4x8x1000x128 fp32, best of 5):")
    print(f"  {'op':28s} {'bit-exact':>9s} {'CPU kernel':>16s} {'vs torch':>9s}")
    ok = True
    for name, same, rate, unit, ratio in run_ops_on_cpu():
        ok &= same
        print(f"  {name:28s} {'yes' if same else 'NO':>9s} {rate:11.2f} {unit:4s} {ratio:8.1f}x")
    if not ok:
        raise SystemExit("a CPU kernel disagrees with its reference")


if __name__ == "__main__":
    main()
