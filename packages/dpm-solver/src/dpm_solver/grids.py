"""Step grids (``skip_type``): ``N + 1`` decreasing times from ``t_T`` to ``t_0`` for any noise schedule.

``time_uniform`` (linspace in t), ``logSNR`` (uniform in lambda), ``time_quadratic`` (linspace in
sqrt(t), squared) as upstream; ``karras`` (Karras et al. 2022, rho = 7) and ``edm`` (same formula,
``rho`` configurable) are uniform in ``sigma~^{1/rho}`` with ``sigma~ = sigma/alpha = e^{-lambda}``,
``sigma~_max = sigma~(t_T)`` and ``sigma~_min = sigma~(t_0)``:
``sigma~_i = (sigma~_max^{1/rho} + i/N (sigma~_min^{1/rho} - sigma~_max^{1/rho}))^rho``.
As rho -> inf the Karras grid tends to the logSNR grid. Endpoints are returned exactly.
"""

from __future__ import annotations

import torch

__all__ = ["SKIP_TYPES", "get_time_steps"]

SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic", "karras", "edm")


def get_time_steps(
    noise_schedule,
    skip_type: str,
    t_T: float,
    t_0: float,
    N: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    rho: float = 7.0,
) -> torch.Tensor:
    """``N + 1`` times from ``t_T`` to ``t_0`` (both > 0, distinct) of the given ``skip_type``.

    With ``t_T < t_0`` (``DPM_Solver.inverse``) the grid is the reversed grid from ``t_0`` down to ``t_T``
    (what upstream's formulas give with the endpoints swapped).

    ``noise_schedule`` needs ``marginal_lambda`` and ``inverse_lambda`` (any schedule of this package).
    ``rho`` is used by ``edm`` only (``karras`` is ``edm`` with rho = 7). ``dtype`` defaults to the
    torch default dtype (upstream: float32).
    """
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be an int >= 1, got {N!r}")
    t_T, t_0 = float(t_T), float(t_0)
    if t_0 > t_T > 0:
        return get_time_steps(noise_schedule, skip_type, t_0, t_T, N, device, dtype, rho).flip(0)
    if not (t_T > t_0 > 0):
        raise ValueError(
            f"need t_T > t_0 > 0 (or t_0 > t_T > 0 for a reversed grid), got t_T={t_T}, t_0={t_0}"
        )
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if skip_type == "time_uniform":
        return torch.linspace(t_T, t_0, N + 1, dtype=dtype, device=device)
    if skip_type == "time_quadratic":
        ts = torch.linspace(t_T**0.5, t_0**0.5, N + 1, dtype=dtype, device=device).pow(2)
    else:
        ns = noise_schedule
        lam_T = ns.marginal_lambda(torch.tensor(t_T, dtype=dtype, device=device))
        lam_0 = ns.marginal_lambda(torch.tensor(t_0, dtype=dtype, device=device))
        w = torch.linspace(0.0, 1.0, N + 1, dtype=dtype, device=device)
        if skip_type == "logSNR":
            lam = lam_T + w * (lam_0 - lam_T)
        else:
            r = 7.0 if skip_type == "karras" else float(rho)
            if not r > 0:
                raise ValueError(f"rho must be > 0, got {rho!r}")
            # sigma~^{1/rho} = exp(-lambda / rho); lambda = -rho log(interpolated sigma~^{1/rho})
            a, b = torch.exp(-lam_T / r), torch.exp(-lam_0 / r)
            lam = -r * torch.log(a + w * (b - a))
        ts = ns.inverse_lambda(lam)
    ts[0], ts[-1] = t_T, t_0  # exact endpoints
    return ts
