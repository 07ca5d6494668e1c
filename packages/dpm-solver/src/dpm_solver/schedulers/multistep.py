"""DPM-Solver / DPM-Solver++ / SDE-DPM-Solver++ multistep as a diffusers scheduler."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config

# SchedulerMixin must be an attribute of this module: a pipeline reloading a component recorded as
# ["dpm_solver.schedulers.<module>", cls] looks its loader base classes up in the component's module.
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: F401
from diffusers.utils.torch_utils import randn_tensor

from ..updates import multistep_order, multistep_update, sde_multistep_update
from ._base import DPMSchedulerBase

__all__ = ["MultistepDPMSolverScheduler"]


class MultistepDPMSolverScheduler(DPMSchedulerBase):
    """Drop-in for diffusers' ``DPMSolverMultistepScheduler`` (same config names and defaults).

    The update of every step is :func:`dpm_solver.updates.multistep_update` (ODE) or
    :func:`dpm_solver.updates.sde_multistep_update` (``algorithm_type="sde-dpmsolver++"``), the same
    functions :class:`dpm_solver.DPM_Solver` calls. Differences from diffusers, all documented choices:

    - NFE is exactly ``num_inference_steps``: Karras / logSNR grids to ``"sigma_min"`` end at sigma_min
      instead of repeating it (diffusers wastes the last model call on a zero-length step).
    - Karras / logSNR model timesteps are the fractional labels of the grid's noise levels (diffusers
      rounds them, so the network sees a different level than the solver integrates).
    - ``timestep_spacing="logSNR"`` (uniform in lambda, upstream's recommended grid) is added;
      diffusers' ``use_lu_lambdas=True`` is accepted and means the same grid.
    - ``lower_order_final`` lowers the last steps when ``num_inference_steps <
      lower_order_final_threshold`` (15 = diffusers; upstream uses 10); the step to sigma = 0
      (``final_sigmas_type="zero"``) is first order and returns the data prediction.
    - ``exact_3m=True`` uses the Taylor-consistent third-order coefficient (see ``DPM_Solver``).
    - ``algorithm_type="dpmsolver"`` works with ``final_sigmas_type="zero"`` (the last step returns the
      data prediction); diffusers raises.
    - A NaN/inf model output raises ``ValueError`` naming the step index.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        lower_order_final_threshold: int = 15,
        use_karras_sigmas: bool = False,
        final_sigmas_type: str = "zero",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        exact_3m: bool = False,
        use_lu_lambdas: bool = False,
    ) -> None:
        self._setup()
        self.lambdas: list[torch.Tensor] = []

    def _on_set_timesteps(self) -> None:
        self.model_outputs, self.lambdas = [], []

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One solver step from ``timestep`` to the next grid point (one model evaluation)."""
        c = self.config
        i, x, m = self._begin_step(model_output, timestep, sample)
        alpha_s, sigma_s, lambda_s = self._coeffs(i, x)
        alpha_t, sigma_t, lambda_t = self._coeffs(i + 1, x)
        self.model_outputs = ([*self.model_outputs, m])[-c.solver_order :]
        self.lambdas = ([*self.lambdas, lambda_s])[-c.solver_order :]
        n = self.num_inference_steps
        order = multistep_order(i + 1, n, c.solver_order, c.lower_order_final, c.lower_order_final_threshold)
        order = min(order, len(self.model_outputs))
        if float(self.sigmas[i + 1]) == 0.0:
            order = 1  # step to sigma = 0: h = inf, only the first-order rule has a limit
        if float(self.sigmas[i + 1]) == 0.0 and c.algorithm_type == "dpmsolver":
            prev = self._data_prediction(m, x, i)  # limit of DPM-Solver-1 as sigma_t -> 0
        elif c.algorithm_type == "sde-dpmsolver++":
            if variance_noise is None:
                noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            else:
                noise = variance_noise.to(device=x.device, dtype=x.dtype)
            prev = sde_multistep_update(
                x, self.model_outputs, self.lambdas, noise, lambda_t=lambda_t, sigma_s=sigma_s,
                alpha_t=alpha_t, sigma_t=sigma_t, order=order, solver_type=c.solver_type,
            )  # fmt: skip
        else:
            prev = multistep_update(
                x, self.model_outputs, self.lambdas, lambda_t=lambda_t, alpha_s=alpha_s, sigma_s=sigma_s,
                alpha_t=alpha_t, sigma_t=sigma_t, order=order, algorithm_type=c.algorithm_type,
                solver_type=c.solver_type, exact_3m=c.exact_3m,
            )  # fmt: skip
        return self._end_step(prev, sample, return_dict)
