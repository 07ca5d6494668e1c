"""DPM-Solver (noise prediction), DPM-Solver++ (data prediction) and SDE-DPM-Solver++: the driver.

Upstream-compatible ``DPM_Solver`` (``dpm_solver_pytorch.py``): multistep, singlestep,
singlestep_fixed and adaptive methods. Every update rule lives in :mod:`dpm_solver.updates` (shared
with the diffusers schedulers); see ``../shared/reference/diffusion-samplers.md`` section 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .adaptive import dpm_solver_adaptive
from .grids import SKIP_TYPES, get_time_steps
from .schedules import NoiseSchedule
from .sde import sde_multistep_sample
from .singlestep import (
    get_orders_and_timesteps_for_singlestep_solver,
    singlestep_fixed_orders,
    singlestep_step,
)
from .updates import (
    first_order_update,
    multistep_order,
    multistep_update,
    normalize_solver_type,
)

__all__ = ["DPM_Solver"]

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
METHODS = ("multistep", "singlestep", "singlestep_fixed", "adaptive")


class DPM_Solver:
    """Upstream-compatible functional sampler (``dpm_solver_pytorch.DPM_Solver``).

    Args:
        model_fn: ``model_fn(x, t_continuous) -> eps`` (e.g. from :func:`model_wrapper`).
        noise_schedule: the schedule the model was trained with (:class:`NoiseScheduleVP`, or a
            sigma-space :class:`NoiseScheduleEDM` / :class:`NoiseScheduleVE`, whose solver state is
            the VP-scaled ``x = x~ / sqrt(1 + sigma~^2)``).
        algorithm_type: ``"dpmsolver++"`` integrates the data prediction ``x0 = (x - sigma eps)/alpha``,
            ``"dpmsolver"`` the noise prediction; ``"sde-dpmsolver++"`` (new) samples the reverse SDE
            with SDE-DPM-Solver++ (data prediction; ``method="multistep"`` only, orders 1-3).
        correcting_x0_fn: ``None``, ``"dynamic_thresholding"`` (Imagen: per sample
            ``s = max(quantile(|x0|, dynamic_thresholding_ratio), thresholding_max_val)``,
            ``x0 <- clamp(x0, -s, s) / s``), ``"static_thresholding"`` (new: ``x0 <- clamp(x0, -m, m)``
            with ``m = thresholding_max_val``) or a callable ``f(x0, t) -> x0``; dpmsolver++ only.
        correcting_xt_fn: optional ``f(x, t, step) -> x`` applied after every step.

    After :meth:`sample`, ``self.nfe`` holds the number of model evaluations it made. With
    ``check_finite=True`` (new keyword, default) every model output is checked for NaN/inf
    (``FloatingPointError`` naming the step index and t); this costs one device sync per evaluation.
    """

    def __init__(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        noise_schedule: NoiseSchedule,
        algorithm_type: str = "dpmsolver++",
        correcting_x0_fn: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        correcting_xt_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
        thresholding_max_val: float = 1.0,
        dynamic_thresholding_ratio: float = 0.995,
        check_finite: bool = True,
    ) -> None:
        if not callable(model_fn):
            raise TypeError("model_fn must be callable")
        if not isinstance(noise_schedule, NoiseSchedule):
            raise TypeError(
                "noise_schedule must be a NoiseScheduleVP, NoiseScheduleEDM or NoiseScheduleVE, "
                f"got {type(noise_schedule).__name__}"
            )
        if algorithm_type not in ALGORITHM_TYPES:
            raise ValueError(f"algorithm_type must be one of {ALGORITHM_TYPES}, got {algorithm_type!r}")
        if correcting_x0_fn == "dynamic_thresholding":
            correcting_x0_fn = self.dynamic_thresholding_fn
        elif correcting_x0_fn == "static_thresholding":
            correcting_x0_fn = self.static_thresholding_fn
        elif correcting_x0_fn is not None and not callable(correcting_x0_fn):
            raise ValueError(
                "correcting_x0_fn must be None, 'dynamic_thresholding', 'static_thresholding' or a callable"
            )
        if correcting_x0_fn is not None and algorithm_type == "dpmsolver":
            raise ValueError("correcting_x0_fn needs algorithm_type='dpmsolver++' or 'sde-dpmsolver++'")
        if correcting_xt_fn is not None and not callable(correcting_xt_fn):
            raise ValueError("correcting_xt_fn must be None or a callable")
        if not thresholding_max_val > 0:
            raise ValueError("thresholding_max_val must be > 0")
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise ValueError("dynamic_thresholding_ratio must lie in (0, 1]")
        self._raw_model_fn = model_fn
        self.check_finite = bool(check_finite)
        self.model = self._checked_model
        self.nfe = 0
        self._step = 0
        self.noise_schedule = noise_schedule
        self.algorithm_type = algorithm_type
        self.correcting_x0_fn = correcting_x0_fn
        self.correcting_xt_fn = correcting_xt_fn
        self.thresholding_max_val = thresholding_max_val
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio

    # -- model evaluations -------------------------------------------------------------------------
    def dynamic_thresholding_fn(self, x0: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Imagen dynamic thresholding of a data prediction (per sample)."""
        flat = x0.abs().reshape(x0.shape[0], -1)
        s = torch.quantile(flat, self.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=self.thresholding_max_val).reshape((-1,) + (1,) * (x0.dim() - 1))
        return torch.clamp(x0, -s, s) / s

    def static_thresholding_fn(self, x0: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Clamp a data prediction to ``[-thresholding_max_val, thresholding_max_val]``."""
        return torch.clamp(x0, -self.thresholding_max_val, self.thresholding_max_val)

    @property
    def _ode_algorithm(self) -> str:
        """The ODE algorithm whose model output the update rules take (sde-dpmsolver++ -> dpmsolver++)."""
        return "dpmsolver" if self.algorithm_type == "dpmsolver" else "dpmsolver++"

    def _checked_model(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One model evaluation: counted in ``self.nfe`` and checked for NaN/inf."""
        out = self._raw_model_fn(x, t.reshape(-1).expand(x.shape[0]))
        self.nfe += 1
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                f"model output contains NaN or inf at step {self._step} (t={float(t.reshape(-1)[0]):.6g}, "
                f"model evaluation {self.nfe})"
            )
        return out

    def noise_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's noise prediction ``eps(x, t)``."""
        return self.model(x, t)

    def data_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0 = (x - sigma_t eps) / alpha_t``, then ``correcting_x0_fn``."""
        ns = self.noise_schedule
        x0 = (x - ns.marginal_std(t) * self.model(x, t)) / ns.marginal_alpha(t)
        if self.correcting_x0_fn is not None:
            x0 = self.correcting_x0_fn(x0, t)
        return x0

    def model_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction the solver integrates: data (dpmsolver++, sde-dpmsolver++) or noise."""
        if self.algorithm_type != "dpmsolver":
            return self.data_prediction_fn(x, t)
        return self.noise_prediction_fn(x, t)

    # -- coefficients ----------------------------------------------------------------------------
    def _coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t, lambda_t)`` of the noise schedule at t (in t's dtype)."""
        ns = self.noise_schedule
        log_alpha, log_sigma = ns.marginal_log_mean_coeff(t), ns.marginal_log_std(t)
        return torch.exp(log_alpha), torch.exp(log_sigma), log_alpha - log_sigma

    # -- time grid -------------------------------------------------------------------------------
    def get_time_steps(
        self,
        skip_type: str,
        t_T: float,
        t_0: float,
        N: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        rho: float = 7.0,
    ) -> torch.Tensor:
        """``N + 1`` times from ``t_T`` down to ``t_0`` (see :func:`dpm_solver.grids.get_time_steps`)."""
        return get_time_steps(self.noise_schedule, skip_type, t_T, t_0, N, device, dtype, rho)

    # -- update rules (thin wrappers over dpm_solver.updates, upstream method names) ----------------
    def dpm_solver_first_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        model_s: torch.Tensor | None = None,
        return_intermediate: bool = False,
    ):
        """Order 1 (DDIM) from s to t; evaluates the model at (x, s) unless ``model_s`` is given."""
        if model_s is None:
            model_s = self.model_fn(x, s)
        alpha_s, sigma_s, lambda_s = self._coeffs(s)
        alpha_t, sigma_t, lambda_t = self._coeffs(t)
        x_t = first_order_update(
            x, model_s, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t,
            h=lambda_t - lambda_s, algorithm_type=self._ode_algorithm,
        )  # fmt: skip
        return (x_t, {"model_s": model_s}) if return_intermediate else x_t

    def singlestep_dpm_solver_second_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        r1: float | torch.Tensor = 0.5,
        model_s: torch.Tensor | None = None,
        return_intermediate: bool = False,
        solver_type: str = "dpmsolver",
    ):
        """Singlestep order 2 (DPM-Solver-2 / DPM-Solver++(2S)) from s to t, intermediate at ``r1``."""
        return singlestep_step(self, x, s, t, 2, solver_type, r1, None, model_s, None, return_intermediate)

    def singlestep_dpm_solver_third_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        r1: float | torch.Tensor = 1.0 / 3.0,
        r2: float | torch.Tensor = 2.0 / 3.0,
        model_s: torch.Tensor | None = None,
        model_s1: torch.Tensor | None = None,
        return_intermediate: bool = False,
        solver_type: str = "dpmsolver",
    ):
        """Singlestep order 3 (DPM-Solver-3) from s to t, intermediates at ``r1``, ``r2``."""
        return singlestep_step(self, x, s, t, 3, solver_type, r1, r2, model_s, model_s1, return_intermediate)

    def singlestep_dpm_solver_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        order: int,
        return_intermediate: bool = False,
        solver_type: str = "dpmsolver",
        r1: float | torch.Tensor | None = None,
        r2: float | torch.Tensor | None = None,
    ):
        """One singlestep update of the given order (1-3) from s to t (``order`` NFE)."""
        if order == 1:
            return self.dpm_solver_first_update(x, s, t, return_intermediate=return_intermediate)
        if order == 2:
            return self.singlestep_dpm_solver_second_update(
                x, s, t, r1=0.5 if r1 is None else r1, return_intermediate=return_intermediate,
                solver_type=solver_type,
            )  # fmt: skip
        if order == 3:
            return self.singlestep_dpm_solver_third_update(
                x, s, t, r1=1.0 / 3.0 if r1 is None else r1, r2=2.0 / 3.0 if r2 is None else r2,
                return_intermediate=return_intermediate, solver_type=solver_type,
            )  # fmt: skip
        raise ValueError(f"singlestep order must be 1, 2 or 3, got {order}")

    def multistep_dpm_solver_second_update(
        self,
        x: torch.Tensor,
        model_prev_list: list,
        t_prev_list: list,
        t: torch.Tensor,
        solver_type: str = "dpmsolver",
    ) -> torch.Tensor:
        """Multistep order 2 (DPM-Solver-2M / DPM-Solver++(2M)) from t_prev_list[-1] to t."""
        return self.multistep_dpm_solver_update(x, model_prev_list, t_prev_list, t, 2, solver_type)

    def multistep_dpm_solver_third_update(
        self,
        x: torch.Tensor,
        model_prev_list: list,
        t_prev_list: list,
        t: torch.Tensor,
        solver_type: str = "dpmsolver",
        exact_3m: bool = False,
    ) -> torch.Tensor:
        """Multistep order 3 (DPM-Solver-3M / DPM-Solver++(3M)) from t_prev_list[-1] to t.

        ``D2 = (D1_0 - D1_1) / (r0 + r1)`` estimates ``h^2 D''/2`` while the Taylor term it multiplies is
        ``phi_3 h^2 D''``; upstream (and diffusers) use ``phi_3 D2``, which leaves an O(h^3) local error
        (global order 2). ``exact_3m=True`` uses ``2 phi_3 D2`` (global order 3); default = upstream.
        """
        return self.multistep_dpm_solver_update(x, model_prev_list, t_prev_list, t, 3, solver_type, exact_3m)

    def multistep_dpm_solver_update(
        self,
        x: torch.Tensor,
        model_prev_list: list,
        t_prev_list: list,
        t: torch.Tensor,
        order: int,
        solver_type: str = "dpmsolver",
        exact_3m: bool = False,
    ) -> torch.Tensor:
        """One multistep update of the given order from t_prev_list[-1] to t."""
        alpha_s, sigma_s, _ = self._coeffs(t_prev_list[-1])
        alpha_t, sigma_t, lambda_t = self._coeffs(t)
        lambdas = [self.noise_schedule.marginal_lambda(v) for v in t_prev_list[-order:]]
        return multistep_update(
            x, list(model_prev_list[-order:]), lambdas, lambda_t=lambda_t, alpha_s=alpha_s, sigma_s=sigma_s,
            alpha_t=alpha_t, sigma_t=sigma_t, order=order, algorithm_type=self._ode_algorithm,
            solver_type=solver_type, exact_3m=exact_3m,
        )  # fmt: skip

    def get_orders_and_timesteps_for_singlestep_solver(
        self,
        steps: int,
        order: int,
        skip_type: str,
        t_T: float,
        t_0: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        rho: float = 7.0,
    ) -> tuple[torch.Tensor, list[int]]:
        """Upstream's outer grid and per-step orders of ``method="singlestep"`` (see :mod:`.singlestep`)."""
        return get_orders_and_timesteps_for_singlestep_solver(
            self.noise_schedule, steps, order, skip_type, t_T, t_0, device, dtype, rho
        )

    def dpm_solver_adaptive(
        self,
        x: torch.Tensor,
        order: int,
        t_T: float,
        t_0: float,
        h_init: float = 0.05,
        atol: float = 0.0078,
        rtol: float = 0.05,
        theta: float = 0.9,
        t_err: float = 1e-5,
        solver_type: str = "dpmsolver",
    ) -> torch.Tensor:
        """Adaptive step size DPM-Solver-12 (order 2) / -23 (order 3); see :mod:`.adaptive`."""
        return dpm_solver_adaptive(self, x, order, t_T, t_0, h_init, atol, rtol, theta, t_err, solver_type)

    # -- driver ------------------------------------------------------------------------------------
    def _check_range(
        self, t_start: float | None, t_end: float | None, inverse: bool = False
    ) -> tuple[float, float]:
        ns = self.noise_schedule
        t_hi = ns.T if (t_end if inverse else t_start) is None else float(t_end if inverse else t_start)
        t_lo = (
            ns.default_t_end
            if (t_start if inverse else t_end) is None
            else float(t_start if inverse else t_end)
        )
        hi_name, lo_name = ("t_end", "t_start") if inverse else ("t_start", "t_end")
        if not (math.isfinite(t_lo) and math.isfinite(t_hi) and t_lo > 0 and t_hi > 0):
            raise ValueError(
                f"t_start and t_end must be finite and > 0, got {hi_name}={t_hi}, {lo_name}={t_lo}"
            )
        if t_hi > ns.T * (1 + 1e-9):
            raise ValueError(f"{hi_name}={t_hi} exceeds the schedule's T={ns.T}")
        if t_lo < ns.t_min * (1 - 1e-9):
            raise ValueError(f"{lo_name}={t_lo} is below the schedule's smallest time {ns.t_min}")
        if not t_lo < t_hi:
            raise ValueError(f"need {lo_name} < {hi_name}, got {lo_name}={t_lo}, {hi_name}={t_hi}")
        return (t_lo, t_hi) if inverse else (t_hi, t_lo)

    def add_noise(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = alpha_t x + sigma_t noise`` (upstream ``add_noise``): ``t`` of shape (1,) gives x's shape,
        shape (K,) gives (K, *x.shape); ``noise`` defaults to a standard normal draw of that shape."""
        ns = self.noise_schedule
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        if noise is None:
            noise = torch.randn((t.shape[0], *x.shape), dtype=x.dtype, device=x.device)
        shape = (-1,) + (1,) * x.dim()
        xt = ns.marginal_alpha(t).reshape(shape) * x.unsqueeze(0) + ns.marginal_std(t).reshape(
            shape
        ) * noise.reshape((t.shape[0], *x.shape))
        return xt.squeeze(0) if t.shape[0] == 1 else xt

    def inverse(
        self,
        x: torch.Tensor,
        steps: int = 20,
        t_start: float | None = None,
        t_end: float | None = None,
        order: int = 2,
        skip_type: str = "time_uniform",
        method: str = "multistep",
        lower_order_final: bool = True,
        denoise_to_zero: bool = False,
        solver_type: str = "dpmsolver",
        atol: float = 0.0078,
        rtol: float = 0.05,
        return_intermediate: bool = False,
        **kwargs,
    ):
        """Upstream ``inverse``: solve the ODE forward in time from ``t_start`` (default ``t_end`` of
        :meth:`sample`, e.g. 1/N) to ``t_end`` (default T) on the reversed step grid (data -> noise,
        e.g. DDIM inversion with ``order=1``). Same methods as :meth:`sample` except ``adaptive``;
        ``denoise_to_zero`` is not meaningful here and must stay False."""
        if method == "adaptive" or denoise_to_zero or self.algorithm_type == "sde-dpmsolver++":
            raise ValueError("inverse supports the ODE methods multistep/singlestep/singlestep_fixed only")
        return self.sample(
            x, steps=steps, t_start=t_start, t_end=t_end, order=order, skip_type=skip_type, method=method,
            lower_order_final=lower_order_final, solver_type=solver_type, atol=atol, rtol=rtol,
            return_intermediate=return_intermediate, _inverse=True, **kwargs,
        )  # fmt: skip

    def sample(
        self,
        x: torch.Tensor,
        steps: int = 20,
        t_start: float | None = None,
        t_end: float | None = None,
        order: int = 2,
        skip_type: str = "time_uniform",
        method: str = "multistep",
        lower_order_final: bool = True,
        denoise_to_zero: bool = False,
        solver_type: str = "dpmsolver",
        atol: float = 0.0078,
        rtol: float = 0.05,
        return_intermediate: bool = False,
        exact_3m: bool = False,
        rho: float = 7.0,
        h_init: float = 0.05,
        theta: float = 0.9,
        t_err: float = 1e-5,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        _inverse: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Solve the diffusion ODE (or SDE) from ``t_start`` (default T) to ``t_end`` with ``steps`` NFE.

        ``t_end`` defaults to ``1/N`` for VP schedules (``sigma_min`` for sigma-space ones). ``x`` is the
        noise at ``t_start``; the computation runs in ``x.dtype``. ``self.nfe`` holds the NFE made.

        - ``multistep``: the first ``order - 1`` steps ramp the order up from 1; with
          ``lower_order_final`` and ``steps < 10`` (upstream's threshold) the last steps use order
          ``min(order, steps + 1 - i)``; no model call after the last step, so NFE = ``steps``.
        - ``singlestep`` (DPM-Solver-fast): upstream's order schedule
          (:func:`dpm_solver.singlestep.singlestep_orders`), NFE = ``steps``; ``lower_order_final``
          is ignored (as upstream).
        - ``singlestep_fixed``: ``steps // order`` steps of order ``order``; when ``order`` does not
          divide ``steps`` (upstream then silently made fewer NFE) one final step of order
          ``steps % order`` is added, so NFE = ``steps`` always.
        - ``adaptive``: DPM-Solver-12 (``order=2``) / -23 (``order=3``) with ``atol``, ``rtol``,
          ``h_init``, ``theta``, ``t_err`` (upstream values); ``steps`` and ``skip_type`` are ignored;
          NFE in ``self.nfe``.

        ``denoise_to_zero`` adds one NFE returning the data prediction at ``t_end``. New keywords
        (defaults keep upstream's results): ``exact_3m`` (see :meth:`multistep_dpm_solver_third_update`),
        ``rho`` (``skip_type="edm"``), ``h_init``/``theta``/``t_err`` (adaptive), ``generator`` /
        ``noise`` (``sde-dpmsolver++``: the Gaussian noise, drawn with ``generator`` unless ``noise`` of
        shape ``(steps, *x.shape)`` is given).
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[0] < 1:
            raise TypeError("x must be a floating-point tensor of shape (batch, ...)")
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if method == "adaptive" and order not in (2, 3):
            raise ValueError(
                f"method='adaptive' needs order 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order}"
            )
        if method != "adaptive" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < order):
            raise ValueError(f"steps (the NFE) must be an int >= order ({order}), got {steps!r}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
        solver_type = normalize_solver_type(solver_type)
        if self.algorithm_type == "sde-dpmsolver++" and method != "multistep":
            raise ValueError("algorithm_type='sde-dpmsolver++' supports method='multistep' only")
        t_T, t_0 = self._check_range(t_start, t_end, inverse=_inverse)
        self.nfe = 0
        self._step = 0
        device, dtype = x.device, x.dtype
        intermediates = [x] if return_intermediate else []
        if method == "adaptive":
            x = self.dpm_solver_adaptive(
                x, order=order, t_T=t_T, t_0=t_0, h_init=h_init, atol=atol, rtol=rtol, theta=theta,
                t_err=t_err, solver_type=solver_type,
            )  # fmt: skip
            step = 1
            if return_intermediate:
                intermediates.append(x)
        elif method == "multistep":
            timesteps = self.get_time_steps(skip_type, t_T, t_0, steps, device, dtype, rho)
            if self.algorithm_type == "sde-dpmsolver++":
                x = sde_multistep_sample(
                    self, x, timesteps, order, solver_type, lower_order_final, intermediates if
                    return_intermediate else None, generator, noise,
                )  # fmt: skip
            else:
                x = self._multistep_sample(
                    x, timesteps, order, solver_type, lower_order_final, exact_3m,
                    intermediates if return_intermediate else None,
                )  # fmt: skip
            step = steps
        else:
            if method == "singlestep":
                outer, orders = self.get_orders_and_timesteps_for_singlestep_solver(
                    steps, order, skip_type, t_T, t_0, device, dtype, rho
                )
            else:
                orders = singlestep_fixed_orders(steps, order)
                outer = self.get_time_steps(skip_type, t_T, t_0, len(orders), device, dtype, rho)
            ns = self.noise_schedule
            for step, step_order in enumerate(orders, start=1):
                self._step = step
                s, t = outer[step - 1], outer[step]
                r1 = r2 = None
                if step_order > 1:
                    inner = self.get_time_steps(skip_type, s.item(), t.item(), step_order, device, dtype, rho)
                    lam = ns.marginal_lambda(inner)
                    h = lam[-1] - lam[0]
                    r1 = (lam[1] - lam[0]) / h
                    r2 = None if step_order <= 2 else (lam[2] - lam[0]) / h
                x = self.singlestep_dpm_solver_update(
                    x, s, t, step_order, solver_type=solver_type, r1=r1, r2=r2
                )
                if self.correcting_xt_fn is not None:
                    x = self.correcting_xt_fn(x, t, step - 1)  # upstream: 0-based outer step index
                if return_intermediate:
                    intermediates.append(x)
            step = len(orders)
        if denoise_to_zero:
            self._step = step + 1
            t = torch.as_tensor(t_0, dtype=x.dtype, device=x.device)
            x = self.data_prediction_fn(x, t)
            if self.correcting_xt_fn is not None:
                x = self.correcting_xt_fn(x, t, step + 1)
            if return_intermediate:
                intermediates.append(x)
        if return_intermediate:
            return x, intermediates
        return x

    def _multistep_sample(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        order: int,
        solver_type: str,
        lower_order_final: bool,
        exact_3m: bool,
        intermediates: list | None,
    ) -> torch.Tensor:
        """The multistep loop over ``timesteps`` (``len - 1`` steps, as many NFE)."""
        steps = timesteps.numel() - 1
        t = timesteps[0]
        alpha_s, sigma_s, lambda_s = self._coeffs(t)
        lambda_list = [lambda_s]
        model_prev_list = [self.model_fn(x, t)]
        if self.correcting_xt_fn is not None:
            x = self.correcting_xt_fn(x, t, 0)
        for step in range(1, steps + 1):
            self._step = step
            t = timesteps[step]
            step_order = multistep_order(step, steps, order, lower_order_final)
            alpha_t, sigma_t, lambda_t = self._coeffs(t)
            x = multistep_update(
                x, model_prev_list, lambda_list, lambda_t=lambda_t, alpha_s=alpha_s, sigma_s=sigma_s,
                alpha_t=alpha_t, sigma_t=sigma_t, order=step_order, algorithm_type=self._ode_algorithm,
                solver_type=solver_type, exact_3m=exact_3m,
            )  # fmt: skip
            if self.correcting_xt_fn is not None:
                x = self.correcting_xt_fn(x, t, step)
            if intermediates is not None:
                intermediates.append(x)
            alpha_s, sigma_s = alpha_t, sigma_t
            lambda_list.append(lambda_t)
            if step < steps:  # the model output after the last step is never needed
                model_prev_list.append(self.model_fn(x, t))
            lambda_list, model_prev_list = lambda_list[-order:], model_prev_list[-order:]
        return x
