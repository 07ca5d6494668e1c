"""Framework-agnostic PyTorch losses: NFT and RFT, and the GRPO / Dr. GRPO / DAPO baselines.

Every function takes padded ``(B, T)`` per-token log-probs with a ``(B, T)`` mask, validates its
inputs, never modifies them, and returns ``(loss, metrics)`` with detached scalar metrics.
"""

from .groups import group_advantages, group_correct_rate, group_index, zero_variance_groups
from .grpo import clipped_surrogate, dapo_loss, dr_grpo_loss, grpo_loss
from .nft import PROMPT_WEIGHTINGS, RATIO_TYPES, REDUCTIONS, clamp_st, nft_loss, prompt_weight, rft_loss

__all__ = [
    "PROMPT_WEIGHTINGS",
    "RATIO_TYPES",
    "REDUCTIONS",
    "clamp_st",
    "clipped_surrogate",
    "dapo_loss",
    "dr_grpo_loss",
    "group_advantages",
    "group_correct_rate",
    "group_index",
    "grpo_loss",
    "nft_loss",
    "prompt_weight",
    "rft_loss",
    "zero_variance_groups",
]
