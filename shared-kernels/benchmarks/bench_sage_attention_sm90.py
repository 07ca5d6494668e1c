"""The Hopper wgmma SageAttention2 forward (``sage_attention_fwd_sm90``): speed and accuracy.

On an sm90 GPU with a CUDA build: the kernel (backend "cuda", pre-quantized operands, quantization not
timed) against the mma.sync kernel of ``sage_attention_fwd`` with FP8 P·V (the peer in this library; on
sm90 ptxas runs its fp8 mma.sync as HMMA) and ``torch.nn.functional.scaled_dot_product_attention`` in
float16, best of 5 after a warm-up, side by side in one run. TOPS counts ``4·B·H·Nq·Nk·D`` (causal runs
count the same full figure, as upstream does); ``cos`` / ``rel L1`` compare with SDPA's output.

Anywhere else no time is taken: the table then holds the accuracy of the kernel's maths (the op's float64
reference, which the GPU tests hold the kernel to) against exact float64 attention on small shapes, and the
static kernel report rows of the kernel (``tools/kernel_report.py``; registers, spills, tensor-core family).

    python shared-kernels/benchmarks/bench_sage_attention_sm90.py [--quick] [--csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
from pathlib import Path

import shared_kernels as sk
import torch
import torch.nn.functional as F
from shared_kernels.benchmarking import best_of
from shared_kernels.reference import sage_attention as ref89
from shared_kernels.reference import sage_attention_sm90 as ref

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[2]


def _inputs(b, h, n, d, device, k_bias=0.0, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, h, n, d, device=device, generator=g)
    k = torch.randn(b, h, n, d, device=device, generator=g)
    k = k + k_bias * torch.randn(1, 1, 1, d, device=device, generator=g)
    v = torch.randn(b, h, n, d, device=device, generator=g)
    return q, k, v


def _metrics(got, want):
    got, want = got.double().flatten(), want.double().flatten()
    cos = F.cosine_similarity(got, want, dim=0).item()
    rl1 = ((got - want).abs().sum() / want.abs().sum()).item()
    rmse = (got - want).pow(2).mean().sqrt().item()
    return cos, rl1, rmse


def gpu_case(b, h, n, d, causal):
    q, k, v = _inputs(b, h, n, d, "cuda")
    km = k.mean(dim=-2, keepdim=True)
    q8, qs = ref.quantize_q_sm90(q)
    k8, ks = ref.quantize_k_sm90(k - km)
    vt, vs = ref.quantize_v_sm90(v)
    pq8, pqs = ref89.quantize_q_per_thread(q, 32)
    pk8, pks = ref89.quantize_k_per_thread(k - km)
    pv8, pvs = ref89.quantize_v_per_channel_fp8(v)
    qh, kh, vh = q.half(), k.half(), v.half()

    def kernel():
        return sk.sage_attention_fwd_sm90(q8, k8, vt, qs, ks, vs, is_causal=causal, backend="cuda")

    def peer():
        return sk.sage_attention_fwd(pq8, pk8, pv8, pqs, pks, pvs, is_causal=causal, backend="cuda")

    def sdpa():
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)

    t_k, t_p, t_s = best_of(kernel), best_of(peer), best_of(sdpa)
    cos, rl1, rmse = _metrics(kernel()[0], sdpa())
    ops = 4.0 * b * h * n * n * d
    return {
        "shape": f"{b}x{h}x{n}x{d}",
        "causal": causal,
        "sm90_ms": t_k * 1e3,
        "sm90_tops": ops / t_k / 1e12,
        "mma_sync_fp8_ms": t_p * 1e3,
        "sdpa_fp16_ms": t_s * 1e3,
        "sdpa_tops": ops / t_s / 1e12,
        "vs_mma_sync": t_p / t_k,
        "vs_sdpa": t_s / t_k,
        "cos": cos,
        "rel_l1": rl1,
        "rmse": rmse,
    }


def cpu_case(b, h, n, d, causal, smooth_k, k_bias=4.0):
    q, k, v = _inputs(b, h, n, d, "cpu", k_bias=k_bias, seed=1)  # K with a shared channel bias, as in LLMs
    q8, qs = ref.quantize_q_sm90(q)
    k8, ks = ref.quantize_k_sm90(k - k.mean(dim=-2, keepdim=True) if smooth_k else k)  # softmax-invariant
    vt, vs = ref.quantize_v_sm90(v)
    out, _ = sk.sage_attention_fwd_sm90(q8, k8, vt, qs, ks, vs, is_causal=causal, backend="torch")
    s = q.double() @ k.double().transpose(-1, -2) * d**-0.5
    if causal:
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    want = torch.softmax(s, -1) @ v.double()
    cos, rl1, rmse = _metrics(out, want)
    return {
        "shape": f"{b}x{h}x{n}x{d}",
        "causal": causal,
        "smooth_k": smooth_k,
        "cos": cos,
        "rel_l1": rl1,
        "rmse": rmse,
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument(
        "--csv", type=Path, default=None, help="CSV path (default: results/sage_attention_sm90_*.csv)"
    )
    args = ap.parse_args()
    ok, why = sk.sage_attention_sm90_status()
    today = datetime.date.today()
    if ok:
        seqs = [1024] if args.quick else [1024, 4096, 8192]
        print(f"# {torch.cuda.get_device_name()}, {today}, best of 5; x = time of the peer / time of sm90")
        print(
            f"{'shape':<16}{'causal':<8}{'sm90 ms':>9}{'TOPS':>8}{'mma ms':>9}{'sdpa ms':>9}{'TOPS':>8}"
            f"{'x mma':>7}{'x sdpa':>7}{'cos':>10}{'relL1':>8}"
        )
        rows = []
        for d in (64, 128):
            for n in seqs:
                for causal in (False, True):
                    r = gpu_case(4 if n < 4096 else 1, 32, n, d, causal)
                    rows.append(r)
                    print(
                        f"{r['shape']:<16}{causal!s:<8}{r['sm90_ms']:>9.3f}{r['sm90_tops']:>8.1f}"
                        f"{r['mma_sync_fp8_ms']:>9.3f}{r['sdpa_fp16_ms']:>9.3f}{r['sdpa_tops']:>8.1f}"
                        f"{r['vs_mma_sync']:>7.2f}{r['vs_sdpa']:>7.2f}{r['cos']:>10.6f}{r['rel_l1']:>8.4f}"
                    )
        _write_csv(args.csv or RESULTS / "sage_attention_sm90_gpu.csv", rows)
        return
    print(f"# no timing: the sm90 kernel cannot run here ({why}); {today}")
    print("# accuracy of the kernel's maths (op reference, float64) against exact float64 attention")
    print("# inputs: randn Q, K, V; K + 4·randn(D) (a channel bias shared by all tokens)")
    print(f"{'shape':<16}{'causal':<8}{'smooth_k':<10}{'cos':>11}{'relL1':>9}{'RMSE':>10}")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = []
    shapes = [(1, 2, 256, 64)] if args.quick else [(1, 2, 256, 64), (1, 2, 300, 128), (1, 1, 1024, 128)]
    for b, h, n, d in shapes:
        for causal in (False, True):
            for smooth_k in (True, False):
                r = cpu_case(b, h, n, d, causal, smooth_k)
                rows.append(r)
                print(
                    f"{r['shape']:<16}{causal!s:<8}{smooth_k!s:<10}{r['cos']:>11.7f}{r['rel_l1']:>9.5f}"
                    f"{r['rmse']:>10.2e}"
                )
    _write_csv(args.csv or RESULTS / "sage_attention_sm90_cpu_accuracy.csv", rows)
    report = REPO / "tools" / "kernel_report.py"
    if report.is_file():
        print("# static kernel report (no GPU needed):")
        cmd = [sys.executable, str(report), "--only", "sage_attn_fwd_sm90", "--no-triton", "-q"]
        subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
