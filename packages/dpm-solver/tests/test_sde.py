"""SDE-DPM-Solver++ (algorithm_type="sde-dpmsolver++"): first order equals the closed-form SDE step,
samples have the analytic data distribution's moments, noise / generator handling."""

import math

import pytest
import torch
from dpm_solver import DPM_Solver, NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture


def _mixture_moments(gmm, st):
    """Mean and per-dimension variance of the VE marginal sum_k pi_k N(mu_k, (s_k^2 + st^2) I)."""
    w = gmm.log_weights.exp()[:, None]
    mean = (w * gmm.means).sum(0)
    second = (w * (gmm.means**2 + gmm.stds[:, None] ** 2 + st**2)).sum(0)
    return mean, second - mean**2


def test_first_order_equals_closed_form_sde_step():
    ns = NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    gmm = GaussianMixture.random(3, 2, 0.3, seed=0)
    fn = lambda x, t: gmm.prediction("noise", x, t, ns)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    noise = torch.randn(4, 6, 3, dtype=torch.float64, generator=g)
    got = DPM_Solver(fn, ns, "sde-dpmsolver++").sample(
        x, steps=4, order=1, skip_type="logSNR", t_end=1e-3, noise=noise
    )
    ts = DPM_Solver(fn, ns).get_time_steps("logSNR", ns.T, 1e-3, 4, dtype=torch.float64)
    y = x.clone()
    for i in range(4):
        s, t = ts[i], ts[i + 1]
        a_s, sg_s, a_t, sg_t = (f(v) for f, v in ((ns.marginal_alpha, s), (ns.marginal_std, s),
                                                   (ns.marginal_alpha, t), (ns.marginal_std, t)))  # fmt: skip
        h = float(ns.marginal_lambda(t) - ns.marginal_lambda(s))
        x0 = (y - sg_s * fn(y, s.reshape(1).expand(6))) / a_s
        y = sg_t / sg_s * math.exp(-h) * y + a_t * (1 - math.exp(-2 * h)) * x0
        y = y + sg_t * math.sqrt(1 - math.exp(-2 * h)) * noise[i]
    torch.testing.assert_close(got, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order,solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun")])
def test_samples_match_data_distribution(order, solver_type):
    """Many steps: mean / variance of the samples at t_end equal the exact marginal's (4 std errors)."""
    ns = NoiseScheduleVP("linear")
    gmm = GaussianMixture.random(2, 3, 0.4, seed=3)
    fn = lambda x, t: gmm.prediction("noise", x, t, ns)  # noqa: E731
    n, t_end = 4000, 1e-3
    g = torch.Generator().manual_seed(5)
    a_T, s_T = float(ns.marginal_alpha(torch.tensor(1.0))), float(ns.marginal_std(torch.tensor(1.0)))
    x_T = gmm.sample_ve(n, s_T / a_T, g) * a_T
    solver = DPM_Solver(fn, ns, "sde-dpmsolver++")
    x = solver.sample(
        x_T, steps=100, order=order, skip_type="logSNR", t_end=t_end, solver_type=solver_type, generator=g
    )
    assert solver.nfe == 100
    tt = torch.tensor(t_end, dtype=torch.float64)
    a0, st0 = ns.marginal_alpha(tt), float(ns.marginal_std(tt) / ns.marginal_alpha(tt))
    x_ve = x / a0
    mean, var = _mixture_moments(gmm, st0)
    se_mean = (var / n).sqrt()
    fourth = ((x_ve - mean) ** 4).mean(0)
    se_var = ((fourth - var**2) / n).sqrt()
    assert bool(((x_ve.mean(0) - mean).abs() < 4 * se_mean).all()), (x_ve.mean(0), mean, se_mean)
    assert bool(((x_ve.var(0) - var).abs() < 4 * se_var).all()), (x_ve.var(0), var, se_var)
    # the ODE from the same start moves every sample deterministically; the SDE must not equal it
    ode = DPM_Solver(fn, ns).sample(x_T, steps=100, order=2, skip_type="logSNR", t_end=t_end)
    assert float((ode - x).abs().mean()) > 1e-2


def test_generator_and_noise_agree_and_bad_noise():
    ns = NoiseScheduleVP("linear")
    gmm = GaussianMixture.random(2, 2, 0.3, seed=0)
    fn = lambda x, t: gmm.prediction("noise", x, t, ns)  # noqa: E731
    x = torch.randn(5, 2, dtype=torch.float64)
    solver = DPM_Solver(fn, ns, "sde-dpmsolver++")
    a = solver.sample(x, steps=6, order=2, generator=torch.Generator().manual_seed(1))
    b = solver.sample(x, steps=6, order=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    noise = torch.stack([torch.randn(5, 2, dtype=torch.float64, generator=g) for _ in range(6)])
    torch.testing.assert_close(solver.sample(x, steps=6, order=2, noise=noise), a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise"):
        solver.sample(x, steps=6, order=2, noise=noise[:5])
    with pytest.raises(ValueError, match="multistep"):
        solver.sample(x, steps=6, order=2, method="singlestep")
