"""Solver accuracy on an analytic Gaussian-mixture diffusion model: our solvers vs diffusers' schedulers.

The exact noise prediction of a Gaussian mixture is known in closed form (``dpm_solver.analytic``),
so every solver integrates the *same* probability-flow ODE and its endpoint can be compared with a
float64 reference (RK4 + Richardson in ``log sigma~``, checked against twice the steps). All solvers
start from the same noise at ``sigma~_max`` (discrete timestep 999) and end either at
``sigma~_min`` (timestep 0, official ``t_end = 1/N``, diffusers ``final_sigmas_type="sigma_min"``) or at
``sigma~ = 0`` (diffusers' default ``"zero"``); each is compared with the reference of its own endpoint.
Error per sample = ``||x~ - x~*|| / sqrt(d)`` in VE coordinates; mean / median / p99 over samples.

Run: ``python packages/dpm-solver/benchmarks/bench_vs_diffusers.py [--quick]`` (CSV + PNG + markdown table
under ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils import logging as diffusers_logging
from dpm_solver import DPM_Solver, NoiseScheduleVP
from dpm_solver.analytic import DiagonalGaussianMixture, GaussianMixture, reference_flow
from dpm_solver.grids import SKIP_TYPES
from dpm_solver.schedulers import MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler
from dpm_solver.statistics import compute_statistics
from dpm_solver.v3 import DPM_Solver_v3

RESULTS = Path(__file__).resolve().parent / "results"
NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
ORDER_NFES = (20, 25, 50, 100, 200)
SCHEDULES = {  # name -> diffusers beta_schedule kwargs
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "sd": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}


def problems() -> dict[str, GaussianMixture]:
    return {
        "iso-d8-s0.3": GaussianMixture.random(8, 6, 0.3, seed=1),
        "iso-d32-s0.05": GaussianMixture.random(32, 6, 0.05, seed=2),
        "aniso-d16": DiagonalGaussianMixture.random(16, 4, 0.02, 1.0, seed=3),
    }


# -- our solvers ------------------------------------------------------------------------------------
def _method_available(method: str) -> bool:
    """Whether this version of DPM_Solver implements ``method`` (slices of issue 5 land one by one)."""
    ns = NoiseScheduleVP("linear")
    try:
        DPM_Solver(lambda x, t: x, ns).sample(torch.zeros(1, 1), steps=3, order=1, method=method)
    except (NotImplementedError, ValueError):
        return False
    return True


def our_configs() -> dict[str, dict]:
    """name -> sample() kwargs (``steps`` added per NFE). Singlestep/adaptive only where implemented."""
    cfg = {
        "ours DDIM logSNR": dict(order=1, skip_type="logSNR"),
        "ours 2M time_uniform": dict(order=2, skip_type="time_uniform"),
        "ours 2M logSNR": dict(order=2, skip_type="logSNR"),
        "ours 2M time_quadratic": dict(order=2, skip_type="time_quadratic"),
        "ours 3M logSNR": dict(order=3, skip_type="logSNR"),
        "ours 3M time_quadratic": dict(order=3, skip_type="time_quadratic"),
        "ours 3M-exact logSNR": dict(order=3, skip_type="logSNR", exact_3m=True),
        "ours 2M diffusers-grid": dict(order=2, grid="diffusers", lower_order_final=False),
    }
    if "karras" in SKIP_TYPES:
        cfg["ours 2M karras"] = dict(order=2, skip_type="karras")
        cfg["ours 3M karras"] = dict(order=3, skip_type="karras")
        cfg["ours 3M-exact karras"] = dict(order=3, skip_type="karras", exact_3m=True)
    if _method_available("singlestep"):
        cfg["ours 2S logSNR"] = dict(order=2, skip_type="logSNR", method="singlestep")
        cfg["ours 3S logSNR"] = dict(order=3, skip_type="logSNR", method="singlestep")
        cfg["ours 3S karras"] = dict(order=3, skip_type="karras", method="singlestep")
        cfg["ours 3S time_uniform"] = dict(order=3, skip_type="time_uniform", method="singlestep")
    return cfg


# DPM-Solver-v3 with EMS computed by our tool (``compute_statistics``) on the same analytic model: data
# and Hutchinson probes from their own seed (EMS_SEED), never the evaluation noise (seed 1234).
EMS_SEED = 7
EMS_LAMBDAS, EMS_SAMPLES = 1200, 1024
# predictor order, corrector: "c" = exact polynomial fit (c_pseudo=False), "C" = pseudo-order + 1 (c_pseudo=True)
_V3_3c = dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=False, lower_order_final=True)
_V3_2C = dict(order=2, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)
_V3_3C = dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)


def v3_configs() -> dict[str, tuple[str, dict | None]]:
    """name -> (skip_type, sample() kwargs; None = upstream's recommended settings by NFE).

    ``v3-3c`` (order 3, exact corrector) was chosen in ``bench_v3.py`` on validation noise of another
    problem (d = 8, seed 0 mixture); ``v3-2C``/``v3-3C`` are upstream's README defaults (c_pseudo=True)."""
    cfg = {f"ours v3-3c {grid}": (grid, _V3_3c) for grid in ("logSNR", "time_uniform", "time_quadratic")}
    cfg["ours v3-2C time_uniform"] = ("time_uniform", _V3_2C)
    cfg["ours v3-3C time_quadratic"] = ("time_quadratic", _V3_3C)
    cfg["ours v3-upstream time_uniform"] = ("time_uniform", None)
    return cfg


def upstream_v3_settings(nfe: int) -> dict:
    """Upstream's recommended v3 settings by step count (ScoreSDE ``sample.sh``), order 3."""
    if nfe <= 5:
        return dict(order=3, p_pseudo=True, use_corrector=True, c_pseudo=True, lower_order_final=False)
    if nfe <= 8:
        return dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)
    if nfe <= 10:
        return dict(order=3, p_pseudo=False, use_corrector=False, c_pseudo=False, lower_order_final=True)
    return dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)


def our_ems(gm, ns, n_samples: int = EMS_SAMPLES, n_lambda: int = EMS_LAMBDAS):
    x0 = gm.sample_ve(n_samples, 0.0, torch.Generator().manual_seed(EMS_SEED))
    return compute_statistics(
        lambda x, t: gm.prediction("noise", x, t, ns),
        ns,
        x0,
        n_lambda=n_lambda,
        batch_size=16384,
        seed=EMS_SEED,
        progress=False,
        common_noise=True,  # smooth Monte-Carlo error along lambda (see bench_v3.py and the README)
    )


def run_v3(gm, ns, stats, xT_ve, n: int, grid: str, kwargs: dict | None, cache: dict):
    """Returns (x~ at the endpoint ``1/N``, sigma~ of the endpoint, counted NFE); None if the grid puts two
    steps on one EMS grid point."""
    if (grid, n) not in cache:
        try:
            cache[(grid, n)] = DPM_Solver_v3(stats, ns, steps=n, skip_type=grid)
        except ValueError:
            cache[(grid, n)] = None
    v3 = cache[(grid, n)]
    if v3 is None:
        return None
    calls = [0]

    def model_fn(x, t):
        calls[0] += 1
        return gm.prediction("noise", x, t, ns)

    t_T = torch.tensor(ns.T, dtype=torch.float64)
    t_end = torch.tensor(1.0 / ns.total_N, dtype=torch.float64)
    x = v3.sample(xT_ve * ns.marginal_alpha(t_T), model_fn, **(kwargs or upstream_v3_settings(n)))
    a_end, s_end = ns.marginal_alpha(t_end), ns.marginal_std(t_end)
    return x / a_end, float(s_end / a_end), calls[0]


def diffusers_grid_t(n: int) -> torch.Tensor:
    """diffusers' multistep ``linspace`` grid to sigma_min as continuous times ``t = (timestep + 1)/1000``."""
    ts = np.linspace(0, 999, n + 1).round()[::-1].copy().astype(np.int64)
    return torch.from_numpy((ts + 1) / 1000.0).to(torch.float64)


def run_ours(gm, ns, xT_ve, n: int, kwargs: dict) -> tuple[torch.Tensor, float, int]:
    """Returns (x~ at the endpoint, sigma~ of the endpoint, counted NFE)."""
    kwargs = dict(kwargs)
    grid = kwargs.pop("grid", None)
    calls = [0]

    def model_fn(x, t):
        calls[0] += 1
        a = ns.marginal_alpha(t).reshape(-1, 1)
        s = ns.marginal_std(t).reshape(-1, 1)
        return gm.eps_ve(x / a, (s / a).reshape(-1))

    solver = DPM_Solver(model_fn, ns, algorithm_type="dpmsolver++")
    if grid == "diffusers":
        solver.get_time_steps = lambda *a, **k: diffusers_grid_t(n)
    t_end = 1.0 / ns.total_N
    x = solver.sample(xT_ve * ns.marginal_alpha(torch.tensor(ns.T, dtype=torch.float64)), steps=n, **kwargs)
    a_end = ns.marginal_alpha(torch.tensor(t_end, dtype=torch.float64))
    s_end = ns.marginal_std(torch.tensor(t_end, dtype=torch.float64))
    return x / a_end, float(s_end / a_end), calls[0]


# -- diffusers ---------------------------------------------------------------------------------------
def diffusers_configs() -> dict[str, tuple[type, dict]]:
    m, s = DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler
    return {
        "diffusers DPM++2M": (m, dict(solver_order=2)),
        "diffusers DPM++2M Karras": (m, dict(solver_order=2, use_karras_sigmas=True)),
        "diffusers DPM++3M": (m, dict(solver_order=3)),
        "diffusers DPM++3M Karras": (m, dict(solver_order=3, use_karras_sigmas=True)),
        "diffusers DPM++2M sigma_min": (m, dict(solver_order=2, final_sigmas_type="sigma_min")),
        "diffusers DPM++2M sigma_min lof=F": (
            m,
            dict(solver_order=2, final_sigmas_type="sigma_min", lower_order_final=False),
        ),
        "diffusers DPM++2S singlestep": (s, dict(solver_order=2)),
        "diffusers DPM++3S singlestep": (s, dict(solver_order=3)),
        "diffusers UniPC bh2": (UniPCMultistepScheduler, dict(solver_order=2)),
        "diffusers UniPC-3 bh2": (UniPCMultistepScheduler, dict(solver_order=3)),
        "diffusers DDIM trailing": (
            DDIMScheduler,
            dict(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True),
        ),
        "diffusers Euler trailing": (EulerDiscreteScheduler, dict(timestep_spacing="trailing")),
        # our diffusers-compatible schedulers, driven exactly like diffusers' (float32)
        "ours sched 2M": (MultistepDPMSolverScheduler, dict(solver_order=2)),
        "ours sched 2M logSNR": (
            MultistepDPMSolverScheduler,
            dict(solver_order=2, timestep_spacing="logSNR"),
        ),
        "ours sched 3M karras": (MultistepDPMSolverScheduler, dict(solver_order=3, use_karras_sigmas=True)),
        "ours sched 3S logSNR": (
            SinglestepDPMSolverScheduler,
            dict(solver_order=3, timestep_spacing="logSNR"),
        ),
    }


def run_diffusers(gm, sched, xT_ve, n: int) -> tuple[torch.Tensor, float, float, int]:
    """Drive a diffusers scheduler with the exact eps at ``sigmas[i]`` (reference section 13.5).

    Returns (x~ at the endpoint, sigma~ start, sigma~ end, NFE). Computation is diffusers' float32.
    """
    sched.set_timesteps(n)
    acp = sched.alphas_cumprod.to(torch.float64)
    ve = isinstance(sched, EulerDiscreteScheduler)

    def sigma_at(i: int, t) -> float:
        if hasattr(sched, "sigmas"):
            return float(sched.sigmas[i])
        a = acp[int(t)]
        return math.sqrt((1 - a) / a)

    sig0 = sigma_at(0, sched.timesteps[0])
    x = (xT_ve if ve else xT_ve / math.sqrt(1 + sig0**2)).to(torch.float32)
    nfe = 0
    for i, t in enumerate(sched.timesteps):
        st = sigma_at(i, t)
        sched.scale_model_input(x, t)
        x_ve = x.double() if ve else x.double() * math.sqrt(1 + st**2)
        eps = gm.eps_ve(x_ve, torch.tensor(st, dtype=torch.float64)).to(torch.float32)
        nfe += 1
        x = sched.step(eps, t, x).prev_sample
    if isinstance(sched, DDIMScheduler):
        a = float(sched.final_alpha_cumprod)
        s_end = math.sqrt((1 - a) / a)
    else:
        s_end = float(sched.sigmas[-1])
    x_end = x.double() if ve else x.double() * math.sqrt(1 + s_end**2)
    return x_end, sig0, s_end, nfe


# -- driver ------------------------------------------------------------------------------------------
class References:
    """Reference endpoints from ``sigma_max`` (cached per end level); the one to 0 continues the one to
    ``sigma_min``. The first of each kind is checked against half the RK4 steps."""

    def __init__(self, gm, xT, sig_max, sig_min, steps, label, log) -> None:
        self.gm, self.xT, self.sig_max, self.sig_min = gm, xT, sig_max, sig_min
        self.steps, self.label, self.log = steps, label, log
        self.refs: dict[float, torch.Tensor] = {}

    def __call__(self, s_end: float, s_start: float | None = None) -> torch.Tensor:
        if s_start is not None and abs(s_start - self.sig_max) > 1e-4 * self.sig_max:
            raise RuntimeError(f"unexpected start sigma {s_start} (expected {self.sig_max})")
        key = round(s_end, 6)
        for k, v in self.refs.items():
            if abs(k - key) <= 1e-5 * max(key, 1e-3):
                return v
        if key == 0.0:  # continue the sigma_min reference down to 0 (shares the long part)
            start, x_start = self.sig_min, self(self.sig_min)
        else:
            start, x_start = self.sig_max, self.xT
        r = reference_flow(self.gm.eps_ve, x_start, start, s_end, self.steps)
        if len(self.refs) == 0 or key == 0.0:
            r2 = reference_flow(self.gm.eps_ve, x_start, start, s_end, self.steps // 2)
            diff = float((r - r2).abs().max())
            self.log.append(
                f"{self.label} sigma~ {start:.4g} -> {s_end:.4g}: |ref({self.steps}) - ref({self.steps // 2})|"
                f"_max = {diff:.1e}"
            )
        self.refs[key] = r
        return r


def errors(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    e = ((x - ref).norm(dim=1) / math.sqrt(x.shape[1])).numpy()
    if not np.isfinite(e).all():
        return dict(mean=float("nan"), median=float("nan"), p99=float("nan"))
    return dict(mean=float(e.mean()), median=float(np.median(e)), p99=float(np.quantile(e, 0.99)))


def order_slope(nfes, errs) -> float:
    nf, er = np.asarray(nfes, float), np.asarray(errs, float)
    ok = np.isfinite(er) & (er > 0)
    if ok.sum() < 3:
        return float("nan")
    return float(-np.polyfit(np.log(nf[ok]), np.log(er[ok]), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument(
        "--ref-steps", type=int, default=1600, help="RK4 steps of the reference (x2 with Richardson)"
    )
    ap.add_argument("--quick", action="store_true", help="one problem, one schedule, no order sweep")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report-only", action="store_true", help="rebuild table/checks/PNG from the CSV")
    args = ap.parse_args()
    if args.report_only:
        report_from_csv(args)
        return
    warnings.filterwarnings("ignore")
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t_begin = time.time()
    probs = problems()
    scheds = SCHEDULES
    nfe_list = sorted(set(NFES) | set(ORDER_NFES))
    if args.quick:
        probs = {k: probs[k] for k in list(probs)[:1]}
        scheds = {"sd": SCHEDULES["sd"]}
        nfe_list = list(NFES)
    ours, v3s = our_configs(), v3_configs()
    theirs = diffusers_configs()  # also holds our scheduler classes
    rows: list[dict] = []
    ref_check: list[str] = []
    for pname, gm in probs.items():
        for sname, skw in scheds.items():
            betas = DDIMScheduler(**skw).betas.to(torch.float64)
            ns = NoiseScheduleVP("discrete", betas=betas, clipped_lambda=None)
            acp = torch.cumprod(1 - betas, 0)
            sig_max = float(((1 - acp[-1]) / acp[-1]).sqrt())
            sig_min = float(((1 - acp[0]) / acp[0]).sqrt())
            g = torch.Generator().manual_seed(1234)
            xT = gm.sample_ve(args.samples, sig_max, g)
            ref_for = References(gm, xT, sig_max, sig_min, args.ref_steps, f"{pname}/{sname}", ref_check)
            t0 = time.time()
            stats = our_ems(gm, ns)
            ref_check.append(
                f"EMS {pname}/{sname}: {EMS_LAMBDAS + 1} lambdas x {EMS_SAMPLES} samples (common noise) in {time.time() - t0:.1f} s"
            )
            v3_cache: dict = {}
            for n in nfe_list:
                for name, kw in ours.items():
                    if n < kw.get("order", 1):
                        continue
                    x, s_end, nfe = run_ours(gm, ns, xT, n, kw)
                    assert nfe == n, (name, n, nfe)
                    rows.append(
                        dict(problem=pname, schedule=sname, solver=name, nfe=n, sigma_end=s_end)
                        | errors(x, ref_for(s_end))
                    )
                for name, (grid, kw) in v3s.items():
                    if n < (kw or {}).get("order", 3):
                        continue
                    res = run_v3(gm, ns, stats, xT, n, grid, kw, v3_cache)
                    if res is None:
                        continue
                    x, s_end, nfe = res
                    assert nfe == n, (name, n, nfe)
                    rows.append(
                        dict(problem=pname, schedule=sname, solver=name, nfe=n, sigma_end=s_end)
                        | errors(x, ref_for(s_end))
                    )
                for name, (cls, kw) in theirs.items():
                    try:
                        sched = cls(**skw, **kw)
                        x, s0, s_end, nfe = run_diffusers(gm, sched, xT, n)
                        assert nfe == n, (name, n, nfe)
                        err = errors(x, ref_for(s_end, s0))
                    except Exception as e:
                        s_end = float("nan")
                        err = dict(mean=float("nan"), median=float("nan"), p99=float("nan"))
                        print(f"  {name} {sname} NFE {n}: {type(e).__name__}: {str(e)[:80]}")
                    rows.append(
                        dict(problem=pname, schedule=sname, solver=name, nfe=n, sigma_end=s_end) | err
                    )
                    if not name.startswith("diffusers") and not np.isfinite(err["mean"]):
                        raise RuntimeError(f"our scheduler {name} failed at NFE {n}")
            print(
                f"[{time.time() - t_begin:6.1f} s] {pname} / {sname} done (sigma~ {sig_min:.4g} .. {sig_max:.4g})"
            )

    runtime = time.time() - t_begin
    write_outputs(rows, ref_check, args, runtime)


def report_from_csv(args) -> None:
    with open(args.out / "bench_vs_diffusers.csv") as f:
        rows = [
            {
                k: (v if k in ("problem", "schedule", "solver") else (int(v) if k == "nfe" else float(v)))
                for k, v in r.items()
            }
            for r in csv.DictReader(f)
        ]
    meta = (args.out / "bench_vs_diffusers.md").read_text().splitlines()
    runtime = float(meta[0].split("runtime ")[1].split(" s")[0])
    ref_check = meta[2].split(": ", 1)[1].split("; ")
    write_outputs(rows, ref_check, args, runtime)


def write_outputs(rows, ref_check, args, runtime) -> None:
    out = args.out
    with open(out / "bench_vs_diffusers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    key = {(r["problem"], r["schedule"], r["solver"], r["nfe"]): r for r in rows}
    combos = sorted({(r["problem"], r["schedule"]) for r in rows}, key=lambda c: (c[0], c[1]))
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    nfes = [n for n in NFES if any(r["nfe"] == n for r in rows)]
    lines = [
        f"# bench_vs_diffusers ({datetime.date.today()}, {args.samples} samples, runtime {runtime:.0f} s)",
        "",
        "Reference accuracy and EMS cost: " + "; ".join(ref_check),
        "",
    ]
    # median error tables
    for p, s in combos:
        lines += [f"## {p} / {s}: median error (order = slope over 20-200 NFE)", ""]
        lines.append("| solver | end | " + " | ".join(str(n) for n in nfes) + " | order |")
        lines.append("|---|---|" + "---|" * (len(nfes) + 1))
        for sv in solvers:
            vals = [key.get((p, s, sv, n)) for n in nfes]
            if all(v is None for v in vals):
                continue
            ends = [v["sigma_end"] for v in vals if v is not None and np.isfinite(v["sigma_end"])]
            end = ("0" if ends[0] == 0 else "σmin") if ends else "-"
            o_n = [n for n in ORDER_NFES if (p, s, sv, n) in key]
            slope = order_slope(o_n, [key[(p, s, sv, n)]["median"] for n in o_n])
            cells = [f"{v['median']:.2e}" if v is not None else "" for v in vals]
            lines.append(f"| {sv} | {end} | " + " | ".join(cells) + f" | {slope:.2f} |")
        lines.append("")
    lines += checks(key, combos, solvers)
    lines += summary(key, combos, solvers)
    text = "\n".join(lines)
    (out / "bench_vs_diffusers.md").write_text(text + "\n")
    print(text)
    plot(key, combos, solvers, out / "bench_vs_diffusers.png")


def checks(key, combos, solvers) -> list[str]:
    lines = ["## Checks", ""]
    # consistency: same algorithm on the same grid

    def rel_diff(a_name: str, b_name: str, cosine: bool) -> float:
        worst = 0.0
        for p, s in combos:
            if (s == "cosine") != cosine:
                continue
            for n in NFES:
                a, b = key.get((p, s, a_name, n)), key.get((p, s, b_name, n))
                if a and b:
                    worst = max(worst, abs(a["mean"] - b["mean"]) / b["mean"])
        return worst

    f64 = rel_diff("ours 2M diffusers-grid", "diffusers DPM++2M sigma_min lof=F", False)
    f64c = rel_diff("ours 2M diffusers-grid", "diffusers DPM++2M sigma_min lof=F", True)
    f32 = rel_diff("ours sched 2M", "diffusers DPM++2M", False)
    f32c = rel_diff("ours sched 2M", "diffusers DPM++2M", True)
    lines.append(
        "- Consistency (same rule, same grid; max relative difference of the mean error over problems and "
        "NFE 5..50): functional DPM_Solver 2M (float64) vs diffusers DPM++2M (float32; sigma_min, "
        f"lower_order_final=False, diffusers' grid): {100 * f64:.3f}% on linear/sd, {100 * f64c:.2f}% on cosine "
        f"({'PASS' if max(f64, f64c) < 0.01 else 'FAIL'}, target < 1%); our scheduler (float32) vs diffusers "
        f"DPM++2M, both defaults: {100 * f32:.4f}% on linear/sd, {100 * f32c:.2f}% on cosine. On cosine "
        "alpha_T = 5e-5, so float32 rounding in x0 = (x - sigma eps)/alpha (amplified 2e4x) alone moves the "
        "error by ~1%."
    )
    ours = [sv for sv in solvers if sv.startswith("ours") and sv != "ours 2M diffusers-grid"]
    ours_no_v3 = [sv for sv in ours if not sv.startswith("ours v3")]
    v3 = [sv for sv in ours if sv.startswith("ours v3")]
    # the brief's list of diffusers schedulers in their default settings; the sigma_min variants are
    # consistency configs (same endpoint as ours) and are reported, not targeted
    theirs = [sv for sv in solvers if sv.startswith("diffusers") and "sigma_min" not in sv]
    low = [n for n in NFES if 5 <= n <= 20]

    def best(names, p, s, n, metric):
        vals = [(key[(p, s, sv, n)][metric], sv) for sv in names if (p, s, sv, n) in key]
        vals = [v for v in vals if np.isfinite(v[0])]
        return min(vals) if vals else (float("inf"), "-")

    for metric in ("median", "mean"):
        for label, group in (
            ("our best incl. v3", ours),
            ("our best without v3", ours_no_v3),
            ("v3 alone", v3),
        ):
            if not group:
                continue
            fails = []
            for p, s in combos:
                for n in low:
                    ob, db = best(group, p, s, n, metric), best(theirs, p, s, n, metric)
                    if not ob[0] < db[0]:
                        fails.append(f"{p}/{s}/NFE {n}: {ob[1]} {ob[0]:.2e} vs {db[1]} {db[0]:.2e}")
            winners = [
                sv
                for sv in group
                if all(
                    (p, s, sv, n) in key and key[(p, s, sv, n)][metric] < best(theirs, p, s, n, metric)[0]
                    for p, s in combos
                    for n in low
                )
            ]
            per_combo: dict[str, int] = {}
            for f in fails:
                c = f.split("/NFE")[0]
                per_combo[c] = per_combo.get(c, 0) + 1
            lines.append(
                f"- {metric} error, {label}: beats every diffusers scheduler at each NFE 5..20: "
                + ("PASS" if not fails else f"FAIL at {len(fails)} of {len(combos) * len(low)} points")
                + " ("
                + (", ".join(f"{c}: {k}" for c, k in sorted(per_combo.items())) or "no misses")
                + ")"
                + (f"; misses: {'; '.join(fails[:12])}" if fails else "")
                + (
                    f". Single configs that win everywhere: {', '.join(winners)}"
                    if winners
                    else ". No single config wins everywhere"
                )
            )
    return [*lines, ""]


def summary(key, combos, solvers) -> list[str]:
    """Median error at NFE 5..20: best of ours without v3, best v3, best diffusers scheduler (defaults)."""
    groups = {
        "ours w/o v3": [sv for sv in solvers if sv.startswith("ours") and not sv.startswith("ours v3")],
        "ours v3": [sv for sv in solvers if sv.startswith("ours v3")],
        "diffusers": [sv for sv in solvers if sv.startswith("diffusers") and "sigma_min" not in sv],
    }
    groups["ours w/o v3"].remove("ours 2M diffusers-grid")
    low = [n for n in NFES if 5 <= n <= 20]
    lines = [
        "## Summary: best median error per group at NFE 5..20 (v3 / best diffusers in the last column)",
        "",
        "| problem / schedule | NFE | best ours without v3 | best v3 | best diffusers | v3 / diffusers |",
        "|---|---|---|---|---|---|",
    ]
    for p, s in combos:
        for n in low:
            best = {}
            for g, names in groups.items():
                vals = [(key[(p, s, sv, n)]["median"], sv) for sv in names if (p, s, sv, n) in key]
                vals = [v for v in vals if np.isfinite(v[0])]
                best[g] = min(vals) if vals else (float("nan"), "-")
            cells = [
                f"{best[g][0]:.2e} ({best[g][1].removeprefix('ours ').removeprefix('diffusers ')})"
                for g in groups
            ]
            ratio = best["ours v3"][0] / best["diffusers"][0]
            lines.append(f"| {p} / {s} | {n} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    # how often each single v3 configuration beats every diffusers scheduler
    counts = []
    for sv in groups["ours v3"]:
        wins = sum(
            1
            for p, s in combos
            for n in low
            if (p, s, sv, n) in key
            and key[(p, s, sv, n)]["median"]
            < min(
                key[(p, s, d, n)]["median"]
                for d in groups["diffusers"]
                if (p, s, d, n) in key and np.isfinite(key[(p, s, d, n)]["median"])
            )
        )
        counts.append(f"{sv.removeprefix('ours ')} {wins}/{len(combos) * len(low)}")
    lines += [
        "",
        "Points won against every diffusers scheduler (median), per single v3 configuration: "
        + ", ".join(counts),
        "",
    ]
    return lines


PLOTTED = (  # a readable subset (every configuration is in the CSV and the tables)
    "ours 2M logSNR",
    "ours 3M logSNR",
    "ours 2M time_quadratic",
    "ours 3M karras",
    "ours 3S logSNR",
    "ours 3S time_uniform",
    "ours sched 2M logSNR",
    "ours v3-3c logSNR",
    "ours v3-3c time_uniform",
    "ours v3-2C time_uniform",
    "diffusers DPM++2M",
    "diffusers DPM++2M Karras",
    "diffusers DPM++3M",
    "diffusers DPM++3M Karras",
    "diffusers DPM++3S singlestep",
    "diffusers UniPC bh2",
    "diffusers UniPC-3 bh2",
    "diffusers DDIM trailing",
    "diffusers Euler trailing",
)


def plot(key, combos, solvers, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = len({s for _, s in combos})
    nrow = len({p for p, _ in combos})
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 4 * nrow), squeeze=False)
    probs = list(dict.fromkeys(p for p, _ in combos))
    scheds = list(dict.fromkeys(s for _, s in combos))
    shown = [sv for sv in PLOTTED if sv in solvers]
    colors = dict(zip(shown, plt.cm.tab20(np.linspace(0, 1, 20)), strict=False))
    for p, s in combos:
        ax = axes[probs.index(p)][scheds.index(s)]
        for sv in shown:
            pts = sorted(
                (n, key[(p, s, sv, n)]["median"]) for (pp, ss, v, n) in key if (pp, ss, v) == (p, s, sv)
            )
            pts = [(n, e) for n, e in pts if np.isfinite(e)]
            if pts:
                ls = "-" if sv.startswith("ours") else "--"
                ax.loglog(*zip(*pts, strict=False), ls, marker=".", label=sv, lw=1.2, color=colors[sv])
        ax.set_title(f"{p} / {s}")
        ax.set_xlabel("NFE")
        ax.set_ylabel("median endpoint error")
        ax.grid(True, which="both", alpha=0.3)
    legend: dict = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(lab, h)
    labels = [sv for sv in shown if sv in legend]
    fig.legend([legend[lab] for lab in labels], labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
