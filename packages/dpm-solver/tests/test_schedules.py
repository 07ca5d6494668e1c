"""NoiseScheduleVP: closed forms, t -> lambda -> t round trips, monotonicity, float32 accuracy."""

import math

import pytest
import torch
from dpm_solver import NoiseScheduleVP

SD_BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2


def _schedules():
    return {
        "linear": NoiseScheduleVP("linear"),
        "cosine": NoiseScheduleVP("cosine"),
        "discrete_sd": NoiseScheduleVP("discrete", betas=SD_BETAS),
        "discrete_ddpm": NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000)),
    }


def _grid(ns, dtype, n=4001):
    lo = 1.0 / ns.total_N if ns.schedule == "discrete" else 1e-4
    return torch.logspace(math.log10(lo), math.log10(ns.T), n, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("name", ["linear", "cosine", "discrete_sd", "discrete_ddpm"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 5e-6)])
def test_round_trip_and_monotone(name, dtype, rtol):
    ns = _schedules()[name]
    t = _grid(ns, dtype)
    lam = ns.marginal_lambda(t)
    assert lam.dtype == dtype
    assert bool((lam[1:] < lam[:-1]).all()), "lambda must decrease strictly in t"
    t_back = ns.inverse_lambda(lam)
    assert float(((t_back - t) / t).abs().max()) < rtol
    a, s = ns.marginal_alpha(t), ns.marginal_std(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=0, atol=4 * torch.finfo(dtype).eps)
    # lambda -> t -> lambda on a uniform lambda grid over the whole range
    lam_grid = torch.linspace(float(lam[-1]), float(lam[0]), 2001, dtype=dtype)
    lam_back = ns.marginal_lambda(ns.inverse_lambda(lam_grid))
    assert float((lam_back - lam_grid).abs().max()) < (1e-11 if dtype == torch.float64 else 2e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_matches_float64(dtype):
    for ns in _schedules().values():
        t = _grid(ns, torch.float64)
        ref = ns.marginal_lambda(t)
        got = ns.marginal_lambda(t.to(dtype)).double()
        assert float((got - ref).abs().max()) < (1e-5 if dtype == torch.float32 else 1e-13)
        ref_s = ns.marginal_std(t)
        got_s = ns.marginal_std(t.to(dtype)).double()
        assert float(((got_s - ref_s) / ref_s).abs().max()) < (2e-6 if dtype == torch.float32 else 1e-13)


def test_closed_forms():
    t = torch.linspace(1e-3, 1.0, 101, dtype=torch.float64)
    lin = NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)
    torch.testing.assert_close(lin.marginal_log_mean_coeff(t), -0.25 * t**2 * 19.9 - 0.05 * t)
    cos = NoiseScheduleVP("cosine")
    tc = t * 0.9946
    s = 0.008
    f = torch.cos((tc + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)
    torch.testing.assert_close(cos.marginal_alpha(tc), f, rtol=1e-12, atol=0)
    torch.testing.assert_close(cos.marginal_std(tc), torch.sqrt(1 - f**2), rtol=1e-9, atol=0)
    # discrete: at the knots t_n = (n + 1)/N, alpha_t^2 = alphas_cumprod[n]; linear in between
    ac = torch.cumprod(1 - SD_BETAS, 0)
    ns = NoiseScheduleVP("discrete", alphas_cumprod=ac)
    knots = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(ns.marginal_alpha(knots) ** 2, ac, rtol=1e-12, atol=0)
    mid = (knots[:-1] + knots[1:]) / 2
    torch.testing.assert_close(
        ns.marginal_log_mean_coeff(mid), 0.25 * (torch.log(ac[:-1]) + torch.log(ac[1:])), rtol=1e-12, atol=0
    )
    nb = NoiseScheduleVP("discrete", betas=SD_BETAS)
    torch.testing.assert_close(nb.marginal_lambda(knots), ns.marginal_lambda(knots), rtol=1e-12, atol=1e-12)
    assert ns.T == 1.0 and ns.total_N == 1000


def test_discrete_clipping_of_cosine_like_schedule():
    n = 1000
    tt = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((tt + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.clamp(1 - f[1:] / f[:-1], max=0.999)
    ns = NoiseScheduleVP("discrete", betas=betas)
    assert ns.T < 1.0 and ns.total_N == n
    assert float(ns.marginal_lambda(torch.tensor(ns.T, dtype=torch.float64))) >= -5.1
    assert NoiseScheduleVP("discrete", betas=betas, clipped_lambda=None).T == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="schedule"):
        NoiseScheduleVP("quadratic")
    with pytest.raises(ValueError, match="exactly one"):
        NoiseScheduleVP("discrete")
    with pytest.raises(ValueError, match="betas"):
        NoiseScheduleVP("discrete", betas=torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="decreasing"):
        NoiseScheduleVP("discrete", alphas_cumprod=torch.tensor([0.5, 0.9]))
