"""Singlestep DPM-Solver-2/3 and DPM-Solver++(2S/3S): intermediate model evaluations and order schedules.

The update rules themselves are :func:`dpm_solver.updates.first_order_update` and
:func:`dpm_solver.updates.singlestep_update`; this module evaluates the model at the intermediate times
``s_i = lambda^{-1}(lambda_s + r_i h)`` exactly as upstream ``dpm_solver_pytorch.py`` does.
"""

from __future__ import annotations

import torch

from .grids import get_time_steps
from .updates import first_order_update, singlestep_update

__all__ = [
    "get_orders_and_timesteps_for_singlestep_solver",
    "singlestep_fixed_orders",
    "singlestep_orders",
    "singlestep_step",
]


def singlestep_orders(steps: int, order: int) -> list[int]:
    """Upstream's per-step orders of ``method="singlestep"`` (DPM-Solver-fast); they sum to ``steps``.

    order 3: ``K = steps // 3 + 1`` steps, ``[3]*(K-2) + [2, 1]`` (steps % 3 == 0), ``[3]*(K-1) + [1]``
    (== 1), ``[3]*(K-1) + [2]`` (== 2); order 2: ``[2]*(steps//2)`` (+ ``[1]`` for odd steps);
    order 1: ``[1]*steps``. Requires ``steps >= 1``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if order == 3:
        k = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        return [3] * (k - 1) + [steps % 3]
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    if order == 1:
        return [1] * steps
    raise ValueError(f"order must be 1, 2 or 3, got {order!r}")


def singlestep_fixed_orders(steps: int, order: int) -> list[int]:
    """``method="singlestep_fixed"``: ``steps // order`` steps of order ``order``, plus one step of order
    ``steps % order`` when that is not 0 (upstream dropped the remainder, making fewer NFE than asked)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < order:
        raise ValueError(f"steps (the NFE) must be an int >= order ({order}), got {steps!r}")
    return [order] * (steps // order) + ([steps % order] if steps % order else [])


def get_orders_and_timesteps_for_singlestep_solver(
    noise_schedule,
    steps: int,
    order: int,
    skip_type: str,
    t_T: float,
    t_0: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    rho: float = 7.0,
) -> tuple[torch.Tensor, list[int]]:
    """Outer times and orders of ``method="singlestep"`` as upstream: with ``logSNR`` the K + 1 outer
    points are uniform in lambda; otherwise they are the points ``cumsum([0] + orders)`` of a
    ``steps``-interval grid, so the inner points of each step are that grid's points."""
    orders = singlestep_orders(steps, order)
    if skip_type == "logSNR":
        outer = get_time_steps(noise_schedule, skip_type, t_T, t_0, len(orders), device, dtype, rho)
    else:
        full = get_time_steps(noise_schedule, skip_type, t_T, t_0, steps, device, dtype, rho)
        idx = torch.cumsum(torch.tensor([0, *orders]), 0).to(full.device)
        outer = full[idx]
    return outer, orders


def singlestep_step(
    solver,
    x: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    order: int,
    solver_type: str,
    r1,
    r2,
    model_s: torch.Tensor | None = None,
    model_s1: torch.Tensor | None = None,
    return_intermediate: bool = False,
):
    """One singlestep update of order 2 or 3 from s to t with ``solver`` (a ``DPM_Solver``).

    Order 2: ``u1 = first_order_update`` (s -> s1), ``m1 = model(u1, s1)``, final stage. Order 3: ``u1``
    as above, ``u2 = singlestep_update(order=2, solver_type="taylor")`` (s -> s2) from ``m_s, m1``,
    ``m2 = model(u2, s2)``, final stage. ``model_s`` / ``model_s1`` are reused when given (adaptive).
    Returns ``x_t`` or ``(x_t, {"model_s": ..., "model_s1": ..., ["model_s2": ...]})``.
    """
    ns = solver.noise_schedule
    alg = solver._ode_algorithm
    alpha_s, sigma_s, lambda_s = solver._coeffs(s)
    alpha_t, sigma_t, lambda_t = solver._coeffs(t)
    h = lambda_t - lambda_s
    if model_s is None:
        model_s = solver.model_fn(x, s)
    lambda_s1 = lambda_s + r1 * h
    s1 = ns.inverse_lambda(lambda_s1)
    if model_s1 is None:
        alpha_s1, sigma_s1, _ = solver._coeffs(s1)
        u1 = first_order_update(
            x, model_s, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_s1, sigma_t=sigma_s1, h=r1 * h,
            algorithm_type=alg,
        )  # fmt: skip
        model_s1 = solver.model_fn(u1, s1)
    outputs, lambdas = [model_s, model_s1], [lambda_s, lambda_s1]
    if order == 3:
        lambda_s2 = lambda_s + r2 * h
        s2 = ns.inverse_lambda(lambda_s2)
        alpha_s2, sigma_s2, _ = solver._coeffs(s2)
        u2 = singlestep_update(
            x, outputs, lambdas, lambda_t=lambda_s2, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_s2,
            sigma_t=sigma_s2, order=2, algorithm_type=alg, solver_type="taylor",
        )  # fmt: skip
        outputs.append(solver.model_fn(u2, s2))
        lambdas.append(lambda_s2)
    x_t = singlestep_update(
        x, outputs, lambdas, lambda_t=lambda_t, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t,
        sigma_t=sigma_t, order=order, algorithm_type=alg, solver_type=solver_type,
    )  # fmt: skip
    if return_intermediate:
        names = ("model_s", "model_s1", "model_s2")
        return x_t, dict(zip(names, outputs, strict=False))
    return x_t
