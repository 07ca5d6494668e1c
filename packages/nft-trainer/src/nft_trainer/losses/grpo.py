r"""GRPO-family baselines on padded batches: GRPO, Dr. GRPO and DAPO (clipped surrogate objectives).

Per token, with ratio ``ρ_t = exp(log π_θ − log π_old)`` and advantage A (per completion or per token):

.. math::  ℓ_t = −\min(ρ_t A,\ \mathrm{clip}(ρ_t, 1 − ε_{low}, 1 + ε_{high}) A)

Aggregations (as TRL 1.16's ``GRPOTrainer._compute_loss``):

- GRPO (Shao et al. 2024): token mean per sequence, then mean over the B sequences; A from
  :func:`group_advantages` with ``scale_rewards="group"``; ε_low = ε_high = 0.2.
- Dr. GRPO (Liu et al. 2025): ``Σ_i Σ_t ℓ m / (B · L_max)``; A without std (``scale_rewards="none"``).
- DAPO (Yu et al. 2025): ``Σ_i Σ_t ℓ m / Σ m`` (token-level mean over the batch); clip-higher
  ε_low = 0.2, ε_high = 0.28; dynamic sampling drops zero-variance groups (see
  :func:`zero_variance_groups`).

No KL term (β = 0, the default of TRL ≥ 0.19 and of the NFT paper's runs).
Cost: O(B·T) elementwise work (about 10 FLOPs per token), one read of each (B, T) input.
"""

from __future__ import annotations

import torch

from ._checks import check_finite_number, check_float_tensor, check_mask, check_same_device, compute_dtype

__all__ = ["clipped_surrogate", "dapo_loss", "dr_grpo_loss", "grpo_loss"]


def _check_common(logprobs, old_logprobs, advantages, mask):
    check_float_tensor("logprobs", logprobs, ndim=2)
    check_float_tensor("old_logprobs", old_logprobs, ndim=2)
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"old_logprobs must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(old_logprobs.shape)}"
        )
    check_mask("mask", mask, logprobs.shape)
    if not isinstance(advantages, torch.Tensor):
        raise TypeError(f"advantages must be a torch.Tensor, got {type(advantages).__name__}")
    if not advantages.is_floating_point():
        raise TypeError(f"advantages must have a floating-point dtype, got {advantages.dtype}")
    batch = logprobs.shape[0]
    if advantages.shape not in ((batch,), tuple(logprobs.shape)):
        raise ValueError(
            f"advantages must have shape ({batch},) (one per completion) or {tuple(logprobs.shape)} (per token), "
            f"got {tuple(advantages.shape)}"
        )
    check_same_device(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    m = mask.bool()
    adv_rows = advantages if advantages.dim() == 1 else torch.where(m, advantages, 0.0)
    if not bool(torch.isfinite(adv_rows).all()):
        raise ValueError("advantages must be finite (found NaN or inf)")


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO clipped surrogate ``−min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A)``, zero on padding.

    Returns ``(per_token_loss (B, T), metrics)`` with detached ``ratio_mean``, ``clip_low_frac``
    (tokens with ρ < 1 − ε_low and A < 0), ``clip_high_frac`` (ρ > 1 + ε_high and A > 0) and
    ``num_tokens``. ``old_logprobs`` are treated as constants.
    """
    _check_common(logprobs, old_logprobs, advantages, mask)
    eps_low = check_finite_number("epsilon_low", epsilon_low, low=0.0, high=1.0, high_open=True)
    eps_high = check_finite_number("epsilon_high", epsilon_high, low=0.0)
    dtype = compute_dtype(logprobs, old_logprobs, advantages)
    m = mask.bool()
    lp = logprobs.to(dtype)
    old = old_logprobs.detach().to(dtype)
    zero = torch.zeros((), dtype=dtype, device=lp.device)
    delta = torch.where(m, lp - torch.where(m, old, lp.detach()), zero)
    adv = advantages.to(dtype)
    adv = adv[:, None] if adv.dim() == 1 else torch.where(m, adv, zero)
    ratio = torch.exp(delta)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.where(m, -torch.min(ratio * adv, clipped * adv), zero)
    with torch.no_grad():
        mf = m.to(dtype)
        n = mf.sum().clamp(min=1.0)
        metrics = {
            "ratio_mean": (ratio * mf).sum() / n,
            "clip_low_frac": (((ratio < 1.0 - eps_low) & (adv < 0)).to(dtype) * mf).sum() / n,
            "clip_high_frac": (((ratio > 1.0 + eps_high) & (adv > 0)).to(dtype) * mf).sum() / n,
            "num_tokens": mf.sum(),
        }
    return per_token, metrics


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO: ``(1/B) Σ_i (1/|o_i|) Σ_t ℓ_it`` (empty completions count as 0; ε_high defaults to ε)."""
    per_token, metrics = clipped_surrogate(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
    )
    lengths = mask.to(per_token.dtype).sum(dim=1).clamp(min=1.0)
    loss = (per_token.sum(dim=1) / lengths).sum() / max(per_token.shape[0], 1)
    return loss, metrics


def dr_grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_completion_length: int,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dr. GRPO: ``Σ_i Σ_t ℓ_it / (B · max_completion_length)`` (constant, length-unbiased normalizer)."""
    if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int):
        raise TypeError(f"max_completion_length must be an int, got {type(max_completion_length).__name__}")
    if max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
    per_token, metrics = clipped_surrogate(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
    )
    loss = per_token.sum() / (max(per_token.shape[0], 1) * max_completion_length)
    return loss, metrics


def dapo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float = 0.28,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DAPO: token-level mean ``Σ_i Σ_t ℓ_it / Σ m`` with clip-higher (ε_low 0.2, ε_high 0.28).

    ``normalizer`` overrides the token count (e.g. the global count over micro-batches and processes).
    """
    per_token, metrics = clipped_surrogate(
        logprobs, old_logprobs, advantages, mask, epsilon_low=epsilon, epsilon_high=epsilon_high
    )
    if normalizer is None:
        den = mask.to(per_token.dtype).sum().clamp(min=1.0)
    elif isinstance(normalizer, torch.Tensor):
        if (
            normalizer.numel() != 1
            or not bool(torch.isfinite(normalizer).all())
            or not bool((normalizer > 0).all())
        ):
            raise ValueError("normalizer must be a finite scalar > 0")
        den = normalizer.to(dtype=per_token.dtype, device=per_token.device).reshape(())
    else:
        den = check_finite_number("normalizer", normalizer, low=0.0, low_open=True)
    return per_token.sum() / den, metrics
