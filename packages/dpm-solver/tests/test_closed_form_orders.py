# ruff: noqa: E741  (l is the paper's name of the v3 statistic)
"""Every solver converges at its order on a linear-Gaussian model whose ODE solution is exact in closed form
(issue 5, "Done means").

Data ``x0 ~ N(mu, diag(s^2))`` in R^6 (per-axis stds log-uniform in [0.1, 1]). With
``x = alpha x0 + sigma z`` the exact noise prediction is ``eps(x, t) = sigma (x - alpha mu) / (alpha^2 s^2 +
sigma^2)``, and the probability-flow ODE in VE coordinates ``x~ = x / alpha``, ``st = sigma / alpha`` is
solved exactly by ``x~(st1) = mu + (x~(st0) - mu) sqrt((s^2 + st1^2) / (s^2 + st0^2))``: no reference
integration, so the error of a solver is its own error down to float64 rounding (~1e-13 here).

The empirical order is the least-squares slope of ``log err`` against ``log NFE`` on a ladder (NFE doubled
twice), ``err`` = the largest per-sample RMS error over 32 samples, everything in float64 on a logSNR grid.
Each ladder sits where the slope has settled (measured, see ``python tests/test_closed_form_orders.py``).
What the measurements show, and what is asserted:

* every first- and second-order solver, DPM-Solver-3 singlestep, exact 3M and v3 (degenerated)
  converge at their nominal order (within +-0.4);
* upstream's 3M coefficient (``exact_3m=False``) converges at order 2;
* ``method="singlestep"`` with order 3 follows upstream's order list: NFE = 3k + 2 ends with a second-order
  block (order 3); NFE = 3k and 3k + 1 end with a first-order block (global order 2);
* exact 3M converges at order 3 only when the model output is flat where sampling starts: its first two
  steps are DDIM and 2M (the multistep warm-up), whose local errors ``O(h^2)`` and ``O(h^3)`` are
  multiplied by the derivative of the model output at ``t_start``. From the linear VP schedule's
  ``t = 1`` (``sigma~ = 157``) that derivative is ~1e-6 and 3M is third order up to ~2000 NFE (below ~400
  NFE an ``h^4`` term dominates: local slopes 3.5-4; beyond ~2000 NFE the noise-prediction variant's
  slope falls to ~2.3, the warm-up term at the 1e-11 level). From Stable Diffusion's ``sigma~_max = 14.6``
  the DDIM warm-up step dominates from ~200 NFE on and the order is 2 (functional solver and scheduler
  alike; strict xfail below). Started from exact history the same update is third order on that schedule;
* v3 with the exact statistics of this Gaussian (``l = sigma^2 / (alpha^2 s^2 + sigma^2)``, ``s = 0``,
  ``b = df/dlambda``) integrates the ODE exactly up to the O(grid^2) quadrature of the statistics, at any
  NFE and order; so its step-count order is not measurable, and the test checks that instead; the
  statistics tool (``compute_statistics``) recovers ``l`` and ``s`` exactly and ``b`` to O(grid^2).

First-order solvers equal DDIM: functional multistep / singlestep / v3 already in test_solver.py,
test_singlestep.py, test_v3.py; here the two schedulers against DDIM on their own grid and against diffusers'
``DDIMScheduler``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from dpm_solver import DPM_Solver, DPM_Solver_v3, NoiseScheduleVP
from dpm_solver.analytic import DiagonalGaussianMixture, reference_flow
from dpm_solver.schedulers import MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler
from dpm_solver.statistics import EMSStatistics, compute_statistics

D, N_SAMPLES = 6, 32
_g = torch.Generator().manual_seed(0)
MU = torch.randn(D, generator=_g, dtype=torch.float64)
STD = torch.exp(math.log(0.1) + torch.rand(D, generator=_g, dtype=torch.float64) * math.log(10.0))
XI = torch.randn(N_SAMPLES, D, generator=_g, dtype=torch.float64)  # standard normal draws

LINEAR = NoiseScheduleVP("linear")  # beta 0.1 .. 20: sigma~(t=1) = 157
SD_BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
SD = NoiseScheduleVP("discrete", betas=SD_BETAS)  # Stable Diffusion: sigma~(t=1) = 14.6
SD_CFG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
LIN_CFG = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
T_START, T_END = 1.0, 1e-3


# -- the closed-form model -----------------------------------------------------------------------
def eps_exact(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return sigma * (x - alpha * MU) / (alpha**2 * STD**2 + sigma**2)


def model_fn(ns: NoiseScheduleVP):
    def fn(x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        return eps_exact(x, ns.marginal_alpha(t), ns.marginal_std(t))

    return fn


def flow_ve(x_ve: torch.Tensor, st0: float, st1: float) -> torch.Tensor:
    """Exact probability-flow ODE solution from VE level st0 to st1."""
    return MU + (x_ve - MU) * torch.sqrt((STD**2 + st1**2) / (STD**2 + st0**2))


def vp_problem(ns: NoiseScheduleVP, t0: float = T_START, t1: float = T_END):
    """VP start samples at t0 (drawn from the exact marginal) and the exact VP solution at t1."""
    tt = torch.tensor([t0, t1], dtype=torch.float64)
    a, s = ns.marginal_alpha(tt), ns.marginal_std(tt)
    st0, st1 = float(s[0] / a[0]), float(s[1] / a[1])
    x_ve = MU + XI * torch.sqrt(STD**2 + st0**2)
    return x_ve * a[0], flow_ve(x_ve, st0, st1) * a[1]


def err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref).norm(dim=1) / math.sqrt(D)).max())


def slope(nfes, errs) -> float:
    return float(-np.polyfit(np.log(nfes), np.log(errs), 1)[0])


# -- runners: NFE -> final sample error ----------------------------------------------------------
def functional(alg: str, method: str, order: int, ns: NoiseScheduleVP = LINEAR, **kw):
    x_T, ref = vp_problem(ns)

    def run(n: int) -> float:
        solver = DPM_Solver(model_fn(ns), ns, alg)
        x = solver.sample(
            x_T, steps=n, order=order, method=method, skip_type="logSNR", t_start=T_START, t_end=T_END, **kw
        )
        assert solver.nfe == n
        return err(x, ref)

    return run


def v3_degenerated(order: int):
    x_T, ref = vp_problem(LINEAR)

    def run(n: int) -> float:
        v3 = DPM_Solver_v3(
            None, LINEAR, steps=n, t_start=T_START, t_end=T_END, skip_type="logSNR", degenerated=True,
            statistics_steps=1536,
        )  # fmt: skip
        x = v3.sample(x_T, model_fn(LINEAR), order=order, use_corrector=False, lower_order_final=False)
        return err(x, ref)

    return run


def drive(sched, n: int, x_ve: torch.Tensor, calls: list | None = None) -> torch.Tensor:
    """A scheduler's step loop with the exact eps (VP samples; diffusers' sigma~ per step)."""
    sched.set_timesteps(n)
    x = x_ve / math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
    for i, t in enumerate(sched.timesteps):
        st = float(sched.sigmas[i])
        a = 1.0 / math.sqrt(1.0 + st * st)
        if calls is not None:
            calls.append(st)
        x = sched.step(eps_exact(x, torch.tensor(a), torch.tensor(st * a)), t, x).prev_sample
    return x


def scheduler(cls, cfg: dict, **kw):
    probe = cls(**cfg, timestep_spacing="logSNR", final_sigmas_type="sigma_min")
    s_min, s_max = float(probe.train_sigmas[0]), float(probe.train_sigmas[-1])
    x_ve = MU + XI * torch.sqrt(STD**2 + s_max**2)
    ref = flow_ve(x_ve, s_max, s_min) / math.sqrt(1.0 + s_min**2)

    def run(n: int) -> float:
        sched = cls(**cfg, **kw, timestep_spacing="logSNR", final_sigmas_type="sigma_min")
        calls: list = []
        x = drive(sched, n, x_ve, calls)
        assert len(calls) == n
        return err(x, ref)

    return run


def ladder(n0: int, k: int = 0) -> list[int]:
    return [n0 + k, 2 * n0 + k, 4 * n0 + k]


MS, SS, SSF = "multistep", "singlestep", "singlestep_fixed"
MSS, SSS = MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler

# (id, runner factory, NFE ladder, asserted order)
CASES = [
    *[
        (f"{MS}-{alg}-{o}", lambda alg=alg, o=o: functional(alg, MS, o), ladder(48), o)
        for alg, o in itertools.product(("dpmsolver", "dpmsolver++"), (1, 2))
    ],
    *[
        (f"{MS}-{alg}-3-upstream", lambda alg=alg: functional(alg, MS, 3), ladder(96), 2)
        for alg in ("dpmsolver", "dpmsolver++")
    ],
    (f"{MS}-dpmsolver-3-exact", lambda: functional("dpmsolver", MS, 3, exact_3m=True), ladder(512), 3),
    (f"{MS}-dpmsolver++-3-exact", lambda: functional("dpmsolver++", MS, 3, exact_3m=True), ladder(384), 3),
    *[
        (
            f"{m}-{alg}-{o}-nfe{'odd' if k else 'even'}",
            lambda alg=alg, m=m, o=o: functional(alg, m, o),
            ladder(48, k),
            o,
        )
        for alg, m, (o, k) in itertools.product(
            ("dpmsolver", "dpmsolver++"), (SS, SSF), ((1, 0), (2, 0), (2, 1))
        )
    ],
    (f"{SSF}-dpmsolver-3", lambda: functional("dpmsolver", SSF, 3), ladder(192), 3),
    (f"{SSF}-dpmsolver++-3", lambda: functional("dpmsolver++", SSF, 3), ladder(384), 3),
    *[
        (f"{SS}-{alg}-3-nfe3k+{k}", lambda alg=alg: functional(alg, SS, 3), ladder(n0, k), o)
        for alg, (k, n0, o) in itertools.product(
            ("dpmsolver", "dpmsolver++"), ((2, 192, 3), (0, 192, 2), (1, 192, 2))
        )
    ],
    *[(f"v3-degenerated-{o}", lambda o=o: v3_degenerated(o), ladder(48), o) for o in (1, 2)],
    ("v3-degenerated-3", lambda: v3_degenerated(3), ladder(384), 3),
    *[
        (
            f"sched-{c.__name__.removesuffix('DPMSolverScheduler')}-{alg}-{o}",
            lambda c=c, alg=alg, o=o: scheduler(c, SD_CFG, solver_order=o, algorithm_type=alg),
            ladder(60),
            o,
        )
        for c, alg, o in itertools.product((MSS, SSS), ("dpmsolver", "dpmsolver++"), (1, 2))
    ],
    *[
        (
            f"sched-Multistep-{alg}-3-upstream",
            lambda alg=alg: scheduler(MSS, SD_CFG, solver_order=3, algorithm_type=alg),
            ladder(120),
            2,
        )
        for alg in ("dpmsolver", "dpmsolver++")
    ],
    *[
        (
            f"sched-Singlestep-{alg}-3-nfe3k+{k}",
            lambda alg=alg: scheduler(SSS, SD_CFG, solver_order=3, algorithm_type=alg),
            ladder(n0, k),
            o,
        )
        for alg, (k, n0, o) in itertools.product(("dpmsolver", "dpmsolver++"), ((2, 240, 3), (0, 240, 2)))
    ],
    *[
        (
            f"sched-Singlestep-{alg}-3-no-lower-order-final",
            lambda alg=alg: scheduler(
                SSS, LIN_CFG, solver_order=3, algorithm_type=alg, lower_order_final=False
            ),
            ladder(240),
            3,
        )
        for alg in ("dpmsolver", "dpmsolver++")
    ],
    # exact 3M from Stable Diffusion's sigma_max: the DDIM warm-up step makes it second order
    *[
        (
            f"sched-Multistep-{alg}-3-exact-SD",
            lambda alg=alg: scheduler(MSS, SD_CFG, solver_order=3, algorithm_type=alg, exact_3m=True),
            ladder(240),
            2,
        )
        for alg in ("dpmsolver", "dpmsolver++")
    ],
    *[
        (
            f"{MS}-{alg}-3-exact-SD",
            lambda alg=alg: functional(alg, MS, 3, ns=SD, exact_3m=True),
            ladder(240),
            2,
        )
        for alg in ("dpmsolver", "dpmsolver++")
    ],
]


assert len({c[0] for c in CASES}) == len(CASES), "case names must be unique"
_MEASURED: dict[str, tuple[list[float], float]] = {}


def measure(name: str) -> tuple[list[float], float]:
    """Errors on the case's NFE ladder and the fitted order (cached: the xfail test reuses them)."""
    if name not in _MEASURED:
        factory, nfes = {c[0]: c[1:3] for c in CASES}[name]
        run = factory()
        errs = [run(n) for n in nfes]
        _MEASURED[name] = errs, slope(nfes, errs)
    return _MEASURED[name]


@pytest.mark.parametrize(("name", "order"), [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_empirical_order(name, order):
    errs, p = measure(name)
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] > 1e-12, errs  # far above float64 rounding: the slope is the solver's
    assert abs(p - order) <= 0.4, (errs, p)


@pytest.mark.xfail(
    strict=True,
    reason="defect: exact_3m is documented as 'global order 3', but the multistep warm-up (a DDIM step, "
    "then 2M) leaves an O(h^2) error when the model output is not flat at t_start (Stable Diffusion's "
    "sigma~_max = 14.6): measured order 2.0",
)
@pytest.mark.parametrize("name", [c[0] for c in CASES if c[0].endswith("-3-exact-SD")])
def test_exact_3m_third_order_from_stable_diffusion_sigma_max(name):
    errs, p = measure(name)
    assert abs(p - 3) <= 0.4, (errs, p)


@pytest.mark.parametrize("alg", ["dpmsolver", "dpmsolver++"])
def test_exact_3m_from_exact_history_is_third_order_on_sd_schedule(alg):
    """The cause of the xfail above: the same 3M update started from the exact solution at the first two
    grid points (no warm-up) is third order on the Stable Diffusion schedule."""
    x_T, _ = vp_problem(SD)
    fn = model_fn(SD)
    lam = SD.marginal_lambda(torch.tensor([T_START, T_END], dtype=torch.float64))
    tt = torch.tensor([T_START, T_END], dtype=torch.float64)
    st0 = float(SD.marginal_std(tt[:1]) / SD.marginal_alpha(tt[:1]))
    x_ve0 = x_T / SD.marginal_alpha(tt[:1])

    def exact_at(t):
        a, s = SD.marginal_alpha(t), SD.marginal_std(t)
        return flow_ve(x_ve0, st0, float(s / a)) * a

    nfes = ladder(240)  # local slopes (noise): 2.79, 2.90 -> 3; (data) 3.04, 3.02
    errs = []
    for n in nfes:
        ts = SD.inverse_lambda(lam[0] + (lam[1] - lam[0]) * torch.arange(n + 1, dtype=torch.float64) / n)
        solver = DPM_Solver(fn, SD, alg)
        hist_t = [ts[0], ts[1], ts[2]]
        hist_m = [solver.model_fn(exact_at(t), t) for t in hist_t]
        x = exact_at(ts[2])
        for i in range(3, n + 1):
            x = solver.multistep_dpm_solver_update(x, hist_m, hist_t, ts[i], 3, exact_3m=True)
            hist_t, hist_m = [*hist_t[1:], ts[i]], [*hist_m[1:], solver.model_fn(x, ts[i])]
        errs.append(err(x, exact_at(ts[-1])))
    assert abs(slope(nfes, errs) - 3) <= 0.4, errs


# -- v3 with the exact statistics of the Gaussian ----------------------------------------------------
def exact_statistics(ns: NoiseScheduleVP, n_lambda: int) -> EMSStatistics:
    """``l = sigma^2 / (alpha^2 s^2 + sigma^2)`` (sigma times the exact Jacobian diagonal of eps), and with
    ``f = (sigma eps - l x) / alpha = -mu / (e^{2 lambda} s^2 + 1)`` (independent of x) ``s = 0``,
    ``b = df/dlambda = 2 mu s^2 e^{2 lambda} / (e^{2 lambda} s^2 + 1)^2``."""
    ends = ns.marginal_lambda(torch.tensor([T_START, T_END], dtype=torch.float64))
    lam = ends[0] + (ends[1] - ends[0]) * torch.arange(n_lambda + 1, dtype=torch.float64) / n_lambda
    e = torch.exp(2.0 * lam)[:, None]
    l = 1.0 / (e * STD**2 + 1.0)
    b = 2.0 * MU * STD**2 * e / (e * STD**2 + 1.0) ** 2
    return EMSStatistics(l, torch.zeros_like(l), b, lam)


def test_v3_with_exact_statistics_is_exact_up_to_statistics_quadrature():
    x_T, ref = vp_problem(LINEAR)
    fn = model_fn(LINEAR)
    runs = ((3, 1), (6, 2), (6, 3), (30, 3))
    errs = {}
    for n_lambda in (600, 1200):
        stats = exact_statistics(LINEAR, n_lambda)
        for steps, order in runs:
            v3 = DPM_Solver_v3(stats, LINEAR, steps=steps, t_start=T_START, t_end=T_END, skip_type="logSNR")
            errs[n_lambda, steps, order] = err(v3.sample(x_T, fn, order=order, lower_order_final=True), ref)
    ddim3 = err(DPM_Solver(fn, LINEAR).sample(x_T, steps=3, order=1, skip_type="logSNR", t_end=T_END), ref)
    # measured: 8e-6 at 3 NFE, 1.8e-6 to 3.3e-6 at 6 and 30 NFE (DDIM at 3 NFE: 0.19); the statistics' grid
    # sets it: halving its spacing divides it by 4.0 (piecewise-linear statistics, O(grid^2))
    fine = [errs[(1200, *r)] for r in runs]
    assert max(fine) < 1e-5 and max(fine) < 1e-4 * ddim3, (errs, ddim3)
    assert max(fine) / min(fine) < 6.0, errs  # not a step-count effect: 3 -> 30 NFE changes it < 6x
    for r in runs:
        assert 3.5 < errs[(600, *r)] / errs[(1200, *r)] < 4.5, errs


def test_exact_statistics_match_the_jacobian_of_the_model():
    """The closed-form ``l`` is sigma times the Jacobian diagonal of eps: analytic.py's eps differentiated by
    forward-mode AD (the Jacobian is diagonal here, so a JVP with a ones tangent is its diagonal)."""
    gm = DiagonalGaussianMixture(MU[None], STD[None])
    stats = exact_statistics(LINEAR, 8)
    x, _ = vp_problem(LINEAR, T_START)
    for lam, l in zip(stats.lambdas, stats.l, strict=True):
        alpha, sigma = torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()
        st = (sigma / alpha).reshape(1)
        _, jac = torch.func.jvp(lambda v, a=alpha, st=st: gm.eps_ve(v / a, st), (x,), (torch.ones_like(x),))
        torch.testing.assert_close(sigma * jac, l.expand_as(jac), rtol=1e-10, atol=0)


def test_statistics_tool_recovers_the_exact_statistics():
    """``compute_statistics`` on this model: ``l`` exact (the Jacobian is diagonal, so one Rademacher probe is
    exact), ``Var(f) = 0`` gives ``s = 0``, and ``b`` is off only by the O(grid^2) finite difference of ``l``."""
    x0 = MU + STD * torch.randn(256, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b_err = []
    for n_lambda in (300, 600):
        got = compute_statistics(
            model_fn(LINEAR), LINEAR, x0, n_lambda=n_lambda, t_start=T_START, t_end=T_END, batch_size=4096,
            progress=False,
        )  # fmt: skip
        want = exact_statistics(LINEAR, n_lambda)
        torch.testing.assert_close(got.lambdas, want.lambdas, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.l, want.l, rtol=0, atol=1e-12)
        assert bool((got.s == 0).all())
        b_err.append(float((got.b - want.b).abs().max()))
    # measured 1.15e-2 and 2.9e-3 (|b| <= 1.09)
    assert b_err[1] < 5e-3 and 3.5 < b_err[0] / b_err[1] < 4.5, b_err
    x_T, ref = vp_problem(LINEAR)
    fn = model_fn(LINEAR)
    v3 = DPM_Solver_v3(got, LINEAR, steps=5, t_start=T_START, t_end=T_END, skip_type="logSNR")
    pp = DPM_Solver(fn, LINEAR).sample(x_T, steps=5, order=2, skip_type="logSNR", t_end=T_END)
    assert err(v3.sample(x_T, fn, order=2), ref) < err(pp, ref) / 50  # measured 8.8e-4 vs 8.1e-2


# -- the closed form itself -------------------------------------------------------------------------
def test_closed_form_matches_analytic_module_and_rk4():
    """eps equals analytic.py's exact prediction; the flow equals a fifth-order RK4-Richardson integration."""
    gm = DiagonalGaussianMixture(MU[None], STD[None])
    x, _ = vp_problem(LINEAR, 0.4)
    t = torch.full((N_SAMPLES,), 0.4, dtype=torch.float64)
    torch.testing.assert_close(
        gm.prediction("noise", x, t, LINEAR), model_fn(LINEAR)(x, t), rtol=1e-12, atol=1e-12
    )
    x_ve = MU + XI * torch.sqrt(STD**2 + 50.0**2)
    num = reference_flow(gm.eps_ve, x_ve, 50.0, 0.01, n_steps=400)
    torch.testing.assert_close(num, flow_ve(x_ve, 50.0, 0.01), rtol=0, atol=1e-9)


# -- first order == DDIM for the schedulers -----------------------------------------------------------
def ddim(x_ve: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DDIM (eta = 0) written out on a VE-level grid, in VP coordinates."""
    x = x_ve / math.sqrt(1.0 + float(sigmas[0]) ** 2)
    for s, t in itertools.pairwise(sigmas.tolist()):
        a_s, a_t = 1.0 / math.sqrt(1.0 + s * s), 1.0 / math.sqrt(1.0 + t * t)
        e = eps_exact(x, torch.tensor(a_s), torch.tensor(s * a_s))
        x0 = (x - s * a_s * e) / a_s
        x = a_t * x0 + t * a_t * e
    return x


@pytest.mark.parametrize("cls", [MSS, SSS])
@pytest.mark.parametrize("alg", ["dpmsolver", "dpmsolver++"])
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(final_sigmas_type="sigma_min", timestep_spacing="logSNR"), dict(use_karras_sigmas=True)],
    ids=["linspace-zero", "logSNR-sigma_min", "karras-zero"],
)
def test_scheduler_order_1_is_ddim(cls, alg, kw):
    x_ve = MU + XI * torch.sqrt(STD**2 + 14.6146**2)
    sched = cls(**SD_CFG, solver_order=1, algorithm_type=alg, **kw)
    got = drive(sched, 9, x_ve)
    torch.testing.assert_close(got, ddim(x_ve, sched.sigmas.to(torch.float64)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [MSS, SSS])
def test_scheduler_order_1_equals_diffusers_ddim(cls):
    """Same trailing grid (10 steps of 1000): our first-order schedulers == diffusers' DDIMScheduler."""
    x_ve = MU + XI * torch.sqrt(STD**2 + 14.6146**2)
    ours = cls(**SD_CFG, solver_order=1, timestep_spacing="trailing")
    d = DDIMScheduler(**SD_CFG, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    d.set_timesteps(10)
    ours.set_timesteps(10)
    assert ours.timesteps.tolist() == d.timesteps.tolist()
    x = x_ve / math.sqrt(1.0 + float(ours.sigmas[0]) ** 2)
    y = x.clone()
    for i, t in enumerate(d.timesteps):
        ac = float(d.alphas_cumprod[int(t)])
        e = eps_exact(y, torch.tensor(ac**0.5), torch.tensor((1 - ac) ** 0.5))
        y = d.step(e, t, y).prev_sample
        st = float(ours.sigmas[i])
        a = 1.0 / math.sqrt(1.0 + st * st)
        x = ours.step(eps_exact(x, torch.tensor(a), torch.tensor(st * a)), t, x).prev_sample
    # diffusers keeps alphas_cumprod in float32: agreement to float32 rounding
    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":  # the table of the README: python tests/test_closed_form_orders.py
    torch.set_num_threads(1)
    print(f"{'case':52s} {'NFE':>16s} {'errors':>30s} {'order':>6s} {'asserted':>8s}")
    for name, _, nfes, order in CASES:
        errs, p = measure(name)
        e = " ".join(f"{v:.2e}" for v in errs)
        print(f"{name:52s} {nfes!s:>16s} {e:>30s} {p:6.2f} {order:8d}")
