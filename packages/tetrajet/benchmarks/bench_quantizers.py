"""CPU throughput of MXFP4 / NVFP4 quantize+pack: shared-kernels (C++ AVX-512 backend) vs torchao
(``to_mx`` and ``nvfp4_quantize``) vs the repo's plain PyTorch reference (``backend="torch"``).

Same input tensors, same process, same thread count for every implementation. Each case is timed
as the best of ``--repeats`` calls after one warm-up (the machine is shared; best-of is the least
noisy estimate); the slow plain-PyTorch reference gets one timed call after its warm-up. Throughput: elements/s and GB/s of input read (numel x itemsize / time; the
output adds 0.5 B/element of packed FP4 plus the scales). Rows compared are the same rule:

* MXFP4: OCP floor scale, round-to-nearest-even, 1x32 blocks, packed E2M1 + E8M0 scales
  (torchao ``to_mx(x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR)``; bit-exact with ours,
  see shared-kernels/tests/test_microscaling.py).
* NVFP4: per-tensor FP32 outer scale amax/(448*6), E4M3 scale per 1x16, RNE (torchao
  ``nvfp4_quantize(x, 16, per_tensor_amax_to_scale(amax))``; the amax pass is timed for both).
* Extra rows with no torchao counterpart: MXFP4 truncation-free + stochastic rounding (TetraJet's
  backward quantizer), NVFP4 with 128-block outer scales (TetraJet-v2).

Run: ``python packages/tetrajet/benchmarks/bench_quantizers.py [--size 4096] [--threads 1]``.
Writes results/quantizers.csv and results/quantizers.png.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = (
    "case",
    "dtype",
    "impl",
    "shape",
    "threads",
    "seconds",
    "gelem_per_s",
    "gb_per_s",
    "speedup_vs_torchao",
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="tensors are size x size (multiple of 128)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for every implementation")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per case (best is reported)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated input dtypes")
    p.add_argument("--skip-reference", action="store_true", help="skip the slow plain-PyTorch rows")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for quantizers.csv / .png")
    a = p.parse_args(argv)
    if a.size < 128 or a.size % 128:
        p.error(f"--size must be a positive multiple of 128, got {a.size}")
    if a.threads < 1 or a.repeats < 1:
        p.error("--threads and --repeats must be >= 1")
    return a


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def implementations(torch, sk) -> dict[str, dict[str, Callable]]:
    """{case: {impl: fn(x)}}; torchao rows are left out (with a note) if torchao does not import."""
    cases: dict[str, dict[str, Callable]] = {
        "mxfp4 floor rne": {
            "shared_kernels": lambda x: sk.quantize_mx(x, "mxfp4"),
            "pytorch_reference": lambda x: sk.quantize_mx(x, "mxfp4", backend="torch"),
        },
        "nvfp4 tensor rne": {
            "shared_kernels": lambda x: sk.quantize_nvfp4(x, outer="tensor"),
            "pytorch_reference": lambda x: sk.quantize_nvfp4(x, outer="tensor", backend="torch"),
        },
        "mxfp4 trunc-free SR": {
            "shared_kernels": lambda x: sk.quantize_mx(
                x, "mxfp4", scale_rule="truncation_free", rounding="stochastic", seed=1
            ),
            "pytorch_reference": lambda x: sk.quantize_mx(
                x, "mxfp4", scale_rule="truncation_free", rounding="stochastic", seed=1, backend="torch"
            ),
        },
        "nvfp4 block128 rne": {
            "shared_kernels": lambda x: sk.quantize_nvfp4(x, outer="block128"),
            "pytorch_reference": lambda x: sk.quantize_nvfp4(x, outer="block128", backend="torch"),
        },
    }
    try:
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale
    except Exception as exc:  # torchao missing or its API moved: report without it
        print(f"torchao rows skipped: {exc!r}", file=sys.stderr)
        return cases
    cases["mxfp4 floor rne"]["torchao"] = lambda x: to_mx(
        x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR
    )
    cases["nvfp4 tensor rne"]["torchao"] = lambda x: nvfp4_quantize(
        x, 16, per_tensor_amax_to_scale(x.float().abs().amax())
    )
    return cases


def run(args: argparse.Namespace) -> list[dict]:
    import shared_kernels as sk
    import torch

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(args.size, args.size, generator=g)
    cases = implementations(torch, sk)
    rows: list[dict] = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name.strip(), None)
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise SystemExit(f"--dtypes: {dtype_name!r} is not float32, bfloat16 or float16")
        x = base.to(dtype).contiguous()
        x_copy = x.clone()
        for case, impls in cases.items():
            times: dict[str, float] = {}
            for impl, fn in impls.items():
                if impl == "pytorch_reference" and args.skip_reference:
                    continue
                reps = 1 if impl == "pytorch_reference" else args.repeats  # the reference is slow
                times[impl] = best_of(lambda fn=fn, x=x: fn(x), reps)
            for impl, t in times.items():
                speedup = times["torchao"] / t if "torchao" in times else float("nan")
                rows.append(
                    {
                        "case": case,
                        "dtype": dtype_name.strip(),
                        "impl": impl,
                        "shape": f"{args.size}x{args.size}",
                        "threads": args.threads,
                        "seconds": t,
                        "gelem_per_s": x.numel() / t / 1e9,
                        "gb_per_s": x.numel() * x.element_size() / t / 1e9,
                        "speedup_vs_torchao": speedup,
                    }
                )
                print(
                    f"{case:22s} {dtype_name:9s} {impl:18s} {t * 1e3:9.2f} ms {rows[-1]['gelem_per_s']:7.3f} Gelem/s "
                    f"{rows[-1]['gb_per_s']:7.3f} GB/s  x{speedup:.2f} vs torchao",
                    flush=True,
                )
        if not torch.equal(x, x_copy):
            raise RuntimeError("an implementation modified its input")
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def print_table(rows: list[dict]) -> None:
    print("\n| case | dtype | implementation | ms | Gelem/s | GB/s (input) | vs torchao |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        sp = "" if r["speedup_vs_torchao"] != r["speedup_vs_torchao"] else f"{r['speedup_vs_torchao']:.2f}x"
        print(
            f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['seconds'] * 1e3:.2f} | "
            f"{r['gelem_per_s']:.3f} | {r['gb_per_s']:.3f} | {sp} |"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(f"{r['case']}\n{r['dtype']}" for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        vals = []
        for grp in groups:
            hit = [
                r["gelem_per_s"] for r in rows if f"{r['case']}\n{r['dtype']}" == grp and r["impl"] == impl
            ]
            vals.append(hit[0] if hit else 0.0)
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("Gelem/s (log)")
    r0 = rows[0]
    ax.set_title(f"FP4 quantize+pack on the CPU, {r0['shape']}, {r0['threads']} thread(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parse(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows = run(args)
    print_table(rows)
    write_csv(rows, args.out / "quantizers.csv")
    plot(rows, args.out / "quantizers.png")
    print(f"wrote {args.out / 'quantizers.csv'} and {args.out / 'quantizers.png'}")
    return rows


if __name__ == "__main__":
    main()
