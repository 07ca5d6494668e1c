"""``compute_statistics(common_noise=True)``: the same draws at every lambda point (common random numbers)."""

import math

import pytest
import torch
from dpm_solver import NoiseScheduleVP
from dpm_solver.analytic import GaussianMixture
from dpm_solver.statistics import compute_statistics, hutchinson_jacobian_diag

NS = NoiseScheduleVP("linear")
KW = dict(t_start=1.0, t_end=1e-3, progress=False)


def _fn(gmm):
    return lambda x, t: gmm.prediction("noise", x, t, NS)


def _rough(v: torch.Tensor) -> float:
    """RMS second difference along lambda."""
    return float((v[2:] - 2 * v[1:-1] + v[:-2]).pow(2).mean().sqrt())


def test_same_draws_at_every_point_and_metadata():
    gmm = GaussianMixture.random(4, 3, 0.3, seed=1)
    drawn = []

    def sampler(n, gen):
        x0 = gmm.sample_ve(n, 0.0, gen)
        drawn.append(x0)
        return x0

    kw = dict(n_lambda=6, n_samples=24, batch_size=10, **KW)
    st = compute_statistics(_fn(gmm), NS, sampler, common_noise=True, **kw)
    per_point = [torch.cat(drawn[1 + 3 * i : 4 + 3 * i]) for i in range(7)]  # drawn[0]: shape probe
    assert all(torch.equal(p, per_point[0]) for p in per_point[1:])
    assert st.metadata["extra"]["common_noise"] is True
    drawn.clear()
    indep = compute_statistics(_fn(gmm), NS, sampler, **kw)
    assert "common_noise" not in indep.metadata["extra"]
    assert not torch.equal(torch.cat(drawn[1:4]), torch.cat(drawn[4:7]))


def test_smooth_along_lambda_and_unbiased():
    """Same estimator per point (l within 5 standard errors of the exact expectation, as with independent
    draws), but its Monte-Carlo error is smooth along lambda: l, s, b have far smaller second differences."""
    gmm = GaussianMixture.random(4, 3, 0.3, seed=0)
    x0 = gmm.sample_ve(128, 0.0, torch.Generator().manual_seed(3))
    kw = dict(n_lambda=200, batch_size=4096, **KW)
    cn = compute_statistics(_fn(gmm), NS, x0, common_noise=True, **kw)
    ind = compute_statistics(_fn(gmm), NS, x0, **kw)
    for k in ("l", "s", "b"):
        assert _rough(getattr(cn, k)) < 0.25 * _rough(getattr(ind, k)), k
    g = torch.Generator().manual_seed(5)
    big = gmm.sample_ve(4096, 0.0, g)
    for i in (0, 60, 120, 200):
        t = NS.inverse_lambda(cn.lambdas[i]).expand(4096)
        a, s = NS.marginal_alpha(t)[:, None], NS.marginal_std(t)[:, None]
        x = a * big + s * torch.randn(big.shape, generator=g, dtype=torch.float64)
        exact = (s * gmm.eps_jacobian_diag(x, t, NS)).mean(0)
        _, hd = hutchinson_jacobian_diag(lambda y, t=t: _fn(gmm)(y, t), x, 1, g)
        se = (s * hd).std(0) / math.sqrt(128)
        assert bool(((cn.l[i] - exact).abs() <= 5 * se + 1e-9).all()), (i, cn.l[i], exact, se)


def test_resume_is_bit_exact_and_setting_is_checked(tmp_path):
    gmm = GaussianMixture.random(4, 3, 0.3, seed=1)
    x0 = gmm.sample_ve(16, 0.0, torch.Generator().manual_seed(0))
    kw = dict(n_lambda=12, batch_size=16, common_noise=True, **KW)
    full = compute_statistics(_fn(gmm), NS, x0, **kw)
    ckpt = tmp_path / "partial.npz"
    calls = {"n": 0}

    def flaky(x, t):
        calls["n"] += 1
        if calls["n"] > 14:
            raise KeyboardInterrupt
        return _fn(gmm)(x, t)

    with pytest.raises(KeyboardInterrupt):
        compute_statistics(flaky, NS, x0, checkpoint_path=ckpt, checkpoint_every=0.0, **kw)
    resumed = compute_statistics(_fn(gmm), NS, x0, checkpoint_path=ckpt, **kw)
    for k in ("l", "s", "b"):
        assert torch.equal(getattr(resumed, k), getattr(full, k)), k
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        compute_statistics(flaky, NS, x0, checkpoint_path=ckpt, checkpoint_every=0.0, **kw)
    with pytest.raises(ValueError, match="other settings"):  # independent draws never mix with common ones
        compute_statistics(_fn(gmm), NS, x0, checkpoint_path=ckpt, **{**kw, "common_noise": False})
