"""CPU speed of ``sageattn`` (backend "cpu": shared-kernels INT8 quantizer + fused INT8 attention
kernel, AVX-512 VNNI where present) against ``torch.nn.functional.scaled_dot_product_attention`` on
the same CPU, in one run: float32 and bfloat16 inputs, N = 1K..8K (Nq = Nk), head dim 64 and 128,
B = 1, H = 2 (non-causal). Times are best of 3 after a warm-up call, the two functions alternating
(wall clock of the whole public call: quantization, V scaling and output cast included);
"cpu-time" is the ratio of the best process CPU times (all threads), less sensitive to other jobs
on a shared machine. Accuracy: cosine similarity and relative L1 of each output against exact
float64 attention on the same (dtype-rounded) inputs.

Inputs are Gaussian q, v and k with a per-channel bias (what ``smooth_k`` removes).

    python packages/sage-attention/benchmarks/bench_cpu_speed.py [--quick] [--threads T] [--out DIR]

Writes ``cpu_speed_t<threads>.csv`` and ``.png`` under ``--out`` (default: ``benchmarks/results``
next to this file) and prints the table. Goal (issue 3): sageattn >= 1.5x faster than SDPA at 4K and
beyond with cosine >= 0.999.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sageattention import sageattn


def best_of_interleaved(fns, repeats: int = 3) -> tuple[list[float], list[float]]:
    """Best wall time and best process CPU time (all threads) of each function; the functions
    alternate within each repeat, so that both see the same background load of a shared machine."""
    for fn in fns:
        fn()  # warm-up
    wall, cpu = [math.inf] * len(fns), [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[i] = min(wall[i], time.perf_counter() - t0)
            cpu[i] = min(cpu[i], time.process_time() - c0)
    return wall, cpu


def exact(q, k, v, chunk: int = 1024) -> torch.Tensor:
    """float64 softmax(q·kᵀ/√d)·v in query chunks (the full S of 8K x 8K would need 1 GB per head)."""
    k, v = k.double(), v.double()
    scale = q.shape[-1] ** -0.5
    out = []
    for i in range(0, q.shape[-2], chunk):
        s = torch.matmul(q[..., i : i + chunk, :].double(), k.transpose(-1, -2)) * scale
        out.append(torch.matmul(torch.softmax(s, dim=-1), v))
    return torch.cat(out, dim=-2)


def metrics(o: torch.Tensor, e: torch.Tensor) -> tuple[float, float]:
    o, e = o.double().flatten(), e.flatten()
    return float(F.cosine_similarity(o, e, dim=0)), float((o - e).abs().sum() / e.abs().sum())


def run(ns, ds, dtypes, heads: int) -> list[dict]:
    rows = []
    for d in ds:
        for n in ns:
            g = torch.Generator().manual_seed(n + d)
            q = torch.randn(1, heads, n, d, generator=g)
            k = torch.randn(1, heads, n, d, generator=g) + 2.0 * torch.randn(1, 1, 1, d, generator=g)
            v = torch.randn(1, heads, n, d, generator=g)
            for dtype in dtypes:
                qd, kd, vd = (x.to(dtype) for x in (q, k, v))
                e = exact(qd, kd, vd)
                (t_sdpa, t_sage), (c_sdpa, c_sage) = best_of_interleaved(
                    [lambda: F.scaled_dot_product_attention(qd, kd, vd), lambda: sageattn(qd, kd, vd)]  # noqa: B023
                )
                cos_s, rel_s = metrics(F.scaled_dot_product_attention(qd, kd, vd), e)
                cos_a, rel_a = metrics(sageattn(qd, kd, vd), e)
                flops = 4.0 * heads * n * n * d
                row = {
                    "dtype": str(dtype).replace("torch.", ""),
                    "N": n,
                    "D": d,
                    "sdpa_ms": t_sdpa * 1e3,
                    "sageattn_ms": t_sage * 1e3,
                    "speedup": t_sdpa / t_sage,
                    "sdpa_cpu_ms": c_sdpa * 1e3,
                    "sageattn_cpu_ms": c_sage * 1e3,
                    "cpu_time_speedup": c_sdpa / c_sage,
                    "sdpa_gflops": flops / t_sdpa / 1e9,
                    "sageattn_gops": flops / t_sage / 1e9,
                    "sdpa_cosine": cos_s,
                    "sageattn_cosine": cos_a,
                    "sdpa_rel_l1": rel_s,
                    "sageattn_rel_l1": rel_a,
                }
                rows.append(row)
                print(
                    f"{row['dtype']:>9} {n:>6} {d:>4} {row['sdpa_ms']:>9.1f} {row['sageattn_ms']:>9.1f} "
                    f"{row['speedup']:>7.2f}x {row['cpu_time_speedup']:>7.2f}x {cos_s:>9.6f} {cos_a:>9.6f} {rel_a:>8.4f}",
                    flush=True,
                )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for dtype in sorted({r["dtype"] for r in rows}):
        for d in sorted({r["D"] for r in rows}):
            sel = [r for r in rows if r["dtype"] == dtype and r["D"] == d]
            ax.plot([r["N"] for r in sel], [r["speedup"] for r in sel], marker="o", label=f"{dtype}, D={d}")
    ax.axhline(1.5, color="gray", ls="--", lw=1, label="goal 1.5x")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length N (B=1, Nq = Nk)")
    ax.set_ylabel("SDPA time / sageattn time")
    ax.set_title(f"sageattn (INT8, CPU) vs SDPA on {torch.get_num_threads()} CPU threads")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 1K and 2K, D = 64 only")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # also the OpenMP team of the shared-kernels kernels
    ns = (1024, 2048) if args.quick else (1024, 2048, 4096, 8192)
    ds = (64,) if args.quick else (64, 128)
    from shared_kernels import _lib

    vnni = _lib.native().int8_attention_cpu_vnni()
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, VNNI kernel path: {vnni}"
    )
    print(f"# B=1, H={args.heads}, non-causal, best of 3; cosine/rel L1 vs float64 attention")
    print(f"{'dtype':>9} {'N':>6} {'D':>4} {'SDPA ms':>9} {'sage ms':>9} {'speedup':>8} {'cpu-time':>8} {'cos SDPA':>9} "
          f"{'cos sage':>9} {'relL1':>8}")  # fmt: skip
    rows = run(ns, ds, (torch.float32, torch.bfloat16), args.heads)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cpu_speed_t{torch.get_num_threads()}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, stem.with_suffix(".png"))
    print(f"# wrote {stem}.csv and {stem}.png")


if __name__ == "__main__":
    main()
