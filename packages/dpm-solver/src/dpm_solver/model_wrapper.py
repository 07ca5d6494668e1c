"""Turn a diffusion network into a continuous-time noise predictor ``model_fn(x, t) -> eps``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .schedules import NoiseSchedule, SigmaSchedule

__all__ = ["model_wrapper"]

MODEL_TYPES = ("noise", "x_start", "v", "score")
GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficient (shape (B,) or ()) broadcast against x of shape (B, ...)."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def model_wrapper(
    model: Callable[..., torch.Tensor],
    noise_schedule: NoiseSchedule,
    model_type: str = "noise",
    model_kwargs: dict[str, Any] | None = None,
    guidance_type: str = "uncond",
    condition: Any = None,
    unconditional_condition: Any = None,
    guidance_scale: float = 1.0,
    classifier_fn: Callable[..., torch.Tensor] | None = None,
    classifier_kwargs: dict[str, Any] | None = None,
    cfg_batched: bool = True,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model(x, t_input[, cond], **model_kwargs)`` into ``model_fn(x, t_continuous) -> eps``.

    Time input: for ``schedule="discrete"`` with N entries the network gets the label
    ``t_input = N * t_continuous - 1`` (t in [1/N, 1] -> [0, N-1]; upstream's ``1000 (t - 1/N)`` for
    N = 1000); continuous schedules pass t unchanged.

    Prediction types, converted to eps with ``alpha_t, sigma_t`` of ``noise_schedule``:
    ``"noise"`` eps; ``"x_start"`` ``(x - alpha x0) / sigma``; ``"v"`` ``alpha v + sigma x``;
    ``"score"`` ``-sigma score``.

    Sigma-space schedules (:class:`NoiseScheduleEDM`, :class:`NoiseScheduleVE`): the solver state is
    VP-scaled, so the network gets ``x~ = x / alpha_t`` and the time ``t`` (``sigma~`` for EDM);
    ``"noise"`` and ``"x_start"`` mean the same in both coordinates, ``"v"`` is the VP
    ``alpha eps - sigma x0``, and ``"score"`` is the VE score ``grad_x~ log p`` (``eps = -sigma~ score``);
    a classifier also gets ``x~`` and the guidance term is ``sigma~ grad_x~ log p(c | x~)``.

    Guidance: ``"uncond"``; ``"classifier"``:
    ``eps - guidance_scale * sigma_t * grad_x classifier_fn(x, t_input, condition, **classifier_kwargs)``
    (the classifier returns log p(c | x_t) per sample); ``"classifier-free"``:
    ``eps_u + guidance_scale (eps_c - eps_u)``, one batched call on ``[uncond, cond]`` (upstream) or two
    calls with ``cfg_batched=False``; only the conditional call when ``guidance_scale == 1`` or
    ``unconditional_condition is None``.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if guidance_type not in GUIDANCE_TYPES:
        raise ValueError(f"guidance_type must be one of {GUIDANCE_TYPES}, got {guidance_type!r}")
    if not callable(model):
        raise TypeError("model must be callable")
    if not isinstance(noise_schedule, NoiseSchedule):
        raise TypeError(
            "noise_schedule must be a NoiseScheduleVP, NoiseScheduleEDM or NoiseScheduleVE, "
            f"got {type(noise_schedule).__name__}"
        )
    if guidance_type == "classifier" and not callable(classifier_fn):
        raise ValueError("guidance_type='classifier' needs a callable classifier_fn")
    if guidance_type == "classifier-free" and condition is None:
        raise ValueError("guidance_type='classifier-free' needs a condition")
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool):
        raise TypeError("guidance_scale must be a number")
    model_kwargs = dict(model_kwargs or {})
    classifier_kwargs = dict(classifier_kwargs or {})
    ns = noise_schedule
    sigma_space = isinstance(ns, SigmaSchedule)

    def get_model_input_time(t_continuous: torch.Tensor) -> torch.Tensor:
        if ns.schedule == "discrete":
            return t_continuous * ns.total_N - 1.0
        return t_continuous

    def noise_pred_fn(x: torch.Tensor, t_continuous: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t_input = get_model_input_time(t_continuous)
        x_in = x / _bcast(ns.marginal_alpha(t_continuous), x) if sigma_space else x
        if cond is None:
            output = model(x_in, t_input, **model_kwargs)
        else:
            output = model(x_in, t_input, cond, **model_kwargs)
        if model_type == "noise":
            return output
        if model_type == "x_start":
            alpha_t, sigma_t = ns.marginal_alpha(t_continuous), ns.marginal_std(t_continuous)
            return (x - _bcast(alpha_t, x) * output) / _bcast(sigma_t, x)
        if model_type == "v":
            alpha_t, sigma_t = ns.marginal_alpha(t_continuous), ns.marginal_std(t_continuous)
            return _bcast(alpha_t, x) * output + _bcast(sigma_t, x) * x
        if sigma_space:
            return -_bcast(ns.sigma_tilde(t_continuous), x) * output  # VE score
        return -_bcast(ns.marginal_std(t_continuous), x) * output  # score

    def cond_grad_fn(x: torch.Tensor, t_input: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_prob = classifier_fn(x_in, t_input, condition, **classifier_kwargs)
            return torch.autograd.grad(log_prob.sum(), x_in)[0]

    def model_fn(x: torch.Tensor, t_continuous: torch.Tensor) -> torch.Tensor:
        t_continuous = torch.as_tensor(t_continuous, dtype=x.dtype, device=x.device)
        if t_continuous.numel() == 1:
            t_continuous = t_continuous.reshape(1).expand(x.shape[0])
        elif t_continuous.shape != (x.shape[0],):
            raise ValueError(f"t_continuous must be a scalar or of shape ({x.shape[0]},)")
        if guidance_type == "uncond":
            return noise_pred_fn(x, t_continuous)
        if guidance_type == "classifier":
            if sigma_space:  # classifier on x~ = x / alpha: sigma grad_x = sigma~ grad_x~
                x_c = x / _bcast(ns.marginal_alpha(t_continuous), x)
                cond_grad = cond_grad_fn(x_c, get_model_input_time(t_continuous))
                sigma_t = ns.sigma_tilde(t_continuous)
            else:
                cond_grad = cond_grad_fn(x, get_model_input_time(t_continuous))
                sigma_t = ns.marginal_std(t_continuous)
            return noise_pred_fn(x, t_continuous) - guidance_scale * _bcast(sigma_t, x) * cond_grad
        if guidance_scale == 1.0 or unconditional_condition is None:
            return noise_pred_fn(x, t_continuous, cond=condition)
        if cfg_batched:
            x_in = torch.cat([x, x])
            t_in = torch.cat([t_continuous, t_continuous])
            c_in = torch.cat([unconditional_condition, condition])
            noise_uncond, noise = noise_pred_fn(x_in, t_in, cond=c_in).chunk(2)
        else:
            noise_uncond = noise_pred_fn(x, t_continuous, cond=unconditional_condition)
            noise = noise_pred_fn(x, t_continuous, cond=condition)
        return noise_uncond + guidance_scale * (noise - noise_uncond)

    return model_fn
