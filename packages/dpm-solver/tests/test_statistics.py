"""EMS statistics: Hutchinson estimate vs the exact Jacobian diagonal of the analytic mixture, closed-form
statistics of a single Gaussian, files (round trip, metadata checks), checkpoint/resume."""

import json
import math

import pytest
import torch
from dpm_solver import NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture
from dpm_solver.statistics import (
    FORMAT_VERSION,
    EMSStatistics,
    _smoothed_derivative,
    compute_statistics,
    hutchinson_jacobian_diag,
    load_statistics,
    save_statistics,
)

NS = NoiseScheduleVP("linear")


def _fn(gmm):
    return lambda x, t: gmm.prediction("noise", x, t, NS)


def test_exact_jacobian_diag_matches_autograd():
    gmm = GaussianMixture.random(5, 3, 0.4, seed=2)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 0.3, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacfwd(lambda y, tt: _fn(gmm)(y[None], tt[None])[0]))(x, t)
    assert torch.allclose(gmm.eps_jacobian_diag(x, t, NS), torch.diagonal(jac, dim1=1, dim2=2), atol=1e-12)


def test_hutchinson_unbiased_against_exact_diag():
    """Mean of n probes of v * (J v) lies within 5 standard errors of diag(J); the standard error
    follows from the off-diagonal entries: Var(v_i (Jv)_i) = sum_{j != i} J_ij^2."""
    gmm = GaussianMixture.random(6, 4, 0.3, seed=3)
    x = 2 * torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((8,), 0.4, dtype=torch.float64)
    fn = lambda y: _fn(gmm)(y, t)  # noqa: E731
    n = 400
    eps, est = hutchinson_jacobian_diag(fn, x, n_probes=n, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(eps, fn(x))
    exact = gmm.eps_jacobian_diag(x, t, NS)
    jac = torch.func.vmap(torch.func.jacfwd(lambda y, tt: _fn(gmm)(y[None], tt[None])[0]))(x, t)
    se = ((jac**2).sum(2) - torch.diagonal(jac, dim1=1, dim2=2) ** 2).sqrt() / math.sqrt(n)
    assert bool(((est - exact).abs() <= 5 * se + 1e-12).all())
    assert float((est - exact).abs().max()) > 0  # it is an estimate, not the exact value


def test_single_gaussian_closed_form():
    """K = 1, N(mu, s0^2 I): J = st/(alpha (s0^2 + st^2)) I is diagonal, so Hutchinson is exact and
    l = st^2/(s0^2 + st^2) = 1/(1 + s0^2 e^{2 lambda}); f = (sigma eps - l x)/alpha = -l mu is deterministic,
    hence s = 0 and b = E f' = -l' mu."""
    s0 = 0.5
    mu = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    gmm = GaussianMixture(mu, torch.tensor([s0], dtype=torch.float64))
    x0 = mu + s0 * torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    st = compute_statistics(_fn(gmm), NS, x0, n_lambda=400, t_start=1.0, t_end=1e-3, progress=False)
    lam = st.lambdas[:, None]
    l_exact = 1.0 / (1.0 + s0**2 * torch.exp(2 * lam))
    assert torch.allclose(st.l, l_exact.expand(-1, 3), rtol=1e-10, atol=1e-12)
    assert float(st.s.abs().max()) == 0.0
    # per sample f' = -l' mu + (l' - l_d) x/alpha with l_d the grid's smoothed finite difference of l:
    # b = E f' = -l_d mu + (l' - l_d)(E[x/alpha] - mu), E[x/alpha] - mu = mean(x0) - mu + st mean(z): 64
    # samples, so |E[x/alpha] - mu| < 5 (s0 + st) / 8 with overwhelming probability
    dl = -2 * s0**2 * torch.exp(2 * lam) * l_exact**2
    dl_grid = _smoothed_derivative(l_exact.expand(-1, 3), st.lambdas)
    bound = (dl - dl_grid).abs() * 5.0 * (s0 + torch.exp(-lam)) / 8.0 + 1e-12
    assert bool(((st.b + dl_grid * mu).abs() <= bound).all())
    # the smoothed derivative is within 1% of the analytic one away from the ends
    inner = slice(6, -6)
    assert float((dl_grid - dl)[inner].abs().max()) < 1e-2 * float(dl.abs().max())


def test_l_matches_exact_expectation():
    """l from the tool vs E[sigma diag J] by Monte Carlo with the exact diagonal (4096 samples), within
    5 standard errors of the tool's own estimate (sampling + Hutchinson noise)."""
    gmm = GaussianMixture.random(8, 6, 0.3, seed=0)
    g = torch.Generator().manual_seed(3)
    x0 = gmm.sample_ve(512, 0.0, g)
    st = compute_statistics(_fn(gmm), NS, x0, n_lambda=8, t_start=1.0, t_end=1e-3, progress=False)
    big = gmm.sample_ve(4096, 0.0, g)
    for i in range(0, 9, 2):
        lam = st.lambdas[i]
        t = NS.inverse_lambda(lam).expand(4096)
        a, s = NS.marginal_alpha(t)[:, None], NS.marginal_std(t)[:, None]
        x = a * big + s * torch.randn(big.shape, generator=g, dtype=torch.float64)
        exact = (s * gmm.eps_jacobian_diag(x, t, NS)).mean(0)
        # per-sample spread of the tool's estimator, measured with fresh probes on these samples
        _, hd = hutchinson_jacobian_diag(lambda y, t=t: _fn(gmm)(y, t), x, 1, g)
        se = (s * hd).std(0) / math.sqrt(512)
        assert bool(((st.l[i] - exact).abs() <= 5 * se + 1e-9).all()), (i, st.l[i], exact, se)


def test_sampler_input():
    """A data sampler ``data(n, generator)`` works (samples split over batches); shapes and metadata."""
    gmm = GaussianMixture.random(4, 3, 0.3, seed=1)

    def sampler(n, gen):
        return gmm.sample_ve(n, 0.0, gen)

    st = compute_statistics(
        _fn(gmm),
        NS,
        sampler,
        n_lambda=20,
        n_samples=64,
        t_start=1.0,
        t_end=1e-3,
        batch_size=50,
        progress=False,
    )
    assert st.l.shape == st.s.shape == st.b.shape == (21, 4)
    assert st.metadata["format_version"] == FORMAT_VERSION and st.metadata["n_samples"] == 64
    assert st.metadata["schedule"]["schedule"] == "linear" and st.metadata["data_shape"] == [4]


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_round_trip_and_mismatch_errors(tmp_path, ext):
    gmm = GaussianMixture.random(4, 3, 0.3, seed=1)
    x0 = gmm.sample_ve(32, 0.0, torch.Generator().manual_seed(0))
    st = compute_statistics(_fn(gmm), NS, x0, n_lambda=10, progress=False, extra_metadata={"model": "gmm"})
    path = tmp_path / f"ems{ext}"
    save_statistics(st, path)
    back = load_statistics(path, NS, data_shape=(4,))
    for k in ("l", "s", "b", "lambdas"):
        assert torch.equal(getattr(back, k), getattr(st, k))
    assert back.metadata == json.loads(json.dumps(st.metadata)) and back.metadata["extra"]["model"] == "gmm"
    with pytest.raises(ValueError, match="noise schedule"):
        load_statistics(path, NoiseScheduleVP("linear", continuous_beta_1=19.0))
    with pytest.raises(ValueError, match="noise schedule"):
        load_statistics(path, NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000)))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        load_statistics(path, NS, data_shape=(3, 2))
    with pytest.raises(FileNotFoundError):
        load_statistics(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
        save_statistics(st, tmp_path / "ems.pt")


def test_discrete_schedules_are_told_apart(tmp_path):
    a = NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000))
    b = NoiseScheduleVP("discrete", betas=torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    st = EMSStatistics.degenerate(a, a.T, 1e-3, n_lambda=10, data_shape=(2,))
    save_statistics(st, tmp_path / "d.npz")
    load_statistics(tmp_path / "d.npz", a)
    with pytest.raises(ValueError, match="noise schedule"):
        load_statistics(tmp_path / "d.npz", b)


def test_old_format_version_rejected(tmp_path):
    st = EMSStatistics.degenerate(NS, 1.0, 1e-3, n_lambda=4)
    st.metadata["format_version"] = FORMAT_VERSION + 1
    save_statistics(st, tmp_path / "v.safetensors")
    with pytest.raises(ValueError, match="format_version"):
        load_statistics(tmp_path / "v.safetensors")


def test_checkpoint_resume_is_bit_exact(tmp_path):
    gmm = GaussianMixture.random(4, 3, 0.3, seed=1)
    x0 = gmm.sample_ve(16, 0.0, torch.Generator().manual_seed(0))
    kw = dict(n_lambda=12, t_start=1.0, t_end=1e-3, batch_size=16, progress=False)
    full = compute_statistics(_fn(gmm), NS, x0, **kw)
    ckpt = tmp_path / "partial.safetensors"
    calls = {"n": 0}

    def flaky(x, t):
        calls["n"] += 1
        if calls["n"] > 14:  # 2 JVP calls per grid point: dies in the middle of the 8th point
            raise KeyboardInterrupt
        return _fn(gmm)(x, t)

    with pytest.raises(KeyboardInterrupt):
        compute_statistics(flaky, NS, x0, checkpoint_path=ckpt, checkpoint_every=0.0, **kw)
    assert ckpt.exists()
    resumed = compute_statistics(_fn(gmm), NS, x0, checkpoint_path=ckpt, **kw)
    assert not ckpt.exists()
    for k in ("l", "s", "b"):
        assert torch.equal(getattr(resumed, k), getattr(full, k)), k
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        compute_statistics(flaky, NS, x0, checkpoint_path=ckpt, checkpoint_every=0.0, **kw)
    with pytest.raises(ValueError, match="other settings"):  # a stale checkpoint is refused, not mixed in
        compute_statistics(_fn(gmm), NS, x0, checkpoint_path=ckpt, **{**kw, "n_lambda": 13})


def test_bad_input():
    gmm = GaussianMixture.random(4, 3, 0.3, seed=1)
    with pytest.raises(ValueError, match="n_lambda"):
        compute_statistics(_fn(gmm), NS, torch.zeros(4, 4), n_lambda=0)
    with pytest.raises(ValueError, match="n_samples"):
        compute_statistics(_fn(gmm), NS, torch.zeros(4, 4), n_samples=5)
    with pytest.raises(ValueError, match="n_samples"):
        compute_statistics(_fn(gmm), NS, lambda n, g: torch.zeros(n, 4))
    with pytest.raises(TypeError, match="data"):
        compute_statistics(_fn(gmm), NS, [1, 2])
    with pytest.raises(ValueError, match="t_end"):
        compute_statistics(_fn(gmm), NS, torch.zeros(4, 4), t_start=0.1, t_end=0.2)
    with pytest.raises(ValueError, match="strictly increasing"):
        EMSStatistics(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        EMSStatistics(
            torch.full((2, 1), float("nan")), torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0.0, 1.0])
        )


def test_smooth_statistics():
    from dpm_solver.statistics import smooth_statistics

    lam = torch.linspace(-2.0, 2.0, 21, dtype=torch.float64)
    lin = (0.3 + 0.1 * lam)[:, None].expand(-1, 2).clone()
    noisy = lin + 0.01 * torch.randn(21, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    st = EMSStatistics(lin, noisy, lin.clone(), lam, {"extra": {}})
    sm = smooth_statistics(st, 3)
    inner = slice(3, -3)  # a centred moving average keeps a linear function exactly away from the ends
    assert torch.allclose(sm.l[inner], lin[inner], atol=1e-14)
    assert float((sm.s - lin)[inner].abs().max()) < float((noisy - lin)[inner].abs().max())
    assert sm.metadata["extra"]["smoothed_half_window"] == 3
    assert torch.equal(smooth_statistics(st, 0).s, st.s)
    with pytest.raises(ValueError, match="half_window"):
        smooth_statistics(st, -1)
