"""Accuracy of SageAttention2's INT4 Q·Kᵀ modes next to the INT8 ones, against float64 attention.

Inputs are those of ``bench_accuracy.py`` (imported from ``_inputs``): Q/K/V of every layer of
all-MiniLM-L6-v2 on 24 real sentences and on windows of 128 and 256 tokens (head dim 32), and the
synthetic diffusion-like tensors (outlier channels in Q, a large per-channel bias in K; 256 query rows
against N keys). Every mode runs the plain-PyTorch maths of ``sageattention.modes`` on the CPU (the
oracle the CUDA kernels are tested against); metrics per case: cosine, relative L1, RMSE.

Writes ``results/int4_accuracy.csv`` and prints the table.

    python packages/sage-attention/benchmarks/bench_int4.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import pathlib
import time

import torch
from _inputs import capture_minilm, metrics, summary_rows, synthetic
from sageattention import reference as ref
from sageattention.int4 import int4_config
from sageattention.modes import SageConfig, sage_attention_mode
from tqdm import tqdm

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _int8(cfg: SageConfig, **kw) -> SageConfig:
    return dataclasses.replace(cfg, qk_quant_dtype="int8", **kw)


def modes_for(d: int) -> dict[str, tuple[str, SageConfig]]:
    """name -> (how a user selects it, SageConfig); INT8 baselines are the INT4 configs with INT8 Q/K."""
    i4 = int4_config(d)
    i4_fp8 = int4_config(d, pv_dtype="fp8")
    return {
        "INT8 per_thread, fp16 PV (sm80 default)": (
            "sageattn_qk_int8_pv_fp16_cuda()",
            _int8(i4, smooth_q=False),
        ),
        "INT8 per_thread + smooth_q, fp16 PV": (
            "sageattn_qk_int8_pv_fp16_cuda(smooth_q=True)",
            _int8(i4),
        ),
        "INT4 per_thread, no smooth_q, fp16 PV": (
            "sageattn_qk_int4_pv_fp16_cuda(smooth_q=False)",
            dataclasses.replace(i4, smooth_q=False),
        ),
        "INT4 per_thread + smooth_q, fp16 PV": ("sageattn_qk_int4_pv_fp16_cuda()", i4),
        "INT4 + smooth_q + hadamard, fp16 PV": (
            "sageattn_qk_int4_pv_fp16_cuda(qk_rotation='hadamard')",
            dataclasses.replace(i4, qk_rotation="hadamard"),
        ),
        "INT8 per_thread, fp8 PV fp32+fp32": (
            "sageattn_qk_int8_pv_fp8_cuda(pv_accum_dtype='fp32+fp32')",
            _int8(i4_fp8, smooth_q=False),
        ),
        "INT4 per_thread + smooth_q, fp8 PV fp32+fp32": ("sageattn_qk_int4_pv_fp8_cuda()", i4_fp8),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few sentences, synthetic N = 1K only")
    ap.add_argument("--out", default=str(RESULTS), help="folder for int4_accuracy.csv")
    args = ap.parse_args()
    torch.manual_seed(0)
    cases, lengths = capture_minilm(args.quick)
    for n in (1024,) if args.quick else (1024, 4096):
        for d in (64, 128):
            cases.append((f"synthetic N={n} D={d}", *synthetic(n, d)))
    exact = [ref.attention_exact(q, k, v)[0] for _, q, k, v in cases]
    names = list(modes_for(64))
    rows = []
    for name in tqdm(names, desc="modes"):
        per_group: dict[str, list[tuple[float, float, float]]] = {}
        api = ""
        t0 = time.perf_counter()
        for (group, q, k, v), e in zip(cases, exact, strict=True):
            api, cfg = modes_for(q.shape[-1])[name]
            o, _ = sage_attention_mode(q, k, v, sm_scale=q.shape[-1] ** -0.5, cfg=cfg, q_chunk=1024)
            for b in range(q.shape[0]):
                per_group.setdefault(group, []).append(metrics(o[b], e[b]))
        secs = time.perf_counter() - t0
        rows += summary_rows(name, api, per_group, secs)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "int4_accuracy.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        f"# INT4 vs INT8 QK accuracy vs float64, {datetime.date.today()}, torch {torch.__version__}, "
        "CPU reference maths (sageattention.modes)"
    )
    print(f"# MiniLM sentence lengths (tokens incl. [CLS]/[SEP]): {sorted(lengths)}")
    print(
        f"{'mode':46} {'inputs':26} {'mean cos':>9} {'min cos':>9} {'rel L1':>8} {'max rL1':>8} {'RMSE':>9}"
    )
    for r in rows:
        print(
            f"{r['mode']:46} {r['inputs']:26} {r['mean_cos']:9.6f} {r['min_cos']:9.6f} "
            f"{r['mean_rel_l1']:8.5f} {r['max_rel_l1']:8.5f} {r['mean_rmse']:9.2e}"
        )


if __name__ == "__main__":
    main()
