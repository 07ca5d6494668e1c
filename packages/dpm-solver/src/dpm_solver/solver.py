"""Multistep DPM-Solver (noise prediction) and DPM-Solver++ (data prediction), orders 1-3.

Update rules of Lu et al. (arXiv 2206.00927, 2211.01095) in the exponential-integrator form, with
``h = lambda_t - lambda_s``; see ``../shared/reference/diffusion-samplers.md`` section 3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .schedules import NoiseScheduleVP

__all__ = ["DPM_Solver"]

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver")
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
SOLVER_TYPES = ("dpmsolver", "taylor")
METHODS = ("multistep",)


class DPM_Solver:
    """Upstream-compatible functional sampler (``dpm_solver_pytorch.DPM_Solver``), multistep only.

    Args:
        model_fn: ``model_fn(x, t_continuous) -> eps`` (e.g. from :func:`model_wrapper`).
        noise_schedule: the :class:`NoiseScheduleVP` the model was trained with.
        algorithm_type: ``"dpmsolver++"`` integrates the data prediction ``x0 = (x - sigma eps)/alpha``,
            ``"dpmsolver"`` the noise prediction.
        correcting_x0_fn: ``None``, ``"dynamic_thresholding"`` (Imagen: per sample
            ``s = max(quantile(|x0|, dynamic_thresholding_ratio), thresholding_max_val)``,
            ``x0 <- clamp(x0, -s, s) / s``), ``"static_thresholding"`` (new: ``x0 <- clamp(x0, -m, m)``
            with ``m = thresholding_max_val``) or a callable ``f(x0, t) -> x0``; dpmsolver++ only.
        correcting_xt_fn: optional ``f(x, t, step) -> x`` applied after every step.
    """

    def __init__(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        noise_schedule: NoiseScheduleVP,
        algorithm_type: str = "dpmsolver++",
        correcting_x0_fn: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        correcting_xt_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
        thresholding_max_val: float = 1.0,
        dynamic_thresholding_ratio: float = 0.995,
    ) -> None:
        if not callable(model_fn):
            raise TypeError("model_fn must be callable")
        if not isinstance(noise_schedule, NoiseScheduleVP):
            raise TypeError(f"noise_schedule must be a NoiseScheduleVP, got {type(noise_schedule).__name__}")
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
        if correcting_x0_fn is not None and algorithm_type != "dpmsolver++":
            raise ValueError("correcting_x0_fn needs algorithm_type='dpmsolver++'")
        if correcting_xt_fn is not None and not callable(correcting_xt_fn):
            raise ValueError("correcting_xt_fn must be None or a callable")
        if not thresholding_max_val > 0:
            raise ValueError("thresholding_max_val must be > 0")
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise ValueError("dynamic_thresholding_ratio must lie in (0, 1]")
        self.model = lambda x, t: model_fn(x, t.expand(x.shape[0]))
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

    def noise_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)

    def data_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ns = self.noise_schedule
        x0 = (x - ns.marginal_std(t) * self.model(x, t)) / ns.marginal_alpha(t)
        if self.correcting_x0_fn is not None:
            x0 = self.correcting_x0_fn(x0, t)
        return x0

    def model_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.algorithm_type == "dpmsolver++":
            return self.data_prediction_fn(x, t)
        return self.noise_prediction_fn(x, t)

    # -- time grid -------------------------------------------------------------------------------
    def get_time_steps(
        self, skip_type: str, t_T: float, t_0: float, N: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """``N + 1`` times from ``t_T`` down to ``t_0``: uniform in lambda, in t or in sqrt(t)."""
        if skip_type == "logSNR":
            ns = self.noise_schedule
            lam_T = ns.marginal_lambda(torch.tensor(t_T, dtype=dtype, device=device))
            lam_0 = ns.marginal_lambda(torch.tensor(t_0, dtype=dtype, device=device))
            w = torch.linspace(0.0, 1.0, N + 1, dtype=dtype, device=device)
            ts = ns.inverse_lambda(lam_T + w * (lam_0 - lam_T))
            ts[0], ts[-1] = t_T, t_0  # exact endpoints
            return ts
        if skip_type == "time_uniform":
            return torch.linspace(t_T, t_0, N + 1, dtype=dtype, device=device)
        if skip_type == "time_quadratic":
            return torch.linspace(t_T**0.5, t_0**0.5, N + 1, dtype=dtype, device=device).pow(2)
        raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")

    # -- update rules ------------------------------------------------------------------------------
    def dpm_solver_first_update(
        self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, model_s: torch.Tensor
    ) -> torch.Tensor:
        """Order 1 (DDIM) from s to t given the model output at (x, s)."""
        ns = self.noise_schedule
        h = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        log_alpha_s, log_alpha_t = ns.marginal_log_mean_coeff(s), ns.marginal_log_mean_coeff(t)
        log_sigma_s, log_sigma_t = ns.marginal_log_std(s), ns.marginal_log_std(t)
        if self.algorithm_type == "dpmsolver++":
            phi_1 = torch.expm1(-h)
            return torch.exp(log_sigma_t - log_sigma_s) * x - torch.exp(log_alpha_t) * phi_1 * model_s
        phi_1 = torch.expm1(h)
        return torch.exp(log_alpha_t - log_alpha_s) * x - torch.exp(log_sigma_t) * phi_1 * model_s

    def multistep_dpm_solver_second_update(
        self, x: torch.Tensor, model_prev_list: list, t_prev_list: list, t: torch.Tensor, solver_type: str
    ) -> torch.Tensor:
        """Multistep order 2 (DPM-Solver-2M / DPM-Solver++(2M)) from t_prev_list[-1] to t."""
        ns = self.noise_schedule
        model_prev_1, model_prev_0 = model_prev_list[-2], model_prev_list[-1]
        t_prev_1, t_prev_0 = t_prev_list[-2], t_prev_list[-1]
        lambda_prev_1, lambda_prev_0, lambda_t = (ns.marginal_lambda(v) for v in (t_prev_1, t_prev_0, t))
        log_alpha_prev_0, log_alpha_t = ns.marginal_log_mean_coeff(t_prev_0), ns.marginal_log_mean_coeff(t)
        log_sigma_prev_0, log_sigma_t = ns.marginal_log_std(t_prev_0), ns.marginal_log_std(t)
        alpha_t, sigma_t = torch.exp(log_alpha_t), torch.exp(log_sigma_t)
        h_0 = lambda_prev_0 - lambda_prev_1
        h = lambda_t - lambda_prev_0
        r0 = h_0 / h
        D1_0 = (model_prev_0 - model_prev_1) / r0
        if self.algorithm_type == "dpmsolver++":
            phi_1 = torch.expm1(-h)
            x_t = torch.exp(log_sigma_t - log_sigma_prev_0) * x - alpha_t * phi_1 * model_prev_0
            if solver_type == "dpmsolver":
                return x_t - 0.5 * (alpha_t * phi_1) * D1_0
            return x_t + (alpha_t * (phi_1 / h + 1.0)) * D1_0
        phi_1 = torch.expm1(h)
        x_t = torch.exp(log_alpha_t - log_alpha_prev_0) * x - sigma_t * phi_1 * model_prev_0
        if solver_type == "dpmsolver":
            return x_t - 0.5 * (sigma_t * phi_1) * D1_0
        return x_t - (sigma_t * (phi_1 / h - 1.0)) * D1_0

    def multistep_dpm_solver_third_update(
        self,
        x: torch.Tensor,
        model_prev_list: list,
        t_prev_list: list,
        t: torch.Tensor,
        exact_3m: bool = False,
    ) -> torch.Tensor:
        """Multistep order 3 (DPM-Solver-3M / DPM-Solver++(3M)) from t_prev_list[-1] to t.

        ``D2 = (D1_0 - D1_1) / (r0 + r1)`` estimates ``h^2 D''/2`` while the Taylor term it multiplies is
        ``phi_3 h^2 D''``; upstream (and diffusers) use ``phi_3 D2``, which leaves an O(h^3) local error
        (global order 2). ``exact_3m=True`` uses ``2 phi_3 D2`` (global order 3); default = upstream.
        """
        c2 = 2.0 if exact_3m else 1.0
        ns = self.noise_schedule
        model_prev_2, model_prev_1, model_prev_0 = model_prev_list[-3:]
        t_prev_2, t_prev_1, t_prev_0 = t_prev_list[-3:]
        lambda_prev_2, lambda_prev_1, lambda_prev_0, lambda_t = (
            ns.marginal_lambda(v) for v in (t_prev_2, t_prev_1, t_prev_0, t)
        )
        log_alpha_prev_0, log_alpha_t = ns.marginal_log_mean_coeff(t_prev_0), ns.marginal_log_mean_coeff(t)
        log_sigma_prev_0, log_sigma_t = ns.marginal_log_std(t_prev_0), ns.marginal_log_std(t)
        alpha_t, sigma_t = torch.exp(log_alpha_t), torch.exp(log_sigma_t)
        h_1 = lambda_prev_1 - lambda_prev_2
        h_0 = lambda_prev_0 - lambda_prev_1
        h = lambda_t - lambda_prev_0
        r0, r1 = h_0 / h, h_1 / h
        D1_0 = (model_prev_0 - model_prev_1) / r0
        D1_1 = (model_prev_1 - model_prev_2) / r1
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (D1_0 - D1_1) / (r0 + r1)
        if self.algorithm_type == "dpmsolver++":
            phi_1 = torch.expm1(-h)
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            return (
                torch.exp(log_sigma_t - log_sigma_prev_0) * x
                - (alpha_t * phi_1) * model_prev_0
                + (alpha_t * phi_2) * D1
                - (alpha_t * phi_3) * (c2 * D2)
            )
        phi_1 = torch.expm1(h)
        phi_2 = phi_1 / h - 1.0
        phi_3 = phi_2 / h - 0.5
        return (
            torch.exp(log_alpha_t - log_alpha_prev_0) * x
            - (sigma_t * phi_1) * model_prev_0
            - (sigma_t * phi_2) * D1
            - (sigma_t * phi_3) * (c2 * D2)
        )

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
        if order == 1:
            return self.dpm_solver_first_update(x, t_prev_list[-1], t, model_prev_list[-1])
        if order == 2:
            return self.multistep_dpm_solver_second_update(x, model_prev_list, t_prev_list, t, solver_type)
        if order == 3:
            return self.multistep_dpm_solver_third_update(x, model_prev_list, t_prev_list, t, exact_3m)
        raise ValueError(f"multistep order must be 1, 2 or 3, got {order}")

    # -- driver ------------------------------------------------------------------------------------
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
        return_intermediate: bool = False,
        exact_3m: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Solve the diffusion ODE from ``t_start`` (default T) to ``t_end`` (default 1/N) with ``steps`` NFE.

        Multistep: the first ``order - 1`` steps ramp the order up from 1; with ``lower_order_final``
        and ``steps < 10`` (upstream's threshold) the last steps use order ``min(order, steps + 1 - i)``.
        The model is not evaluated after the last step, so NFE = ``steps``; ``denoise_to_zero`` adds one
        NFE returning the data prediction at ``t_end``. ``x`` is the noise at ``t_start``; the
        computation runs in ``x.dtype``. ``exact_3m=True`` (new keyword) corrects the third-order
        coefficient (see :meth:`multistep_dpm_solver_third_update`); the default keeps upstream's results.
        """
        if method not in METHODS:
            raise NotImplementedError(
                f"method={method!r} is not implemented in this release; only {METHODS} "
                "(singlestep, singlestep_fixed and adaptive are planned)"
            )
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[0] < 1:
            raise TypeError("x must be a floating-point tensor of shape (batch, ...)")
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < order:
            raise ValueError(f"steps must be an int >= order ({order}), got {steps!r}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
        ns = self.noise_schedule
        t_0 = 1.0 / ns.total_N if t_end is None else float(t_end)
        t_T = ns.T if t_start is None else float(t_start)
        if not (t_0 > 0 and t_T > 0):
            raise ValueError(
                "t_start and t_end must be > 0 (for discrete-time models in [1/N, T], N = len(betas))"
            )
        if t_T > ns.T * (1 + 1e-12):
            raise ValueError(f"t_start={t_T} exceeds the schedule's T={ns.T}")
        if not t_0 < t_T:
            raise ValueError(f"need t_end < t_start, got t_end={t_0}, t_start={t_T}")

        timesteps = self.get_time_steps(skip_type, t_T, t_0, steps, x.device, x.dtype)
        intermediates = [x] if return_intermediate else []
        t = timesteps[0]
        t_prev_list = [t]
        model_prev_list = [self.model_fn(x, t)]
        step = 0
        if self.correcting_xt_fn is not None:
            x = self.correcting_xt_fn(x, t, step)
        for step in range(1, steps + 1):
            t = timesteps[step]
            if step < order:
                step_order = step
            elif lower_order_final and steps < 10:
                step_order = min(order, steps + 1 - step)
            else:
                step_order = order
            x = self.multistep_dpm_solver_update(
                x, model_prev_list, t_prev_list, t, step_order, solver_type, exact_3m
            )
            if self.correcting_xt_fn is not None:
                x = self.correcting_xt_fn(x, t, step)
            if return_intermediate:
                intermediates.append(x)
            t_prev_list.append(t)
            if step < steps:  # the model output after the last step is never needed
                model_prev_list.append(self.model_fn(x, t))
            t_prev_list, model_prev_list = t_prev_list[-order:], model_prev_list[-order:]
        if denoise_to_zero:
            t = torch.as_tensor(t_0, dtype=x.dtype, device=x.device)
            x = self.data_prediction_fn(x, t)
            if self.correcting_xt_fn is not None:
                x = self.correcting_xt_fn(x, t, step + 1)
            if return_intermediate:
                intermediates.append(x)
        if return_intermediate:
            return x, intermediates
        return x
