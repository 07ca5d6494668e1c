"""Singlestep DPM-Solver / DPM-Solver++ (orders 1-3) as a diffusers scheduler."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config

# SchedulerMixin must be an attribute of this module: a pipeline reloading a component recorded as
# ["dpm_solver.schedulers.<module>", cls] looks its loader base classes up in the component's module.
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: F401

from ..updates import first_order_update, singlestep_update
from ._base import DPMSchedulerBase

__all__ = ["SinglestepDPMSolverScheduler", "singlestep_order_list"]


def singlestep_order_list(
    steps: int, order: int, lower_order_final: bool = True, to_zero: bool = False
) -> list[int]:
    """Orders of the consecutive singlestep blocks; they sum to ``steps`` (one model call per grid point).

    ``lower_order_final=True``: upstream ``dpm_solver_pytorch`` (``get_orders_and_timesteps_for_singlestep_solver``):
    order 3 -> ``[3]*(K-2) + [2, 1]`` / ``[3]*(K-1) + [1]`` / ``[3]*(K-1) + [2]`` for ``steps % 3 == 0, 1, 2``
    with ``K = steps // 3 + 1``; order 2 -> ``[2]*(steps//2)`` (+ ``[1]`` if odd). ``False``: full-order
    blocks and the remainder last. ``to_zero``: a last block of order k > 1 would end at sigma = 0,
    where only the first-order rule has a limit (diffusers issue 9007: NaN), so it becomes ``[k-1, 1]``.
    """
    if order == 1:
        orders = [1] * steps
    elif not lower_order_final:
        orders = [order] * (steps // order) + ([steps % order] if steps % order else [])
    elif order == 2:
        orders = [2] * (steps // 2) + ([1] if steps % 2 else [])
    else:
        k = steps // 3 + 1
        orders = {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[steps % 3]
    if to_zero and orders[-1] > 1:
        orders = [*orders[:-1], orders[-1] - 1, 1]
    assert sum(orders) == steps and all(o >= 1 for o in orders)
    return orders


class SinglestepDPMSolverScheduler(DPMSchedulerBase):
    """Singlestep DPM-Solver-k / DPM-Solver++(kS) on a regular grid (diffusers ``DPMSolverSinglestepScheduler``
    config names).

    The ``num_inference_steps + 1`` grid points are split into consecutive blocks
    (:func:`singlestep_order_list`); a block of order k from grid point j uses the model at j, ..., j+k-1
    and ends at j+k. Inside a block the intermediate states are produced as upstream:
    :func:`dpm_solver.updates.first_order_update` to the first inner point and, for order 3, the order-2
    Taylor rule of :func:`dpm_solver.updates.singlestep_update` to the second; the block's end point
    comes from ``singlestep_update`` of the block's order. ``sde-dpmsolver++`` is not offered here
    (use :class:`MultistepDPMSolverScheduler`).
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
        use_karras_sigmas: bool = False,
        final_sigmas_type: str = "zero",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        if algorithm_type == "sde-dpmsolver++":
            raise ValueError(
                "SinglestepDPMSolverScheduler: algorithm_type 'sde-dpmsolver++' is not supported "
                "(use MultistepDPMSolverScheduler); 'dpmsolver++' and 'dpmsolver' are"
            )
        self._setup()
        self.order_list: list[int] = []

    def _on_set_timesteps(self) -> None:
        c = self.config
        self.order_list = singlestep_order_list(
            self.num_inference_steps, c.solver_order, c.lower_order_final, c.final_sigmas_type == "zero"
        )
        self._block = []  # (block start j, block order k) for every grid index
        j = 0
        for k in self.order_list:
            self._block += [(j, k)] * k
            j += k
        self._x_s: torch.Tensor | None = None
        self.model_outputs, self._lambdas = [], []

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance to the next grid point (an inner point of the current block, or its end)."""
        c = self.config
        i, x, m = self._begin_step(model_output, timestep, sample)
        j, k = self._block[i]
        p = i - j
        if p == 0 or self._x_s is None:
            self._x_s, self.model_outputs, self._lambdas = x, [], []
        self.model_outputs.append(m)
        self._lambdas.append(self._coeffs(i, x)[2])
        alpha_s, sigma_s, lambda_s = self._coeffs(j, x)
        target = j + p + 1 if p < k - 1 else j + k
        alpha_t, sigma_t, lambda_t = self._coeffs(target, x)
        if float(self.sigmas[target]) == 0.0 and c.algorithm_type == "dpmsolver":
            prev = self._data_prediction(m, x, i)  # limit of DPM-Solver-1 as sigma_t -> 0 (k == 1 here)
        elif p == 0 and k > 1:  # first inner point
            prev = first_order_update(
                self._x_s, m, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t,
                h=lambda_t - lambda_s, algorithm_type=c.algorithm_type,
            )  # fmt: skip
        else:  # second inner point of an order-3 block (order-2 Taylor rule, as upstream) or block end
            inner = p < k - 1
            prev = singlestep_update(
                self._x_s, self.model_outputs, self._lambdas, lambda_t=lambda_t, alpha_s=alpha_s,
                sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t, order=2 if inner else k,
                algorithm_type=c.algorithm_type, solver_type="taylor" if inner else c.solver_type,
            )  # fmt: skip
        return self._end_step(prev, sample, return_dict)
