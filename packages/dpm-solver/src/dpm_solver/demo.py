"""Error vs NFE of multistep DPM-Solver++ orders 1-3 on the analytic Gaussian-mixture model.

``python -m dpm_solver.demo [--batch 512] [--schedule linear|sd]`` prints, for each step grid, the
median and 99th-percentile endpoint error ``||x - x*|| / sqrt(d)`` against the probability-flow ODE
solved by fine RK4 (float64), and the empirical order (slope of log median error vs log NFE, 20-200).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from .analytic import GaussianMixture
from .schedules import NoiseScheduleVP
from .solver import DPM_Solver

NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50, 100, 200)
CONFIGS = (  # label, order, exact_3m
    ("1 (DDIM)", 1, False),
    ("2M", 2, False),
    ("3M", 3, False),
    ("3M exact", 3, True),
)


def _slope(nfes: list[int], errs: list[float]) -> float:
    lx = torch.log(torch.tensor(nfes, dtype=torch.float64))
    ly = torch.log(torch.tensor(errs, dtype=torch.float64))
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float(-(lx * ly).sum() / (lx * lx).sum())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--schedule", choices=("linear", "sd"), default="linear")
    p.add_argument("--ref-steps", type=int, default=4000)
    p.add_argument("--algorithm", choices=("dpmsolver++", "dpmsolver"), default="dpmsolver++")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    if args.schedule == "linear":
        ns, t_end = NoiseScheduleVP("linear"), 1e-3
    else:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        ns, t_end = NoiseScheduleVP("discrete", betas=betas), 1e-3
    t_start = ns.T
    gmm = GaussianMixture.random(d=8, k=6, std=0.3, seed=0)
    tt = torch.tensor([t_start, t_end], dtype=torch.float64)
    a, s = ns.marginal_alpha(tt), ns.marginal_std(tt)
    st_T, st_0 = float(s[0] / a[0]), float(s[1] / a[1])
    x_ve = gmm.sample_ve(args.batch, st_T, torch.Generator().manual_seed(1))
    tic = time.perf_counter()
    ref = gmm.flow(x_ve, st_T, st_0, args.ref_steps)
    check = float((ref - gmm.flow(x_ve, st_T, st_0, args.ref_steps // 2)).abs().max())
    print(
        f"GMM d=8 K=6 std=0.3, schedule={args.schedule}, t: {t_start} -> {t_end} "
        f"(sigma/alpha {st_T:.4g} -> {st_0:.4g}), batch {args.batch}, float64, {args.algorithm}"
    )
    print(
        f"reference: RK4 in log(sigma/alpha), {args.ref_steps} steps, "
        f"max |ref - ref(half steps)| = {check:.1e} ({time.perf_counter() - tic:.1f} s)"
    )
    ref = ref * a[1]

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gmm.prediction("noise", x, t, ns)

    solver = DPM_Solver(model_fn, ns, args.algorithm)
    for skip in ("logSNR", "time_uniform", "time_quadratic"):
        print(f"\nskip_type={skip}: median error / p99 error per NFE")
        print(f"{'NFE':>5} " + " ".join(f"{label:>21}" for label, _, _ in CONFIGS))
        med: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
        for nfe in NFES:
            row = []
            for label, order, exact in CONFIGS:
                x = solver.sample(
                    x_ve * a[0], steps=nfe, t_start=t_start, t_end=t_end, order=order,
                    skip_type=skip, exact_3m=exact,
                )  # fmt: skip
                e = (x - ref).norm(dim=1) / math.sqrt(x.shape[1])
                med[label].append(float(e.median()))
                row.append(f"{float(e.median()):9.2e} / {float(torch.quantile(e, 0.99)):9.2e}")
            print(f"{nfe:>5} " + " ".join(f"{c:>21}" for c in row))
        sel = [i for i, n in enumerate(NFES) if 20 <= n <= 200]
        orders = [_slope([NFES[i] for i in sel], [med[lbl][i] for i in sel]) for lbl, _, _ in CONFIGS]
        print(f"{'order':>5} " + " ".join(f"{o:>21.2f}" for o in orders) + "   (slope, NFE 20-200)")


if __name__ == "__main__":
    main()
