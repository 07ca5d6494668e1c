"""GPU throughput and accuracy of the SageAttention2 forward kernel (``sage_attention_fwd``, backend
"cuda") against ``torch.nn.functional.scaled_dot_product_attention`` in float16 on the same inputs
(best of 5 after a warm-up). Needs a CUDA GPU and a CUDA build of shared-kernels; exits with a
message otherwise. The kernel is timed on pre-quantized operands (quantization not included).

TOPS counts ``4·B·H·Nq·Nk·D`` (both matmuls, multiply-add = 2 ops; causal runs count the same full
figure, as upstream does). ``cos`` / ``rel L1`` compare the kernel's output with SDPA's. Every P·V
accumulation mode (``pv_accum``) runs: fp16 V ``fp32``, ``fp16+fp32``, ``fp16``; FP8 V (sm89+)
``fp32+fp32`` and ``fp32+fp16`` (SageAttention2++, V scaled to max 2.25).

    python shared-kernels/benchmarks/bench_sage_attention_fwd_gpu.py [--quick] [--pv-accum MODE ...]
        [--csv PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from pathlib import Path

import shared_kernels as sk
import torch
import torch.nn.functional as F
from shared_kernels import _lib
from shared_kernels.benchmarking import best_of
from shared_kernels.reference import sage_attention as ref

RESULTS = Path(__file__).parent / "results"


MODES = [
    ("fp16", "fp32"),
    ("fp16", "fp16+fp32"),
    ("fp16", "fp16"),
    ("fp8", "fp32+fp32"),
    ("fp8", "fp32+fp16"),
]


def run_case(b, h, n, d, pv, causal, pv_accum):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, n, d, device="cuda", generator=g)
    k = torch.randn(b, h, n, d, device="cuda", generator=g)
    v = torch.randn(b, h, n, d, device="cuda", generator=g)
    km = k.mean(dim=-2, keepdim=True)
    q8, qs = ref.quantize_q_per_thread(q, 32)
    k8, ks = ref.quantize_k_per_thread(k - km)
    v_max = 2.25 if pv_accum == "fp32+fp16" else 448.0
    v8, vs = ref.quantize_v_per_channel_fp8(v, v_max) if pv == "fp8" else (v.half(), None)
    qh, kh, vh = q.half(), k.half(), v.half()

    def kernel():
        return sk.sage_attention_fwd(
            q8, k8, v8, qs, ks, vs, is_causal=causal, pv_accum=pv_accum, backend="cuda"
        )

    def sdpa():
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)

    t_k, t_s = best_of(kernel), best_of(sdpa)
    o, want = kernel()[0].double().flatten(), sdpa().double().flatten()
    cos = F.cosine_similarity(o, want, dim=0).item()
    rl1 = ((o - want).abs().sum() / want.abs().sum()).item()
    ops = 4.0 * b * h * n * n * d
    return {
        "shape": f"{b}x{h}x{n}x{d}",
        "pv": pv,
        "pv_accum": pv_accum,
        "causal": causal,
        "kernel_ms": t_k * 1e3,
        "sdpa_ms": t_s * 1e3,
        "kernel_tops": ops / t_k / 1e12,
        "sdpa_tops": ops / t_s / 1e12,
        "speedup": t_s / t_k,
        "cos": cos,
        "rel_l1": rl1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two small shapes")
    ap.add_argument(
        "--pv-accum", nargs="+", default=[m for _, m in MODES], choices=[m for _, m in MODES],
        help="P·V accumulation modes to run (default: all)",
    )  # fmt: skip
    ap.add_argument("--csv", type=Path, default=RESULTS / "sage_attention_fwd_gpu.csv")
    ap.add_argument("--png", type=Path, default=RESULTS / "sage_attention_fwd_gpu.png")
    args = ap.parse_args()
    if not torch.cuda.is_available() or not _lib.cuda_compiled():
        print("needs a CUDA GPU and a CUDA build of shared-kernels; nothing run")
        sys.exit(0)
    cc = torch.cuda.get_device_capability()
    modes = [(pv, m) for pv, m in MODES if m in args.pv_accum and (pv == "fp16" or cc >= (8, 9))]
    seqs = [1024] if args.quick else [1024, 4096, 8192]
    dims = [64] if args.quick else [64, 128]
    print(f"# {torch.cuda.get_device_name()} (sm{cc[0]}{cc[1]}), {datetime.date.today()}, best of 5")
    print(
        f"{'shape':<16}{'pv':<6}{'accum':<11}{'causal':<8}{'ms':>9}{'TOPS':>8}{'sdpa ms':>9}{'TOPS':>8}{'x':>7}"
        f"{'cos':>10}{'relL1':>8}"
    )
    rows = []
    for d in dims:
        for n in seqs:
            for pv, accum in modes:
                for causal in (False, True):
                    r = run_case(1 if n >= 4096 else 4, 16, n, d, pv, causal, accum)
                    rows.append(r)
                    print(
                        f"{r['shape']:<16}{pv:<6}{accum:<11}{causal!s:<8}{r['kernel_ms']:>9.3f}{r['kernel_tops']:>8.1f}"
                        f"{r['sdpa_ms']:>9.3f}{r['sdpa_tops']:>8.1f}{r['speedup']:>7.2f}{r['cos']:>10.6f}"
                        f"{r['rel_l1']:>8.4f}"
                    )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG")
        return
    fig, ax = plt.subplots(figsize=(max(9, len(rows) * 0.35), 4))
    labels = [f"{r['shape']}\n{r['pv']} {r['pv_accum']}{' c' if r['causal'] else ''}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["kernel_tops"] for r in rows], 0.4, label="sage_attention_fwd (cuda)")
    ax.bar([i + 0.2 for i in x], [r["sdpa_tops"] for r in rows], 0.4, label="SDPA fp16")
    ax.set_xticks(list(x), labels, fontsize=6)
    ax.set_ylabel("TOPS")
    ax.set_title(f"{torch.cuda.get_device_name()}, {datetime.date.today()}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.csv} and {args.png}")


if __name__ == "__main__":
    main()
