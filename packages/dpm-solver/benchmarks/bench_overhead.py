"""Solver overhead per step on the CPU, relative to one evaluation of the tiny digits UNet.

The model is replaced by a constant (zero-cost) output, so the time per step is the solver's own work:
coefficient computation, the update rule, the model-output conversion and the bookkeeping. Compared:
our functional ``DPM_Solver.sample`` (multistep 2M / 3M, singlestep 3), ``DPM_Solver_v3.sample`` (order
2 / 3, corrector on), our diffusers-compatible schedulers (DPM-Solver++ and ``DPMSolverV3Scheduler``), and
diffusers' ``DPMSolverMultistepScheduler``. v3 uses per-pixel statistics of the sample's shape on a
1200-interval lambda grid (the values do not change the cost; ``EMSStatistics.degenerated``). Best of
``--repeats`` runs (the machine is shared; timings are noisy).

Run: ``python packages/dpm-solver/benchmarks/bench_overhead.py``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.utils import logging as diffusers_logging
from dpm_solver import DPM_Solver, DPM_Solver_v3, NoiseScheduleVP
from dpm_solver.schedulers import MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler
from dpm_solver.statistics import EMSStatistics, save_statistics
from dpm_solver.v3_scheduler import DPMSolverV3Scheduler

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 20


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def unet_eval(shape, repeats: int) -> float:
    from bench_digits import make_unet  # same tiny UNet as the digits benchmark

    unet = make_unet().eval()
    x = torch.randn(shape)
    t = torch.full((shape[0],), 500)
    with torch.no_grad():
        return best_of(lambda: unet(x, t).sample, repeats)


def functional(shape, repeats: int, **kw) -> float:
    ns = NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000))
    out = torch.randn(shape) * 0.1
    solver = DPM_Solver(lambda x, t: out, ns, algorithm_type="dpmsolver++")
    x = torch.randn(shape)
    return best_of(lambda: solver.sample(x, steps=STEPS, **kw), repeats) / STEPS


def v3_stats(shape) -> EMSStatistics:
    """Per-pixel EMS of the sample's shape on upstream's 1200-interval grid (values: l = 1, s = b = 0)."""
    ns = NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000))
    return EMSStatistics.degenerate(ns, 1.0, 1.0 / 1000, 1200, shape[1:])


def functional_v3(shape, repeats: int, setup: dict, solvers: dict, **kw) -> float:
    if shape not in solvers:  # one solver per shape (order is a `sample` argument)
        ns = NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000))
        stats = v3_stats(shape)
        t0 = time.perf_counter()
        solvers[shape] = DPM_Solver_v3(stats, ns, steps=STEPS, skip_type="time_uniform")
        setup[shape] = time.perf_counter() - t0  # one-off: EMS integral tables + grid
    solver = solvers[shape]
    out = torch.randn(shape) * 0.1
    x = torch.randn(shape)
    return best_of(lambda: solver.sample(x, lambda x_, t_: out, **kw), repeats) / STEPS


def scheduler_v3(shape, repeats: int, tmp: Path, order: int, setup: dict) -> float:
    """``step`` only: ``set_timesteps`` (which builds a ``DPM_Solver_v3``) is timed once into ``setup``."""
    path = tmp / f"ems_{'x'.join(map(str, shape[1:]))}.safetensors"
    save_statistics(v3_stats(shape), path)
    sched = DPMSolverV3Scheduler(statistics_path=str(path), solver_order=order, corrector_pseudo=False)
    sched.statistics  # noqa: B018 (load the file outside the timings)
    t0 = time.perf_counter()
    sched.set_timesteps(STEPS)
    setup[shape] = time.perf_counter() - t0
    out = torch.randn(shape) * 0.1
    x0 = torch.randn(shape)

    def run():
        # restart the same grid without rebuilding the solver (what set_timesteps resets)
        sched._step_index, sched._cache, sched._p_order = None, ([], [], []), 0
        x = x0
        for t in sched.timesteps:
            x = sched.step(out, t, x).prev_sample

    return best_of(run, repeats) / STEPS


def scheduler(sched, shape, repeats: int) -> float:
    out = torch.randn(shape) * 0.1
    x0 = torch.randn(shape)

    def run():
        sched.set_timesteps(STEPS)
        x = x0
        for t in sched.timesteps:
            x = sched.step(out, t, x).prev_sample

    return best_of(run, repeats) / STEPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shapes = [(1, 1, 8, 8), (64, 1, 8, 8), (1, 4, 64, 64)]
    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    v3_setup: dict = {}
    v3_solvers: dict = {}
    v3_sched_setup: dict = {}
    cases = {
        "ours DPM_Solver 2M": lambda s: functional(s, args.repeats, order=2, skip_type="logSNR"),
        "ours DPM_Solver 3M": lambda s: functional(s, args.repeats, order=3, skip_type="logSNR"),
        "ours DPM_Solver 3S": lambda s: functional(
            s, args.repeats, order=3, skip_type="logSNR", method="singlestep"
        ),
        "ours scheduler 2M": lambda s: scheduler(MultistepDPMSolverScheduler(), s, args.repeats),
        "ours scheduler 3S": lambda s: scheduler(
            SinglestepDPMSolverScheduler(solver_order=3), s, args.repeats
        ),
        "ours DPM_Solver_v3 order 2": lambda s: functional_v3(
            s, args.repeats, v3_setup, v3_solvers, order=2, c_pseudo=False
        ),
        "ours DPM_Solver_v3 order 3": lambda s: functional_v3(
            s, args.repeats, v3_setup, v3_solvers, order=3, c_pseudo=False
        ),
        "ours v3 scheduler order 2 (step only)": lambda s: scheduler_v3(
            s, args.repeats, tmp, 2, v3_sched_setup
        ),
        "diffusers DPMSolverMultistep 2M": lambda s: scheduler(
            DPMSolverMultistepScheduler(), s, args.repeats
        ),
    }
    rows = []
    unet_t = {s: unet_eval(s, args.repeats) for s in shapes if s[1] == 1}
    for shape in shapes:
        for name, fn in cases.items():
            t = fn(shape)
            ratio = t / unet_t[shape] if shape in unet_t else float("nan")
            rows.append(
                dict(case=name, shape="x".join(map(str, shape)), us_per_step=1e6 * t, vs_unet_eval=ratio)
            )
    shutil.rmtree(tmp, ignore_errors=True)
    with open(RESULTS / "bench_overhead.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"# bench_overhead ({datetime.date.today()}, {args.threads} thread(s), best of {args.repeats}, "
        f"{STEPS} steps)",
        "",
        "Tiny digits UNet, one evaluation: "
        + ", ".join(f"batch {s[0]} {1e3 * t:.2f} ms" for s, t in unet_t.items()),
        "",
        "DPM-Solver++ schedulers: `set_timesteps` + the steps, per step. v3 (functional `sample` and the "
        "scheduler's `step`): per step, with the solver built once (its exponential coefficients are cached "
        "after the first run). The build is a one-off per grid: the `DPM_Solver_v3` constructor (EMS "
        "integral tables, per pixel, 1200 intervals x 4 Gauss nodes): "
        + ", ".join(f"{'x'.join(map(str, s))} {1e3 * t:.1f} ms" for s, t in v3_setup.items())
        + "; the v3 scheduler's `set_timesteps` (builds a new `DPM_Solver_v3` every call): "
        + ", ".join(f"{'x'.join(map(str, s))} {1e3 * t:.1f} ms" for s, t in v3_sched_setup.items())
        + ". v3 rows: corrector on, `c_pseudo=False`, time_uniform grid.",
        "",
        "| solver | shape | µs / step | × one UNet eval |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r["vs_unet_eval"] != r["vs_unet_eval"] else f"{r['vs_unet_eval']:.3f}"
        lines.append(f"| {r['case']} | {r['shape']} | {r['us_per_step']:.0f} | {ratio} |")
    text = "\n".join(lines)
    (RESULTS / "bench_overhead.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
