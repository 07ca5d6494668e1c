"""VP noise schedules: ``x_t = alpha_t x_0 + sigma_t eps`` with ``alpha_t^2 + sigma_t^2 = 1``.

Conversions among t, log alpha, sigma and the half-logSNR ``lambda = log(alpha / sigma)``, written so
that they stay accurate in float32 at both ends of the time range (``sigma`` from ``-expm1``, the
cosine schedule from a product of sines, inverses through ``softplus`` / ``atan2``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["NoiseSchedule", "NoiseScheduleEDM", "NoiseScheduleVE", "NoiseScheduleVP", "SigmaSchedule"]

_SCHEDULES = ("discrete", "linear", "cosine")


class NoiseSchedule:
    """Base of every noise schedule the solvers accept (VP coordinates, ``alpha^2 + sigma^2 = 1``).

    Subclasses define ``schedule``, ``T``, ``total_N``, :meth:`marginal_log_mean_coeff`,
    :meth:`marginal_log_std`, :meth:`inverse_lambda`, ``t_min`` (smallest allowed time) and
    ``default_t_end`` (the solvers' default ``t_end``).
    """

    schedule: str
    T: float
    total_N: int

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def default_t_end(self) -> float:
        return 1.0 / self.total_N

    def marginal_log_mean_coeff(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def marginal_log_std(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse_lambda(self, lamb):  # pragma: no cover - abstract
        raise NotImplementedError

    def marginal_alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """``alpha_t``."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor | float) -> torch.Tensor:
        """``sigma_t``."""
        return torch.exp(self.marginal_log_std(t))

    def marginal_lambda(self, t: torch.Tensor | float) -> torch.Tensor:
        """Half-logSNR ``lambda_t = log alpha_t - log sigma_t``."""
        return self.marginal_log_mean_coeff(t) - self.marginal_log_std(t)


class NoiseScheduleVP(NoiseSchedule):
    """A variance-preserving noise schedule (upstream ``dpm_solver_pytorch.NoiseScheduleVP`` API).

    Args:
        schedule: ``"discrete"`` (needs ``betas`` or ``alphas_cumprod`` of length N: ``log alpha`` is
            piecewise linear in t through the knots ``t_n = (n + 1) / N``, n = 0..N-1, extrapolated
            linearly below ``1/N``), ``"linear"`` (VPSDE, ``log alpha_t = -t^2 (b1 - b0) / 4 - t b0 / 2``)
            or ``"cosine"`` (Nichol & Dhariwal, s = 0.008, ``T = 0.9946``).
        betas / alphas_cumprod: the discrete schedule (exactly one of them).
        continuous_beta_0 / continuous_beta_1: the linear schedule's beta range.
        dtype: kept for upstream compatibility; all methods compute in the dtype of their input
            (float64 tables are cast on demand).
        clipped_lambda: discrete only: trailing knots with ``lambda < clipped_lambda`` are dropped
            (upstream's ``numerical_clip_alpha``; matters for cosine-like discrete schedules). The knot
            times are kept, so ``T`` becomes the time of the last kept knot and model time labels are
            unchanged. ``None`` disables it.
    """

    def __init__(
        self,
        schedule: str = "discrete",
        betas: torch.Tensor | None = None,
        alphas_cumprod: torch.Tensor | None = None,
        continuous_beta_0: float = 0.1,
        continuous_beta_1: float = 20.0,
        dtype: torch.dtype = torch.float32,
        clipped_lambda: float | None = -5.1,
    ) -> None:
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        self.dtype = dtype
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        if schedule == "discrete":
            if (betas is None) == (alphas_cumprod is None):
                raise ValueError("schedule='discrete' needs exactly one of betas or alphas_cumprod")
            if betas is not None:
                b = torch.as_tensor(betas).detach().to("cpu", torch.float64).reshape(-1)
                if not bool(((b > 0) & (b < 1)).all()):
                    raise ValueError("betas must lie in (0, 1)")
                log_alphas = 0.5 * torch.log1p(-b).cumsum(0)
            else:
                a = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).reshape(-1)
                if not bool(((a > 0) & (a <= 1)).all()):
                    raise ValueError("alphas_cumprod must lie in (0, 1]")
                log_alphas = 0.5 * torch.log(a)
            if log_alphas.numel() < 2:
                raise ValueError("a discrete schedule needs at least 2 entries")
            if not bool((log_alphas[1:] < log_alphas[:-1]).all()):
                raise ValueError("alphas_cumprod must be strictly decreasing")
            self.total_N = log_alphas.numel()
            n_keep = self.total_N
            if clipped_lambda is not None:
                lambdas = log_alphas - 0.5 * torch.log(-torch.expm1(2.0 * log_alphas))
                n_keep = int((lambdas >= clipped_lambda).sum())
                if n_keep < 2:
                    raise ValueError("clipped_lambda leaves fewer than 2 knots")
            self.t_array = torch.arange(1, n_keep + 1, dtype=torch.float64) / self.total_N
            self.log_alpha_array = log_alphas[:n_keep].clone()
            self.T = float(self.t_array[-1])
        elif schedule == "linear":
            self.total_N = 1000
            self.beta_0 = float(continuous_beta_0)
            self.beta_1 = float(continuous_beta_1)
            if not (0 <= self.beta_0 < self.beta_1):
                raise ValueError("need 0 <= continuous_beta_0 < continuous_beta_1")
            self.T = 1.0
        else:  # cosine
            self.total_N = 1000
            self.cosine_s = 0.008
            self.cosine_beta_max = 999.0
            self.T = 0.9946
            self._phi0 = self.cosine_s / (1.0 + self.cosine_s) * math.pi / 2.0
            self._log_cos_phi0 = math.log(math.cos(self._phi0))

    @property
    def t_min(self) -> float:
        """Discrete schedules: ``1/N`` (the first knot, model label 0); continuous: 0 (exclusive)."""
        return 1.0 / self.total_N if self.schedule == "discrete" else 0.0

    # -- helpers ------------------------------------------------------------------------------
    def _tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (
                self.t_array.to(device=like.device, dtype=like.dtype),
                self.log_alpha_array.to(device=like.device, dtype=like.dtype),
            )
        return self._cache[key]

    @staticmethod
    def _as_float(t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return t

    # -- public API -----------------------------------------------------------------------------
    def marginal_log_mean_coeff(self, t: torch.Tensor | float) -> torch.Tensor:
        """``log alpha_t``."""
        t = self._as_float(t)
        if self.schedule == "discrete":
            ts, la = self._tables(t)
            return _interp(t, ts, la)
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        # cos(((t + s) / (1 + s)) pi/2) = sin(((1 - t) / (1 + s)) pi/2), accurate near t = 1
        return torch.log(torch.sin((1.0 - t) / (1.0 + self.cosine_s) * (math.pi / 2.0))) - self._log_cos_phi0

    def marginal_alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """``alpha_t``."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_log_std(self, t: torch.Tensor | float) -> torch.Tensor:
        """``log sigma_t`` (accurate also where ``sigma_t`` is tiny)."""
        t = self._as_float(t)
        if self.schedule == "cosine":
            # 1 - cos^2(phi)/cos^2(phi0) = sin(phi - phi0) sin(phi + phi0) / cos^2(phi0)
            dphi = t / (1.0 + self.cosine_s) * (math.pi / 2.0)
            return 0.5 * (torch.log(torch.sin(dphi)) + torch.log(torch.sin(dphi + 2 * self._phi0))) - (
                self._log_cos_phi0
            )
        return 0.5 * torch.log(-torch.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_std(self, t: torch.Tensor | float) -> torch.Tensor:
        """``sigma_t = sqrt(1 - alpha_t^2)``."""
        return torch.exp(self.marginal_log_std(t))

    def marginal_lambda(self, t: torch.Tensor | float) -> torch.Tensor:
        """Half-logSNR ``lambda_t = log alpha_t - log sigma_t``."""
        return self.marginal_log_mean_coeff(t) - self.marginal_log_std(t)

    def inverse_lambda(self, lamb: torch.Tensor | float) -> torch.Tensor:
        """The t with ``lambda_t = lamb`` (exact inverse of :meth:`marginal_lambda`)."""
        lamb = self._as_float(lamb)
        # log alpha = -0.5 log(1 + e^{-2 lambda}), log sigma = -0.5 log(1 + e^{2 lambda})
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lamb)
        if self.schedule == "discrete":
            ts, la = self._tables(lamb)
            return _interp(log_alpha, la.flip(0), ts.flip(0))
        if self.schedule == "linear":
            d = self.beta_1 - self.beta_0
            tmp = 2.0 * d * (-2.0 * log_alpha)  # 2 (b1 - b0) log(1 + e^{-2 lambda})
            return tmp / ((torch.sqrt(self.beta_0**2 + tmp) + self.beta_0) * d)
        # cos(phi) = alpha cos(phi0), sin(phi) = sqrt(sin(phi0)^2 + cos(phi0)^2 sigma^2) =: r; t follows
        # from phi - phi0, whose sine c0 (r - alpha sin(phi0)) = c0 sigma^2 / (r + alpha sin(phi0)) and
        # cosine alpha c0^2 + r sin(phi0) are sums of positive terms (no cancellation at either end).
        alpha = torch.exp(log_alpha)
        sigma2 = torch.sigmoid(-2.0 * lamb)
        c0, s0 = math.cos(self._phi0), math.sin(self._phi0)
        r = torch.sqrt(s0**2 + c0**2 * sigma2)
        dphi = torch.atan2(c0 * sigma2 / (r + alpha * s0), alpha * c0**2 + r * s0)
        return dphi * (2.0 * (1.0 + self.cosine_s) / math.pi)


class SigmaSchedule(NoiseSchedule):
    """A sigma-space (VE / EDM) schedule ``x~ = x0 + sigma~(t) eps`` seen by the solvers as a VP schedule.

    The VP state is ``x = x~ / sqrt(1 + sigma~^2)``, so ``alpha = 1/sqrt(1 + sigma~^2)``,
    ``sigma = sigma~ alpha``, ``lambda = -log sigma~`` (the PF-ODE is the same ODE in these coordinates;
    reference section 1). Written as ``log alpha = -softplus(2 log sigma~)/2``,
    ``log sigma = -softplus(-2 log sigma~)/2``: no overflow of ``sigma~^2`` and no cancellation at either
    end, in float32 and float64. :func:`dpm_solver.model_wrapper` feeds the network ``x~ = x / alpha``
    and the time ``t``; use :meth:`to_vp` / :meth:`from_vp` for the sampler's input and output.
    """

    sigma_min: float
    sigma_max: float

    def log_sigma_tilde(self, t: torch.Tensor | float) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def t_of_log_sigma_tilde(self, log_sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma_tilde(self, t: torch.Tensor | float) -> torch.Tensor:
        """``sigma~(t) = sigma_t / alpha_t`` (diffusers / k-diffusion ``sigma``)."""
        return torch.exp(self.log_sigma_tilde(t))

    def marginal_log_mean_coeff(self, t: torch.Tensor | float) -> torch.Tensor:
        """``log alpha_t = -log(1 + sigma~^2)/2``."""
        return -0.5 * torch.nn.functional.softplus(2.0 * self.log_sigma_tilde(t))

    def marginal_log_std(self, t: torch.Tensor | float) -> torch.Tensor:
        """``log sigma_t = -log(1 + sigma~^-2)/2``."""
        return -0.5 * torch.nn.functional.softplus(-2.0 * self.log_sigma_tilde(t))

    def marginal_lambda(self, t: torch.Tensor | float) -> torch.Tensor:
        """``lambda_t = -log sigma~(t)`` (exact)."""
        return -self.log_sigma_tilde(t)

    def inverse_lambda(self, lamb: torch.Tensor | float) -> torch.Tensor:
        """The t with ``sigma~(t) = e^{-lamb}``."""
        return self.t_of_log_sigma_tilde(-self._as_float(lamb))

    def to_vp(self, x_tilde: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """VE/EDM sample at time t -> the solver's VP state ``x~ alpha_t``."""
        return x_tilde * self.marginal_alpha(torch.as_tensor(t, dtype=x_tilde.dtype, device=x_tilde.device))

    def from_vp(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The solver's VP state at time t -> VE/EDM sample ``x / alpha_t``."""
        return x / self.marginal_alpha(torch.as_tensor(t, dtype=x.dtype, device=x.device))

    @property
    def t_min(self) -> float:
        return self.inverse_lambda_float(-math.log(self.sigma_min))

    @property
    def default_t_end(self) -> float:
        return self.t_min

    def inverse_lambda_float(self, lamb: float) -> float:
        return float(self.inverse_lambda(torch.tensor(lamb, dtype=torch.float64)))

    @staticmethod
    def _as_float(t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return t


class NoiseScheduleEDM(SigmaSchedule):
    """EDM (Karras et al. 2022) schedule: time ``t = sigma~`` in ``[sigma_min, sigma_max]``.

    Upstream DPM-Solver-v3's ``NoiseScheduleEDM`` (alpha = 1, sigma = t) in VP coordinates. The network
    gets ``(x~, sigma~)``; EDM preconditioning (``c_in``, ``c_skip``, ...) belongs to the model.
    ``t_end`` defaults to ``sigma_min`` and may not go below it; ``T = sigma_max``.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5) -> None:
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.schedule = "edm"
        self.sigma_min, self.sigma_max, self.sigma_data = (
            float(sigma_min),
            float(sigma_max),
            float(sigma_data),
        )
        self.T = self.sigma_max
        self.total_N = 1000  # unused (upstream attribute)

    def log_sigma_tilde(self, t: torch.Tensor | float) -> torch.Tensor:
        return torch.log(self._as_float(t))

    def t_of_log_sigma_tilde(self, log_sigma: torch.Tensor) -> torch.Tensor:
        return torch.exp(log_sigma)


class NoiseScheduleVE(SigmaSchedule):
    """VE-SDE (Song et al. 2021): ``sigma~(t) = sigma_min (sigma_max / sigma_min)^t``, t in ``(0, 1]``.

    The network gets ``(x~, t)``. ``t_end`` defaults to ``eps`` (1e-5 as score_sde); ``T = 1``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, eps: float = 1e-5) -> None:
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.schedule = "ve"
        self.sigma_min, self.sigma_max, self.eps = float(sigma_min), float(sigma_max), float(eps)
        self._log_min, self._log_ratio = math.log(self.sigma_min), math.log(self.sigma_max / self.sigma_min)
        self.T = 1.0
        self.total_N = 1000  # unused (upstream attribute)

    def log_sigma_tilde(self, t: torch.Tensor | float) -> torch.Tensor:
        return self._log_min + self._as_float(t) * self._log_ratio

    def t_of_log_sigma_tilde(self, log_sigma: torch.Tensor) -> torch.Tensor:
        return (log_sigma - self._log_min) / self._log_ratio

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def default_t_end(self) -> float:
        return self.eps


def _interp(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through (xp, yp), xp increasing, extrapolating the end segments."""
    idx = torch.searchsorted(xp, x.detach().reshape(-1).contiguous()).reshape(x.shape)
    idx = idx.clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = yp[idx - 1], yp[idx]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)
