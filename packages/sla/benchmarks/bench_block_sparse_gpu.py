"""GPU timing of the fused block-sparse attention kernels against dense attention (PyTorch SDPA, which
picks FlashAttention on sm80+), side by side in one run: forward and forward+backward, bf16, B=1,
H=16, L = 4K..32K, D 64/128, sparsity 0/80/90/95/97 % (a random block map with exactly
``reference.topk_count(1 − sparsity, Mk)`` blocks per row), blocks 64×64. Times are medians of
``triton.testing.do_bench``; speedups are SDPA time / block-sparse time. Before timing, each shape is
checked once against SDPA with the full block map (max abs error printed).

Needs a CUDA GPU. On a CPU-only machine it says so and writes nothing (the roofline model,
``roofline.py``, is the CPU-side substitute). Writes ``results/gpu_block_sparse.csv`` and prints a table.

    python packages/sla/benchmarks/bench_block_sparse_gpu.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SPARSITIES = (0.0, 0.80, 0.90, 0.95, 0.97)


def _block_map(b, h, mq, mk, kept, device, gen):
    scores = torch.rand(b, h, mq, mk, generator=gen, device=device)
    idx = scores.topk(kept, dim=-1).indices
    return torch.zeros(b, h, mq, mk, dtype=torch.bool, device=device).scatter_(-1, idx, True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="L = 4K and 16K, D = 128 only")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing measured (see roofline.py for the model and results/kernel_report.md)")
        return 0
    import torch.nn.functional as F
    from sparse_linear_attention.reference import topk_count
    from sparse_linear_attention.triton.block_sparse import block_sparse_attention
    from tqdm import tqdm
    from triton.testing import do_bench

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    lengths = (4096, 16384) if args.quick else (4096, 8192, 16384, 32768)
    dims = (128,) if args.quick else (64, 128)
    b, h, blk = 1, 16, 64
    rows = []
    cases = [(L, D, s) for D in dims for L in lengths for s in SPARSITIES]
    for L, D, sp in tqdm(cases, desc="shapes"):
        q, k, v = (
            torch.randn(b, h, L, D, device=dev, dtype=torch.bfloat16, generator=gen, requires_grad=True)
            for _ in range(3)
        )
        do = torch.randn_like(q)
        mq = mk = L // blk
        kept = topk_count(round(1 - sp, 9), mk)
        bm = _block_map(b, h, mq, mk, kept, dev, gen)
        if sp == 0.0:
            o, _ = block_sparse_attention(q, k, v, bm, blkq=blk, blkk=blk)
            err = (o.float() - F.scaled_dot_product_attention(q, k, v).float()).abs().max().item()
        else:
            err = float("nan")

        def sparse_fwd(bm=bm, q=q, k=k, v=v):
            return block_sparse_attention(q, k, v, bm, blkq=blk, blkk=blk)[0]

        def dense_fwd(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q, k, v)

        def fwd_bwd(fn, q=q, k=k, v=v, do=do):
            torch.autograd.grad(fn(), (q, k, v), do)

        with torch.no_grad():
            t_sf = do_bench(sparse_fwd)
            t_df = do_bench(dense_fwd)
        t_sb = do_bench(lambda: fwd_bwd(sparse_fwd))
        t_db = do_bench(lambda: fwd_bwd(dense_fwd))
        rows.append(
            dict(
                gpu=torch.cuda.get_device_name(dev),
                L=L,
                D=D,
                sparsity=sp,
                kept_blocks=kept,
                key_blocks=mk,
                max_abs_err_vs_sdpa_full_map=err,
                sparse_fwd_ms=t_sf,
                sdpa_fwd_ms=t_df,
                fwd_speedup=t_df / t_sf,
                sparse_fwd_bwd_ms=t_sb,
                sdpa_fwd_bwd_ms=t_db,
                fwd_bwd_speedup=t_db / t_sb,
            )
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "gpu_block_sparse.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\n{rows[0]['gpu']}, B={b}, H={h}, bf16, blocks {blk}x{blk}; SDPA = dense baseline\n")
    print(
        "| L | D | sparsity | kept | sparse fwd ms | SDPA fwd ms | fwd × | sparse f+b ms | SDPA f+b ms | f+b × |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['L']} | {r['D']} | {r['sparsity']:.0%} | {r['kept_blocks']}/{r['key_blocks']} | "
            f"{r['sparse_fwd_ms']:.3f} | {r['sdpa_fwd_ms']:.3f} | {r['fwd_speedup']:.2f} | "
            f"{r['sparse_fwd_bwd_ms']:.3f} | {r['sdpa_fwd_bwd_ms']:.3f} | {r['fwd_bwd_speedup']:.2f} |"
        )
    print("\nwrote results/gpu_block_sparse.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
