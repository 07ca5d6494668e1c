"""diffusers-compatible schedulers: config round trip, agreement with diffusers and with the functional
DPM_Solver on the same grid, NFE, singlestep step counts, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler
from dpm_solver import DPM_Solver, NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture, reference_flow
from dpm_solver.schedulers import MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler
from dpm_solver.schedulers.singlestep import singlestep_order_list

GM = GaussianMixture.random(4, 3, 0.4, seed=5)
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def exact_output(kind: str, x: torch.Tensor, st: float) -> torch.Tensor:
    """Exact model output of ``kind`` for the VP sample x at VE level st (diffusers' conventions)."""
    a = 1.0 / math.sqrt(1.0 + st**2)
    s = st * a
    xf = x.double().reshape(x.shape[0], -1)
    eps = GM.eps_ve(xf / a, torch.tensor(st, dtype=torch.float64))
    if kind == "epsilon":
        out = eps
    elif kind == "sample":
        out = (xf - s * eps) / a
    else:
        out = a * eps - s * xf
    return out.to(x.dtype).reshape(x.shape)


def drive(sched, n: int, xT_ve: torch.Tensor, kind: str = "epsilon", **step_kw) -> torch.Tensor:
    """Run a scheduler with the exact model; returns the final VP sample."""
    sched.set_timesteps(n)
    x = xT_ve / math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(exact_output(kind, x, float(sched.sigmas[i])), t, x, **step_kw).prev_sample
    return x


def x_T(n: int = 64, st: float = 14.6146, dtype=torch.float32) -> torch.Tensor:
    return GM.sample_ve(n, st, torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("cls", [MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler])
def test_save_pretrained_round_trip(cls, tmp_path):
    s = cls(
        **SD,
        solver_order=3,
        prediction_type="v_prediction",
        use_karras_sigmas=True,
        final_sigmas_type="sigma_min",
    )
    s.save_pretrained(tmp_path)
    r = cls.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert type(r) is cls and public(r.config) == public(s.config)
    s.set_timesteps(12)
    r.set_timesteps(12)
    assert torch.equal(s.timesteps, r.timesteps) and torch.equal(s.sigmas, r.sigmas)


def test_from_diffusers_config():
    cfg = DPMSolverMultistepScheduler(**SD, solver_order=3, use_karras_sigmas=True).config
    s = MultistepDPMSolverScheduler.from_config(cfg)
    assert (
        s.config.solver_order == 3
        and s.config.use_karras_sigmas
        and s.config.beta_schedule == "scaled_linear"
    )
    back = DPMSolverMultistepScheduler.from_config(s.config)
    assert back.config.solver_order == 3


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(solver_order=3),
        dict(solver_order=1),
        dict(use_karras_sigmas=True),
        dict(solver_order=3, use_karras_sigmas=True),
        dict(final_sigmas_type="sigma_min"),
        dict(solver_type="heun"),
        dict(prediction_type="v_prediction"),
        dict(prediction_type="sample", thresholding=True, sample_max_value=2.0),
        dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
        dict(timestep_spacing="trailing"),
        dict(timestep_spacing="leading", steps_offset=1),
        dict(use_lu_lambdas=True),
        dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, lower_order_final=False),
    ],
)
@pytest.mark.parametrize("n", [6, 12, 20])
def test_multistep_matches_diffusers(kw, n):
    """Same grid, same rule: our scheduler and diffusers' agree to float32 rounding."""
    kw = {**SD, **kw}
    kind = kw.get("prediction_type", "epsilon")
    xT = x_T().reshape(-1, 1, 2, 2)  # image-shaped (diffusers' thresholding needs (B, C, ...))
    ours = drive(MultistepDPMSolverScheduler(**kw), n, xT, kind)
    theirs = drive(DPMSolverMultistepScheduler(**kw), n, xT, kind)
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-5)


def test_sde_matches_diffusers_with_given_noise():
    xT, n = x_T(), 10
    noises = [torch.randn(xT.shape, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    outs = []
    for cls in (MultistepDPMSolverScheduler, DPMSolverMultistepScheduler):
        s = cls(**SD, algorithm_type="sde-dpmsolver++")
        s.set_timesteps(n)
        x = xT / math.sqrt(1.0 + float(s.sigmas[0]) ** 2)
        for i, t in enumerate(s.timesteps):
            x = s.step(
                exact_output("epsilon", x, float(s.sigmas[i])), t, x, variance_noise=noises[i]
            ).prev_sample
        outs.append(x)
    # float32, noise injected at every step: rounding differences accumulate a little more than for the ODE
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_multistep_equals_functional_solver(order, algorithm_type, solver_type):
    """Scheduler (float64) == DPM_Solver.sample on the same grid: both call dpm_solver.updates."""
    n = 8
    sched = MultistepDPMSolverScheduler(
        **SD,
        solver_order=order,
        algorithm_type=algorithm_type,
        solver_type=solver_type,
        final_sigmas_type="sigma_min",
        lower_order_final_threshold=10,  # upstream's rule, as DPM_Solver
    )
    xT = x_T(dtype=torch.float64)
    ours = drive(sched, n, xT)
    ns = NoiseScheduleVP("discrete", betas=sched.betas, clipped_lambda=None)
    grid = torch.cat([sched.timesteps.to(torch.float64) + 1.0, torch.tensor([1.0])]) / 1000.0

    def model_fn(x, t):
        a = ns.marginal_alpha(t).reshape(-1, 1)
        s = ns.marginal_std(t).reshape(-1, 1)
        return GM.eps_ve(x / a, (s / a).reshape(-1))

    solver = DPM_Solver(model_fn, ns, algorithm_type=algorithm_type)
    solver.get_time_steps = lambda *a, **k: grid
    st = {"midpoint": "dpmsolver", "heun": "taylor"}[solver_type]
    x0 = xT * ns.marginal_alpha(torch.tensor(1.0, dtype=torch.float64))
    ref = solver.sample(x0, steps=n, order=order, solver_type=st, t_start=1.0, t_end=1e-3)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kw",
    [
        dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
        dict(timestep_spacing="logSNR", final_sigmas_type="sigma_min"),
        dict(use_karras_sigmas=True),
        dict(timestep_spacing="logSNR"),
        dict(),
        dict(final_sigmas_type="sigma_min", timestep_spacing="trailing"),
    ],
)
@pytest.mark.parametrize("cls", [MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler])
def test_nfe_is_what_was_asked(cls, kw):
    for n in (3, 5, 10, 25):
        s = cls(**SD, solver_order=3, **kw)
        s.set_timesteps(n)
        assert len(s.timesteps) == n and len(s.sigmas) == n + 1
        assert bool((s.sigmas[1:] < s.sigmas[:-1]).all()), "zero-length step"
    # diffusers repeats sigma_min on a Karras grid: a wasted model call (reference section 6.1)
    d = DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True, final_sigmas_type="sigma_min")
    d.set_timesteps(10)
    assert float(d.sigmas[-1]) == float(d.sigmas[-2])


def test_karras_timesteps_are_exact_labels():
    s = MultistepDPMSolverScheduler(**SD, use_karras_sigmas=True)
    s.set_timesteps(7)
    t = s.timesteps.numpy()
    log_s = np.log(s.train_sigmas.numpy())
    k = np.floor(t).astype(int).clip(0, len(log_s) - 2)
    interp = log_s[k] + (t - k) * (log_s[k + 1] - log_s[k])
    np.testing.assert_allclose(interp, np.log(s.sigmas[:-1].numpy()), rtol=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("lof", [True, False])
def test_singlestep_every_step_count(order, final, lof):
    """Diffusers' singlestep failed at some step counts (issues 6949, 9007): every N works here."""
    xT = x_T(16)
    for n in range(order, 26):
        orders = singlestep_order_list(n, order, lof, final == "zero")
        assert sum(orders) == n and (final != "zero" or orders[-1] == 1)
        s = SinglestepDPMSolverScheduler(
            **SD, solver_order=order, final_sigmas_type=final, lower_order_final=lof
        )
        x = drive(s, n, xT)
        assert bool(torch.isfinite(x).all()), (n, order, final)


def test_singlestep_order_lists_as_upstream():
    assert singlestep_order_list(9, 3) == [3, 3, 2, 1]
    assert singlestep_order_list(10, 3) == [3, 3, 3, 1]
    assert singlestep_order_list(11, 3) == [3, 3, 3, 2]
    assert singlestep_order_list(11, 3, to_zero=True) == [3, 3, 3, 1, 1]
    assert singlestep_order_list(7, 2) == [2, 2, 2, 1]
    assert singlestep_order_list(7, 3, lower_order_final=False) == [3, 3, 1]


@pytest.mark.parametrize(
    ("cls", "order", "min_slope"),
    [
        (MultistepDPMSolverScheduler, 1, 0.9),
        (MultistepDPMSolverScheduler, 2, 1.8),
        (SinglestepDPMSolverScheduler, 2, 1.8),
        (SinglestepDPMSolverScheduler, 3, 2.5),
    ],
)
def test_convergence_order(cls, order, min_slope):
    """float64 on a logSNR grid to sigma_min: the error falls at (at least about) the solver's order."""
    s = cls(**SD, solver_order=order, timestep_spacing="logSNR", final_sigmas_type="sigma_min")
    xT = x_T(32, dtype=torch.float64)
    s_min, s_max = float(s.train_sigmas[0]), float(s.train_sigmas[-1])
    ref = reference_flow(GM.eps_ve, xT, s_max, s_min, 400)
    errs = []
    nfes = (30, 60, 120)
    for n in nfes:
        x = drive(s, n, xT) * math.sqrt(1 + s_min**2)
        errs.append(float((x - ref).norm(dim=1).median()))
    slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert slope > min_slope, (errs, slope)


def test_add_noise_and_scale_model_input():
    s = MultistepDPMSolverScheduler(**SD)
    x0, noise = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor([0, 500, 999])
    abar = s.alphas_cumprod[t].float().reshape(-1, 1)
    torch.testing.assert_close(s.add_noise(x0, noise, t), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    s.set_timesteps(5)
    assert s.scale_model_input(x0, s.timesteps[0]) is x0 and s.init_noise_sigma == 1.0
    theirs = DPMSolverMultistepScheduler(**SD)
    theirs.set_timesteps(5)
    torch.testing.assert_close(
        s.add_noise(x0, noise, s.timesteps[:1].repeat(3)),
        theirs.add_noise(x0, noise, theirs.timesteps[:1].repeat(3)),
    )


def test_bad_input():
    with pytest.raises(ValueError, match="prediction_type"):
        MultistepDPMSolverScheduler(prediction_type="noise")
    with pytest.raises(ValueError, match="algorithm_type"):
        MultistepDPMSolverScheduler(algorithm_type="ddim")
    with pytest.raises(ValueError, match="beta_schedule"):
        MultistepDPMSolverScheduler(beta_schedule="cubic")
    with pytest.raises(ValueError, match="sde-dpmsolver"):
        SinglestepDPMSolverScheduler(algorithm_type="sde-dpmsolver++")
    s = MultistepDPMSolverScheduler(solver_order=3)
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="below solver_order"):
        s.set_timesteps(2)
    s.set_timesteps(5)
    s.step(x, s.timesteps[0], x)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="step index 1"):
        s.step(bad, s.timesteps[1], x)
    s2 = MultistepDPMSolverScheduler()
    s2.set_timesteps(4)
    with pytest.raises(ValueError, match="not in this scheduler"):
        s2.index_for_timestep(3)


def test_sde_reproducible_and_distribution():
    """SDE-DPM-Solver++(2M): seeded runs repeat; many steps reproduce the data mean and std (one Gaussian)."""
    gm = GaussianMixture(
        torch.tensor([[1.0, -2.0]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    )
    s = MultistepDPMSolverScheduler(**SD, algorithm_type="sde-dpmsolver++")

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        s.set_timesteps(40)
        st0 = float(s.sigmas[0])  # exact VP marginal at the first level
        x = gm.sample_ve(4000, st0, g) / math.sqrt(1 + st0**2)
        for i, t in enumerate(s.timesteps):
            st = float(s.sigmas[i])
            a = 1.0 / math.sqrt(1 + st**2)
            eps = gm.eps_ve(x / a, torch.tensor(st, dtype=torch.float64))
            x = s.step(eps, t, x, generator=g).prev_sample
        return x

    a, b = run(1), run(1)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.mean(0), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(a.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.05, rtol=0)


def test_diffusers_singlestep_shape_of_api():
    """Our singlestep scheduler accepts diffusers' singlestep config."""
    cfg = DPMSolverSinglestepScheduler(**SD, solver_order=3).config
    s = SinglestepDPMSolverScheduler.from_config(cfg)
    s.set_timesteps(7)
    assert s.order_list == [3, 3, 1] and len(s.timesteps) == 7
