"""DPM-Solver-v3 (statistics computed by our tool) vs our DPM-Solver++ 2M/3M on the analytic Gaussian mixture.

Problem: d = 8, K = 6, component std 0.3 (``GaussianMixture.random(8, 6, 0.3, seed=0)``), exact noise
prediction; schedules VP linear (VPSDE, t: 1 -> 1e-3) and Stable Diffusion ``scaled_linear`` discrete
(t: 1 -> 1e-3). Reference: the probability-flow ODE in float64 by RK4 in log sigma~ (checked against a
run with half the steps). Error per sample ``||x - x*|| / sqrt(d)``: mean, median, p99.

Seeds: EMS data and probes seed 7; *validation* noise seed 2; *evaluation* noise seed 1. Every
configuration runs on both noise sets. Per family (DPM-Solver++, v3 with paper EMS, v3 with common-noise
EMS) one configuration (solver options + grid) is *selected on the validation set* (lowest geometric mean
of the median error over NFE 5-10) and reported on the evaluation set; the per-NFE best on the evaluation
set ("oracle") is reported too, for both families alike.

EMS by ``compute_statistics`` on 1200 lambda intervals with 1024 data samples, three variants: ``paper``
(independent draws per lambda point, the paper's estimator), ``smooth5`` (paper + ``smooth_statistics``
over +-5 points) and ``common`` (``common_noise=True``: the same draws at every lambda point).

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

NFES = (5, 6, 8, 10, 12, 15, 20, 30, 50)
SELECT_NFES = (5, 6, 8, 10)
GRIDS = ("logSNR", "time_uniform", "time_quadratic")
EVAL_SEED, VAL_SEED, EMS_SEED = 1, 2, 7
EMS_KINDS = ("paper", "smooth5", "common")


def upstream_v3_settings(nfe: int) -> dict:
    """Upstream's recommended v3 settings by step count (ScoreSDE ``sample.sh``), order 3."""
    if nfe <= 5:
        return dict(order=3, p_pseudo=True, use_corrector=True, c_pseudo=True, lower_order_final=False)
    if nfe <= 8:
        return dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)
    if nfe <= 10:
        return dict(order=3, p_pseudo=False, use_corrector=False, c_pseudo=False, lower_order_final=True)
    return dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)


def _cfg(order: int, corrector: str) -> dict:
    return dict(
        order=order,
        p_pseudo=False,
        use_corrector=corrector != "",
        c_pseudo=corrector == "C",
        lower_order_final=True,
    )


# "C": corrector of pseudo-order p + 1 (c_pseudo=True, upstream's README default); "c": corrector of
# order p by the exact polynomial fit (c_pseudo=False); no letter: predictor only.
V3_CONFIGS = {
    "v3-2C": _cfg(2, "C"),  # the previous "fixed" configuration
    "v3-3C": _cfg(3, "C"),
    "v3-2c": _cfg(2, "c"),
    "v3-3c": _cfg(3, "c"),
    "v3-3": _cfg(3, ""),
    "v3-upstream": None,  # upstream_v3_settings(nfe)
}


def metrics(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    e = (x - ref).norm(dim=1) / math.sqrt(x.shape[1])
    return float(e.mean()), float(e.median()), float(torch.quantile(e, 0.99))


def run_schedule(name, ns, t_start, t_end, gmm, n_test, n_lambda, n_ems, rk4_steps, nfes):
    tt = torch.tensor([t_start, t_end], dtype=torch.float64)
    a, s = ns.marginal_alpha(tt), ns.marginal_std(tt)
    st_T, st_0 = float(s[0] / a[0]), float(s[1] / a[1])
    sets, ref_check = {}, 0.0
    t0 = time.perf_counter()
    for role, seed in (("eval", EVAL_SEED), ("val", VAL_SEED)):
        x_ve = gmm.sample_ve(n_test, st_T, torch.Generator().manual_seed(seed))
        ref = gmm.flow(x_ve, st_T, st_0, 2 * rk4_steps)
        if role == "eval":
            ref_check = float((ref - gmm.flow(x_ve, st_T, st_0, rk4_steps)).abs().max())
        sets[role] = (x_ve * a[0], ref * a[1])
    t_ref = time.perf_counter() - t0

    def fn(x, t):
        return gmm.prediction("noise", x, t, ns)

    x0 = gmm.sample_ve(n_ems, 0.0, torch.Generator().manual_seed(EMS_SEED))
    stats, t_ems = {}, {}
    for kind, common in (("paper", False), ("common", True)):
        t0 = time.perf_counter()
        stats[kind] = compute_statistics(
            fn,
            ns,
            x0,
            n_lambda=n_lambda,
            t_start=t_start,
            t_end=t_end,
            batch_size=16384,
            seed=EMS_SEED,
            progress=False,
            common_noise=common,
        )
        t_ems[kind] = time.perf_counter() - t0
    stats["smooth5"] = smooth_statistics(stats["paper"], 5)  # opt-in variant (not the paper's definition)
    n_jvp = (n_lambda + 1) * n_ems * 2
    print(
        f"[{name}] reference: RK4 {2 * rk4_steps} steps, |vs {rk4_steps} steps| = {ref_check:.1e} ({t_ref:.1f} s); "
        f"EMS: {n_lambda + 1} lambdas x {n_ems} samples = {n_jvp} batched JVPs in {t_ems['paper']:.1f} s "
        f"(paper) / {t_ems['common']:.1f} s (common noise)"
    )
    rows = []  # (schedule, nfe, grid, solver, ems, role, mean, median, p99)
    for nfe in nfes:
        for grid in GRIDS:
            for order in (2, 3):
                sol = DPM_Solver(fn, ns, "dpmsolver++")
                for role, (x_T, ref) in sets.items():
                    out = sol.sample(
                        x_T, steps=nfe, t_start=t_start, t_end=t_end, order=order, skip_type=grid
                    )
                    rows.append((name, nfe, grid, f"dpm++{order}M", "-", role, *metrics(out, ref)))
            for kind in EMS_KINDS:
                try:
                    v3 = DPM_Solver_v3(stats[kind], ns, steps=nfe, skip_type=grid)
                except ValueError as err:  # e.g. two steps on one EMS grid point
                    print(f"  skip v3 {grid} nfe={nfe}: {err}")
                    continue
                for label, cfg in V3_CONFIGS.items():
                    cfg = cfg or upstream_v3_settings(nfe)
                    for role, (x_T, ref) in sets.items():
                        out = v3.sample(x_T, fn, **cfg)
                        rows.append((name, nfe, grid, label, kind, role, *metrics(out, ref)))
            deg = DPM_Solver_v3(stats["paper"], ns, steps=nfe, skip_type=grid, degenerated=True)
            for role, (x_T, ref) in sets.items():
                out = deg.sample(x_T, fn, **V3_CONFIGS["v3-2C"])
                rows.append((name, nfe, grid, "v3-degenerated-2C", "-", role, *metrics(out, ref)))
    return rows, {"t_ems_s": t_ems, "n_jvp": n_jvp, "ref_check": ref_check}


def family(r) -> str | None:
    if r[3].startswith("dpm++"):
        return "dpm++"
    if r[3].startswith("v3-degenerated"):
        return None
    return f"v3 {r[4]}"


def select(rows, sched, fam) -> tuple[str, str]:
    """(solver, grid) of ``fam`` with the lowest geometric-mean median error over SELECT_NFES, validation set."""
    score: dict[tuple[str, str], float] = {}
    cnt: dict[tuple[str, str], int] = {}
    for r in rows:
        if r[0] == sched and r[5] == "val" and r[1] in SELECT_NFES and family(r) == fam:
            k = (r[3], r[2])
            score[k] = score.get(k, 0.0) + math.log(r[7])
            cnt[k] = cnt.get(k, 0) + 1
    full = [k for k in score if cnt[k] == len(SELECT_NFES)]
    return min(full, key=lambda k: score[k])


def lookup(rows, sched, nfe, fam, solver, grid, role="eval"):
    for r in rows:
        if (r[0], r[1], r[2], r[3], r[5]) == (sched, nfe, grid, solver, role) and family(r) == fam:
            return r
    return None


def oracle(rows, sched, nfe, fam):
    sub = [r for r in rows if r[0] == sched and r[1] == nfe and r[5] == "eval" and family(r) == fam]
    return min(sub, key=lambda r: r[7])


FAMS = ("dpm++", "v3 paper", "v3 smooth5", "v3 common")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine
    n_test, n_lambda, n_ems, rk4 = (128, 240, 128, 300) if args.quick else (512, 1200, 1024, 300)
    nfes = (5, 6, 8, 10) if args.quick else NFES
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
        r, c = run_schedule(name, ns, t0, t1, gmm, n_test, n_lambda, n_ems, rk4, nfes)
        rows += r
        costs[name] = c
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_v3.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["schedule", "nfe", "grid", "solver", "ems", "noise_set", "err_mean", "err_median", "err_p99"]
        )
        for r in rows:
            w.writerow([*r[:6], *(f"{v:.4e}" for v in r[6:])])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# bench_v3 ({date}; {n_test} samples per noise set; EMS {n_lambda + 1} lambdas x {n_ems} samples)",
        "",
        "; ".join(
            f"{k}: EMS {v['t_ems_s']['paper']:.1f} s (paper) / {v['t_ems_s']['common']:.1f} s (common noise), "
            f"{v['n_jvp']} JVPs each, reference check {v['ref_check']:.1e}"
            for k, v in costs.items()
        ),
        "",
        "Median error on the evaluation noise (seed 1). *Selected* = one configuration per family chosen on the "
        "validation noise (seed 2) by the geometric mean over NFE 5-10; *oracle* = best configuration per NFE "
        "on the evaluation noise itself. v3-3c = order 3 + corrector by the exact fit (c_pseudo=False); "
        "v3-2C = order 2 + pseudo-order corrector (the previous fixed setting).",
        "",
    ]
    sel = {(s, f): select(rows, s, f) for s in schedules for f in FAMS}
    hdr = (
        "| schedule | NFE | "
        + " | ".join(f"{f} selected" for f in FAMS)
        + " | dpm++ oracle | v3 paper oracle |"
    )
    hdr += " v3 paper sel. / dpm++ sel. | v3 common sel. / dpm++ sel. |"
    lines += [hdr, "|---|---|" + "---|" * (len(FAMS) + 4)]
    summary = []
    for s in schedules:
        for nfe in nfes:
            vals = {f: lookup(rows, s, nfe, f, *sel[(s, f)]) for f in FAMS}
            orc = {f: oracle(rows, s, nfe, f) for f in ("dpm++", "v3 paper")}
            cells = [f"{vals[f][7]:.2e}" if vals[f] else "-" for f in FAMS]
            cells += [f"{orc[f][7]:.2e} ({orc[f][3]}, {orc[f][2]})" for f in orc]
            pp = vals["dpm++"][7]
            cells += [f"{vals[f][7] / pp:.2f}" if vals[f] else "-" for f in ("v3 paper", "v3 common")]
            lines.append(f"| {s} | {nfe} | " + " | ".join(cells) + " |")
            summary.append((s, nfe, vals, orc))
    lines += [
        "",
        "Selected configurations (validation set): "
        + "; ".join(f"{s} {f}: {sel[(s, f)][0]} {sel[(s, f)][1]}" for s in schedules for f in FAMS),
        "",
    ]
    # target: v3 beats DPM-Solver++ at NFE 5-10
    for f in ("v3 paper", "v3 common"):
        miss_sel = [f"{s} {n}" for s, n, v, _ in summary if n in SELECT_NFES and not v[f][7] < v["dpm++"][7]]
        lines.append(
            f"- Target (v3 beats DPM-Solver++ at NFE 5-10), {f} EMS, selected vs selected: "
            + ("PASS" if not miss_sel else "FAIL at " + ", ".join(miss_sel))
        )
    miss_or = [
        f"{s} {n}"
        for s, n, _, o in summary
        if n in SELECT_NFES and not oracle(rows, s, n, "v3 paper")[7] < o["dpm++"][7]
    ]
    lines.append(
        "- Same target, oracle vs oracle (paper EMS; per-NFE best on the evaluation set for both): "
        + ("PASS" if not miss_or else "FAIL at " + ", ".join(miss_or))
    )
    # per-configuration table (evaluation set)
    show = [
        ("dpm++2M", "-", "logSNR"),
        ("dpm++3M", "-", "logSNR"),
        ("dpm++2M", "-", "time_quadratic"),
        ("dpm++3M", "-", "time_quadratic"),
        ("v3-degenerated-2C", "-", "time_uniform"),
        ("v3-2C", "paper", "logSNR"),
        ("v3-2C", "paper", "time_uniform"),
        ("v3-upstream", "paper", "time_uniform"),
        ("v3-3C", "paper", "time_uniform"),
        ("v3-3c", "paper", "time_uniform"),
        ("v3-3c", "smooth5", "time_uniform"),
        ("v3-3c", "common", "time_uniform"),
        ("v3-3c", "common", "logSNR"),
        ("v3-2c", "common", "time_uniform"),
    ]
    for s in schedules:
        lines += ["", f"## {s}: median error (evaluation set) of selected configurations", ""]
        lines.append("| solver | EMS | grid | " + " | ".join(str(n) for n in nfes) + " |")
        lines.append("|---|---|---|" + "---|" * len(nfes))
        for sv, ems, grid in show:
            cells = []
            for nfe in nfes:
                r = next(
                    (
                        r
                        for r in rows
                        if (r[0], r[1], r[2], r[3], r[4], r[5]) == (s, nfe, grid, sv, ems, "eval")
                    ),
                    None,
                )
                cells.append(f"{r[7]:.2e}" if r else "-")
            lines.append(f"| {sv} | {ems} | {grid} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "bench_v3.md"), "w") as fh:
        fh.write(text + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4.2))
        for ax, s in zip(axes, schedules, strict=True):
            for f in FAMS:
                pts = [(n, lookup(rows, s, n, f, *sel[(s, f)])) for n in nfes]
                pts = [(n, r[7]) for n, r in pts if r]
                ax.loglog(*zip(*pts, strict=True), marker="o", label=f"{f}: {' '.join(sel[(s, f)])}")
            pts = [(n, oracle(rows, s, n, "dpm++")[7]) for n in nfes]
            ax.loglog(*zip(*pts, strict=True), ls="--", color="gray", label="dpm++ oracle (per-NFE best)")
            ax.set_title(f"{s} (selected on validation noise)")
            ax.set_xlabel("NFE")
            ax.set_ylabel("median ||x - x*|| / sqrt(d)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "bench_v3.png"), dpi=110)
    except ImportError:
        print("matplotlib missing: no PNG")
    print(f"total {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
