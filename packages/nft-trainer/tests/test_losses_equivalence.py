"""Proposition 4.2 of the NFT paper, to float64 precision: on-policy (ratio 1), binary rewards, every group
mixed (0 < r̂ < 1, inside the rate clip), the NFT gradient equals

- Dr. GRPO's with ω = 1 − r, aggregation Σ/(B·L_max) on both sides (NFT normalizer = B·L_max);
- DAPO's token mean with ω = 1 − r and advantages c − r̂ (reduction "token_mean" on the NFT side);
- GRPO's with ω = √((1 − r)/r), advantages (c − r̂)/σ with the population std σ = √(r̂(1 − r̂)) and
  eps = 0, aggregation per-sequence token mean then mean over the batch on both sides.
"""

import pytest
import torch
from nft_trainer.losses import (
    dapo_loss,
    dr_grpo_loss,
    group_advantages,
    group_correct_rate,
    grpo_loss,
    nft_loss,
)

F64 = torch.float64


def _groups(num_groups=5, g=6, t=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b = num_groups * g
    correct = (torch.rand(b, generator=gen) < 0.5).to(F64).view(num_groups, g)
    correct[:, 0], correct[:, 1] = 1.0, 0.0  # every group mixed
    correct = correct.flatten()
    perm = torch.randperm(b, generator=gen)  # rows shuffled, as TRL does before the loss
    group_ids = (torch.arange(b) // g)[perm]
    correct = correct[perm]
    logprobs = -torch.rand(b, t, generator=gen, dtype=F64) * 4
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(F64)
    return logprobs, correct, group_ids, mask


def _grad(fn, logprobs):
    x = logprobs.clone().requires_grad_(True)
    loss = fn(x)[0]
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nft_one_minus_r_equals_dr_grpo(seed):
    logprobs, correct, gid, mask = _groups(seed=seed)
    b, t = logprobs.shape
    rate = group_correct_rate(correct, gid)
    adv = group_advantages(correct, gid, scale_rewards="none")
    torch.testing.assert_close(adv, correct - rate, rtol=0, atol=1e-15)
    g_nft = _grad(
        lambda x: nft_loss(x, x.detach(), correct, rate, mask, prompt_weighting="1-r", normalizer=b * t),
        logprobs,
    )
    g_dr = _grad(lambda x: dr_grpo_loss(x, x.detach(), adv, mask, max_completion_length=t), logprobs)
    assert g_nft.abs().max() > 1e-4
    torch.testing.assert_close(g_nft, g_dr, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("seed", [3, 4])
def test_nft_one_minus_r_token_mean_equals_dapo(seed):
    logprobs, correct, gid, mask = _groups(seed=seed)
    rate = group_correct_rate(correct, gid)
    adv = group_advantages(correct, gid, scale_rewards="none")
    g_nft = _grad(lambda x: nft_loss(x, x.detach(), correct, rate, mask, reduction="token_mean"), logprobs)
    g_dapo = _grad(lambda x: dapo_loss(x, x.detach(), adv, mask), logprobs)
    torch.testing.assert_close(g_nft, g_dapo, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_nft_sqrt_weighting_equals_grpo(seed):
    logprobs, correct, gid, mask = _groups(seed=seed)
    rate = group_correct_rate(correct, gid)
    adv = group_advantages(correct, gid, scale_rewards="group", eps=0.0, unbiased_std=False)
    torch.testing.assert_close(adv, (correct - rate) / (rate * (1 - rate)).sqrt(), rtol=1e-13, atol=0)
    g_nft = _grad(
        lambda x: nft_loss(
            x, x.detach(), correct, rate, mask, prompt_weighting="sqrt((1-r)/r)", reduction="sequence_mean"
        ),
        logprobs,
    )
    g_grpo = _grad(lambda x: grpo_loss(x, x.detach(), adv, mask), logprobs)
    assert g_nft.abs().max() > 1e-4
    torch.testing.assert_close(g_nft, g_grpo, rtol=1e-12, atol=1e-16)


def test_equivalence_breaks_off_policy_and_with_wrong_weighting():
    """The tests above can fail: off-policy, or with the other weighting, the gradients differ."""
    logprobs, correct, gid, mask = _groups(seed=8)
    b, t = logprobs.shape
    rate = group_correct_rate(correct, gid)
    adv = group_advantages(correct, gid, scale_rewards="none")
    old = logprobs - 0.3 * torch.rand_like(logprobs) - 0.1
    g_nft = _grad(lambda x: nft_loss(x, old, correct, rate, mask, normalizer=b * t), logprobs)
    g_dr = _grad(lambda x: dr_grpo_loss(x, old, adv, mask, max_completion_length=t), logprobs)
    assert (g_nft - g_dr).abs().max() > 1e-6
    g_sqrt = _grad(
        lambda x: nft_loss(
            x, x.detach(), correct, rate, mask, prompt_weighting="sqrt((1-r)/r)", normalizer=b * t
        ),
        logprobs,
    )
    g_dr_on = _grad(lambda x: dr_grpo_loss(x, x.detach(), adv, mask, max_completion_length=t), logprobs)
    assert (g_sqrt - g_dr_on).abs().max() > 1e-6
