"""Roofline model of SLA's kernels against dense FlashAttention: FLOPs, bytes and the roofline time
``max(FLOPs / peak, bytes / bandwidth)`` of every kernel, per (batch, head), for L = 4K..32K, head dim
64/128, attention sparsity 0/80/90/95/97 %, on an H100 SXM and an RTX 5090. A MODEL, not a
measurement: no GPU ran here (see the package README for what was run and what was only built).

Kernels counted (bf16 inputs/outputs, 2 bytes; fp32 statistics and linear-branch states, 4 bytes;
``N = kept blocks · blkk`` keys per query row, ``n`` kept blocks per query block, blkq = blkk = 64):

- sparse branch (``triton/block_sparse.py``): forward ``4·L·N·D`` FLOPs; backward preprocess
  ``2·L·D``; dK/dV ``8·L·N·D`` (4 matmuls, S and dP recomputed); dQ ``6·L·N·D`` (3 matmuls).
- linear branch with the complement trick (``triton/linear_complement.py``, its docstring's cost
  table, feature dim C = D): state ``2·L·C·D`` (run again in the backward); forward
  ``2·L·C·(D+1) + Mq·s·C·D``; dφq ``4·L·C·D + Mq·s·C·D``; G ``2·L·C·D``; dφk/dV
  ``4·L·C·D + Mk·s·C·D``, with ``s = min(n, M − n)`` state loads per block.
- feature map φ on Q and K (an element-wise PyTorch op: 4·L·D elements moved forward, 6·L·D
  backward) and ``proj_l`` (``Linear(D, D)``: ``2·L·D²`` forward, ``4·L·D²`` backward) plus the sum
  ``o_s + proj_l(o_l)``.
- dense baseline: FlashAttention, forward ``4·L²·D``, backward ``10·L²·D`` (the usual 2.5×), bytes
  Q, K, V, O once (+ dO, dQ, dK, dV backward).

Bytes: two models. "min" moves every tensor once (ideal L2 reuse: the bound a roofline plots); "tile"
re-reads K/V (forward, dQ) or Q/dO (dK/dV) once per tile of the other side and the linear states once
per block, as if L2 kept nothing (pessimistic, for dense attention too). The tables use "min"; the
CSV has both (columns ``... tile``).

Peaks (dense, no structured sparsity): H100 SXM5 989.4 TFLOPS BF16 tensor, 3.35 TB/s HBM3 (NVIDIA
H100 Tensor Core GPU datasheet); RTX 5090 419 TFLOPS FP16/BF16 tensor (NVIDIA's 838 TFLOPS figure
is with 2:4 sparsity) and 1792 GB/s GDDR7 (NVIDIA RTX 5090 specifications). Not modelled: the
exponential (MUFU) throughput, launch overheads, occupancy, the LUT build (a sort of the block map).

    python packages/sla/benchmarks/roofline.py [--blk 64] [--heads 1]
"""

from __future__ import annotations

import argparse
import csv
import pathlib
from dataclasses import dataclass

from sparse_linear_attention.reference import topk_count
from sparse_linear_attention.triton.block_sparse import launch_config

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

GPUS = {  # name: (dense bf16 tensor FLOP/s, DRAM bytes/s)
    "H100 SXM": (989.4e12, 3.35e12),
    "RTX 5090": (419.0e12, 1.792e12),
}
LENGTHS = (4096, 8192, 16384, 32768)
HEAD_DIMS = (64, 128)
SPARSITIES = (0.0, 0.80, 0.90, 0.95, 0.97)
BF16 = 2
FP32 = 4


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes_min: float
    bytes_tile: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.flops + other.flops, self.bytes_min + other.bytes_min, self.bytes_tile + other.bytes_tile
        )

    def time(self, gpu: str, tile: bool = False) -> float:
        peak, bw = GPUS[gpu]
        return max(self.flops / peak, (self.bytes_tile if tile else self.bytes_min) / bw)


def kept_blocks(sparsity: float, mk: int) -> int:
    """Kept key blocks per query block: ``reference.topk_count(topk, Mk)`` with ``topk = 1 − sparsity``
    (rounded to 9 digits, as a user would type it: 5 % of 64 blocks keeps 3)."""
    return topk_count(round(1.0 - sparsity, 9), mk)


def sparse_kernels(L: int, D: int, n: int, blk: int, tiles: dict[str, tuple[int, int]]) -> dict[str, Cost]:
    """FLOPs and bytes of the block-sparse kernels for one (batch, head). ``tiles``: (BLOCK_M,
    BLOCK_N) of each kernel on the GPU (``block_sparse.launch_config``)."""
    mq = L // blk
    N = n * blk  # keys per query row
    lut = mq * n * 4 + mq * 4
    qkv = L * D * BF16
    out = {}
    bm = tiles["fwd"][0]
    out["sparse fwd"] = Cost(
        4 * L * N * D,
        4 * qkv + L * FP32 + lut,
        2 * qkv + L * FP32 + lut + (L // bm) * N * D * BF16 * 2,
    )
    out["sparse bwd preprocess"] = Cost(2 * L * D, 2 * qkv + 3 * L * FP32, 2 * qkv + 3 * L * FP32)
    bn = tiles["dkdv"][1]
    # dK/dV: each key tile re-reads Q and dO of the rows that selected its block (N rows on average)
    out["sparse bwd dK/dV"] = Cost(
        8 * L * N * D,
        6 * qkv + 2 * L * FP32 + lut,
        4 * qkv + lut + (L // bn) * N * (2 * D * BF16 + 2 * FP32),
    )
    bm = tiles["dq"][0]
    out["sparse bwd dQ"] = Cost(
        6 * L * N * D,
        5 * qkv + 2 * L * FP32 + lut,
        3 * qkv + 2 * L * FP32 + lut + (L // bm) * N * D * BF16 * 2,
    )
    return out


def linear_kernels(L: int, D: int, n: int, blk: int) -> dict[str, Cost]:
    """The linear branch with the complement trick (feature dim C = D), feature maps and proj_l."""
    C = D
    mq = mk = L // blk
    s = min(n, mk - n)  # states walked per query (or key) block
    st = C * (D + 1) * FP32  # one block's state h_j, z_j
    out = {}
    out["linear state"] = Cost(2 * L * C * D, 2 * L * (C + D) + mk * st, 2 * L * (C + D) + mk * st)
    out["linear fwd"] = Cost(
        2 * L * C * (D + 1) + mq * s * C * D,
        2 * L * (C + D) + (mk + 1) * st,
        2 * L * (C + D) + mq * (s + 1) * st,
    )
    # backward: the state kernel runs again (states are not kept), then dφq, G_m, dφk/dV
    out["linear bwd state"] = out["linear state"]
    out["linear bwd dφq"] = Cost(
        4 * L * C * D + mq * s * C * D,
        2 * L * (2 * C + D) + 2 * L * FP32 + (mk + 1) * st,
        2 * L * (2 * C + D) + 2 * L * FP32 + mq * (s + 1) * st,
    )
    out["linear bwd G"] = Cost(
        2 * L * C * D,
        2 * L * (C + D) + 2 * L * FP32 + mq * st,
        2 * L * (C + D) + 2 * L * FP32 + mq * st,
    )
    out["linear bwd dφk/dV"] = Cost(
        4 * L * C * D + mk * s * C * D,
        2 * L * (2 * C + 2 * D) + (mq + 1) * st,
        2 * L * (2 * C + 2 * D) + mk * (s + 1) * st,
    )
    el = L * D * BF16
    out["feature maps fwd"] = Cost(10 * L * D, 4 * el, 4 * el)
    out["feature maps bwd"] = Cost(10 * L * D, 6 * el, 6 * el)
    out["proj_l + sum fwd"] = Cost(2 * L * D * D + L * D, 5 * el + D * D * FP32, 5 * el + D * D * FP32)
    out["proj_l bwd"] = Cost(4 * L * D * D, 4 * el + 2 * D * D * FP32, 4 * el + 2 * D * D * FP32)
    return out


def dense(L: int, D: int) -> dict[str, Cost]:
    """Dense FlashAttention; its "tile" bytes re-read K/V per 128-row Q tile (forward) and Q/dO, K/V
    per 128-row tile in the backward, like the sparse kernels' "tile" model."""
    qkv = L * D * BF16
    t = L // 128
    return {
        "dense fwd": Cost(4 * L * L * D, 4 * qkv + L * FP32, 2 * qkv + L * FP32 + t * L * D * BF16 * 2),
        "dense bwd": Cost(
            10 * L * L * D,
            8 * qkv + 2 * L * FP32,
            4 * qkv + t * L * (2 * D * BF16 + 2 * FP32) + 3 * qkv + t * L * D * BF16 * 2,
        ),
    }


_FWD = ("sparse fwd", "linear state", "linear fwd", "feature maps fwd", "proj_l + sum fwd")


def sla_totals(costs: dict[str, Cost]) -> tuple[Cost, Cost]:
    """(forward, backward) sums over the SLA kernels."""
    zero = Cost(0, 0, 0)
    fwd = sum((c for k, c in costs.items() if k in _FWD), zero)
    bwd = sum((c for k, c in costs.items() if k not in _FWD), zero)
    return fwd, bwd


def gpu_tiles(D: int, blk: int) -> dict[str, tuple[int, int]]:
    """The GPU launch tiles of the sparse kernels (``block_sparse.launch_config``)."""
    return {k: tuple(launch_config(k, blk, blk, D)[:2]) for k in ("fwd", "dq", "dkdv")}


def rows(blk: int = 64, heads: int = 1) -> list[dict]:
    out = []
    for D in HEAD_DIMS:
        for L in LENGTHS:
            mk = L // blk
            base = dense(L, D)
            for sp in SPARSITIES:
                n = kept_blocks(sp, mk)
                costs = {**sparse_kernels(L, D, n, blk, gpu_tiles(D, blk)), **linear_kernels(L, D, n, blk)}
                fwd, bwd = sla_totals(costs)
                row = dict(L=L, D=D, sparsity=sp, kept_blocks=n, key_blocks=mk, heads=heads)
                for name, c in {**costs, **base, "SLA fwd": fwd, "SLA bwd": bwd}.items():
                    row[f"{name} GFLOP"] = heads * c.flops / 1e9
                    row[f"{name} MB min"] = heads * c.bytes_min / 1e6
                    row[f"{name} MB tile"] = heads * c.bytes_tile / 1e6
                for gpu in GPUS:
                    for tile in (False, True):
                        tag = " tile" if tile else ""
                        tf, tb = fwd.time(gpu, tile), bwd.time(gpu, tile)
                        df, db = base["dense fwd"].time(gpu, tile), base["dense bwd"].time(gpu, tile)
                        sp_f = costs["sparse fwd"].time(gpu, tile)
                        row[f"{gpu} sparse fwd us{tag}"] = heads * sp_f * 1e6
                        row[f"{gpu} SLA fwd us{tag}"] = heads * tf * 1e6
                        row[f"{gpu} dense fwd us{tag}"] = heads * df * 1e6
                        row[f"{gpu} fwd speedup{tag}"] = df / tf
                        row[f"{gpu} sparse-only fwd speedup{tag}"] = df / sp_f
                        row[f"{gpu} fwd+bwd speedup{tag}"] = (df + db) / (tf + tb)
                        row[f"{gpu} SLA bwd us{tag}"] = heads * tb * 1e6
                out.append(row)
    return out


def kernel_table(L: int = 32768, D: int = 128, sparsity: float = 0.95, blk: int = 64) -> list[list[str]]:
    """Per-kernel FLOPs, bytes, intensity and roofline times at one point."""
    n = kept_blocks(sparsity, L // blk)
    costs = {
        **sparse_kernels(L, D, n, blk, gpu_tiles(D, blk)),
        **linear_kernels(L, D, n, blk),
        **dense(L, D),
    }
    out = []
    for name, c in costs.items():
        out.append(
            [
                name,
                f"{c.flops / 1e9:.2f}",
                f"{c.bytes_min / 1e6:.1f}",
                f"{c.bytes_tile / 1e6:.1f}",
                f"{c.flops / c.bytes_min:.0f}",
                f"{c.time('H100 SXM') * 1e6:.1f}",
                f"{c.time('RTX 5090') * 1e6:.1f}",
            ]
        )
    return out


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blk", type=int, default=64, choices=(64, 128), help="blkq = blkk")
    ap.add_argument("--heads", type=int, default=1, help="B·H: times and sizes are per this many heads")
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args(argv)
    if args.heads < 1:
        ap.error("--heads must be >= 1")
    data = rows(args.blk, args.heads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "roofline.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)

    print(f"Per-kernel cost at L=32768, D=128, 95% sparsity, blocks {args.blk}x{args.blk}, one head:\n")
    print(
        _markdown(
            ["kernel", "GFLOP", "MB (min)", "MB (tile)", "FLOP/B", "H100 µs", "RTX 5090 µs"],
            kernel_table(blk=args.blk),
        )
    )
    header = [
        "L",
        "D",
        "sparsity",
        "kept/total blocks",
        "SLA fwd GFLOP",
        "SLA fwd MB",
        "H100 fwd ×",
        "H100 fwd+bwd ×",
        "5090 fwd ×",
        "5090 fwd+bwd ×",
        "H100 sparse-only fwd ×",
    ]
    body = [
        [
            str(r["L"]),
            str(r["D"]),
            f"{r['sparsity']:.0%}",
            f"{r['kept_blocks']}/{r['key_blocks']}",
            f"{r['SLA fwd GFLOP']:.2f}",
            f"{r['SLA fwd MB min']:.1f}",
            f"{r['H100 SXM fwd speedup']:.2f}",
            f"{r['H100 SXM fwd+bwd speedup']:.2f}",
            f"{r['RTX 5090 fwd speedup']:.2f}",
            f"{r['RTX 5090 fwd+bwd speedup']:.2f}",
            f"{r['H100 SXM sparse-only fwd speedup']:.2f}",
        ]
        for r in data
    ]
    print(
        f"\nRoofline speedup of SLA (sparse + linear branch) over dense FlashAttention, blocks {args.blk}:\n"
    )
    print(_markdown(header, body))
    print("\nwrote results/roofline.csv")
    if not args.no_png:
        _plot(data, args.blk)


def _plot(data: list[dict], blk: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, D in zip(axes, HEAD_DIMS, strict=True):
        for L in LENGTHS:
            pts = [r for r in data if r["D"] == D and r["L"] == L]
            xs = [100 * r["sparsity"] for r in pts]
            for gpu, style in (("H100 SXM", "-o"), ("RTX 5090", "--s")):
                ax.plot(xs, [r[f"{gpu} fwd speedup"] for r in pts], style, label=f"{gpu}, L={L // 1024}K")
        ax.set_yscale("log")
        ax.set_xlabel("attention sparsity (%)")
        ax.set_title(f"SLA forward, roofline model, D={D}, blocks {blk}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("speedup over dense attention (model)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "roofline.png", dpi=120)
    print("wrote results/roofline.png")


if __name__ == "__main__":
    main()
