"""GRPO / Dr. GRPO / DAPO against hand-derived gradients and TRL 1.16's formulas; group helpers."""

import pytest
import torch
from nft_trainer.losses import (
    clipped_surrogate,
    dapo_loss,
    dr_grpo_loss,
    group_advantages,
    group_correct_rate,
    group_index,
    grpo_loss,
    zero_variance_groups,
)

F64 = torch.float64


def _batch(b=6, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=F64) * 3
    lp = old + torch.randn(b, t, generator=g, dtype=F64) * 0.3
    adv = torch.randn(b, generator=g, dtype=F64)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return lp, old, adv, mask


@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.2), (0.2, 0.28), (0.05, 0.1)])
def test_clipped_surrogate_gradient_hand_derived(eps_low, eps_high):
    """d/dlog π of −min(ρA, clip(ρ)A) is −ρA unless the clip is active (ρ>1+ε_h, A>0 or ρ<1−ε_l, A<0): 0."""
    lp, old, adv, mask = _batch(seed=1)
    x = lp.clone().requires_grad_(True)
    per_token, metrics = clipped_surrogate(x, old, adv, mask, epsilon_low=eps_low, epsilon_high=eps_high)
    per_token.sum().backward()
    rho = torch.exp(lp - old)
    a = adv[:, None]
    active = ((rho > 1 + eps_high) & (a > 0)) | ((rho < 1 - eps_low) & (a < 0))
    expected = torch.where(active, 0.0, -rho * a) * mask
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-15)
    assert active[mask.bool()].any()  # the clip branch is exercised
    frac = ((rho > 1 + eps_high) & (a > 0) & mask.bool()).sum() / mask.sum()
    torch.testing.assert_close(metrics["clip_high_frac"], frac.to(F64))


def _trl_per_token(lp, old, adv, eps_low, eps_high):
    coef_1 = torch.exp(lp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    return -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])


def test_aggregations_match_trl_formulas():
    lp, old, adv, mask = _batch(seed=2)
    b = lp.shape[0]
    m = mask.to(F64)
    ptl = _trl_per_token(lp, old, adv, 0.2, 0.2)
    trl_grpo = ((ptl * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    trl_dr = (ptl * m).sum() / (b * 9)
    ptl_dapo = _trl_per_token(lp, old, adv, 0.2, 0.28)
    trl_dapo = (ptl_dapo * m).sum() / m.sum()
    torch.testing.assert_close(grpo_loss(lp, old, adv, mask)[0], trl_grpo, rtol=1e-13, atol=0)
    torch.testing.assert_close(
        dr_grpo_loss(lp, old, adv, mask, max_completion_length=9)[0], trl_dr, rtol=1e-13, atol=0
    )
    torch.testing.assert_close(dapo_loss(lp, old, adv, mask)[0], trl_dapo, rtol=1e-13, atol=0)
    torch.testing.assert_close(dapo_loss(lp, old, adv, mask, normalizer=7.0)[0], (ptl_dapo * m).sum() / 7.0)


def test_per_token_advantages_and_empty_batches():
    lp, old, adv, mask = _batch(seed=3)
    adv_tok = adv[:, None].expand_as(lp).clone()
    torch.testing.assert_close(grpo_loss(lp, old, adv_tok, mask)[0], grpo_loss(lp, old, adv, mask)[0])
    zero = torch.zeros_like(mask)
    for fn, kw in [(grpo_loss, {}), (dr_grpo_loss, {"max_completion_length": 4}), (dapo_loss, {})]:
        x = lp.clone().requires_grad_(True)
        loss, metrics = fn(x, old, adv, zero, **kw)
        loss.backward()
        assert loss.item() == 0.0 and torch.all(x.grad == 0)
        assert all(torch.isfinite(v) for v in metrics.values())


def test_padding_garbage_ignored():
    lp, old, adv, mask = _batch(seed=4)
    lp2, old2 = lp.clone(), old.clone()
    lp2[~mask.bool()] = float("nan")
    old2[~mask.bool()] = float("inf")
    x = lp2.clone().requires_grad_(True)
    loss, _ = dapo_loss(x, old2, adv, mask)
    loss.backward()
    torch.testing.assert_close(loss, dapo_loss(lp, old, adv, mask)[0])
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("fn", "kwargs", "exc", "match"),
    [
        (grpo_loss, {"epsilon": -0.1}, ValueError, "epsilon_low must be >= 0"),
        (grpo_loss, {"epsilon": 1.0}, ValueError, "epsilon_low must be < 1"),
        (dapo_loss, {"epsilon_high": float("inf")}, ValueError, "epsilon_high must be finite"),
        (dr_grpo_loss, {"max_completion_length": 0}, ValueError, "max_completion_length must be >= 1"),
        (dr_grpo_loss, {"max_completion_length": 2.5}, TypeError, "max_completion_length must be an int"),
        (dapo_loss, {"normalizer": -1.0}, ValueError, "normalizer must be > 0"),
        (grpo_loss, {"eps": 0.2}, TypeError, "unexpected keyword"),
    ],
)
def test_bad_options(fn, kwargs, exc, match):
    lp, old, adv, mask = _batch()
    if fn is dr_grpo_loss and "max_completion_length" not in kwargs:
        kwargs = {**kwargs, "max_completion_length": 7}
    with pytest.raises(exc, match=match):
        fn(lp, old, adv, mask, **kwargs)


def test_bad_advantages():
    lp, old, adv, mask = _batch()
    with pytest.raises(ValueError, match="advantages must have shape"):
        grpo_loss(lp, old, adv[:3], mask)
    with pytest.raises(ValueError, match="advantages must be finite"):
        grpo_loss(lp, old, adv * float("nan"), mask)
    with pytest.raises(TypeError, match="advantages must have a floating-point"):
        grpo_loss(lp, old, adv.long(), mask)


# --- group helpers -------------------------------------------------------------------------------------


def test_group_advantages_match_trl():
    g = torch.Generator().manual_seed(0)
    rewards = (torch.rand(12, generator=g) < 0.5).float()
    rewards[:3] = 1.0  # a zero-variance group
    grouped = rewards.view(-1, 3)
    mean = grouped.mean(1).repeat_interleave(3)
    std = grouped.std(1).repeat_interleave(3)  # TRL: Bessel-corrected
    torch.testing.assert_close(group_advantages(rewards, 3), (rewards - mean) / (std + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, 3, scale_rewards="none"), rewards - mean)
    torch.testing.assert_close(
        group_advantages(rewards, 3, scale_rewards="batch"), (rewards - mean) / (rewards.std() + 1e-4)
    )
    exact = group_advantages(rewards, 3, eps=0.0)
    assert torch.isfinite(exact).all() and torch.all(exact[:3] == 0)


def test_group_ids_any_order_and_validity():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    ids = torch.tensor([7, 3, 7, 3, 3, 7])
    torch.testing.assert_close(
        group_correct_rate(rewards, ids), torch.tensor([1 / 3, 2 / 3, 1 / 3, 2 / 3, 2 / 3, 1 / 3])
    )
    valid = torch.tensor([True, True, False, True, True, True])
    torch.testing.assert_close(
        group_correct_rate(rewards, ids, valid=valid), torch.tensor([0.5, 2 / 3, 0.5, 2 / 3, 2 / 3, 0.5])
    )
    assert torch.equal(group_index(ids, 6), torch.tensor([1, 0, 1, 0, 0, 1]))
    assert torch.equal(
        zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2), torch.tensor([True, True, False, False])
    )
    none_valid = group_correct_rate(rewards, 3, valid=torch.zeros(6, dtype=torch.bool))
    assert torch.equal(none_valid, torch.zeros(6))


def test_group_helpers_bad_input():
    with pytest.raises(ValueError, match="not a whole number of groups of size 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="must be >= 1"):
        group_index(0, 4)
    with pytest.raises(TypeError, match="integer tensor of group ids"):
        group_correct_rate(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"groups must have shape \(4,\)"):
        group_correct_rate(torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        group_advantages(torch.zeros(4), 2, scale_rewards="std")
    with pytest.raises(ValueError, match="rewards must be finite"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="correct must be <= 1"):
        group_correct_rate(torch.tensor([0.0, 2.0]), 2)
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        zero_variance_groups(torch.zeros(2, 2), 2)
    with pytest.raises(TypeError, match="valid must be a bool tensor"):
        group_correct_rate(torch.zeros(2), 2, valid=torch.ones(2))
