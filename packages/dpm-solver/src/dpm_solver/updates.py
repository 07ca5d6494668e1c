"""The DPM-Solver / DPM-Solver++ update rules as pure functions of tensors.

This module is the single implementation of every update rule; :class:`dpm_solver.DPM_Solver` and the
diffusers scheduler classes both call it. Formulas: ``../shared/reference/diffusion-samplers.md``
section 3 (exponential-integrator form, ``h = lambda_t - lambda_s`` > 0 when denoising).

Conventions shared by all functions:

- ``x`` is the VP state at the current time s (``x = alpha x0 + sigma eps``).
- ``alpha_*``, ``sigma_*``, ``lambda_*`` and ``h`` are 0-d tensors (or tensors broadcastable against
  ``x``, e.g. shape ``(B, 1, ..., 1)``) in ``x``'s dtype; Python numbers are accepted and converted.
- ``algorithm_type="dpmsolver++"``: model outputs are data predictions ``x0 = (x - sigma eps)/alpha``;
  ``"dpmsolver"``: noise predictions ``eps``. SDE updates take data predictions only.
- ``solver_type``: ``"dpmsolver"`` (upstream default; diffusers ``"midpoint"``) or ``"taylor"``
  (diffusers ``"heun"``); the diffusers names are accepted as aliases.
- Lists of model outputs / lambdas are ordered as documented per function; only the entries the
  requested order needs are read.
- A step into ``sigma_t = 0`` (``lambda_t = +inf``, diffusers ``final_sigmas_type="zero"``) is exact and
  finite for every rule: all orders reduce to the first-order step there, whose limit is the data
  prediction ``x_t = alpha_t x0_s`` (higher-order terms have no finite limit: ``r0 = h_0/h -> 0``;
  this is what made diffusers' singlestep/3M produce NaN, issues #9007, #6949). Selected with
  ``torch.where`` (no host sync).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "ALGORITHM_TYPES",
    "SOLVER_TYPES",
    "first_order_update",
    "multistep_order",
    "multistep_update",
    "normalize_solver_type",
    "sde_first_order_update",
    "sde_multistep_update",
    "singlestep_update",
]

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver")
SOLVER_TYPES = ("dpmsolver", "taylor")
_SOLVER_ALIASES = {"dpmsolver": "dpmsolver", "taylor": "taylor", "midpoint": "dpmsolver", "heun": "taylor"}


def normalize_solver_type(solver_type: str) -> str:
    """Map ``"midpoint"`` -> ``"dpmsolver"`` and ``"heun"`` -> ``"taylor"`` (diffusers names)."""
    try:
        return _SOLVER_ALIASES[solver_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"solver_type must be one of {tuple(_SOLVER_ALIASES)}, got {solver_type!r}"
        ) from None


def _tensors(x: torch.Tensor, *vals):
    """Python numbers -> 0-d tensors in x's dtype/device (tensors pass through unchanged)."""
    return tuple(
        v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=x.dtype, device=x.device) for v in vals
    )


def _check_algorithm(algorithm_type: str) -> None:
    if algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type must be one of {ALGORITHM_TYPES}, got {algorithm_type!r}")


def first_order_update(
    x: torch.Tensor,
    model_s: torch.Tensor,
    *,
    alpha_s: torch.Tensor,
    sigma_s: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    h: torch.Tensor,
    algorithm_type: str,
) -> torch.Tensor:
    """DPM-Solver-1 / DPM-Solver++(1) (= DDIM, eta = 0) from s to t.

    ``dpmsolver++``: ``x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) x0_s``;
    ``dpmsolver``: ``x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps_s``.
    """
    _check_algorithm(algorithm_type)
    alpha_s, sigma_s, alpha_t, sigma_t, h = _tensors(x, alpha_s, sigma_s, alpha_t, sigma_t, h)
    if algorithm_type == "dpmsolver++":
        return (sigma_t / sigma_s) * x - (alpha_t * torch.expm1(-h)) * model_s
    # sigma_t (e^h - 1) -> alpha_t sigma_s / alpha_s as sigma_t -> 0 (h -> inf): 0 * inf avoided
    coef = torch.where(torch.isinf(h), alpha_t * sigma_s / alpha_s, sigma_t * torch.expm1(h))
    return (alpha_t / alpha_s) * x - coef * model_s


def _to_zero_safe(h: torch.Tensor, high: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``high`` where the step is finite, the exact first-order limit where ``lambda_t = +inf``."""
    return torch.where(torch.isinf(h), first, high)


def _base(x, model_s, alpha_s, sigma_s, alpha_t, sigma_t, h, algorithm_type):
    """The first-order step (exact also into sigma_t = 0) and ``phi_1 = e^{-+h} - 1``."""
    x_t = first_order_update(
        x, model_s, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t, h=h,
        algorithm_type=algorithm_type,
    )  # fmt: skip
    return x_t, torch.expm1(-h) if algorithm_type == "dpmsolver++" else torch.expm1(h)


def multistep_update(
    x: torch.Tensor,
    model_outputs: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    *,
    lambda_t: torch.Tensor,
    alpha_s: torch.Tensor,
    sigma_s: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    order: int,
    algorithm_type: str,
    solver_type: str = "dpmsolver",
    exact_3m: bool = False,
) -> torch.Tensor:
    """One multistep update (DPM-Solver-kM / DPM-Solver++(kM), k = ``order``) from s to t.

    ``model_outputs`` / ``lambdas``: model outputs and their lambdas at previous times, oldest first;
    the last entry is at s (the current time); ``len >= order``. ``alpha_s, sigma_s`` belong to s.

    Order 2: ``D1 = (m_s - m_prev) / r0`` with ``r0 = h_0 / h``; ``dpmsolver`` adds
    ``-1/2 c phi_1 D1``, ``taylor`` the Taylor coefficient ``(phi_1/h -+ 1)``; ``c = alpha_t``
    (data) or ``sigma_t`` (noise). Order 3 (``solver_type`` ignored, as upstream):
    ``D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1)``, ``D2 = (D1_0 - D1_1)/(r0+r1)`` (an estimate of
    ``h^2 D''/2``) multiplied by ``phi_3`` as upstream and diffusers do (global order 2), or by the
    Taylor-consistent ``2 phi_3`` with ``exact_3m=True`` (global order 3).
    """
    _check_algorithm(algorithm_type)
    solver_type = normalize_solver_type(solver_type)
    lambda_t, alpha_s, sigma_s, alpha_t, sigma_t = _tensors(x, lambda_t, alpha_s, sigma_s, alpha_t, sigma_t)
    lambdas = _tensors(x, *lambdas)
    if order not in (1, 2, 3):
        raise ValueError(f"multistep order must be 1, 2 or 3, got {order!r}")
    if len(model_outputs) < order or len(lambdas) < order:
        raise ValueError(f"order {order} needs {order} previous model outputs, got {len(model_outputs)}")
    lambda_s = lambdas[-1]
    h = lambda_t - lambda_s
    m0 = model_outputs[-1]
    if order == 1:
        return first_order_update(
            x, m0, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t, h=h,
            algorithm_type=algorithm_type,
        )  # fmt: skip
    data = algorithm_type == "dpmsolver++"
    coef = alpha_t if data else sigma_t
    x_t, phi_1 = _base(x, m0, alpha_s, sigma_s, alpha_t, sigma_t, h, algorithm_type)
    r0 = (lambda_s - lambdas[-2]) / h
    D1_0 = (m0 - model_outputs[-2]) / r0
    if order == 2:
        if solver_type == "dpmsolver":
            return _to_zero_safe(h, x_t - (0.5 * coef * phi_1) * D1_0, x_t)
        if data:
            return _to_zero_safe(h, x_t + (coef * (phi_1 / h + 1.0)) * D1_0, x_t)
        return _to_zero_safe(h, x_t - (coef * (phi_1 / h - 1.0)) * D1_0, x_t)
    r1 = (lambdas[-2] - lambdas[-3]) / h
    D1_1 = (model_outputs[-2] - model_outputs[-3]) / r1
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
    D2 = (D1_0 - D1_1) / (r0 + r1)
    c2 = 2.0 if exact_3m else 1.0
    if data:
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        return _to_zero_safe(h, x_t + (coef * phi_2) * D1 - (coef * phi_3) * (c2 * D2), x_t)
    phi_2 = phi_1 / h - 1.0
    phi_3 = phi_2 / h - 0.5
    return _to_zero_safe(h, x_t - (coef * phi_2) * D1 - (coef * phi_3) * (c2 * D2), x_t)


def singlestep_update(
    x: torch.Tensor,
    model_outputs: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    *,
    lambda_t: torch.Tensor,
    alpha_s: torch.Tensor,
    sigma_s: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    order: int,
    algorithm_type: str,
    solver_type: str = "dpmsolver",
) -> torch.Tensor:
    """The final stage of a singlestep DPM-Solver-k / DPM-Solver++(kS) step from s to t.

    ``model_outputs[0]`` is the model output at (x, s), ``model_outputs[i]`` (i >= 1) the output at the
    intermediate time s_i; ``lambdas[0] = lambda_s`` and ``lambdas[i] = lambda_{s_i}``, so
    ``r_i = (lambdas[i] - lambdas[0]) / h`` (upstream: ``r1 = 1/2`` for order 2, ``r1, r2 = 1/3, 2/3``
    for order 3 with logSNR inner points).

    The caller produces the intermediate states exactly as upstream ``dpm_solver_pytorch.py`` does:

    - order 2: ``u1 = first_order_update(x, m_s, ...)`` from s to s1, ``m_s1 = model(u1, s1)``;
    - order 3: ``u1`` as above (s to s1), then ``u2 = singlestep_update(x, [m_s, m_s1],
      [lambda_s, lambda_s1], lambda_t=lambda_s2, order=2, solver_type="taylor", ...)`` from s to s2
      (upstream's ``(r2/r1) c phi_22 (m_s1 - m_s)`` term is exactly the order-2 Taylor rule with
      ``r = r1/r2``, whatever ``solver_type`` the outer step uses), ``m_s2 = model(u2, s2)``.

    Order 2, ``dpmsolver``: ``base - (1/(2 r1)) c phi_1 (m_s1 - m_s)``; ``taylor``:
    ``base -+ (1/r1) c (phi_1/h -+ 1)(m_s1 - m_s)``. Order 3, ``dpmsolver``:
    ``base -+ (1/r2) c phi_2 (m_s2 - m_s)`` (m_s1 enters only through u2); ``taylor``: ``D1, D2`` from
    the three outputs, ``base -+ c phi_2 D1 - c phi_3 D2`` with ``D2`` an estimate of ``h^2 D''``.
    Signs ``-+``: upper for ``dpmsolver``-type noise, lower (``+``) for data prediction, as upstream.
    """
    _check_algorithm(algorithm_type)
    solver_type = normalize_solver_type(solver_type)
    lambda_t, alpha_s, sigma_s, alpha_t, sigma_t = _tensors(x, lambda_t, alpha_s, sigma_s, alpha_t, sigma_t)
    lambdas = _tensors(x, *lambdas)
    if order not in (1, 2, 3):
        raise ValueError(f"singlestep order must be 1, 2 or 3, got {order!r}")
    if len(model_outputs) < order or len(lambdas) < order:
        raise ValueError(
            f"order {order} needs {order} model outputs (s and intermediates), got {len(model_outputs)}"
        )
    lambda_s = lambdas[0]
    h = lambda_t - lambda_s
    m_s = model_outputs[0]
    if order == 1:
        return first_order_update(
            x, m_s, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t, h=h,
            algorithm_type=algorithm_type,
        )  # fmt: skip
    data = algorithm_type == "dpmsolver++"
    sign = 1.0 if data else -1.0  # data: + c phi_k D_k terms; noise: - c phi_k D_k terms
    coef = alpha_t if data else sigma_t
    x_t, phi_1 = _base(x, m_s, alpha_s, sigma_s, alpha_t, sigma_t, h, algorithm_type)
    phi_2 = phi_1 / h + sign  # data: phi_1/h + 1; noise: phi_1/h - 1
    r1 = (lambdas[1] - lambda_s) / h
    if order == 2:
        if solver_type == "dpmsolver":
            return _to_zero_safe(h, x_t - ((0.5 / r1) * coef * phi_1) * (model_outputs[1] - m_s), x_t)
        return _to_zero_safe(h, x_t + (sign / r1) * (coef * phi_2) * (model_outputs[1] - m_s), x_t)
    r2 = (lambdas[2] - lambda_s) / h
    if solver_type == "dpmsolver":
        return _to_zero_safe(h, x_t + (sign / r2) * (coef * phi_2) * (model_outputs[2] - m_s), x_t)
    phi_3 = phi_2 / h - 0.5
    D1_0 = (model_outputs[1] - m_s) / r1
    D1_1 = (model_outputs[2] - m_s) / r2
    D1 = (r2 * D1_0 - r1 * D1_1) / (r2 - r1)
    D2 = 2.0 * (D1_1 - D1_0) / (r2 - r1)
    return _to_zero_safe(h, x_t + sign * (coef * phi_2) * D1 - (coef * phi_3) * D2, x_t)


def sde_first_order_update(
    x: torch.Tensor,
    model_s: torch.Tensor,
    noise: torch.Tensor,
    *,
    sigma_s: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    h: torch.Tensor,
) -> torch.Tensor:
    """SDE-DPM-Solver++(1): the exact step of the reverse SDE for a data prediction held constant.

    ``x_t = (sigma_t/sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) x0_s + sigma_t sqrt(1 - e^{-2h}) z``
    with ``z = noise`` ~ N(0, I).
    """
    sigma_s, alpha_t, sigma_t, h = _tensors(x, sigma_s, alpha_t, sigma_t, h)
    one_m = -torch.expm1(-2.0 * h)  # 1 - e^{-2h}
    return (
        (sigma_t / sigma_s * torch.exp(-h)) * x
        + (alpha_t * one_m) * model_s
        + (sigma_t * one_m.sqrt()) * noise
    )


def sde_multistep_update(
    x: torch.Tensor,
    model_outputs: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    noise: torch.Tensor,
    *,
    lambda_t: torch.Tensor,
    sigma_s: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    order: int,
    solver_type: str = "dpmsolver",
    alpha_s: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDE-DPM-Solver++(kM) (diffusers ``sde-dpmsolver++``), data predictions, oldest first, last at s.

    Order 2: ``D1 = (x0_s - x0_prev)/r0``; ``dpmsolver`` (= diffusers ``midpoint``) adds
    ``1/2 alpha_t (1 - e^{-2h}) D1``, ``taylor`` (= ``heun``) adds
    ``alpha_t ((1 - e^{-2h})/(-2h) + 1) D1``. Order 3 (``solver_type`` ignored) integrates the
    quadratic Taylor expansion exactly: ``+ alpha_t ((1-e^{-2h})/(-2h) + 1) D1 + 2 alpha_t
    ((1 - e^{-2h} - 2h)/(4h^2) + 1/2) D2`` with the 3M ``D1, D2`` (``D2`` estimates ``h^2 D''/2``).
    ``alpha_s`` is accepted for symmetry with the ODE rules and unused.
    """
    del alpha_s
    solver_type = normalize_solver_type(solver_type)
    lambda_t, sigma_s, alpha_t, sigma_t = _tensors(x, lambda_t, sigma_s, alpha_t, sigma_t)
    lambdas = _tensors(x, *lambdas)
    if order not in (1, 2, 3):
        raise ValueError(f"SDE multistep order must be 1, 2 or 3, got {order!r}")
    if len(model_outputs) < order or len(lambdas) < order:
        raise ValueError(f"order {order} needs {order} previous model outputs, got {len(model_outputs)}")
    lambda_s = lambdas[-1]
    h = lambda_t - lambda_s
    m0 = model_outputs[-1]
    x_t = sde_first_order_update(x, m0, noise, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t, h=h)
    if order == 1:
        return x_t
    one_m = -torch.expm1(-2.0 * h)
    r0 = (lambda_s - lambdas[-2]) / h
    D1_0 = (m0 - model_outputs[-2]) / r0
    heun = alpha_t * (one_m / (-2.0 * h) + 1.0)
    if order == 2:
        if solver_type == "dpmsolver":
            return _to_zero_safe(h, x_t + (0.5 * alpha_t * one_m) * D1_0, x_t)
        return _to_zero_safe(h, x_t + heun * D1_0, x_t)
    r1 = (lambdas[-2] - lambdas[-3]) / h
    D1_1 = (model_outputs[-2] - model_outputs[-3]) / r1
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
    D2 = (D1_0 - D1_1) / (r0 + r1)
    c2 = alpha_t * ((one_m - 2.0 * h) / (4.0 * h * h) + 0.5)
    return _to_zero_safe(h, x_t + heun * D1 + (2.0 * c2) * D2, x_t)


def multistep_order(step: int, steps: int, order: int, lower_order_final: bool, threshold: int = 10) -> int:
    """Order of multistep step ``step`` (1-based) out of ``steps``: the first ``order - 1`` steps ramp the
    order up (1, 2, ...); with ``lower_order_final`` and ``steps < threshold`` (upstream: 10; diffusers
    uses 15) the last steps use ``min(order, steps + 1 - step)``."""
    if step < order:
        return step
    if lower_order_final and steps < threshold:
        return min(order, steps + 1 - step)
    return order
