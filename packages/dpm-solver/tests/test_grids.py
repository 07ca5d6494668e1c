"""Step grids: time_uniform / logSNR / time_quadratic / karras / edm on every schedule kind."""

import math

import numpy as np
import pytest
import torch
from dpm_solver import DPM_Solver, NoiseScheduleEDM, NoiseScheduleVE, NoiseScheduleVP, get_time_steps
from dpm_solver.grids import SKIP_TYPES

SD_BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2


def _schedules():
    return [
        (NoiseScheduleVP("linear"), 1.0, 1e-3),
        (NoiseScheduleVP("cosine"), 0.9946, 1e-3),
        (NoiseScheduleVP("discrete", betas=SD_BETAS), 1.0, 1e-3),
        (NoiseScheduleEDM(), 80.0, 0.002),
        (NoiseScheduleVE(), 1.0, 1e-5),
    ]


@pytest.mark.parametrize("skip_type", SKIP_TYPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_all_grids_monotone_with_exact_endpoints(skip_type, dtype):
    for ns, t_T, t_0 in _schedules():
        for n in (1, 2, 7, 50):
            ts = get_time_steps(ns, skip_type, t_T, t_0, n, dtype=dtype)
            assert ts.shape == (n + 1,) and ts.dtype == dtype
            assert float(ts[0]) == float(torch.tensor(t_T, dtype=dtype))
            assert float(ts[-1]) == float(torch.tensor(t_0, dtype=dtype))
            assert bool((ts[1:] < ts[:-1]).all()), (ns.schedule, skip_type, n)


def test_karras_on_edm_is_the_karras_formula():
    ns = NoiseScheduleEDM()
    ts = get_time_steps(ns, "karras", 80.0, 0.002, 18, dtype=torch.float64)
    i = torch.arange(19, dtype=torch.float64) / 18
    want = (80.0 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(ts, want, rtol=1e-13, atol=0)
    rho3 = get_time_steps(ns, "edm", 80.0, 0.002, 18, dtype=torch.float64, rho=3.0)
    torch.testing.assert_close(rho3, (80.0 ** (1 / 3) + i * (0.002 ** (1 / 3) - 80.0 ** (1 / 3))) ** 3)
    torch.testing.assert_close(get_time_steps(ns, "edm", 80.0, 0.002, 18, dtype=torch.float64), ts)


def test_karras_matches_diffusers_sigmas_on_the_sd_schedule():
    """Our Karras grid over the whole SD discrete schedule [1/N, 1] equals diffusers' Karras sigmas."""
    from diffusers import DPMSolverMultistepScheduler

    ns = NoiseScheduleVP("discrete", betas=SD_BETAS)
    sched = DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True
    )
    ac = torch.cumprod(1 - SD_BETAS, 0).numpy()
    in_sigmas = torch.from_numpy(np.sqrt((1 - ac) / ac)).flip(0)
    steps = 12
    ref = sched._convert_to_karras(in_sigmas=in_sigmas, num_inference_steps=steps)
    ts = get_time_steps(ns, "karras", ns.T, 1.0 / ns.total_N, steps - 1, dtype=torch.float64)
    ours = torch.exp(-ns.marginal_lambda(ts))
    torch.testing.assert_close(ours, torch.as_tensor(ref, dtype=torch.float64), rtol=1e-9, atol=0)


def test_large_rho_tends_to_logsnr():
    ns = NoiseScheduleVP("linear")
    a = get_time_steps(ns, "edm", 1.0, 1e-3, 10, dtype=torch.float64, rho=1e8)
    b = get_time_steps(ns, "logSNR", 1.0, 1e-3, 10, dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_solver_uses_grid_and_rho():
    ns = NoiseScheduleEDM()
    calls = []
    solver = DPM_Solver(lambda x, t: calls.append(float(t[0])) or torch.zeros_like(x), ns)
    solver.sample(torch.zeros(2, 3, dtype=torch.float64), steps=6, order=1, skip_type="edm", rho=3.0)
    want = get_time_steps(ns, "edm", 80.0, 0.002, 6, dtype=torch.float64, rho=3.0)[:-1]
    torch.testing.assert_close(torch.tensor(calls, dtype=torch.float64), want)


def test_bad_input():
    ns = NoiseScheduleVP("linear")
    with pytest.raises(ValueError, match="skip_type"):
        get_time_steps(ns, "uniform", 1.0, 1e-3, 10)
    with pytest.raises(ValueError, match="N must"):
        get_time_steps(ns, "logSNR", 1.0, 1e-3, 0)
    with pytest.raises(ValueError, match="t_T > t_0"):
        get_time_steps(ns, "logSNR", 0.5, 0.5, 10)
    for skip_type in SKIP_TYPES:  # swapped endpoints give the reversed grid (DPM_Solver.inverse)
        fwd = get_time_steps(ns, skip_type, 1.0, 1e-3, 7, dtype=torch.float64)
        torch.testing.assert_close(
            get_time_steps(ns, skip_type, 1e-3, 1.0, 7, dtype=torch.float64), fwd.flip(0)
        )
    with pytest.raises(ValueError, match="rho"):
        get_time_steps(ns, "edm", 1.0, 1e-3, 10, rho=0.0)
    assert math.isclose(float(get_time_steps(ns, "time_quadratic", 1.0, 0.25, 2)[1]), 0.5625, rel_tol=1e-6)
