# ruff: noqa: E741  (l and I are the paper's names of the statistics / integrals)
"""DPM-Solver-v3 on the analytic Gaussian-mixture model.

Reference: the mixture's probability-flow ODE by fine RK4 (``GaussianMixture.flow``, checked against a
twice-finer run in test_solver.py); DPM-Solver++ from :class:`dpm_solver.DPM_Solver`.
"""

import math

import numpy as np
import pytest
import torch
from dpm_solver import DPM_Solver, NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture
from dpm_solver.statistics import EMSStatistics, compute_statistics, save_statistics
from dpm_solver.v3 import DPM_Solver_v3

T_START, T_END = 1.0, 1e-3


@pytest.fixture(scope="module")
def problem():
    ns = NoiseScheduleVP("linear")
    gmm = GaussianMixture.random(8, 6, 0.3, seed=0)
    tt = torch.tensor([T_START, T_END], dtype=torch.float64)
    a, s = ns.marginal_alpha(tt), ns.marginal_std(tt)
    st_T, st_0 = float(s[0] / a[0]), float(s[1] / a[1])
    x_ve = gmm.sample_ve(64, st_T, torch.Generator().manual_seed(1))
    ref = gmm.flow(x_ve, st_T, st_0, 1000) * a[1]  # agrees with 2000 steps to 3e-8

    def fn(x, t):
        return gmm.prediction("noise", x, t, ns)

    return ns, gmm, fn, x_ve * a[0], ref


def _err(x, ref):
    return float(((x - ref).norm(dim=1) / math.sqrt(x.shape[1])).median())


def _slope(steps, errs):
    lx, ly = np.log(steps), np.log(errs)
    return float(-np.polyfit(lx, ly, 1)[0])


def _smooth_stats(ns, n_lambda, d=8):
    """Smooth, far-from-trivial synthetic statistics: v3 is an exact reformulation of the ODE for any
    l, s, b, so it must converge at its nominal order with them. (l -> 1 at high noise: with l far from
    1 there, g = e^{-S} f - B carries a term ~ (1 - l) x / alpha ~ e^{-lambda} whose large derivative
    makes the first, first-order warm-up step dominate, and the measured order drops towards 2.)"""
    lam_ends = ns.marginal_lambda(torch.tensor([T_START, T_END], dtype=torch.float64))
    lam = (
        lam_ends[0] + (lam_ends[1] - lam_ends[0]) * torch.arange(n_lambda + 1, dtype=torch.float64) / n_lambda
    )
    c = torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    l = 1.0 - 0.5 * torch.sigmoid((lam[:, None] - 1.0) * c)
    s = 0.3 * torch.sin(0.2 * lam[:, None] + c)
    b = 0.2 * torch.cos(0.25 * lam[:, None] * c)
    return EMSStatistics(l, s, b, lam)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps,lof", [(6, True), (8, True), (10, False), (12, False), (20, False)])
def test_degenerated_equals_dpm_solver_pp(problem, order, steps, lof):
    ns, _, fn, x_T, _ = problem
    ref = DPM_Solver(fn, ns, "dpmsolver++").sample(
        x_T, steps=steps, t_start=T_START, t_end=T_END, order=order, skip_type="logSNR",
        lower_order_final=lof, solver_type="taylor", exact_3m=True,
    )  # fmt: skip
    v3 = DPM_Solver_v3(
        None, ns, steps=steps, t_start=T_START, t_end=T_END, skip_type="logSNR", degenerated=True
    )
    out = v3.sample(
        x_T, fn, order=order, p_pseudo=False, use_corrector=False, c_pseudo=False, lower_order_final=lof
    )
    assert float((out - ref).abs().max()) <= 1e-12 * float(ref.abs().max())


def test_degenerated_ignores_given_statistics(problem):
    ns, _, fn, x_T, _ = problem
    stats = _smooth_stats(ns, 1200)
    a = DPM_Solver_v3(stats, ns, steps=10, t_start=T_START, t_end=T_END, skip_type="logSNR", degenerated=True)
    b = DPM_Solver_v3(None, ns, steps=10, t_start=T_START, t_end=T_END, skip_type="logSNR", degenerated=True)
    kw = dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)
    assert torch.allclose(a.sample(x_T, fn, **kw), b.sample(x_T, fn, **kw), rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_convergence_order_smooth_statistics(problem, order):
    ns, _, fn, x_T, ref = problem
    stats = _smooth_stats(ns, 2400)
    steps = [24, 48, 96]
    errs = []
    for n in steps:
        v3 = DPM_Solver_v3(stats, ns, steps=n, t_start=T_START, t_end=T_END, skip_type="logSNR")
        out = v3.sample(x_T, fn, order=order, p_pseudo=False, use_corrector=False, c_pseudo=False,
                        lower_order_final=False)  # fmt: skip
        errs.append(_err(out, ref))
    assert _slope(steps, errs) > order - 0.3, errs


@pytest.mark.parametrize("order,c_pseudo,expected", [(1, True, 2.0), (3, False, 3.0)])
def test_corrector_order(problem, order, c_pseudo, expected):
    """The corrector of order p + c_pseudo lifts order 1 to 2 (c_pseudo: the order-2 fit through s and t)
    and keeps order 3 with an exact fit. (Pseudo-order fits use divided differences, which are only
    first-order accurate derivatives: such variants converge at order ~2; they are meant for few steps.)"""
    ns, _, fn, x_T, ref = problem
    stats = _smooth_stats(ns, 2400)
    steps = [24, 48, 96]
    errs = []
    for n in steps:
        v3 = DPM_Solver_v3(stats, ns, steps=n, t_start=T_START, t_end=T_END, skip_type="logSNR")
        out = v3.sample(
            x_T,
            fn,
            order=order,
            p_pseudo=False,
            use_corrector=True,
            c_pseudo=c_pseudo,
            lower_order_final=False,
        )
        errs.append(_err(out, ref))
    assert _slope(steps, errs) > expected - 0.3, errs


@pytest.fixture(scope="module")
def ems(problem):
    ns, gmm, fn, _, _ = problem
    x0 = gmm.sample_ve(256, 0.0, torch.Generator().manual_seed(7))
    return compute_statistics(
        fn, ns, x0, n_lambda=600, t_start=T_START, t_end=T_END, batch_size=8192, progress=False
    )


def test_v3_with_computed_ems_beats_dpm_solver_pp_at_5_nfe(problem, ems):
    ns, _, fn, x_T, ref = problem
    v3 = DPM_Solver_v3(ems, ns, steps=5, skip_type="logSNR")
    out = v3.sample(
        x_T, fn, order=2, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True
    )
    best_pp = min(
        _err(
            DPM_Solver(fn, ns).sample(
                x_T, steps=5, t_start=T_START, t_end=T_END, order=o, skip_type="logSNR"
            ),
            ref,
        )
        for o in (2, 3)
    )
    assert _err(out, ref) < 0.9 * best_pp


def test_nfe_corrector_half_and_intermediates(problem, ems):
    ns, _, fn, x_T, _ = problem
    calls = []

    def counting(x, t):
        calls.append(float(t[0]))
        return fn(x, t)

    class Spy(DPM_Solver_v3):
        n_corr = 0

        def multistep_corrector_update(self, *a, **k):
            Spy.n_corr += 1
            return super().multistep_corrector_update(*a, **k)

    v3 = Spy(ems, ns, steps=8, skip_type="time_uniform")
    out, inter = v3.sample(
        x_T, counting, order=3, use_corrector=True, c_pseudo=True, return_intermediate=True
    )
    assert len(calls) == 8 and len(inter) == 8 and torch.isfinite(out).all()
    assert Spy.n_corr == 7  # every step but the first
    Spy.n_corr = 0
    v3.sample(x_T, fn, order=3, use_corrector=True, c_pseudo=True, half=True)
    ts = v3.timesteps[:-1]
    assert Spy.n_corr == int((ts[1:] > 0.5).sum())  # half: only while the current time is > 0.5
    assert 0 < Spy.n_corr < 7
    n_upstream = Spy.n_corr
    Spy.n_corr = 0
    v3.sample(x_T, fn, order=3, use_corrector=True, c_pseudo=True, half="paper")
    assert Spy.n_corr == int((ts[1:] <= 0.5).sum()) == 7 - n_upstream  # the paper: only while t <= 0.5
    with pytest.raises(ValueError, match="half"):
        v3.sample(x_T, fn, order=3, half="t<=0.5")


def test_float32_close_to_float64(problem, ems):
    ns, _, fn, x_T, _ = problem
    v3 = DPM_Solver_v3(ems, ns, steps=10, skip_type="logSNR")
    kw = dict(order=3, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)
    y64 = v3.sample(x_T, fn, **kw)
    y32 = v3.sample(x_T.float(), lambda x, t: fn(x.double(), t.double()).float(), **kw)
    assert y32.dtype == torch.float32
    d = (y32.double() - y64).abs()
    # float32 rounding is amplified by the flow only for samples near mode boundaries (one such sample
    # moves by ~4e-3 here; DPM-Solver++ shows the same effect, see test_solver.py)
    assert float(d.median()) < 2e-6 and float(d.quantile(0.9)) < 1e-5, (d.median(), d.max())


def test_file_and_upstream_directory_inputs(problem, ems, tmp_path):
    ns, _, fn, x_T, _ = problem
    kw = dict(order=2, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True)
    base = DPM_Solver_v3(ems, ns, steps=6, skip_type="logSNR").sample(x_T, fn, **kw)
    save_statistics(ems, tmp_path / "ems.safetensors")
    from_file = DPM_Solver_v3(str(tmp_path / "ems.safetensors"), ns, steps=6, skip_type="logSNR").sample(
        x_T, fn, **kw
    )
    assert torch.equal(base, from_file)
    d = tmp_path / "upstream"
    d.mkdir()
    np.savez(d / "l.npz", l=ems.l.numpy())
    np.savez(d / "sb.npz", s=ems.s.numpy(), b=ems.b.numpy())
    up = DPM_Solver_v3(str(d), ns, steps=6, t_start=T_START, t_end=T_END, skip_type="logSNR")
    assert torch.allclose(up.sample(x_T, fn, **kw), base, rtol=0, atol=1e-10)


def test_bad_input(problem, ems, tmp_path):
    ns, _, fn, x_T, _ = problem
    with pytest.raises(ValueError, match="degenerated"):
        DPM_Solver_v3(None, ns)
    with pytest.raises(ValueError, match="outside the statistics"):
        DPM_Solver_v3(ems, ns, t_end=1e-4)
    with pytest.raises(ValueError, match="same EMS grid point"):
        DPM_Solver_v3(ems, ns, steps=700, skip_type="logSNR")
    with pytest.raises(ValueError, match="skip_type"):
        DPM_Solver_v3(ems, ns, skip_type="karras")
    v3 = DPM_Solver_v3(ems, ns, steps=2)
    with pytest.raises(ValueError, match="below the solver order"):
        v3.sample(x_T, fn, order=3)
    with pytest.raises(ValueError, match="order"):
        v3.sample(x_T, fn, order=4)
    with pytest.raises(ValueError, match="shape"):
        DPM_Solver_v3(ems, ns, steps=5).sample(x_T[:, :4], lambda x, t: x)

    def nan_model(x, t):
        out = fn(x, t)
        return out * float("nan") if float(t[0]) < 0.5 else out

    with pytest.raises(FloatingPointError, match="step 3"):
        DPM_Solver_v3(ems, ns, steps=6, skip_type="time_uniform").sample(x_T, nan_model, order=2)
    save_statistics(ems, tmp_path / "ems.npz")
    other = NoiseScheduleVP("linear", continuous_beta_1=10.0)
    with pytest.raises(ValueError, match="noise schedule"):
        DPM_Solver_v3(str(tmp_path / "ems.npz"), other)


def test_pseudo_order_two_equals_exact_order_two(problem):
    """With two points the divided difference is the exact linear fit: p_pseudo changes nothing at order 2."""
    ns, _, fn, x_T, _ = problem
    v3 = DPM_Solver_v3(_smooth_stats(ns, 1200), ns, steps=8, t_start=T_START, t_end=T_END, skip_type="logSNR")
    kw = dict(order=2, use_corrector=False, c_pseudo=False, lower_order_final=True)
    a, b = v3.sample(x_T, fn, p_pseudo=True, **kw), v3.sample(x_T, fn, p_pseudo=False, **kw)
    assert float((a - b).abs().max()) <= 1e-12 * float(a.abs().max())


def test_edm_grid_is_karras_snapped(problem, ems):
    ns, _, fn, x_T, _ = problem
    v3 = DPM_Solver_v3(ems, ns, steps=8, skip_type="edm")
    lam = ns.marginal_lambda(v3.timesteps)
    sig = torch.exp(-lam)
    rho = 7.0
    w = torch.arange(9, dtype=torch.float64) / 8
    want = (sig[0] ** (1 / rho) + w * (sig[-1] ** (1 / rho) - sig[0] ** (1 / rho))) ** rho
    spacing = float(ems.lambdas[1] - ems.lambdas[0])
    assert float((torch.log(sig) - torch.log(want)).abs().max()) <= spacing / 2 + 1e-9  # snapped to the grid
    assert torch.isfinite(v3.sample(x_T, fn, order=2)).all()


def test_ems_tables_computed_once_per_statistics(problem, ems):
    """The EMS integral tables do not depend on the step grid: a second solver (e.g. a scheduler's next
    set_timesteps) reuses them, and a change of the statistics' values invalidates them."""
    import dataclasses

    ns, _, fn, x_T, _ = problem
    a = DPM_Solver_v3(ems, ns, steps=6, skip_type="logSNR")
    b = DPM_Solver_v3(ems, ns, steps=9, skip_type="time_uniform")
    assert a.L is b.L and a.C is b.C
    fresh = dataclasses.replace(ems, l=ems.l.clone(), s=ems.s.clone(), b=ems.b.clone())
    c = DPM_Solver_v3(fresh, ns, steps=6, skip_type="logSNR")
    assert c.L is not a.L and all(torch.equal(getattr(a, k), getattr(c, k)) for k in "LSBIC")
    torch.testing.assert_close(a.sample(x_T, fn, order=2), c.sample(x_T, fn, order=2), rtol=0, atol=0)
    fresh.b.add_(1e-3)  # in-place change: the cached tables are stale and must be recomputed
    d = DPM_Solver_v3(fresh, ns, steps=6, skip_type="logSNR")
    assert d.B is not c.B and not torch.equal(d.B, c.B)
