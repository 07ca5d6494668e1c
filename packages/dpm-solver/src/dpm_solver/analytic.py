"""An analytic diffusion model: isotropic Gaussian-mixture data with exact eps / x0 / v / score.

For data ``x0 ~ sum_k pi_k N(mu_k, s_k^2 I)`` the VE-marginal at noise level ``st = sigma/alpha`` is
``sum_k pi_k N(mu_k, (s_k^2 + st^2) I)``, so the score, and with it every prediction type, is known in
closed form. The probability-flow ODE in VE coordinates ``dx~/d st = eps*(x~, st)`` does not depend on
the VP schedule; :meth:`GaussianMixture.flow` integrates it (classical RK4 in ``u = log st``) to give a
reference solution, and for one component the flow is exact in closed form.
"""

from __future__ import annotations

import math

import torch

from .schedules import NoiseScheduleVP

__all__ = ["DiagonalGaussianMixture", "GaussianMixture", "reference_flow"]


class GaussianMixture:
    """Mixture ``sum_k weights_k N(means_k, stds_k^2 I)`` in R^d (float64 recommended)."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        self.means = torch.as_tensor(means)
        if self.means.dim() != 2:
            raise ValueError("means must have shape (K, d)")
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=self.means.dtype).reshape(-1).expand(k).clone()
        w = torch.full((k,), 1.0 / k, dtype=self.means.dtype) if weights is None else torch.as_tensor(weights)
        self.log_weights = torch.log(w / w.sum()).to(self.means.dtype)

    @classmethod
    def random(cls, d: int, k: int, std: float, seed: int = 0, dtype=torch.float64) -> GaussianMixture:
        g = torch.Generator().manual_seed(seed)
        means = 2.0 * torch.randn(k, d, generator=g, dtype=dtype)
        weights = torch.rand(k, generator=g, dtype=dtype) + 0.5
        return cls(means, torch.full((k,), std, dtype=dtype), weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def score_ve(self, xt: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
        """``grad log p(xt; st)`` of the VE marginal; ``st`` scalar or shape (B,)."""
        mu, s2 = self.means.to(xt), self.stds.to(xt) ** 2
        st = torch.as_tensor(st, dtype=xt.dtype, device=xt.device).reshape(-1, 1)
        var = s2.reshape(1, -1) + st**2  # (B or 1, K)
        diff = xt[:, None, :] - mu[None]  # (B, K, d)
        logp = (
            self.log_weights.to(xt)
            - 0.5 * (diff**2).sum(-1) / var
            - 0.5 * self.dim * torch.log(2 * math.pi * var)
        )
        r = torch.softmax(logp, dim=1)
        return -((r / var)[..., None] * diff).sum(1)

    def eps_ve(self, xt: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
        """Exact noise prediction ``-st * score`` in VE coordinates."""
        st = torch.as_tensor(st, dtype=xt.dtype, device=xt.device).reshape(-1, 1)
        return -st * self.score_ve(xt, st.reshape(-1))

    def hessian_diag_ve(self, xt: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
        """Diagonal of the Hessian of ``log p(xt; st)``:
        ``sum_k r_k (g_k^2 - 1/var_k) - (sum_k r_k g_k)^2`` with ``g_k = -(xt - mu_k)/var_k``."""
        mu, s2 = self.means.to(xt), self.stds.to(xt) ** 2
        st = torch.as_tensor(st, dtype=xt.dtype, device=xt.device).reshape(-1, 1)
        var = s2.reshape(1, -1) + st**2
        diff = xt[:, None, :] - mu[None]
        logp = (
            self.log_weights.to(xt)
            - 0.5 * (diff**2).sum(-1) / var
            - 0.5 * self.dim * torch.log(2 * math.pi * var)
        )
        r = torch.softmax(logp, dim=1)[..., None]  # (B, K, 1)
        g = -diff / var[..., None]
        return (r * (g * g - 1.0 / var[..., None])).sum(1) - (r * g).sum(1) ** 2

    def eps_jacobian_diag(self, x: torch.Tensor, t: torch.Tensor, ns: NoiseScheduleVP) -> torch.Tensor:
        """Exact diagonal of ``d eps*/dx`` of the VP model at (x, t): ``eps = -st grad log p(x/alpha; st)``,
        so ``d eps/dx = -(st/alpha) Hess log p``."""
        a = ns.marginal_alpha(t).reshape(-1, 1)
        s = ns.marginal_std(t).reshape(-1, 1)
        st = s / a
        return -(st / a) * self.hessian_diag_ve(x / a, st.reshape(-1))

    def prediction(self, kind: str, x: torch.Tensor, t: torch.Tensor, ns: NoiseScheduleVP) -> torch.Tensor:
        """Exact VP-model output of type ``noise``, ``x_start``, ``v`` or ``score`` at (x, t)."""
        a = ns.marginal_alpha(t).reshape(-1, 1)
        s = ns.marginal_std(t).reshape(-1, 1)
        eps = self.eps_ve(x / a, (s / a).reshape(-1))
        if kind == "noise":
            return eps
        if kind == "x_start":
            return (x - s * eps) / a
        if kind == "v":
            return a * eps - s * (x - s * eps) / a
        if kind == "score":
            return -eps / s
        raise ValueError(f"unknown prediction kind {kind!r}")

    def sample_ve(self, n: int, st: float, generator: torch.Generator) -> torch.Tensor:
        """n draws of ``x0 + st z`` (the exact VE marginal at ``st``)."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        dt = self.means.dtype
        x0 = self.means[k] + self.stds[k, None] * torch.randn(n, self.dim, generator=generator, dtype=dt)
        return x0 + st * torch.randn(n, self.dim, generator=generator, dtype=dt)

    def flow(self, x: torch.Tensor, st_start: float, st_end: float, n_steps: int = 2000) -> torch.Tensor:
        """Probability-flow ODE from ``st_start`` to ``st_end`` in VE coordinates: RK4 in ``u = log st``
        (``dx/du = st * eps*(x, st)``) with ``n_steps`` uniform steps; exact formula for K = 1."""
        if self.means.shape[0] == 1:
            s2 = self.stds[0] ** 2
            mu = self.means[0].to(x)
            return mu + (x - mu) * math.sqrt((s2 + st_end**2) / (s2 + st_start**2))
        u0, u1 = math.log(st_start), math.log(st_end)
        h = (u1 - u0) / n_steps

        def f(y: torch.Tensor, u: float) -> torch.Tensor:
            return math.exp(u) * self.eps_ve(y, torch.tensor(math.exp(u), dtype=y.dtype))

        y = x.clone()
        for i in range(n_steps):
            u = u0 + i * h
            k1 = f(y, u)
            k2 = f(y + 0.5 * h * k1, u + 0.5 * h)
            k3 = f(y + 0.5 * h * k2, u + 0.5 * h)
            k4 = f(y + h * k3, u + h)
            y = y + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        return y


class DiagonalGaussianMixture(GaussianMixture):
    """Anisotropic mixture ``sum_k weights_k N(means_k, diag(stds_k^2))``; ``stds`` has shape (K, d).

    Same interface as :class:`GaussianMixture` (exact ``score_ve`` / ``eps_ve`` / ``prediction`` /
    ``sample_ve``); :meth:`flow` integrates the probability-flow ODE with :func:`reference_flow`.
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        means = torch.as_tensor(means)
        stds = torch.as_tensor(stds, dtype=means.dtype)
        if means.dim() != 2 or stds.shape != means.shape:
            raise ValueError("means and stds must both have shape (K, d)")
        super().__init__(means, stds[:, 0], weights)
        self.stds = stds.clone()

    @classmethod
    def random(
        cls, d: int, k: int, std_min: float, std_max: float, seed: int = 0, dtype=torch.float64
    ) -> DiagonalGaussianMixture:
        """Random means ``2 N(0, I)``; per-axis stds log-uniform in ``[std_min, std_max]``."""
        g = torch.Generator().manual_seed(seed)
        means = 2.0 * torch.randn(k, d, generator=g, dtype=dtype)
        u = torch.rand(k, d, generator=g, dtype=dtype)
        stds = torch.exp(math.log(std_min) + u * (math.log(std_max) - math.log(std_min)))
        weights = torch.rand(k, generator=g, dtype=dtype) + 0.5
        return cls(means, stds, weights)

    def score_ve(self, xt: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
        mu, s2 = self.means.to(xt), self.stds.to(xt) ** 2
        st = torch.as_tensor(st, dtype=xt.dtype, device=xt.device).reshape(-1, 1, 1)
        var = s2[None] + st**2  # (B or 1, K, d)
        diff = xt[:, None, :] - mu[None]  # (B, K, d)
        logp = self.log_weights.to(xt) - 0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1)
        r = torch.softmax(logp, dim=1)
        return -(r[..., None] * diff / var).sum(1)

    def sample_ve(self, n: int, st: float, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        dt = self.means.dtype
        x0 = self.means[k] + self.stds[k] * torch.randn(n, self.dim, generator=generator, dtype=dt)
        return x0 + st * torch.randn(n, self.dim, generator=generator, dtype=dt)

    def flow(self, x: torch.Tensor, st_start: float, st_end: float, n_steps: int = 2000) -> torch.Tensor:
        return reference_flow(self.eps_ve, x, st_start, st_end, n_steps, richardson=False)


def reference_flow(
    eps_ve,
    x: torch.Tensor,
    st_start: float,
    st_end: float,
    n_steps: int = 1000,
    richardson: bool = True,
    st_floor: float = 1e-7,
) -> torch.Tensor:
    """Probability-flow ODE ``dx~/du = st eps(x~, st)``, ``u = log st``, from ``st_start`` to ``st_end``.

    Classical RK4 with ``n_steps`` uniform steps in u; ``richardson=True`` also runs ``2 n_steps`` and
    returns ``(16 y_2n - y_n) / 15`` (fifth-order accurate). ``st_end = 0`` integrates to ``st_floor``
    (the remaining displacement is O(st_floor^2 / std_min^2)). ``eps_ve(x, st)`` is the exact VE noise
    prediction (e.g. :meth:`GaussianMixture.eps_ve`).
    """
    u0, u1 = math.log(st_start), math.log(max(st_end, st_floor))

    def rk4(n: int) -> torch.Tensor:
        h = (u1 - u0) / n

        def f(y: torch.Tensor, u: float) -> torch.Tensor:
            return math.exp(u) * eps_ve(y, torch.tensor(math.exp(u), dtype=y.dtype))

        y = x.clone()
        for i in range(n):
            u = u0 + i * h
            k1 = f(y, u)
            k2 = f(y + 0.5 * h * k1, u + 0.5 * h)
            k3 = f(y + 0.5 * h * k2, u + 0.5 * h)
            k4 = f(y + h * k3, u + h)
            y = y + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        return y

    if not richardson:
        return rk4(n_steps)
    return (16.0 * rk4(2 * n_steps) - rk4(n_steps)) / 15.0
