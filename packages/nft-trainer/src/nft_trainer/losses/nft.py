r"""NFT (Negative-aware Fine-Tuning) loss and RFT, as the paper's released code computes them.

Chen et al., "Bridging Supervised Learning and Reinforcement Learning in Math Reasoning"
(arXiv 2505.18116), code ``NVlabs/NFT`` (``dp_actor.py``, ``DataParallelPPOActor.update_policy``).

For a completion with per-token log-probs ``log π_θ`` (``logprobs``) and ``log π_old``
(``old_logprobs``), correctness ``c ∈ {0, 1}`` and its prompt's correctness rate ``r̂_q``:

.. math::

    Δ_t &= \log π_θ(a_t) − \log π_{old}(a_t) \\
    R_t &= \exp(\min(Δ_t, 10)) \quad\text{(token ratio)}, \qquad
        R = \exp(\min(\textstyle\sum_t Δ_t, 10)) \quad\text{(sequence ratio)} \\
    r &= \mathrm{clip}(\hat r_q, 0.02, 0.98) \\
    P &= (1 − r R) / (1 − r) \qquad\text{(implicit negative policy } π^-_θ/π^-_{old}\text{, Eq. 5)} \\
    L^- &= −\log \mathrm{clampST}(P, |ε^-|), \qquad L^+ = −\log \mathrm{clampST}(R, ε^+) \\
    ℓ &= ω(r)\,[\,w^-(1 − c) L^- + c L^+\,], \quad ω ∈ \{1,\ 1 − r,\ \sqrt{(1 − r)/r}\}

with ``clampST(x, lo) = x + sg(max(x, lo) − x)`` (forward value clipped, gradient of the unclipped x) and
the token-level reduction ``Σ_i Σ_t ℓ_{it} m_{it} / 1000`` of the released code. On-policy (R = 1) the
gradient of a negative token is ``ω r/(1 − r) ∇log π`` and of a positive one ``−ω ∇log π``: with ω = 1 − r
that is Dr. GRPO's ``−(c − r̂) ∇log π`` and with ω = √((1 − r)/r) GRPO's ``−(c − r̂)/√(r̂(1 − r̂)) ∇log π``
(Proposition 4.2; see :func:`nft_loss` for the aggregation under which the equality is exact).

Cost: O(B·T) elementwise work (about 30 FLOPs per token) and one read of each (B, T) input; negligible
next to the model's forward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._checks import (
    check_choice,
    check_finite_number,
    check_float_tensor,
    check_mask,
    check_row_tensor,
    check_same_device,
    compute_dtype,
)

__all__ = [
    "PROMPT_WEIGHTINGS",
    "RATIO_TYPES",
    "REDUCTIONS",
    "clamp_st",
    "nft_loss",
    "prompt_weight",
    "rft_loss",
]

RATIO_TYPES = ("token", "sequence")
PROMPT_WEIGHTINGS = ("none", "1-r", "sqrt((1-r)/r)")
REDUCTIONS = ("sum", "token_mean", "sequence_mean")

# Constant normalizer of the released code's token-level reduction (``Σ ℓ m / 1000.0``); its sequence
# reduction is a plain sum over sequences.
CODE_TOKEN_NORMALIZER = 1000.0
CODE_SEQUENCE_NORMALIZER = 1.0


def clamp_st(x: torch.Tensor, min_value: float) -> torch.Tensor:
    """Straight-through lower clamp ``x + sg(max(x, min_value) − x)``.

    The forward value is ``max(x, min_value)``; the gradient is that of ``x`` (identity), also where
    the value was clipped. Returns a new tensor, the input is not modified.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating-point dtype, got {x.dtype}")
    min_value = check_finite_number("min_value", min_value)
    return x + (x.clamp(min=min_value) - x).detach()


def prompt_weight(rate: torch.Tensor, prompt_weighting: str) -> torch.Tensor:
    """Prompt weight ω(r) of the released code's ``normalize`` option, for already clipped rates r.

    ``"none"`` (normalize=0): 1; ``"1-r"`` (normalize=1): 1 − r; ``"sqrt((1-r)/r)"`` (normalize=2).
    """
    check_choice("prompt_weighting", prompt_weighting, PROMPT_WEIGHTINGS)
    if prompt_weighting == "none":
        return torch.ones_like(rate)
    if prompt_weighting == "1-r":
        return 1.0 - rate
    return ((1.0 - rate) / rate).sqrt()


def _neg_log_clamped(log_x: torch.Tensor, log_floor: float) -> torch.Tensor:
    """``−log(clampST(exp(log_x), exp(log_floor)))`` evaluated from ``log_x`` without under/overflow.

    Value ``−max(log_x, log_floor)``; gradient w.r.t. ``log_x``: ``−x / max(x, floor)``.
    """
    value = log_x.clamp(min=log_floor) if math.isfinite(log_floor) else log_x
    scale = torch.exp(log_x - value).detach()
    return -(value.detach() + scale * (log_x - log_x.detach()))


def nft_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    correct: torch.Tensor,
    correct_rate: torch.Tensor,
    mask: torch.Tensor,
    *,
    neg_weight: float = 1.0,
    ratio_type: str = "token",
    log_ratio_clamp: float = 10.0,
    rate_clip: tuple[float, float] = (0.02, 0.98),
    clamp_negative: float = 1.0,
    clamp_positive: float = 0.0,
    prompt_weighting: str = "1-r",
    reduction: str = "sum",
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""NFT loss on a padded batch of B completions of up to T tokens (see the module docstring).

    Args:
        logprobs: ``(B, T)`` log π_θ of the sampled completion tokens (carries the gradient).
        old_logprobs: ``(B, T)`` log π_old of the same tokens; treated as constants (detached).
        correct: ``(B,)`` verifier label c ∈ [0, 1] (bool/int/float; the code uses (score + 1)/2).
        correct_rate: ``(B,)`` r̂_q of each completion's prompt, in [0, 1] (unclipped).
        mask: ``(B, T)`` 1 for completion tokens, 0 for padding (bool/int/float). Values of
            ``logprobs``/``old_logprobs`` at padding positions are ignored, even NaN or inf.
        neg_weight: w⁻ ≥ 0 on the negative term; 1 = NFT, 0 = RFT (the code's −1 DAPO switch is
            :func:`nft_trainer.losses.dapo_loss`).
        ratio_type: ``"token"`` (R per token) or ``"sequence"`` (R = exp(min(Σ_t Δ_t, clamp)) per row).
        log_ratio_clamp: upper clamp of the log-ratio before ``exp`` (10 in the code; at most 80 so that
            ``exp`` stays finite in float32).
        rate_clip: ``(low, high)`` clip of r̂_q, ``0 < low <= high < 1`` ((0.02, 0.98) in the code).
        clamp_negative: floor |ε⁻| > 0 of the straight-through clamp of P (1.0 in the scripts; 0.5 the
            alternative). Its absolute value is used, as in the code.
        clamp_positive: floor ε⁺ ≥ 0 of the straight-through clamp of R (0.0 in the scripts).
        prompt_weighting: ω: ``"none"`` (normalize=0), ``"1-r"`` (normalize=1, the scripts'
            choice, ≙ Dr. GRPO) or ``"sqrt((1-r)/r)"`` (normalize=2, ≙ GRPO).
        reduction: ``"sum"``: ``Σ_i Σ_t ℓ m / normalizer`` with the code's constant normalizer 1000
            (token ratio; sequence ratio: ``Σ_i ℓ_i / 1``); ``"token_mean"``: divided by the number of
            active tokens; ``"sequence_mean"``: per-sequence token mean, then ``Σ_i / B`` (GRPO's
            aggregation). With a sequence ratio the per-row loss ℓ_i counts once per non-empty row
            and both means divide by the number of non-empty rows.
        normalizer: overrides the denominator of the chosen reduction (e.g. a token count over
            several micro-batches or processes). Must be > 0.

    Returns:
        ``(loss, metrics)``: the scalar loss (dtype: the promoted input dtype, at least float32) and
        detached 0-dim metrics ``pos_loss``, ``neg_loss`` (their sum is the loss), ``ratio_mean``,
        ``log_ratio_clamp_frac``, ``neg_clamp_frac`` (negative tokens or rows whose P was clamped),
        ``pos_clamp_frac``, ``correct_rate_mean`` (clipped, over rows) and ``num_tokens``.

    Exact equivalences (on-policy, ``old_logprobs == logprobs``, binary c, every r̂ inside rate_clip):
    ``∇ nft_loss(prompt_weighting="1-r", reduction="sum", normalizer=B·L_max)`` equals the gradient of
    :func:`dr_grpo_loss` with advantages ``c − r̂``; ``∇ nft_loss(prompt_weighting="sqrt((1-r)/r)",
    reduction="sequence_mean")`` equals that of :func:`grpo_loss` with ``(c − r̂)/√(r̂(1 − r̂))``
    (population std, eps = 0); ``"1-r"`` with ``"token_mean"`` equals :func:`dapo_loss` with ``c − r̂``.

    Limiting cases: an all-correct group (r̂ = 1 → r = 0.98) keeps its positives with ω(0.98); an
    all-wrong group (r̂ = 0 → r = 0.02) keeps its negatives, with on-policy gradient ω·0.02/0.98 per
    token. Both are finite; the trainer drops such groups by default (as the paper's dynamic sampling).
    A batch whose mask is all zero gives a loss of exactly 0.
    """
    check_float_tensor("logprobs", logprobs, ndim=2)
    check_float_tensor("old_logprobs", old_logprobs, ndim=2)
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"old_logprobs must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(old_logprobs.shape)}"
        )
    batch = logprobs.shape[0]
    check_mask("mask", mask, logprobs.shape)
    check_row_tensor("correct", correct, batch, low=0.0, high=1.0)
    check_row_tensor("correct_rate", correct_rate, batch, low=0.0, high=1.0)
    check_same_device(
        logprobs=logprobs, old_logprobs=old_logprobs, correct=correct, correct_rate=correct_rate, mask=mask
    )
    neg_weight = check_finite_number("neg_weight", neg_weight, low=0.0)
    check_choice("ratio_type", ratio_type, RATIO_TYPES)
    log_ratio_clamp = check_finite_number(
        "log_ratio_clamp", log_ratio_clamp, high=80.0
    )  # exp(88) overflows fp32
    if not isinstance(rate_clip, (tuple, list)) or len(rate_clip) != 2:
        raise TypeError(f"rate_clip must be a pair (low, high), got {rate_clip!r}")
    low = check_finite_number("rate_clip[0]", rate_clip[0], low=0.0, low_open=True)
    high = check_finite_number("rate_clip[1]", rate_clip[1], high=1.0, high_open=True)
    if low > high:
        raise ValueError(f"rate_clip must satisfy low <= high, got {tuple(rate_clip)}")
    clamp_negative = abs(check_finite_number("clamp_negative", clamp_negative))
    if clamp_negative == 0.0:
        raise ValueError(
            "clamp_negative must be non-zero: P = (1 − rR)/(1 − r) can reach 0 and log(0) = −inf"
        )
    clamp_positive = check_finite_number("clamp_positive", clamp_positive, low=0.0)
    check_choice("prompt_weighting", prompt_weighting, PROMPT_WEIGHTINGS)
    check_choice("reduction", reduction, REDUCTIONS)
    if normalizer is not None:
        if isinstance(normalizer, torch.Tensor):
            if normalizer.numel() != 1:
                raise ValueError(f"normalizer must be a scalar, got shape {tuple(normalizer.shape)}")
            if not bool(torch.isfinite(normalizer).all()) or not bool((normalizer > 0).all()):
                raise ValueError(f"normalizer must be finite and > 0, got {normalizer.item()}")
        else:
            check_finite_number("normalizer", normalizer, low=0.0, low_open=True)

    dtype = compute_dtype(logprobs, old_logprobs, correct_rate)
    m = mask.bool()
    mf = m.to(dtype)
    lp = logprobs.to(dtype)
    old = old_logprobs.detach().to(dtype)
    # Padding may hold anything (NaN included): zero it before it can reach a sum or a gradient.
    delta = torch.where(
        m, lp - torch.where(m, old, lp.detach()), torch.zeros((), dtype=dtype, device=lp.device)
    )
    c = correct.to(dtype)
    r = correct_rate.to(dtype).clamp(low, high)
    omega = prompt_weight(r, prompt_weighting)
    nonempty = m.any(dim=1)

    if ratio_type == "token":
        log_r = delta.clamp(max=log_ratio_clamp)
        clamped_lr = (delta > log_ratio_clamp) & m
        rr, cc, ww, unit = r[:, None], c[:, None], omega[:, None], mf
    else:
        seq_delta = delta.sum(dim=1)
        log_r = seq_delta.clamp(max=log_ratio_clamp)
        clamped_lr = (seq_delta > log_ratio_clamp) & nonempty
        rr, cc, ww, unit = r, c, omega, nonempty.to(dtype)
    ratio = torch.exp(log_r)
    proxy = (1.0 - rr * ratio) / (1.0 - rr)
    neg_term = -torch.log(clamp_st(proxy, clamp_negative))
    pos_term = _neg_log_clamped(log_r, math.log(clamp_positive) if clamp_positive > 0 else -math.inf)
    neg = ww * neg_weight * (1.0 - cc) * neg_term * unit
    pos = ww * cc * pos_term * unit

    if reduction == "sequence_mean" and ratio_type == "token":
        per_row = mf.sum(dim=1).clamp(min=1.0)
        neg_num = (neg.sum(dim=1) / per_row).sum()
        pos_num = (pos.sum(dim=1) / per_row).sum()
    else:
        neg_num, pos_num = neg.sum(), pos.sum()
    if normalizer is not None:
        den = (
            normalizer.to(dtype=dtype, device=lp.device).reshape(())
            if isinstance(normalizer, torch.Tensor)
            else normalizer
        )
    elif reduction == "sum":
        den = CODE_TOKEN_NORMALIZER if ratio_type == "token" else CODE_SEQUENCE_NORMALIZER
    elif reduction == "token_mean":
        den = unit.sum().clamp(min=1.0)
    elif ratio_type == "token":
        den = float(max(batch, 1))
    else:
        den = unit.sum().clamp(min=1.0)
    pos_loss, neg_loss = pos_num / den, neg_num / den
    loss = pos_loss + neg_loss

    with torch.no_grad():
        count = unit.sum()
        neg_units = unit * (1.0 - cc > 0).to(dtype)
        pos_units = unit * (cc > 0).to(dtype)
        metrics: dict[str, Any] = {
            "pos_loss": pos_loss.detach(),
            "neg_loss": neg_loss.detach(),
            "ratio_mean": torch.where(count > 0, (ratio * unit).sum() / count.clamp(min=1.0), 1.0),
            "log_ratio_clamp_frac": clamped_lr.to(dtype).sum() / count.clamp(min=1.0),
            "neg_clamp_frac": ((proxy < clamp_negative).to(dtype) * neg_units).sum()
            / neg_units.sum().clamp(min=1.0),
            "pos_clamp_frac": ((ratio < clamp_positive).to(dtype) * pos_units).sum()
            / pos_units.sum().clamp(min=1.0),
            "correct_rate_mean": r.mean() if batch else torch.zeros((), dtype=dtype, device=lp.device),
            "num_tokens": mf.sum(),
        }
    return loss, metrics


def rft_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    correct: torch.Tensor,
    correct_rate: torch.Tensor,
    mask: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RFT (rejection-sampling fine-tuning): :func:`nft_loss` with ``neg_weight=0`` (negatives dropped).

    Maximum likelihood on the positive completions only, ``ℓ = ω(r) c L⁺``; takes every keyword of
    :func:`nft_loss` except ``neg_weight``.
    """
    if "neg_weight" in kwargs:
        raise TypeError("rft_loss() fixes neg_weight=0; call nft_loss(neg_weight=...) to weight negatives")
    return nft_loss(logprobs, old_logprobs, correct, correct_rate, mask, neg_weight=0.0, **kwargs)
