"""dpm_solver.updates: each pure update rule against the formulas of the reference (section 3) written
out independently here, broadcast coefficients, aliases, and the documented intermediate-state identity."""

import math

import pytest
import torch
from dpm_solver.updates import (
    first_order_update,
    multistep_order,
    multistep_update,
    normalize_solver_type,
    sde_first_order_update,
    sde_multistep_update,
    singlestep_update,
)

D = torch.float64


def _vp(lam):
    """alpha, sigma of a VP schedule at half-logSNR lam."""
    lam = torch.as_tensor(lam, dtype=D)
    return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_first_order_matches_formula(alg):
    x, m = _rand(3, 5), _rand(3, 5, seed=1)
    ls, lt = torch.tensor(-1.2, dtype=D), torch.tensor(0.4, dtype=D)
    (a_s, s_s), (a_t, s_t) = _vp(ls), _vp(lt)
    h = lt - ls
    got = first_order_update(
        x, m, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, h=h, algorithm_type=alg
    )
    if alg == "dpmsolver++":
        want = s_t / s_s * x - a_t * (math.exp(-float(h)) - 1) * m
    else:
        want = a_t / a_s * x - s_t * (math.exp(float(h)) - 1) * m
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("solver_type", ["dpmsolver", "taylor", "midpoint", "heun"])
def test_multistep_2m_matches_formula(alg, solver_type):
    x = _rand(4, 3)
    m = [_rand(4, 3, seed=i + 1) for i in range(2)]
    lams = [torch.tensor(v, dtype=D) for v in (-2.0, -1.3)]
    lt = torch.tensor(-0.5, dtype=D)
    (a_s, s_s), (a_t, s_t) = _vp(lams[-1]), _vp(lt)
    got = multistep_update(
        x, m, lams, lambda_t=lt, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, order=2,
        algorithm_type=alg, solver_type=solver_type,
    )  # fmt: skip
    h, h0 = float(lt - lams[1]), float(lams[1] - lams[0])
    d1 = (m[1] - m[0]) / (h0 / h)
    taylor = normalize_solver_type(solver_type) == "taylor"
    if alg == "dpmsolver++":
        p1 = math.expm1(-h)
        want = s_t / s_s * x - a_t * p1 * m[1]
        want = want + a_t * (p1 / h + 1) * d1 if taylor else want - 0.5 * a_t * p1 * d1
    else:
        p1 = math.expm1(h)
        want = a_t / a_s * x - s_t * p1 * m[1]
        want = want - s_t * (p1 / h - 1) * d1 if taylor else want - 0.5 * s_t * p1 * d1
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("exact_3m", [False, True])
def test_multistep_3m_matches_formula(alg, exact_3m):
    x = _rand(2, 6)
    m = [_rand(2, 6, seed=i + 1) for i in range(3)]
    lams = [torch.tensor(v, dtype=D) for v in (-3.0, -2.1, -1.5)]
    lt = torch.tensor(-0.7, dtype=D)
    (a_s, s_s), (a_t, s_t) = _vp(lams[-1]), _vp(lt)
    got = multistep_update(
        x, m, lams, lambda_t=lt, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, order=3,
        algorithm_type=alg, exact_3m=exact_3m,
    )  # fmt: skip
    h, h0, h1 = float(lt - lams[2]), float(lams[2] - lams[1]), float(lams[1] - lams[0])
    r0, r1 = h0 / h, h1 / h
    d10, d11 = (m[2] - m[1]) / r0, (m[1] - m[0]) / r1
    d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
    d2 = (d10 - d11) / (r0 + r1) * (2.0 if exact_3m else 1.0)
    if alg == "dpmsolver++":
        p1 = math.expm1(-h)
        p2 = p1 / h + 1
        p3 = p2 / h - 0.5
        want = s_t / s_s * x - a_t * p1 * m[2] + a_t * p2 * d1 - a_t * p3 * d2
    else:
        p1 = math.expm1(h)
        p2 = p1 / h - 1
        p3 = p2 / h - 0.5
        want = a_t / a_s * x - s_t * p1 * m[2] - s_t * p2 * d1 - s_t * p3 * d2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("solver_type", ["dpmsolver", "taylor"])
def test_singlestep_matches_formula(alg, solver_type):
    """Orders 2 and 3 against the upstream formulas (reference section 3), r1 = 1/3, r2 = 2/3."""
    x = _rand(3, 4)
    ls, lt = torch.tensor(-1.0, dtype=D), torch.tensor(0.5, dtype=D)
    h = float(lt - ls)
    r1, r2 = 1 / 3, 2 / 3
    m0, m1, m2 = (_rand(3, 4, seed=i + 1) for i in range(3))
    (a_s, s_s), (a_t, s_t) = _vp(ls), _vp(lt)
    kw = dict(lambda_t=lt, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, algorithm_type=alg)
    lams = [ls, ls + r1 * h, ls + r2 * h]
    got2 = singlestep_update(x, [m0, m1], lams[:2], order=2, solver_type=solver_type, **kw)
    got3 = singlestep_update(x, [m0, m1, m2], lams, order=3, solver_type=solver_type, **kw)
    data = alg == "dpmsolver++"
    p1 = math.expm1(-h) if data else math.expm1(h)
    p2 = p1 / h + (1 if data else -1)
    p3 = p2 / h - 0.5
    base = (s_t / s_s * x - a_t * p1 * m0) if data else (a_t / a_s * x - s_t * p1 * m0)
    c = a_t if data else s_t
    sg = 1 if data else -1
    if solver_type == "dpmsolver":
        want2 = base - (0.5 / r1) * c * p1 * (m1 - m0)
        want3 = base + sg * (1 / r2) * c * p2 * (m2 - m0)
    else:
        want2 = base + sg * (1 / r1) * c * p2 * (m1 - m0)
        d10, d11 = (m1 - m0) / r1, (m2 - m0) / r2
        d1 = (r2 * d10 - r1 * d11) / (r2 - r1)
        d2 = 2 * (d11 - d10) / (r2 - r1)
        want3 = base + sg * c * p2 * d1 - c * p3 * d2
    torch.testing.assert_close(got2, want2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got3, want3, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_third_order_intermediate_is_order2_taylor(alg):
    """Upstream's u2 (reference section 3) equals singlestep_update(order=2, solver_type='taylor')."""
    x, m0, m1 = _rand(5, 2), _rand(5, 2, seed=1), _rand(5, 2, seed=2)
    ls, h, r1, r2 = torch.tensor(-0.3, dtype=D), 1.7, 1 / 3, 2 / 3
    ls1, ls2 = ls + r1 * h, ls + r2 * h
    (a_s, s_s), (a2, s2) = _vp(ls), _vp(ls2)
    got = singlestep_update(
        x, [m0, m1], [ls, ls1], lambda_t=ls2, alpha_s=a_s, sigma_s=s_s, alpha_t=a2, sigma_t=s2, order=2,
        algorithm_type=alg, solver_type="taylor",
    )  # fmt: skip
    if alg == "dpmsolver++":
        phi22 = math.expm1(-r2 * h) / (r2 * h) + 1
        want = s2 / s_s * x - a2 * math.expm1(-r2 * h) * m0 + r2 / r1 * a2 * phi22 * (m1 - m0)
    else:
        phi22 = math.expm1(r2 * h) / (r2 * h) - 1
        want = a2 / a_s * x - s2 * math.expm1(r2 * h) * m0 - r2 / r1 * s2 * phi22 * (m1 - m0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_broadcast_per_sample_coefficients():
    """(B, 1) coefficients give the same rows as B separate 0-d calls."""
    x, m = _rand(3, 4), [_rand(3, 4, seed=i + 1) for i in range(2)]
    ls = torch.tensor([[-1.0], [-0.5], [0.2]], dtype=D)
    lp = ls - 0.4
    lt = ls + 0.7
    (a_s, s_s), (a_t, s_t) = _vp(ls), _vp(lt)
    got = multistep_update(
        x, m, [lp, ls], lambda_t=lt, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, order=2,
        algorithm_type="dpmsolver++",
    )  # fmt: skip
    for i in range(3):
        row = multistep_update(
            x[i], [v[i] for v in m], [lp[i, 0], ls[i, 0]], lambda_t=lt[i, 0], alpha_s=a_s[i, 0],
            sigma_s=s_s[i, 0], alpha_t=a_t[i, 0], sigma_t=s_t[i, 0], order=2, algorithm_type="dpmsolver++",
        )  # fmt: skip
        torch.testing.assert_close(got[i], row, rtol=0, atol=0)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_sde_updates_match_formula(solver_type):
    x, z = _rand(4, 3), _rand(4, 3, seed=9)
    m = [_rand(4, 3, seed=i + 1) for i in range(2)]
    lams = [torch.tensor(-1.5, dtype=D), torch.tensor(-0.8, dtype=D)]
    lt = torch.tensor(0.1, dtype=D)
    (_, s_s), (a_t, s_t) = _vp(lams[1]), _vp(lt)
    h = float(lt - lams[1])
    first = s_t / s_s * math.exp(-h) * x + a_t * (1 - math.exp(-2 * h)) * m[1]
    first = first + s_t * math.sqrt(1 - math.exp(-2 * h)) * z
    got1 = sde_first_order_update(x, m[1], z, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, h=lt - lams[1])
    torch.testing.assert_close(got1, first, rtol=1e-13, atol=1e-13)
    got2 = sde_multistep_update(
        x, m, lams, z, lambda_t=lt, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, order=2, solver_type=solver_type
    )
    d1 = (m[1] - m[0]) / (float(lams[1] - lams[0]) / h)
    if solver_type == "midpoint":
        want = first + 0.5 * a_t * (1 - math.exp(-2 * h)) * d1
    else:
        want = first + a_t * ((1 - math.exp(-2 * h)) / (-2 * h) + 1) * d1
    torch.testing.assert_close(got2, want, rtol=1e-13, atol=1e-13)


def test_multistep_order_schedule():
    assert [multistep_order(i, 8, 3, True) for i in range(1, 9)] == [1, 2, 3, 3, 3, 3, 2, 1]
    assert [multistep_order(i, 12, 3, True) for i in range(1, 13)] == [1, 2] + [3] * 10
    assert [multistep_order(i, 12, 3, True, threshold=15) for i in range(1, 13)][-3:] == [3, 2, 1]
    assert [multistep_order(i, 5, 2, False) for i in range(1, 6)] == [1, 2, 2, 2, 2]


def test_bad_arguments():
    x = _rand(2, 2)
    one = torch.tensor(0.5, dtype=D)
    kw = dict(lambda_t=one, alpha_s=one, sigma_s=one, alpha_t=one, sigma_t=one)
    with pytest.raises(ValueError, match="algorithm_type"):
        multistep_update(x, [x], [one], order=1, algorithm_type="ddim", **kw)
    with pytest.raises(ValueError, match="solver_type"):
        multistep_update(
            x, [x, x], [one, one], order=2, algorithm_type="dpmsolver++", solver_type="rk4", **kw
        )
    with pytest.raises(ValueError, match="order"):
        multistep_update(x, [x], [one], order=4, algorithm_type="dpmsolver++", **kw)
    with pytest.raises(ValueError, match="needs 3"):
        multistep_update(x, [x, x], [one, one], order=3, algorithm_type="dpmsolver++", **kw)
    with pytest.raises(ValueError, match="needs 2"):
        singlestep_update(x, [x], [one], order=2, algorithm_type="dpmsolver", **kw)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_step_into_sigma_zero_is_exact_and_finite(alg, order):
    """lambda_t = +inf (sigma_t = 0): every rule returns alpha_t * x0_s (diffusers #9007/#6949 gave NaN)."""
    x = _rand(3, 4)
    m = [_rand(3, 4, seed=i + 1) for i in range(3)]
    lams = [torch.tensor(v, dtype=D) for v in (-1.0, 0.0, 1.0)]
    a_s, s_s = _vp(lams[-1])
    inf, one, zero = torch.tensor(math.inf, dtype=D), torch.tensor(1.0, dtype=D), torch.tensor(0.0, dtype=D)
    kw = dict(
        lambda_t=inf, alpha_s=a_s, sigma_s=s_s, alpha_t=one, sigma_t=zero, order=order, algorithm_type=alg
    )
    x0 = m[-1] if alg == "dpmsolver++" else (x - s_s * m[-1]) / a_s
    for st in ("dpmsolver", "taylor"):
        got = multistep_update(x, m, lams, solver_type=st, **kw)
        torch.testing.assert_close(got, x0, rtol=1e-12, atol=1e-12)
        ss = singlestep_update(x, m[::-1], lams[::-1], solver_type=st, **kw)  # m_s first
        x0s = m[-1] if alg == "dpmsolver++" else (x - s_s * m[-1]) / a_s
        torch.testing.assert_close(ss, x0s, rtol=1e-12, atol=1e-12)
    if alg == "dpmsolver++":
        z = _rand(3, 4, seed=7)
        sde = sde_multistep_update(
            x, m, lams, z, lambda_t=inf, sigma_s=s_s, alpha_t=one, sigma_t=zero, order=order
        )
        torch.testing.assert_close(sde, m[-1], rtol=1e-12, atol=1e-12)


def _exact_integral(x, coef_poly, lams, lt, sde):
    """x_t of the linear ODE / SDE drift for a data prediction D(lambda) = polynomial, by 30-point
    Gauss-Legendre quadrature (exact to rounding): ODE ``(s_t/s_s) x + a_t int e^{-(l_t - l)} D dl``,
    SDE (noise 0) ``(s_t/s_s) e^{-h} x + a_t int 2 e^{-2(l_t - l)} D dl``."""
    import numpy as np

    ls = float(lams[-1])
    h = float(lt) - ls
    nodes, weights = np.polynomial.legendre.leggauss(30)
    lam = ls + (nodes + 1) * h / 2
    k = 2.0 if sde else 1.0
    w = torch.tensor(weights * h / 2 * k * np.exp(-k * (float(lt) - lam)), dtype=D)
    dl = torch.stack([sum(c * float(v) ** p for p, c in enumerate(coef_poly)) for v in lam])
    (_, s_s), (a_t, s_t) = _vp(lams[-1]), _vp(lt)
    lin = s_t / s_s * (math.exp(-h) if sde else 1.0) * x
    return lin + a_t * (w[:, None, None] * dl).sum(0)


@pytest.mark.parametrize("sde", [False, True])
def test_exact_for_polynomial_data_predictions(sde):
    """Third-order rules with the Taylor-consistent D2 coefficient (exact_3m / SDE order 3) integrate a
    quadratic D(lambda) exactly; 2M 'taylor' / 'heun' a linear one. Upstream's / diffusers' 3M (phi_3 D2)
    is not exact for a quadratic; nor is diffusers' SDE 3M D2 coefficient ((1 - e^{-2h} - 2h)/(2h)^2 - 1/2,
    which tends to -1, not 0, as h -> 0)."""
    x = _rand(2, 3)
    lams = [torch.tensor(v, dtype=D) for v in (-2.2, -1.6, -1.1)]
    lt = torch.tensor(-0.3, dtype=D)
    (a_s, s_s), (a_t, s_t) = _vp(lams[-1]), _vp(lt)
    zero = torch.zeros(2, 3, dtype=D)

    def run(order, poly, **kw):
        outs = [sum(c * float(v) ** p for p, c in enumerate(poly)) for v in lams]
        if sde:
            return sde_multistep_update(
                x, outs, lams, zero, lambda_t=lt, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, order=order, **kw
            )
        return multistep_update(
            x, outs, lams, lambda_t=lt, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, order=order,
            algorithm_type="dpmsolver++", **kw,
        )  # fmt: skip

    quad = [_rand(2, 3, seed=s) for s in (11, 12, 13)]
    lin = quad[:2]
    torch.testing.assert_close(run(2, lin, solver_type="taylor"), _exact_integral(x, lin, lams, lt, sde))
    kw3 = {} if sde else {"exact_3m": True}
    torch.testing.assert_close(run(3, quad, **kw3), _exact_integral(x, quad, lams, lt, sde))
    if not sde:  # upstream's 3M coefficient misses the quadratic term by half
        assert float((run(3, quad) - _exact_integral(x, quad, lams, lt, sde)).abs().max()) > 1e-3
    else:  # diffusers' SDE 3M D2 coefficient, evaluated independently, is not exact either
        h = float(lt - lams[-1])
        r0, r1 = float(lams[2] - lams[1]) / h, float(lams[1] - lams[0]) / h
        outs = [sum(c * float(v) ** p for p, c in enumerate(quad)) for v in lams]
        d10, d11 = (outs[2] - outs[1]) / r0, (outs[1] - outs[0]) / r1
        d2 = (d10 - d11) / (r0 + r1)
        ours_c2 = 2 * ((1 - math.exp(-2 * h) - 2 * h) / (4 * h * h) + 0.5)
        diffusers_c2 = (1 - math.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5
        wrong = run(3, quad) + float(a_t) * (diffusers_c2 - ours_c2) * d2
        assert float((wrong - _exact_integral(x, quad, lams, lt, sde)).abs().max()) > 1e-3


def test_python_numbers_accepted():
    x, m = _rand(2, 3), [_rand(2, 3, seed=1), _rand(2, 3, seed=2)]
    (a_s, s_s), (a_t, s_t) = _vp(-0.5), _vp(0.5)
    kw = dict(alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t, order=2, algorithm_type="dpmsolver++")
    want = multistep_update(
        x,
        m,
        [torch.tensor(-1.0, dtype=D), torch.tensor(-0.5, dtype=D)],
        lambda_t=torch.tensor(0.5, dtype=D),
        **kw,
    )
    kw_f = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    torch.testing.assert_close(
        multistep_update(x, m, [-1.0, -0.5], lambda_t=0.5, **kw_f), want, rtol=0, atol=0
    )


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")  # diffusers' own
@pytest.mark.parametrize(
    "alg,order,solver_type",
    [
        ("dpmsolver++", 2, "midpoint"), ("dpmsolver++", 2, "heun"), ("dpmsolver++", 3, "midpoint"),
        ("dpmsolver", 2, "midpoint"), ("dpmsolver", 2, "heun"), ("dpmsolver", 3, "midpoint"),
        ("sde-dpmsolver++", 2, "midpoint"), ("sde-dpmsolver++", 2, "heun"),
    ],
)  # fmt: skip
def test_same_steps_as_diffusers_multistep(alg, order, solver_type):
    """Fed the same model outputs (and noise), our rules reproduce diffusers' DPMSolverMultistepScheduler
    step by step, including its final step into sigma = 0 (final_sigmas_type="zero", data prediction)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=order,
        algorithm_type=alg, solver_type=solver_type, prediction_type="epsilon" if alg == "dpmsolver" else "sample",
        final_sigmas_type="sigma_min" if alg == "dpmsolver" else "zero",  # diffusers refuses "zero" there
    )  # fmt: skip
    steps = 16
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, generator=g)
    outs = [torch.randn(2, 5, generator=g) for _ in range(steps)]
    noises = [torch.randn(2, 5, generator=g) for _ in range(steps)]
    sig = sched.sigmas.double()
    ref, ours = x.clone(), x.double()
    hist, lams = [], []
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(outs[i], t, ref, variance_noise=noises[i] if "sde" in alg else None).prev_sample
        s_s, s_t = sig[i], sig[i + 1]
        a_s, a_t = 1 / torch.sqrt(1 + s_s**2), 1 / torch.sqrt(1 + s_t**2)
        lam_s, lam_t = -torch.log(s_s), -torch.log(s_t)
        hist, lams = [*hist, outs[i].double()][-order:], [*lams, lam_s][-order:]
        k = min(i + 1, order)
        if alg == "sde-dpmsolver++":
            ours = sde_multistep_update(
                ours, hist, lams, noises[i].double(), lambda_t=lam_t, sigma_s=s_s * a_s, alpha_t=a_t,
                sigma_t=s_t * a_t, order=k, solver_type=solver_type,
            )  # fmt: skip
        else:
            ours = multistep_update(
                ours, hist, lams, lambda_t=lam_t, alpha_s=a_s, sigma_s=s_s * a_s, alpha_t=a_t, sigma_t=s_t * a_t,
                order=k, algorithm_type=alg, solver_type=solver_type,
            )  # fmt: skip
        torch.testing.assert_close(ours.float(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert bool(torch.isfinite(ours).all())
