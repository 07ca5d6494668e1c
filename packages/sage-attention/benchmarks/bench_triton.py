"""Triton SageAttention kernels: accuracy against exact float64 attention, roofline, GPU timings.

    python packages/sage-attention/benchmarks/bench_triton.py            # CPU: Triton interpreter
    python packages/sage-attention/benchmarks/bench_triton.py --gpu-ms   # + timings on a CUDA GPU

Accuracy (any machine; without a GPU the kernels run in Triton's interpreter, so shapes are small):
every Triton variant (per-block / per-warp Q, fp16 / FP8 P·V, smooth_k on/off) on synthetic
diffusion-like bf16 inputs (large per-channel K bias, a few outlier channels in Q and K) and on a
short sequence (padded keys), as cosine similarity, relative L1 and RMSE against float64 attention,
plus the largest deviation from the plain-PyTorch oracle of the same variant. Roofline: FLOPs,
compulsory bytes and the lower-bound time on H100 SXM and RTX 4090 per variant. With ``--gpu-ms``
on a GPU: best-of-N milliseconds and TOPS next to ``F.scaled_dot_product_attention``.
Writes ``results/triton_accuracy.csv``, ``results/triton_roofline.csv`` (and ``triton_gpu.csv``)
and ``results/triton_accuracy.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from sageattention import reference as ref
from sageattention.triton.emulate import sage_attention_variant
from sageattention.triton_api import sageattn_qk_int8_pv_fp8_triton, sageattn_qk_int8_pv_fp16_triton

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {  # name: (PV: "fp16" | "fp16acc16" | "fp8", qk_quant_gran, smooth_k)
    "fp16pv per_block": ("fp16", "per_block", True),
    "fp16pv per_warp": ("fp16", "per_warp", True),
    "fp16pv per_block no-smooth": ("fp16", "per_block", False),
    "fp16pv fp16-acc per_block": ("fp16acc16", "per_block", True),
    "fp8pv per_block": ("fp8", "per_block", True),
    "fp8pv per_warp": ("fp8", "per_warp", True),
}
# dense tensor-core peaks (T ops/s) and DRAM bandwidth (TB/s); RTX 4090 fp16/FP8 with fp32 accumulation
GPUS = {
    "H100 SXM": dict(int8=1979.0, fp16=989.0, fp8=1979.0, bw=3.35),
    "RTX 4090": dict(int8=660.6, fp16=165.2, fp8=330.3, bw=1.008),
}


def diffusion_like(b, h, n, d, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h, n, d, generator=g) + 4.0 * torch.randn(1, h, 1, d, generator=g)  # channel bias
    v = torch.randn(b, h, n, d, generator=g)
    out_ch = torch.randperm(d, generator=g)[:3]
    q[..., out_ch] *= 8.0  # outlier channels
    k[..., out_ch] *= 8.0
    return q.to(dtype), k.to(dtype), v.to(dtype)


def metrics(o, e):
    o, e = o.double().flatten(), e.double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(o, e, dim=0))
    return cos, float((o - e).abs().sum() / e.abs().sum()), float((o - e).pow(2).mean().sqrt())


def run_variant(name, q, k, v, causal):
    pv, gran, smooth = VARIANTS[name]
    kw = dict(is_causal=causal, smooth_k=smooth, qk_quant_gran=gran)
    if pv == "fp8":
        return sageattn_qk_int8_pv_fp8_triton(q, k, v, **kw)
    return sageattn_qk_int8_pv_fp16_triton(
        q, k, v, pv_accum_dtype="fp16+fp32" if pv == "fp16acc16" else "fp32", **kw
    )


def accuracy(shapes):
    rows = []
    for label, (b, h, n, d, causal) in shapes.items():
        # the Triton kernels need CUDA tensors where a GPU is present (the interpreter runs CPU ones)
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        q, k, v = (x.to(dev) for x in diffusion_like(b, h, n, d))
        exact, _ = ref.attention_exact(q, k, v, is_causal=causal)
        for name, (pv, gran, smooth) in VARIANTS.items():
            t0 = time.perf_counter()
            o = run_variant(name, q, k, v, causal)
            dt = time.perf_counter() - t0
            oracle, _ = sage_attention_variant(
                q, k, v, sm_scale=d**-0.5, is_causal=causal, smooth_k=smooth,
                q_group=128 if gran == "per_block" else 32, pv=pv,
            )  # fmt: skip
            cos, rel, rmse = metrics(o, exact)
            dev = float((o.float() - oracle.to(o.dtype).float()).abs().max())
            rows.append(
                dict(inputs=label, variant=name, cos=cos, rel_l1=rel, rmse=rmse, max_dev_oracle=dev, s=dt)
            )
            print(f"{label:28s} {name:28s} cos {cos:.6f}  relL1 {rel:.4f}  rmse {rmse:.4f}  "
                  f"|Δoracle| {dev:.2e}  ({dt:.1f} s)", flush=True)  # fmt: skip
    return rows


def roofline(b, h, n, d):
    rows = []
    for pv in ("fp16", "fp8"):
        ops_qk = 2 * b * h * n * n * d
        ops_pv = 2 * b * h * n * n * d
        bytes_attn = b * h * n * d * (1 + 1 + (1 if pv == "fp8" else 2) + 2)  # Q8, K8, V, O (bf16)
        for gpu, p in GPUS.items():
            t_compute = ops_qk / (p["int8"] * 1e12) + ops_pv / (p[pv] * 1e12)
            t_mem = bytes_attn / (p["bw"] * 1e12)
            rows.append(dict(shape=f"B{b} H{h} N{n} D{d}", pv=pv, gpu=gpu, gops=(ops_qk + ops_pv) / 1e9,
                             mbytes=bytes_attn / 1e6, min_ms=max(t_compute, t_mem) * 1e3,
                             bound="compute" if t_compute > t_mem else "memory"))  # fmt: skip
    return rows


def gpu_timings(reps):
    import triton.testing

    rows = []
    for n in (4096, 8192, 16384):
        q, k, v = (x.cuda() for x in diffusion_like(1, 32, n, 128))
        flops = 4 * 32 * n * n * 128
        qkv = (q, k, v)
        cands = {"sdpa bf16": lambda qkv=qkv: torch.nn.functional.scaled_dot_product_attention(*qkv)}
        for name in VARIANTS:
            cands[name] = lambda name=name, qkv=qkv: run_variant(name, *qkv, False)
        for name, fn in cands.items():
            ms = min(triton.testing.do_bench(fn, warmup=10, rep=50) for _ in range(reps))
            rows.append(
                dict(n=n, variant=name, ms=ms, tops=flops / ms / 1e9, gpu=torch.cuda.get_device_name())
            )
            print(f"N {n:6d} {name:28s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TOPS", flush=True)
    return rows


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = sorted({r["inputs"] for r in rows}, key=[r["inputs"] for r in rows].index)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(VARIANTS)
    for i, name in enumerate(VARIANTS):
        vals = [
            next(r["rel_l1"] for r in rows if r["inputs"] == lab and r["variant"] == name) for lab in labels
        ]
        ax.bar([j + i * width for j in range(len(labels))], vals, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=8)
    ax.set_ylabel("relative L1 vs float64")
    ax.set_title(f"Triton SageAttention accuracy ({datetime.date.today()})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu-ms", action="store_true", help="also time the kernels on a CUDA GPU")
    ap.add_argument("--reps", type=int, default=5, help="best of N for GPU timings")
    args = ap.parse_args(argv)
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU: Triton interpreter'}")  # fmt: skip
    shapes = {  # label: (B, H, N, D, causal)
        "diffusion-like N520 D128": (1, 1, 520, 128, False),
        "diffusion-like N300 D64 causal": (1, 2, 300, 64, True),
        "short N17 D64 (padded keys)": (1, 4, 17, 64, False),
    }
    if torch.cuda.is_available():
        shapes["diffusion-like N8192 D128"] = (1, 8, 8192, 128, False)
    acc = accuracy(shapes)
    write_csv(RESULTS / "triton_accuracy.csv", acc)
    plot(acc, RESULTS / "triton_accuracy.png")
    roof = roofline(1, 32, 16384, 128)
    write_csv(RESULTS / "triton_roofline.csv", roof)
    print("\nroofline lower bound, B1 H32 N16384 D128 non-causal (dense peaks):")
    for r in roof:
        print(f"  {r['gpu']:9s} PV {r['pv']:4s} {r['gops']:8.0f} GOP {r['mbytes']:7.0f} MB  "
              f">= {r['min_ms']:6.2f} ms ({r['bound']} bound)")  # fmt: skip
    if args.gpu_ms:
        if not torch.cuda.is_available():
            print("--gpu-ms: no CUDA GPU here, skipped", file=sys.stderr)
        else:
            write_csv(RESULTS / "triton_gpu.csv", gpu_timings(args.reps))


if __name__ == "__main__":
    main()
