"""nft_loss / rft_loss against a literal transcription of the released code and hand-derived gradients."""

import math

import pytest
import torch
from nft_trainer.losses import clamp_st, nft_loss, prompt_weight, rft_loss

F64 = torch.float64


def _batch(b=7, t=9, seed=0, spread=0.6, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=F64) * 3 - 0.05
    lp = old + torch.randn(b, t, generator=g, dtype=F64) * spread
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    correct = (torch.rand(b, generator=g) < 0.5).to(F64)
    correct[0], correct[1] = 1.0, 0.0
    rate = torch.rand(b, generator=g, dtype=F64)
    rate[2], rate[3] = 0.0, 1.0  # outside the clip: tests the clip
    return lp.to(dtype), old.to(dtype), correct, rate, mask


def _code_reference(
    lp, old, correct, rate, mask, *, neg_weight, ratio_type, clamp_negative, clamp_positive, normalize
):
    """Line-by-line transcription of dp_actor.py's NFT branch (token: Σ/1000; sequence: Σ)."""

    def clamp_preserve_grad(x, min_val):
        return x + (torch.clamp(x, min=min_val) - x).detach()

    nak = lp - old
    if ratio_type == "token":
        ratio = torch.exp(nak.clamp(max=10.0))
    else:
        ratio = torch.exp((nak * mask).sum(dim=-1).clamp(max=10.0))[:, None]
    cr = rate[:, None].expand_as(lp).clamp(0.02, 0.98)
    neg_rate = 1.0 - cr
    if ratio_type == "sequence":
        ratio, cr, neg_rate = ratio.squeeze(-1), cr[:, 0], neg_rate[:, 0]
        cm = correct
    else:
        cm = correct[:, None]
    proxy = (1.0 - cr * ratio) / (1.0 - cr * 1.0)
    negative_loss = -torch.log(clamp_preserve_grad(proxy, abs(clamp_negative)))
    positive_loss = -torch.log(clamp_preserve_grad(ratio, clamp_positive))
    pg = negative_loss * (1.0 - cm) * neg_weight + cm * positive_loss
    if normalize == 1:
        pg = pg * neg_rate
    elif normalize == 2:
        pg = pg * (neg_rate / cr) ** 0.5
    if ratio_type == "token":
        return torch.sum(torch.sum(pg * mask, dim=1) / 1000.0)
    return torch.sum(pg)


WEIGHTING = {0: "none", 1: "1-r", 2: "sqrt((1-r)/r)"}


@pytest.mark.parametrize("ratio_type", ["token", "sequence"])
@pytest.mark.parametrize("normalize", [0, 1, 2])
@pytest.mark.parametrize(
    ("neg_weight", "clamp_negative", "clamp_positive"), [(1.0, 1.0, 0.0), (0.5, -0.5, 0.3)]
)
def test_matches_released_code(ratio_type, normalize, neg_weight, clamp_negative, clamp_positive):
    lp, old, correct, rate, mask = _batch(seed=normalize + 3 * (ratio_type == "token"), spread=0.3)
    if ratio_type == "sequence":  # keep Σ_t Δ_t moderate so both clamp branches occur
        lp = old + (lp - old) / 4
    a = lp.clone().requires_grad_(True)
    b = lp.clone().requires_grad_(True)
    loss, metrics = nft_loss(
        a,
        old,
        correct,
        rate,
        mask,
        neg_weight=neg_weight,
        ratio_type=ratio_type,
        clamp_negative=clamp_negative,
        clamp_positive=clamp_positive,
        prompt_weighting=WEIGHTING[normalize],
    )
    ref = _code_reference(
        b,
        old,
        correct,
        rate,
        mask,
        neg_weight=neg_weight,
        ratio_type=ratio_type,
        clamp_negative=clamp_negative,
        clamp_positive=clamp_positive,
        normalize=normalize,
    )
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.grad * mask, b.grad * mask, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(metrics["pos_loss"] + metrics["neg_loss"], loss.detach())


@pytest.mark.parametrize("clamp_negative", [1.0, 0.5])
def test_token_gradient_hand_derived(clamp_negative):
    """dℓ/dlog π_t: positive −ω R/max(R, ε⁺); negative ω w⁻ r R / ((1−r) max(P, ε⁻)); 0 past the log-ratio clamp."""
    lp, old, correct, rate, mask = _batch(seed=11, spread=1.0)
    lp[0, 0] = old[0, 0] + 12.0  # beyond the log-ratio clamp of 10: no gradient
    neg_weight, cp, n = 0.7, 0.4, 1000.0
    x = lp.clone().requires_grad_(True)
    loss, _ = nft_loss(
        x, old, correct, rate, mask, neg_weight=neg_weight, clamp_negative=clamp_negative, clamp_positive=cp
    )
    loss.backward()
    delta = lp - old
    ratio = torch.exp(delta.clamp(max=10.0))
    r = rate.clamp(0.02, 0.98)[:, None]
    w = 1.0 - r
    proxy = (1 - r * ratio) / (1 - r)
    c = correct[:, None]
    grad_pos = -w * ratio / torch.clamp(ratio, min=cp)
    grad_neg = w * neg_weight * r * ratio / ((1 - r) * torch.clamp(proxy, min=clamp_negative))
    expected = (c * grad_pos + (1 - c) * grad_neg) * mask * (delta < 10.0) / n
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-15)
    assert x.grad[0, 0] == 0


def test_sequence_gradient_hand_derived():
    lp, old, correct, rate, mask = _batch(seed=5, spread=0.2)
    x = lp.clone().requires_grad_(True)
    loss, _ = nft_loss(x, old, correct, rate, mask, ratio_type="sequence", prompt_weighting="none")
    loss.backward()
    s = ((lp - old) * mask).sum(1)
    ratio = torch.exp(s.clamp(max=10.0))
    r = rate.clamp(0.02, 0.98)
    proxy = (1 - r * ratio) / (1 - r)
    per_row = torch.where(correct > 0, -torch.ones_like(r), r * ratio / ((1 - r) * proxy.clamp(min=1.0)))
    expected = per_row[:, None] * mask * (s < 10.0)[:, None]
    assert (per_row[correct == 0] > 0).all()
    torch.testing.assert_close(x.grad, expected.to(F64), rtol=1e-12, atol=1e-15)


def test_clamp_st_forward_clipped_gradient_unclipped():
    x = torch.tensor([-2.0, 0.3, 0.5, 3.0], dtype=F64, requires_grad=True)
    y = clamp_st(x, 0.5)
    assert torch.equal(y.detach(), torch.tensor([0.5, 0.5, 0.5, 3.0], dtype=F64))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64))
    assert not torch.equal(torch.clamp(x, min=0.5).detach(), x.detach())  # the input is untouched


def test_negative_clamp_caps_blowup_but_keeps_gradient():
    """A negative token whose ratio grew past 1/r: P ≤ 0, forward −log(ε⁻) finite, gradient r R/((1−r) ε⁻)."""
    r = 0.5
    old = torch.zeros(1, 1, dtype=F64)
    x = torch.full((1, 1), math.log(3.0), dtype=F64, requires_grad=True)  # R = 3 > 1/r → P = −1
    loss, metrics = nft_loss(
        x,
        old,
        torch.zeros(1),
        torch.tensor([r], dtype=F64),
        torch.ones(1, 1),
        prompt_weighting="none",
        clamp_negative=0.5,
        normalizer=1.0,
    )
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(0.5))
    assert x.grad.item() == pytest.approx(r * 3.0 / ((1 - r) * 0.5))
    assert metrics["neg_clamp_frac"].item() == 1.0


def test_rft_ignores_negatives():
    lp, old, correct, rate, mask = _batch(seed=2)
    x = lp.clone().requires_grad_(True)
    loss, metrics = rft_loss(x, old, correct, rate, mask)
    loss.backward()
    neg_rows = correct == 0
    assert torch.all(x.grad[neg_rows] == 0)
    assert torch.any(x.grad[~neg_rows] != 0)
    assert metrics["neg_loss"].item() == 0.0
    ref, _ = nft_loss(lp, old, correct * 1.0, rate, mask, neg_weight=0.0)
    torch.testing.assert_close(loss.detach(), ref)
    with pytest.raises(TypeError, match="neg_weight"):
        rft_loss(lp, old, correct, rate, mask, neg_weight=1.0)


@pytest.mark.parametrize("reduction", ["sum", "token_mean", "sequence_mean"])
def test_reductions(reduction):
    lp, old, correct, rate, mask = _batch(seed=9)
    per_tok_loss, _ = nft_loss(lp, old, correct, rate, mask, normalizer=1.0)  # Σ ℓ m
    loss, metrics = nft_loss(lp, old, correct, rate, mask, reduction=reduction)
    if reduction == "sum":
        torch.testing.assert_close(loss, per_tok_loss / 1000.0)
    elif reduction == "token_mean":
        torch.testing.assert_close(loss, per_tok_loss / mask.sum())
    else:
        rows = torch.stack(
            [
                nft_loss(
                    lp[i : i + 1],
                    old[i : i + 1],
                    correct[i : i + 1],
                    rate[i : i + 1],
                    mask[i : i + 1],
                    normalizer=1.0,
                )[0]
                for i in range(lp.shape[0])
            ]
        )
        torch.testing.assert_close(loss, (rows / mask.sum(1)).mean())
    assert metrics["num_tokens"].item() == mask.sum().item()


def test_all_correct_and_all_wrong_groups_finite():
    """r̂ = 1 and r̂ = 0 are clipped to 0.98 / 0.02: positives keep weight ω(0.98), negatives ω(0.02)·0.02/0.98."""
    b, t = 4, 3
    old = -torch.ones(b, t, dtype=F64)
    mask = torch.ones(b, t)
    for correct, rate, per_token in [
        (torch.ones(b), torch.ones(b, dtype=F64), -(1 - 0.98)),
        (torch.zeros(b), torch.zeros(b, dtype=F64), (1 - 0.02) * 0.02 / 0.98),
    ]:
        x = old.clone().requires_grad_(True)
        loss, metrics = nft_loss(x, old, correct, rate, mask, normalizer=1.0)
        loss.backward()
        assert loss.item() == 0.0
        torch.testing.assert_close(x.grad, torch.full((b, t), per_token, dtype=F64))
        assert all(torch.isfinite(v).all() for v in metrics.values())


@pytest.mark.parametrize("ratio_type", ["token", "sequence"])
@pytest.mark.parametrize("reduction", ["sum", "token_mean", "sequence_mean"])
def test_empty_and_single_token_answers(ratio_type, reduction):
    old = torch.tensor([[-1.0, 0.0], [-0.5, 0.0]], dtype=F64)
    lp = old.clone()
    lp[0, 0] = -0.7
    lp[:, 1] = float("nan")  # padding garbage must not leak
    mask = torch.tensor([[1, 0], [0, 0]])
    x = lp.clone().requires_grad_(True)
    loss, metrics = nft_loss(
        x,
        old,
        torch.tensor([0.0, 1.0]),
        torch.tensor([0.5, 0.5], dtype=F64),
        mask,
        ratio_type=ratio_type,
        reduction=reduction,
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert x.grad[0, 0] != 0 and torch.all(x.grad[:, 1] == 0) and x.grad[1, 0] == 0
    assert all(torch.isfinite(v).all() for v in metrics.values())
    # all-empty batch: exactly zero, no NaN
    x2 = lp.clone().requires_grad_(True)
    loss2, metrics2 = nft_loss(
        x2,
        old,
        torch.tensor([0.0, 1.0]),
        torch.tensor([0.5, 0.5], dtype=F64),
        torch.zeros(2, 2),
        ratio_type=ratio_type,
        reduction=reduction,
    )
    loss2.backward()
    assert loss2.item() == 0.0 and torch.all(x2.grad == 0)
    assert all(torch.isfinite(v).all() for v in metrics2.values())


def test_tensor_normalizer_gives_a_scalar_loss():
    lp, old, correct, rate, mask = _batch(seed=6)
    loss, _ = nft_loss(lp, old, correct, rate, mask, normalizer=torch.tensor([250.0]))
    assert loss.shape == () and loss.item() == pytest.approx(
        nft_loss(lp, old, correct, rate, mask, normalizer=250.0)[0].item()
    )


def test_zero_size_batch():
    loss, metrics = nft_loss(
        torch.zeros(0, 3),
        torch.zeros(0, 3),
        torch.zeros(0),
        torch.zeros(0),
        torch.zeros(0, 3),
        reduction="sequence_mean",
    )
    assert loss.item() == 0.0 and all(torch.isfinite(v).all() for v in metrics.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_upcast(dtype):
    lp, old, correct, rate, mask = _batch(seed=4)
    ref, _ = nft_loss(lp, old, correct, rate, mask)
    x = lp.to(dtype).requires_grad_(True)
    loss, _ = nft_loss(x, old.to(dtype), correct, rate.float(), mask)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-6}[dtype]
    assert abs(loss.item() - ref.item()) <= tol * max(1.0, abs(ref.item()))


def test_large_negative_log_ratio_positive_loss_finite():
    """Positive token with R = exp(−900) (underflows to 0): −log R = 900, gradient −1 (no inf/NaN)."""
    old = torch.zeros(1, 1, dtype=F64)
    x = torch.full((1, 1), -900.0, dtype=F64, requires_grad=True)
    loss, _ = nft_loss(
        x,
        old,
        torch.ones(1),
        torch.tensor([0.5], dtype=F64),
        torch.ones(1, 1),
        prompt_weighting="none",
        normalizer=1.0,
    )
    loss.backward()
    assert loss.item() == pytest.approx(900.0) and x.grad.item() == pytest.approx(-1.0)


def test_inputs_not_modified_and_old_logprobs_detached():
    lp, old, correct, rate, mask = _batch(seed=1)
    old_req = old.clone().requires_grad_(True)
    copies = [t.clone() for t in (lp, old, correct, rate, mask)]
    x = lp.clone().requires_grad_(True)
    loss, _ = nft_loss(x, old_req, correct, rate, mask)
    loss.backward()
    assert old_req.grad is None
    for a, b in zip((lp, old, correct, rate, mask), copies, strict=True):
        assert torch.equal(a, b)


def test_prompt_weight_values():
    r = torch.tensor([0.02, 0.25, 0.5, 0.98], dtype=F64)
    torch.testing.assert_close(prompt_weight(r, "1-r"), 1 - r)
    torch.testing.assert_close(prompt_weight(r, "sqrt((1-r)/r)"), ((1 - r) / r).sqrt())
    torch.testing.assert_close(prompt_weight(r, "none"), torch.ones_like(r))


def _good():
    return _batch(b=4, t=4, seed=0)


@pytest.mark.parametrize(
    ("mutate", "exc", "match"),
    [
        (lambda a: a.__setitem__(0, a[0].long()), TypeError, "logprobs must have a floating-point"),
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, "logprobs must have 2 dimensions"),
        (lambda a: a.__setitem__(1, a[1][:, :2]), ValueError, "old_logprobs must have the shape"),
        (lambda a: a.__setitem__(2, a[2][:2]), ValueError, r"correct must have shape \(4,\)"),
        (lambda a: a.__setitem__(2, a[2] * 2), ValueError, "correct must be <= 1"),
        (lambda a: a.__setitem__(3, a[3] - 2), ValueError, "correct_rate must be >= 0"),
        (lambda a: a.__setitem__(3, a[3] * float("nan")), ValueError, "correct_rate must be finite"),
        (lambda a: a.__setitem__(4, a[4] * 2), ValueError, "mask must hold only 0 and 1"),
        (lambda a: a.__setitem__(4, a[4][:, :3]), ValueError, "mask must have shape"),
        (lambda a: a.__setitem__(4, a[4].tolist()), TypeError, "mask must be a torch.Tensor"),
    ],
)
def test_bad_tensors(mutate, exc, match):
    args = list(_good())
    mutate(args)
    with pytest.raises(exc, match=match):
        nft_loss(*args)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"neg_weight": -1.0}, ValueError, "neg_weight must be >= 0"),
        ({"neg_weight": float("nan")}, ValueError, "neg_weight must be finite"),
        ({"ratio_type": "seq"}, ValueError, "ratio_type must be one of"),
        ({"log_ratio_clamp": 100.0}, ValueError, "log_ratio_clamp must be <= 80"),
        ({"rate_clip": (0.0, 0.98)}, ValueError, r"rate_clip\[0\] must be > 0"),
        ({"rate_clip": (0.5, 0.4)}, ValueError, "low <= high"),
        ({"rate_clip": 0.5}, TypeError, "rate_clip must be a pair"),
        ({"clamp_negative": 0.0}, ValueError, "clamp_negative must be non-zero"),
        ({"clamp_positive": -0.1}, ValueError, "clamp_positive must be >= 0"),
        ({"prompt_weighting": "sqrt"}, ValueError, "prompt_weighting must be one of"),
        ({"reduction": "mean"}, ValueError, "reduction must be one of"),
        ({"normalizer": 0.0}, ValueError, "normalizer must be > 0"),
        ({"normalizer": torch.tensor([1.0, 2.0])}, ValueError, "normalizer must be a scalar"),
        ({"neg_weigth": 1.0}, TypeError, "unexpected keyword"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nft_loss(*_good(), **kwargs)
