"""Adaptive step size DPM-Solver-12 / -23: error follows the tolerance, NFE is reported exactly."""

import itertools
import math

import pytest
import torch
from dpm_solver import DPM_Solver, NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture

T_END = 1e-3
TOLS = [(0.0078, 0.05), (1e-3, 1e-2), (1e-4, 1e-3)]


@pytest.fixture(scope="module")
def problem():
    # module fixtures run before conftest's per-test one-thread fixture; two threads on a loaded
    # 2-core machine make the reference ~20x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _problem()
    finally:
        torch.set_num_threads(before)


def _problem():
    ns = NoiseScheduleVP("linear")
    gmm = GaussianMixture.random(8, 6, 0.3, seed=0)
    tt = torch.tensor([1.0, T_END], dtype=torch.float64)
    a, s = ns.marginal_alpha(tt), ns.marginal_std(tt)
    st_T, st_0 = float(s[0] / a[0]), float(s[1] / a[1])
    x_ve = gmm.sample_ve(64, st_T, torch.Generator().manual_seed(1))
    return ns, gmm, x_ve * a[0], gmm.flow(x_ve, st_T, st_0, 600) * a[1]


def _err(x, ref):
    return float(((x - ref).norm(dim=1) / math.sqrt(x.shape[1])).median())


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("order", [2, 3])
def test_error_follows_tolerance_and_nfe_is_counted(problem, alg, order):
    ns, gmm, x_T, ref = problem
    calls = []

    def fn(x, t):
        calls.append(float(t[0]))
        return gmm.prediction("noise", x, t, ns)

    errs, nfes = [], []
    for atol, rtol in TOLS:
        calls.clear()
        solver = DPM_Solver(fn, ns, alg)
        x = solver.sample(x_T, order=order, method="adaptive", t_end=T_END, atol=atol, rtol=rtol)
        assert solver.nfe == len(calls) > 0
        errs.append(_err(x, ref))
        nfes.append(solver.nfe)
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert all(a < b for a, b in itertools.pairwise(nfes)), nfes
    assert errs[-1] < (1e-4 if order == 2 else 2e-5), errs  # measured 8e-5 / 1.6e-5 / 8e-5 / 7e-6
    # the tolerance is reached at O(tol^{-1/order}) cost: 10x tighter tolerance, < 10x the NFE
    assert nfes[-1] < 10 * nfes[-2]


def test_order3_beats_order2_at_same_tolerance(problem):
    ns, gmm, x_T, ref = problem
    fn = lambda x, t: gmm.prediction("noise", x, t, ns)  # noqa: E731
    s2, s3 = DPM_Solver(fn, ns), DPM_Solver(fn, ns)
    e2 = _err(s2.sample(x_T, order=2, method="adaptive", atol=1e-4, rtol=1e-3), ref)
    e3 = _err(s3.sample(x_T, order=3, method="adaptive", atol=1e-4, rtol=1e-3), ref)
    assert e3 < e2 and s3.nfe < s2.nfe, (e2, e3, s2.nfe, s3.nfe)


def test_ends_exactly_at_t_end_and_hooks():
    ns = NoiseScheduleVP("linear")
    gmm = GaussianMixture.random(4, 3, 0.3, seed=1)
    fn = lambda x, t: gmm.prediction("noise", x, t, ns)  # noqa: E731
    seen = []
    solver = DPM_Solver(fn, ns, correcting_xt_fn=lambda x, t, step: seen.append(float(t)) or x)
    x = torch.randn(4, 4, dtype=torch.float64)
    solver.sample(x, order=2, method="adaptive", t_end=1e-3)
    assert abs(seen[-1] - 1e-3) <= 1e-5 and all(a > b for a, b in itertools.pairwise(seen))


def test_bad_input():
    ns = NoiseScheduleVP("linear")
    s = DPM_Solver(lambda x, t: x, ns)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="adaptive"):
        s.sample(x, order=1, method="adaptive")
    with pytest.raises(ValueError, match="atol"):
        s.sample(x, order=2, method="adaptive", atol=0.0, rtol=0.0)
    with pytest.raises(ValueError, match="theta"):
        s.sample(x, order=2, method="adaptive", theta=1.5)
