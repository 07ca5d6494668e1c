"""``NFTConfig``: TRL's ``GRPOConfig`` plus the NFT loss options of the paper's released code."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from trl import GRPOConfig

from .losses.nft import PROMPT_WEIGHTINGS, RATIO_TYPES, REDUCTIONS

__all__ = ["NFTConfig"]


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"NFTConfig.{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"NFTConfig.{name} must be finite, got {value}")
    return value


@dataclass
class NFTConfig(GRPOConfig):
    r"""Configuration of :class:`~nft_trainer.NFTTrainer`: every ``GRPOConfig`` field plus the NFT options.

    NFT replaces GRPO's clipped surrogate, so these ``GRPOConfig`` fields have no effect:
    ``loss_type``, ``epsilon``, ``epsilon_high``, ``scale_rewards``, ``importance_sampling_level``,
    ``vllm_importance_sampling_*`` (the NFT ratio uses the trainer's ``old_per_token_logps``, as the
    released code does). Fields whose effect NFT would silently drop are refused: ``beta != 0``,
    ``delta``, ``top_entropy_quantile < 1``, ``entropy_coef != 0``,
    ``use_adaptive_entropy``, ``off_policy_mask_threshold``.

    Off-policy ratio: TRL stores ``old_per_token_logps`` (log π_old at generation time) only when the
    policy can change between generation and loss, i.e. ``steps_per_generation >
    gradient_accumulation_steps`` (several optimizer steps per rollout batch, as the paper's 16 mini-
    batches per rollout), ``num_iterations > 1``, or vLLM generation. Otherwise the batch is on-policy
    and the ratio is exactly 1 (``old = log π_θ`` detached), where NFT's gradient equals Dr. GRPO's
    (``prompt_weighting="1-r"``) or GRPO's (``"sqrt((1-r)/r)"``).
    """

    neg_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the negative (implicit negative policy) term; 1 = NFT, 0 = RFT (code: neg_weight)."
        },
    )
    ratio_type: str = field(
        default="token",
        metadata={
            "help": "Likelihood ratio per 'token' or per 'sequence' (code: ratio_type).",
            "choices": list(RATIO_TYPES),
        },
    )
    log_ratio_clamp: float = field(
        default=10.0, metadata={"help": "Upper clamp of log(π_θ/π_old) before exp (10 in the code)."}
    )
    correct_rate_min: float = field(
        default=0.02,
        metadata={"help": "Lower clip of the per-prompt correctness rate r̂_q (0.02 in the code)."},
    )
    correct_rate_max: float = field(
        default=0.98,
        metadata={"help": "Upper clip of the per-prompt correctness rate r̂_q (0.98 in the code)."},
    )
    clamp_negative: float = field(
        default=1.0,
        metadata={
            "help": "Floor of the straight-through clamp of the negative proxy P (code: clamp_negative; |value|)."
        },
    )
    clamp_positive: float = field(
        default=0.0,
        metadata={"help": "Floor of the straight-through clamp of the ratio R (code: clamp_positive)."},
    )
    prompt_weighting: str = field(
        default="1-r",
        metadata={
            "help": "Prompt weight ω: 'none' (code normalize=0), '1-r' (1, ≙ Dr. GRPO), 'sqrt((1-r)/r)' (2, ≙ GRPO).",
            "choices": list(PROMPT_WEIGHTINGS),
        },
    )
    loss_reduction: str = field(
        default="sum",
        metadata={
            "help": "'sum': Σ ℓ over the optimizer-step batch / loss_normalizer (code); 'token_mean': / active tokens; "
            "'sequence_mean': per-sequence token mean, then mean over sequences.",
            "choices": list(REDUCTIONS),
        },
    )
    loss_normalizer: float | None = field(
        default=None,
        metadata={
            "help": "Constant of loss_reduction='sum'; None = the code's 1000 (token ratio) or 1 (sequence)."
        },
    )
    correct_threshold: float = field(
        default=0.5,
        metadata={
            "help": "A completion is positive when its (weighted) reward >= this (0.5 for 0/1 verifiers, 0 for ±1)."
        },
    )
    filter_zero_variance_groups: bool = field(
        default=True,
        metadata={
            "help": "Leave out of the loss the groups whose completions are all right or all wrong (paper: dropped)."
        },
    )

    def __post_init__(self):
        self._check_nft_fields()
        self._check_grouping()
        super().__post_init__()
        self._check_unsupported_grpo_fields()

    def _check_nft_fields(self) -> None:
        self.neg_weight = _real("neg_weight", self.neg_weight)
        if self.neg_weight < 0:
            raise ValueError(
                f"NFTConfig.neg_weight must be >= 0 (1 = NFT, 0 = RFT), got {self.neg_weight}. The released code's "
                "neg_weight < 0 switch selects DAPO: for that baseline use trl.GRPOTrainer with GRPOConfig(loss_type='dapo', "
                "epsilon_high=0.28)."
            )
        if self.ratio_type not in RATIO_TYPES:
            raise ValueError(
                f"NFTConfig.ratio_type must be one of {list(RATIO_TYPES)}, got {self.ratio_type!r}"
            )
        self.log_ratio_clamp = _real("log_ratio_clamp", self.log_ratio_clamp)
        if self.log_ratio_clamp > 80.0:
            raise ValueError(
                f"NFTConfig.log_ratio_clamp must be <= 80 (exp overflows float32 beyond ~88), got {self.log_ratio_clamp}; "
                "the code uses 10"
            )
        lo = _real("correct_rate_min", self.correct_rate_min)
        hi = _real("correct_rate_max", self.correct_rate_max)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(
                "NFTConfig needs 0 < correct_rate_min <= correct_rate_max < 1 (the negative proxy divides by 1 − r and the "
                f"'sqrt((1-r)/r)' weight by r), got correct_rate_min={lo}, correct_rate_max={hi}; the code uses 0.02 and 0.98"
            )
        self.correct_rate_min, self.correct_rate_max = lo, hi
        self.clamp_negative = _real("clamp_negative", self.clamp_negative)
        if self.clamp_negative == 0.0:
            raise ValueError(
                "NFTConfig.clamp_negative must be non-zero (P = (1 − rR)/(1 − r) reaches 0 and log(0) = −inf); "
                "the scripts use 1.0 (0.5 as the alternative)"
            )
        self.clamp_positive = _real("clamp_positive", self.clamp_positive)
        if self.clamp_positive < 0:
            raise ValueError(f"NFTConfig.clamp_positive must be >= 0, got {self.clamp_positive}")
        if self.prompt_weighting not in PROMPT_WEIGHTINGS:
            raise ValueError(
                f"NFTConfig.prompt_weighting must be one of {list(PROMPT_WEIGHTINGS)} (the code's normalize 0/1/2), "
                f"got {self.prompt_weighting!r}"
            )
        if self.loss_reduction not in REDUCTIONS:
            raise ValueError(
                f"NFTConfig.loss_reduction must be one of {list(REDUCTIONS)}, got {self.loss_reduction!r}"
            )
        if self.loss_normalizer is not None:
            self.loss_normalizer = _real("loss_normalizer", self.loss_normalizer)
            if self.loss_normalizer <= 0:
                raise ValueError(f"NFTConfig.loss_normalizer must be > 0 or None, got {self.loss_normalizer}")
            if self.loss_reduction != "sum":
                raise ValueError(
                    f"NFTConfig.loss_normalizer only applies to loss_reduction='sum', got loss_reduction="
                    f"{self.loss_reduction!r}: set loss_normalizer=None"
                )
        self.correct_threshold = _real("correct_threshold", self.correct_threshold)
        if not isinstance(self.filter_zero_variance_groups, bool):
            raise TypeError(
                f"NFTConfig.filter_zero_variance_groups must be a bool, got {self.filter_zero_variance_groups!r}"
            )

    def _check_grouping(self) -> None:
        g = self.num_generations
        if isinstance(g, bool) or not isinstance(g, int):
            raise TypeError(f"NFTConfig.num_generations must be an int, got {g!r}")
        if g < 2:
            raise ValueError(
                f"NFTConfig.num_generations={g}: NFT needs a group of at least 2 completions per prompt to estimate the "
                "correctness rate r̂_q (a group of 1 is always 'all right' or 'all wrong'). Set num_generations >= 2 "
                "(the paper uses 16)."
            )
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_device = self.per_device_train_batch_size
        if self.generation_batch_size is not None:
            gen, what = self.generation_batch_size, "generation_batch_size"
        else:
            steps = self.steps_per_generation or self.gradient_accumulation_steps
            gen = per_device * world * steps
            what = (
                f"per_device_train_batch_size ({per_device}) × processes ({world}) × "
                f"{'steps_per_generation' if self.steps_per_generation else 'gradient_accumulation_steps'} ({steps})"
            )
        if gen % g != 0:
            fix = per_device
            while (gen // per_device * fix) % g != 0:
                fix += 1
            raise ValueError(
                f"The global generation batch {what} = {gen} completions is not divisible by num_generations ({g}): every "
                f"prompt needs its whole group of {g} completions in one batch. Fix: make the batch a multiple of {g}, "
                f"e.g. per_device_train_batch_size={fix}, or choose num_generations dividing {gen}."
            )

    def _check_unsupported_grpo_fields(self) -> None:
        refused = {
            "beta": (self.beta != 0.0, "NFT as released has no KL term (kl_loss_coef 0): set beta=0.0"),
            "delta": (
                self.delta is not None,
                "two-sided PPO clipping does not apply to NFT (no PPO clip): set delta=None",
            ),
            "top_entropy_quantile": (
                self.top_entropy_quantile != 1.0,
                "entropy masking is not part of NFT: set top_entropy_quantile=1.0",
            ),
            "entropy_coef": (
                self.entropy_coef != 0.0,
                "no entropy bonus in NFT (entropy_coeff 0): set entropy_coef=0.0",
            ),
            "use_adaptive_entropy": (bool(self.use_adaptive_entropy), "no entropy bonus in NFT: set False"),
            "off_policy_mask_threshold": (
                self.off_policy_mask_threshold is not None,
                "off-policy sequence masking is not part of NFT: set off_policy_mask_threshold=None",
            ),
        }
        for name, (bad, fix) in refused.items():
            if bad:
                raise ValueError(
                    f"NFTConfig.{name}={getattr(self, name)!r} is not supported by NFTTrainer: {fix}."
                )
