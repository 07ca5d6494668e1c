"""Why v3 missed DPM-Solver++ at 8 NFE (VP linear): sample() options and EMS estimator ablations.

Same problem as ``bench_v3.py`` (d = 8, K = 6, std 0.3 mixture; VP linear, t: 1 -> 1e-3). Part A sweeps
``order x p_pseudo x corrector (off / exact fit c_pseudo=False / pseudo-order c_pseudo=True) x half x
lower_order_final x grid`` at NFE 5, 6, 8, 10 for EMS with independent draws per lambda point (the paper)
and with ``common_noise=True``; configurations are ranked on the *validation* noise (seed 2) by the
geometric mean of the median error relative to the best DPM-Solver++ (2M/3M x grid), and the top ones
are shown with their error on the *evaluation* noise (seed 1). Part B: the EMS sample size and lambda
resolution, independent vs common draws, for v3-3c (order 3, exact corrector) on time_uniform at NFE
8/20/50 (validation noise). EMS data/probe seed 7 throughout.

    python benchmarks/bench_v3_ablation.py      # ~3 min on one core; writes results/bench_v3_ablation.{md,csv}
"""

from __future__ import annotations

import csv
import datetime
import itertools
import math
import os
import time

import torch
from dpm_solver import DPM_Solver, NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture
from dpm_solver.statistics import compute_statistics
from dpm_solver.v3 import DPM_Solver_v3

OUT = os.path.join(os.path.dirname(__file__), "results")
GRIDS = ("logSNR", "time_uniform", "time_quadratic")
NFES = (5, 6, 8, 10)
EVAL_SEED, VAL_SEED, EMS_SEED = 1, 2, 7


def main() -> None:
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    gmm = GaussianMixture.random(8, 6, 0.3, seed=0)
    ns, t_s, t_e = NoiseScheduleVP("linear"), 1.0, 1e-3
    tt = torch.tensor([t_s, t_e], dtype=torch.float64)
    a, s = ns.marginal_alpha(tt), ns.marginal_std(tt)
    st_T, st_0 = float(s[0] / a[0]), float(s[1] / a[1])
    sets = {}
    for role, seed in (("eval", EVAL_SEED), ("val", VAL_SEED)):
        x_ve = gmm.sample_ve(512, st_T, torch.Generator().manual_seed(seed))
        sets[role] = (x_ve * a[0], gmm.flow(x_ve, st_T, st_0, 600) * a[1])

    def fn(x, t):
        return gmm.prediction("noise", x, t, ns)

    def med(x, role):
        return float(((x - sets[role][1]).norm(dim=1) / math.sqrt(8)).median())

    def ems(n_lambda, n_samples, common):
        x0 = gmm.sample_ve(n_samples, 0.0, torch.Generator().manual_seed(EMS_SEED))
        return compute_statistics(fn, ns, x0, n_lambda=n_lambda, t_start=t_s, t_end=t_e, batch_size=16384,
                                  seed=EMS_SEED, progress=False, common_noise=common)  # fmt: skip

    # -- part A: options ------------------------------------------------------------------------------
    stats = {"paper": ems(1200, 1024, False), "common": ems(1200, 1024, True)}
    res: dict[tuple, float] = {}
    for n in NFES:
        for grid in GRIDS:
            for order in (2, 3):
                sol = DPM_Solver(fn, ns, "dpmsolver++")
                for role in sets:
                    out = sol.sample(
                        sets[role][0], steps=n, t_start=t_s, t_end=t_e, order=order, skip_type=grid
                    )
                    res[("dpm++", f"{order}M", grid, n, role)] = med(out, role)
            for kind, st in stats.items():
                v3 = DPM_Solver_v3(st, ns, steps=n, skip_type=grid)
                opts = itertools.product(
                    (1, 2, 3), (False, True), ("off", "exact", "pseudo"), (False, True), (True, False)
                )
                for order, pp, corr, half, lof in opts:
                    if corr == "off" and half:
                        continue
                    cfg = dict(order=order, p_pseudo=pp, use_corrector=corr != "off", c_pseudo=corr == "pseudo",
                               half=half, lower_order_final=lof)  # fmt: skip
                    name = f"order={order} p_pseudo={pp} corrector={corr} half={half} lof={lof}"
                    for role in sets:
                        res[(f"v3 {kind}", name, grid, n, role)] = med(
                            v3.sample(sets[role][0], fn, **cfg), role
                        )
    t_a = time.perf_counter() - t_all

    def best_pp(n, role):
        return min(v for k, v in res.items() if k[0] == "dpm++" and k[3] == n and k[4] == role)

    def score(fam, name, grid, role):
        return math.exp(
            sum(math.log(res[(fam, name, grid, n, role)] / best_pp(n, role)) for n in NFES) / len(NFES)
        )

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# bench_v3_ablation ({date})",
        "",
        "## A. sample() options, VP linear, EMS 1201 lambdas x 1024 samples",
        "",
        "score = geometric mean over NFE 5/6/8/10 of (v3 median error / best DPM-Solver++ median error at that "
        "NFE, best over 2M/3M x 3 grids on the same noise); ranked on the validation noise.",
        "",
        "| EMS | configuration | grid | score (validation) | score (evaluation) | "
        + " | ".join(f"NFE {n} (eval)" for n in NFES) + " |",
        "|---|---|---|---|---|" + "---|" * len(NFES),
    ]  # fmt: skip
    rows_csv = [[*k, v] for k, v in res.items()]
    for fam in ("v3 paper", "v3 common"):
        cfgs = sorted({(k[1], k[2]) for k in res if k[0] == fam}, key=lambda c: score(fam, *c, "val"))
        upstream_like = [
            ("order=3 p_pseudo=False corrector=pseudo half=False lof=True", "time_uniform"),
            ("order=2 p_pseudo=False corrector=pseudo half=False lof=True", "time_uniform"),
            ("order=3 p_pseudo=False corrector=pseudo half=True lof=True", "time_uniform"),
        ]
        for c in cfgs[:8] + upstream_like:
            rank = cfgs.index(c) + 1
            cells = " | ".join(f"{res[(fam, *c, n, 'eval')]:.2e}" for n in NFES)
            lines.append(
                f"| {fam.split()[1]} | #{rank}: {c[0]} | {c[1]} | {score(fam, *c, 'val'):.3f} | "
                f"{score(fam, *c, 'eval'):.3f} | {cells} |"
            )
    lines.append(
        "| - | best DPM-Solver++ per NFE | - | 1 | 1 | "
        + " | ".join(f"{best_pp(n, 'eval'):.2e}" for n in NFES)
        + " |"
    )
    # -- part B: EMS estimator ------------------------------------------------------------------------
    lines += [
        "",
        "## B. EMS sample size / lambda resolution, v3-3c (order 3, exact corrector), time_uniform, validation noise",
        "",
        "| n_lambda | samples | draws | EMS time (s) | NFE 8 | NFE 20 | NFE 50 |",
        "|---|---|---|---|---|---|---|",
    ]
    cfg = dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=False, lower_order_final=True)
    for n_lambda, n_samples in ((600, 1024), (1200, 256), (1200, 1024), (1200, 4096), (2400, 1024)):
        for common in (False, True):
            t0 = time.perf_counter()
            st = ems(n_lambda, n_samples, common)
            dt = time.perf_counter() - t0
            errs = [med(DPM_Solver_v3(st, ns, steps=n, skip_type="time_uniform").sample(sets["val"][0], fn, **cfg), "val")
                    for n in (8, 20, 50)]  # fmt: skip
            rows_csv.append(["ems", n_lambda, n_samples, "common" if common else "independent", *errs])
            lines.append(
                f"| {n_lambda} | {n_samples} | {'common' if common else 'independent'} | {dt:.1f} | "
                + " | ".join(f"{e:.2e}" for e in errs)
                + " |"
            )
    lines += [
        "",
        f"Part A {t_a:.0f} s, total {time.perf_counter() - t_all:.0f} s (one thread, shared machine).",
    ]
    text = "\n".join(lines)
    print(text)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "bench_v3_ablation.md"), "w") as fh:
        fh.write(text + "\n")
    with open(os.path.join(OUT, "bench_v3_ablation.csv"), "w", newline="") as fh:
        csv.writer(fh).writerows(rows_csv)


if __name__ == "__main__":
    main()
