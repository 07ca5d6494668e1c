"""Group statistics of G completions per prompt: correctness rate r̂_q, group-relative advantages.

A batch holds several prompts with ``G`` completions each. ``groups`` names the group of every row,
either as an ``int`` G (rows ``[kG, (k+1)G)`` form group ``k``: TRL's layout before shuffling) or as
an integer tensor of shape ``(B,)`` with one group id per row (any order: TRL shuffles rows before
the loss, so the trainer carries explicit ids).
"""

from __future__ import annotations

import torch

from ._checks import check_choice, check_finite_number, check_row_tensor

__all__ = ["group_advantages", "group_correct_rate", "group_index", "zero_variance_groups"]


def group_index(groups: int | torch.Tensor, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """Dense group index in ``[0, num_groups)`` for each of ``batch`` rows (int64, shape ``(batch,)``)."""
    if isinstance(groups, bool) or not isinstance(groups, (int, torch.Tensor)):
        raise TypeError(
            f"groups must be an int (group size G) or a (B,) integer tensor, got {type(groups).__name__}"
        )
    if isinstance(groups, int):
        if groups < 1:
            raise ValueError(f"groups (the group size G) must be >= 1, got {groups}")
        if batch % groups != 0:
            raise ValueError(
                f"the batch of {batch} rows is not a whole number of groups of size {groups}: "
                "pass the group ids as a (B,) tensor instead"
            )
        return torch.arange(batch, device=device) // groups
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise TypeError(f"groups must be an integer tensor of group ids, got dtype {groups.dtype}")
    if groups.shape != (batch,):
        raise ValueError(
            f"groups must have shape ({batch},) (one group id per row), got {tuple(groups.shape)}"
        )
    if device is not None and groups.device != torch.device(device):
        raise ValueError(f"groups must be on {device}, got {groups.device}")
    return torch.unique(groups, return_inverse=True)[1]


def _group_sum(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    num_groups = int(index.max()) + 1 if index.numel() else 0
    out = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def group_correct_rate(
    correct: torch.Tensor, groups: int | torch.Tensor, *, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row correctness rate of its prompt, r̂_q = (1/G) Σ_{i∈q} c_i (NFT paper, Sec. 3).

    Args:
        correct: ``(B,)`` correctness c_i in [0, 1] (bool, integer or float).
        groups: group size G or ``(B,)`` group ids (see module docstring).
        valid: optional ``(B,)`` bool; rows with ``False`` (e.g. unscorable completions) are left out of
            their group's mean. A group without valid rows gets r̂ = 0.

    Returns:
        ``(B,)`` float tensor (at least float32), r̂ of each row's group, tiled over the group.
    """
    if not isinstance(correct, torch.Tensor):
        raise TypeError(f"correct must be a torch.Tensor, got {type(correct).__name__}")
    batch = correct.shape[0] if correct.dim() == 1 else None
    check_row_tensor("correct", correct, batch, low=0.0, high=1.0)
    batch = correct.shape[0]
    index = group_index(groups, batch, correct.device)
    dtype = correct.dtype if correct.is_floating_point() and correct.dtype == torch.float64 else torch.float32
    c = correct.to(dtype)
    w = torch.ones_like(c)
    if valid is not None:
        check_row_tensor("valid", valid, batch)
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        w = valid.to(dtype)
    if batch == 0:
        return c.clone()
    num = _group_sum(c * w, index)
    den = _group_sum(w, index)
    rate = torch.where(den > 0, num / den.clamp(min=1.0), torch.zeros_like(num))
    return rate[index]


def group_advantages(
    rewards: torch.Tensor,
    groups: int | torch.Tensor,
    *,
    scale_rewards: str = "group",
    eps: float = 1e-4,
    unbiased_std: bool = True,
) -> torch.Tensor:
    """Group-relative advantages A_i = (r_i − mean_q r) / (std + eps) (GRPO) or r_i − mean_q r (Dr. GRPO).

    Args:
        rewards: ``(B,)`` finite float rewards.
        groups: group size G or ``(B,)`` group ids.
        scale_rewards: ``"group"`` (std of the row's group; GRPO, DAPO), ``"batch"`` (std of the whole
            batch) or ``"none"`` (no division; Dr. GRPO), as TRL's ``GRPOConfig.scale_rewards``.
        eps: added to the std (TRL uses 1e-4; 0 gives the exact formula, and then a zero-variance group
            gets advantage 0 instead of 0/0).
        unbiased_std: Bessel-corrected std (TRL) or the population std √(r̂(1−r̂)) of the paper's
            NFT–GRPO equivalence. A group of one row has std 0.

    Returns:
        ``(B,)`` advantages in the rewards' dtype (at least float32); never NaN.
    """
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must have a floating-point dtype, got {rewards.dtype}")
    batch = rewards.shape[0] if rewards.dim() == 1 else None
    check_row_tensor("rewards", rewards, batch)
    batch = rewards.shape[0]
    check_choice("scale_rewards", scale_rewards, ("group", "batch", "none"))
    eps = check_finite_number("eps", eps, low=0.0)
    index = group_index(groups, batch, rewards.device)
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    if batch == 0:
        return r.clone()
    count = _group_sum(torch.ones_like(r), index)
    mean = (_group_sum(r, index) / count)[index]
    centred = r - mean
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        sq = _group_sum(centred * centred, index)
        den = (count - 1).clamp(min=1.0) if unbiased_std else count
        std = torch.where(count > 1, (sq / den).sqrt(), torch.zeros_like(sq))[index]
    else:
        n = r.numel()
        std = r.std(correction=1) if (unbiased_std and n > 1) else r.std(correction=0)
        std = std.expand_as(r)
    scale = std + eps
    return torch.where(
        scale > 0, centred / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(r)
    )


def zero_variance_groups(rewards: torch.Tensor, groups: int | torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: True where the row's group has all rewards equal (all right or all wrong).

    Such groups carry no GRPO signal (A = 0); the NFT paper drops them (DAPO dynamic sampling).
    """
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    batch = rewards.shape[0] if rewards.dim() == 1 else None
    check_row_tensor("rewards", rewards, batch)
    batch = rewards.shape[0]
    index = group_index(groups, batch, rewards.device)
    if batch == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    r = rewards.to(torch.float64)
    num_groups = int(index.max()) + 1
    gmax = torch.full((num_groups,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, index, r, reduce="amax"
    )
    gmin = torch.full((num_groups,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, index, r, reduce="amin"
    )
    return (gmax == gmin)[index]
