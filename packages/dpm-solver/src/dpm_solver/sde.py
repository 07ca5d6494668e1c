"""SDE-DPM-Solver++ (multistep, orders 1-3): the driver loop of ``algorithm_type="sde-dpmsolver++"``.

Update rules: :func:`dpm_solver.updates.sde_multistep_update` (diffusers ``sde-dpmsolver++``; the
second-order ``solver_type`` ``"dpmsolver"``/``"midpoint"`` or ``"taylor"``/``"heun"``). One model
evaluation per step (NFE = steps); one Gaussian draw per step.
"""

from __future__ import annotations

import torch

from .updates import multistep_order, sde_multistep_update

__all__ = ["sde_multistep_sample"]


def sde_multistep_sample(
    solver,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    order: int,
    solver_type: str = "dpmsolver",
    lower_order_final: bool = True,
    intermediates: list | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample the reverse SDE over ``timesteps`` with ``solver`` (a ``DPM_Solver`` using data prediction).

    ``noise``: optional ``(steps, *x.shape)`` standard-normal draws (step i uses ``noise[i - 1]``);
    otherwise drawn with ``torch.randn(..., generator=generator)`` on x's device and dtype.
    Order schedule as the ODE multistep driver (ramp-up, upstream's lower-order final steps).
    """
    steps = timesteps.numel() - 1
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (steps, *x.shape):
            raise ValueError(f"noise must be a tensor of shape {(steps, *x.shape)}")
        noise = noise.to(device=x.device, dtype=x.dtype)
    t = timesteps[0]
    _, sigma_s, lambda_s = solver._coeffs(t)
    lambdas, outputs = [lambda_s], [solver.model_fn(x, t)]
    if solver.correcting_xt_fn is not None:
        x = solver.correcting_xt_fn(x, t, 0)
    for step in range(1, steps + 1):
        solver._step = step
        t = timesteps[step]
        alpha_t, sigma_t, lambda_t = solver._coeffs(t)
        if noise is not None:
            z = noise[step - 1]
        else:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = sde_multistep_update(
            x, outputs, lambdas, z, lambda_t=lambda_t, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t,
            order=multistep_order(step, steps, order, lower_order_final), solver_type=solver_type,
        )  # fmt: skip
        if solver.correcting_xt_fn is not None:
            x = solver.correcting_xt_fn(x, t, step)
        if intermediates is not None:
            intermediates.append(x)
        sigma_s = sigma_t
        lambdas.append(lambda_t)
        if step < steps:
            outputs.append(solver.model_fn(x, t))
        lambdas, outputs = lambdas[-order:], outputs[-order:]
    return x
