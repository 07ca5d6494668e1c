"""DPM-Solver-v3 (statistics computed by our tool) vs our DPM-Solver++ 2M/3M on the analytic Gaussian mixture.

Problem: d = 8, K = 6, component std 0.3 (``GaussianMixture.random(8, 6, 0.3, seed=0)``), exact noise
prediction; schedules VP linear (VPSDE, t: 1 -> 1e-3) and Stable Diffusion ``scaled_linear`` discrete
(t: T -> 1/N). Reference: the probability-flow ODE in float64 by RK4 in log sigma~ (checked against a
run with twice the steps). Error per sample ``||x - x*|| / sqrt(d)``: mean, median, p99. Statistics:
``compute_statistics`` on 1200 lambda intervals with 1024 data samples (cost reported).

    python benchmarks/bench_v3.py [--quick]

Writes ``benchmarks/results/bench_v3.{csv,md,png}``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import time

import torch
from dpm_solver import DPM_Solver, NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture
from dpm_solver.statistics import compute_statistics, smooth_statistics
from dpm_solver.v3 import DPM_Solver_v3

NFES = (5, 6, 8, 10, 12, 15, 20)
GRIDS = ("logSNR", "time_uniform", "time_quadratic")


def upstream_v3_settings(nfe: int) -> dict:
    """Upstream's recommended v3 settings by step count (ScoreSDE ``sample.sh``), order 3."""
    if nfe <= 5:
        return dict(order=3, p_pseudo=True, use_corrector=True, c_pseudo=True, lower_order_final=False)
    if nfe <= 8:
        return dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)
    if nfe <= 10:
        return dict(order=3, p_pseudo=False, use_corrector=False, c_pseudo=False, lower_order_final=True)
    return dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)


V3_FIXED = dict(order=2, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)


def metrics(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    e = (x - ref).norm(dim=1) / math.sqrt(x.shape[1])
    return float(e.mean()), float(e.median()), float(torch.quantile(e, 0.99))


def run_schedule(name, ns, t_start, t_end, gmm, n_test, n_lambda, n_ems, rk4_steps):
    tt = torch.tensor([t_start, t_end], dtype=torch.float64)
    a, s = ns.marginal_alpha(tt), ns.marginal_std(tt)
    st_T, st_0 = float(s[0] / a[0]), float(s[1] / a[1])
    x_ve = gmm.sample_ve(n_test, st_T, torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    ref = gmm.flow(x_ve, st_T, st_0, rk4_steps)
    ref2 = gmm.flow(x_ve, st_T, st_0, 2 * rk4_steps)
    ref_check = float((ref - ref2).abs().max())
    ref = ref2 * a[1]
    t_ref = time.perf_counter() - t0
    x_T = x_ve * a[0]

    def fn(x, t):
        return gmm.prediction("noise", x, t, ns)

    x0 = gmm.sample_ve(n_ems, 0.0, torch.Generator().manual_seed(7))
    t0 = time.perf_counter()
    stats = compute_statistics(
        fn, ns, x0, n_lambda=n_lambda, t_start=t_start, t_end=t_end, batch_size=16384, progress=False
    )
    t_ems = time.perf_counter() - t0
    smoothed = smooth_statistics(stats, 5)  # opt-in variant (not the paper's definition)
    n_jvp = (n_lambda + 1) * n_ems * 2
    print(
        f"[{name}] reference: RK4 {2 * rk4_steps} steps, |vs {rk4_steps} steps| = {ref_check:.1e} ({t_ref:.1f} s); "
        f"EMS: {n_lambda + 1} lambdas x {n_ems} samples = {n_jvp} batched JVPs in {t_ems:.1f} s"
    )
    rows = []
    for nfe in NFES:
        for grid in GRIDS:
            for order in (2, 3):
                out = DPM_Solver(fn, ns, "dpmsolver++").sample(
                    x_T, steps=nfe, t_start=t_start, t_end=t_end, order=order, skip_type=grid
                )
                rows.append((name, nfe, grid, f"dpm++{order}M", *metrics(out, ref)))
            try:
                v3 = DPM_Solver_v3(stats, ns, steps=nfe, skip_type=grid)
            except ValueError as err:  # e.g. two steps on one EMS grid point
                print(f"  skip v3 {grid} nfe={nfe}: {err}")
                continue
            v3s = DPM_Solver_v3(smoothed, ns, steps=nfe, skip_type=grid)
            for label, cfg in (("v3-fixed", V3_FIXED), ("v3-upstream", upstream_v3_settings(nfe))):
                rows.append((name, nfe, grid, label, *metrics(v3.sample(x_T, fn, **cfg), ref)))
                rows.append((name, nfe, grid, label + "-smooth5", *metrics(v3s.sample(x_T, fn, **cfg), ref)))
            deg = DPM_Solver_v3(stats, ns, steps=nfe, skip_type=grid, degenerated=True)
            rows.append((name, nfe, grid, "v3-degenerated", *metrics(deg.sample(x_T, fn, **V3_FIXED), ref)))
    return rows, {"t_ems_s": t_ems, "n_jvp": n_jvp, "ref_check": ref_check}


def summarize(rows):
    """Per (schedule, NFE): our best DPM-Solver++ (over 2M/3M and grids), v3-fixed on logSNR, best v3."""
    table = []
    keys = sorted({(r[0], r[1]) for r in rows}, key=lambda k: (k[0], k[1]))
    for sched, nfe in keys:
        sub = [r for r in rows if r[0] == sched and r[1] == nfe]
        pp = [r for r in sub if r[3].startswith("dpm++")]
        v3 = [r for r in sub if r[3] in ("v3-fixed", "v3-upstream")]
        best_pp = min(pp, key=lambda r: r[5])
        best_v3 = min(v3, key=lambda r: r[5])
        best_v3s = min((r for r in sub if r[3].endswith("-smooth5")), key=lambda r: r[5])

        def pick(g, m, sub=sub):
            return next(r for r in sub if r[2] == g and r[3] == m)

        table.append(
            dict(
                schedule=sched,
                nfe=nfe,
                pp2m_logSNR=pick("logSNR", "dpm++2M")[5],
                pp3m_logSNR=pick("logSNR", "dpm++3M")[5],
                v3_fixed_logSNR=pick("logSNR", "v3-fixed")[5],
                v3_upstream_logSNR=pick("logSNR", "v3-upstream")[5],
                best_pp=best_pp[5],
                best_pp_cfg=f"{best_pp[3]}/{best_pp[2]}",
                best_v3=best_v3[5],
                best_v3_cfg=f"{best_v3[3]}/{best_v3[2]}",
                best_v3s=best_v3s[5],
            )
        )
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine
    n_test, n_lambda, n_ems, rk4 = (128, 240, 128, 500) if args.quick else (512, 1200, 1024, 300)
    gmm = GaussianMixture.random(8, 6, 0.3, seed=0)
    schedules = {
        "vp_linear": (NoiseScheduleVP("linear"), 1.0, 1e-3),
        "sd_discrete": (
            NoiseScheduleVP(
                "discrete", betas=torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
            ),
            1.0,
            1e-3,
        ),
    }
    rows, costs = [], {}
    t_all = time.perf_counter()
    for name, (ns, t0, t1) in schedules.items():
        r, c = run_schedule(name, ns, t0, t1, gmm, n_test, n_lambda, n_ems, rk4)
        rows += r
        costs[name] = c
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_v3.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["schedule", "nfe", "grid", "solver", "err_mean", "err_median", "err_p99"])
        for r in rows:
            w.writerow([*r[:4], *(f"{v:.4e}" for v in r[4:])])
    table = summarize(rows)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"bench_v3 ({date}; {n_test} test samples; EMS {n_lambda + 1} lambdas x {n_ems} samples; "
        + "; ".join(
            f"{k}: EMS {v['t_ems_s']:.1f} s, {v['n_jvp']} JVPs, ref check {v['ref_check']:.1e}"
            for k, v in costs.items()
        )
        + ")",
        "",
        "median error; best = min over 2M/3M (DPM-Solver++) or v3-fixed/v3-upstream, and over logSNR/time_uniform/time_quadratic",
        "",
        "| schedule | NFE | ++2M logSNR | ++3M logSNR | v3 fixed logSNR | v3 upstream logSNR | best DPM-Solver++ | best v3 | v3/++ "
        "| best v3, EMS smoothed ±5 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['schedule']} | {t['nfe']} | {t['pp2m_logSNR']:.3e} | {t['pp3m_logSNR']:.3e} | "
            f"{t['v3_fixed_logSNR']:.3e} | {t['v3_upstream_logSNR']:.3e} | {t['best_pp']:.3e} ({t['best_pp_cfg']}) | "
            f"{t['best_v3']:.3e} ({t['best_v3_cfg']}) | {t['best_v3'] / t['best_pp']:.2f} | {t['best_v3s']:.3e} |"
        )
    lines += [
        "",
        "same grid: median error of the better of DPM-Solver++ 2M/3M vs the better of v3-fixed/v3-upstream",
        "",
        "| schedule | grid | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
        "|---|---|" + "---|" * len(NFES),
    ]
    for sched in schedules:
        for grid in GRIDS:
            cells = []
            for nfe in NFES:
                sub = [r for r in rows if r[0] == sched and r[1] == nfe and r[2] == grid]
                pp = min(r[5] for r in sub if r[3].startswith("dpm++"))
                v3s = [r[5] for r in sub if r[3] in ("v3-fixed", "v3-upstream")]
                cells.append(f"{pp:.2e} / {min(v3s):.2e}" if v3s else f"{pp:.2e} / -")
            lines.append(f"| {sched} | {grid} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "bench_v3.md"), "w") as fh:
        fh.write(text + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4.2))
        for ax, name in zip(axes, schedules, strict=True):
            sub = [t for t in table if t["schedule"] == name]
            nfe = [t["nfe"] for t in sub]
            for key, label in (
                ("pp2m_logSNR", "DPM-Solver++ 2M (logSNR)"),
                ("pp3m_logSNR", "DPM-Solver++ 3M (logSNR)"),
                ("best_pp", "best DPM-Solver++"),
                ("v3_fixed_logSNR", "v3 order 2 + corrector (logSNR)"),
                ("best_v3", "best v3"),
                ("best_v3s", "best v3, EMS smoothed"),
            ):
                ax.loglog(nfe, [t[key] for t in sub], marker="o", label=label)
            ax.set_title(name)
            ax.set_xlabel("NFE")
            ax.set_ylabel("median ||x - x*|| / sqrt(d)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "bench_v3.png"), dpi=110)
    except ImportError:
        print("matplotlib missing: no PNG")
    print(f"total {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
