"""Adaptive step size DPM-Solver-12 / DPM-Solver-23 (Lu et al. 2022, section 4.2; upstream
``dpm_solver_pytorch.DPM_Solver.dpm_solver_adaptive``).

Each attempt from s to ``t = lambda^{-1}(lambda_s + h)`` computes a lower-order solution (order 1, or
DPM-Solver-2 with ``r1 = 1/3``) and a higher-order one (DPM-Solver-2 with ``r1 = 1/2``, or
DPM-Solver-3 with ``r1, r2 = 1/3, 2/3``) sharing model evaluations; the scaled error
``E = max_batch RMS((x_high - x_low) / max(atol, rtol max(|x_low|, |x_prev|)))`` accepts the step when
``E <= 1`` (keeping ``x_high``), and ``h <- min(theta h E^{-1/order}, lambda_0 - lambda_s)``. Stops when
``|s - t_0| <= t_err``. Difference from upstream: after a rejected attempt the model output at (x, s)
is reused instead of recomputed (same result, fewer NFE). NFE: ``solver.nfe``.
"""

from __future__ import annotations

import torch

__all__ = ["dpm_solver_adaptive"]


def dpm_solver_adaptive(
    solver,
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
    max_attempts: int = 100_000,
) -> torch.Tensor:
    """Integrate from ``t_T`` to ``t_0`` with DPM-Solver-12 (``order=2``) or -23 (``order=3``)."""
    if order not in (2, 3):
        raise ValueError(f"adaptive order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
    if not (atol >= 0 and rtol >= 0 and atol + rtol > 0):
        raise ValueError(f"need atol >= 0, rtol >= 0, not both 0; got atol={atol}, rtol={rtol}")
    if not 0 < theta <= 1:
        raise ValueError(f"theta must lie in (0, 1], got {theta}")
    if not (h_init > 0 and t_err > 0):
        raise ValueError(f"h_init and t_err must be > 0, got h_init={h_init}, t_err={t_err}")
    ns = solver.noise_schedule
    s = torch.tensor(t_T, dtype=x.dtype, device=x.device)
    lambda_s = ns.marginal_lambda(s)
    lambda_0 = ns.marginal_lambda(torch.tensor(t_0, dtype=x.dtype, device=x.device))
    h = torch.tensor(h_init, dtype=x.dtype, device=x.device)
    x_prev = x
    model_s = None
    step = 0
    for _ in range(max_attempts):
        if not float((s - t_0).abs()) > t_err:
            return x
        solver._step = step + 1
        t = ns.inverse_lambda(lambda_s + h)
        if model_s is None:
            model_s = solver.model_fn(x, s)
        if order == 2:
            x_lower = solver.dpm_solver_first_update(x, s, t, model_s=model_s)
            x_higher = solver.singlestep_dpm_solver_second_update(
                x, s, t, r1=0.5, model_s=model_s, solver_type=solver_type
            )
        else:
            x_lower, inter = solver.singlestep_dpm_solver_second_update(
                x, s, t, r1=1.0 / 3.0, model_s=model_s, return_intermediate=True, solver_type=solver_type
            )
            x_higher = solver.singlestep_dpm_solver_third_update(
                x, s, t, r1=1.0 / 3.0, r2=2.0 / 3.0, model_s=model_s, model_s1=inter["model_s1"],
                solver_type=solver_type,
            )  # fmt: skip
        delta = torch.clamp(rtol * torch.maximum(x_lower.abs(), x_prev.abs()), min=atol)
        err = ((x_higher - x_lower) / delta).reshape(x.shape[0], -1)
        E = err.square().mean(dim=1).sqrt().max()
        if bool(E <= 1.0):
            x, s, x_prev = x_higher, t, x_lower
            lambda_s = ns.marginal_lambda(s)
            model_s = None
            step += 1
            if solver.correcting_xt_fn is not None:
                x = solver.correcting_xt_fn(x, s, step)
        h = torch.minimum(theta * h * E.pow(-1.0 / order), lambda_0 - lambda_s)
    raise RuntimeError(f"adaptive solver did not reach t_end={t_0} within {max_attempts} attempts")
