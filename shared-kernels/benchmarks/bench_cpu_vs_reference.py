"""CPU throughput of every shared-kernels op against its PyTorch reference, measured side by side in
one run on this machine (the cases of ``python -m shared_kernels.demo``). Prints a table and writes
CSV and a PNG bar chart of the speed-ups.

    python shared-kernels/benchmarks/bench_cpu_vs_reference.py --out bench-out/
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
from pathlib import Path

import torch
from shared_kernels.demo import run_ops_on_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for CSV and PNG")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = run_ops_on_cpu()
    cpu = platform.processor() or platform.machine()
    when = datetime.date.today().isoformat()
    print(f"CPU only ({cpu}, {torch.get_num_threads()} threads, {when}); no GPU timings in this table.")
    print(f"{'op':30s} {'bit-exact':>9s} {'CPU kernel':>16s} {'vs torch':>9s}")
    for name, same, rate, unit, ratio in rows:
        print(f"{name:30s} {'yes' if same else 'NO':>9s} {rate:11.2f} {unit:4s} {ratio:8.1f}x")

    with open(args.out / "cpu_vs_reference.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["op", "bit_exact", "cpu_throughput", "unit", "speedup_vs_torch_reference", "threads", "date"]
        )
        for name, same, rate, unit, ratio in rows:
            w.writerow([name, same, f"{rate:.3f}", unit, f"{ratio:.2f}", torch.get_num_threads(), when])

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written")
        return
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    names = [r[0] for r in rows]
    ax.barh(names, [r[4] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="gray", lw=1)
    ax.set_xlabel("speed-up of the compiled CPU kernel over the PyTorch reference (x)")
    ax.set_title(f"shared-kernels on CPU ({torch.get_num_threads()} threads, {when})")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(args.out / "cpu_vs_reference.png", dpi=120)
    print(f"wrote {args.out / 'cpu_vs_reference.csv'} and {args.out / 'cpu_vs_reference.png'}")


if __name__ == "__main__":
    main()
