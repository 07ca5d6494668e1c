from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tetrajet import TetraJetRecipe, convert_to_tetrajet, fake_quantize, quantize_toward, tetrajet_linear
from tetrajet.qema import QEMA, QEMAConfig
from torch import nn


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 5))
    return convert_to_tetrajet(m, TetraJetRecipe.tetrajet())


def _step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> None:
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(12, 48, generator=g), torch.randint(0, 5, (12,), generator=g)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def test_ema_recurrence_and_activation() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    q = QEMA(model, beta=0.9, start_step=2)
    q.attach(opt)
    expected = {n: m.weight.detach().clone() for n, m in q.layers.items()}
    for i in range(3):
        _step(model, opt, i)
        for n, m in q.layers.items():
            expected[n] = 0.9 * expected[n] + 0.1 * m.weight.detach()
        assert q.active == (i >= 1)
        for m in q.layers.values():
            assert (m.weight_reference is not None) == q.active
    for n in q.layers:
        torch.testing.assert_close(q.ema[n], expected[n], rtol=1e-6, atol=1e-7)
    assert q.num_updates == 3
    q.detach()
    _step(model, opt, 9)
    assert q.num_updates == 3 and all(m.weight_reference is None for m in q.layers.values())


def test_forward_uses_ema_rounding_direction() -> None:
    model = _model()
    layer = model[0]
    q = QEMA(model, beta=0.5, start_step=0)  # active at once: EMA == W, then pushed away
    with torch.no_grad():
        q.ema["0"].add_(0.05 * torch.sign(torch.randn(q.ema["0"].shape)))
    x = torch.randn(7, 48)
    spec = layer.recipe.w_fwd
    w = layer.weight.detach()
    w_toward = quantize_toward(w, q.ema["0"], spec, -1).dequantize()
    w_rne = fake_quantize(w, spec, -1)
    assert not torch.equal(w_toward, w_rne)
    # where Q-EMA picks the other grid point, W lies between the two (they bracket W) and the
    # pick is the one on the EMA's side
    diff = w_toward != w_rne
    lo = torch.minimum(w_toward, w_rne)[diff]
    hi = torch.maximum(w_toward, w_rne)[diff]
    assert bool(((w[diff] >= lo) & (w[diff] <= hi)).all())
    ema = q.ema["0"][diff]
    assert bool(((w_toward[diff] - w_rne[diff]).sign() == (ema - w[diff]).sign()).all())
    got = layer(x)
    want = tetrajet_linear(x, layer.weight, layer.bias, layer.recipe, layer_id=0, weight_reference=q.ema["0"])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    q.detach()
    plain = tetrajet_linear(x, layer.weight, layer.bias, layer.recipe, layer_id=0)
    torch.testing.assert_close(layer(x), plain, rtol=0, atol=0)
    assert not torch.equal(got, plain)


def test_update_does_not_touch_weights() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    q = QEMA(model)
    q.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_state_dict_resume_gives_same_next_step() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    q = QEMA(model, beta=0.9, start_step=1)
    q.attach(opt)
    for i in range(2):
        _step(model, opt, i)
    ck = copy.deepcopy(
        {
            "m": model.state_dict(),
            "o": opt.state_dict(),
            "q": q.state_dict(),
            "sr": [m.sr_calls for m in q.layers.values()],
        }
    )
    _step(model, opt, 2)
    ref = [p.detach().clone() for p in model.parameters()]

    model2 = _model(seed=5)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    q2 = QEMA(model2, beta=0.5, start_step=7)
    q2.attach(opt2)
    model2.load_state_dict(ck["m"])
    opt2.load_state_dict(ck["o"])
    q2.load_state_dict(ck["q"])
    for m, c in zip(q2.layers.values(), ck["sr"], strict=True):
        m.sr_calls = c
    assert q2.config == QEMAConfig(0.9, 1) and q2.active
    _step(model2, opt2, 2)
    for a, b in zip(ref, model2.parameters(), strict=True):
        assert torch.equal(a, b)
    for n in q.ema:
        assert torch.equal(q.ema[n], q2.ema[n])


def test_bad_inputs() -> None:
    model = _model()
    for beta in (0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="beta"):
            QEMA(model, beta=beta)
    with pytest.raises(ValueError, match="start_step"):
        QEMAConfig(start_step=-1)
    with pytest.raises(ValueError, match="not both"):
        QEMA(model, QEMAConfig(), beta=0.9)
    with pytest.raises(TypeError, match="QEMAConfig"):
        QEMA(model, {"beta": 0.9})
    with pytest.raises(ValueError, match="no TetraJetLinear"):
        QEMA(convert_to_tetrajet(nn.Sequential(nn.Linear(4, 4)), TetraJetRecipe.none()))
    q = QEMA(model)
    with pytest.raises(TypeError, match="Optimizer"):
        q.attach("sgd")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    q.attach(opt)
    with pytest.raises(RuntimeError, match="already attached"):
        q.attach(opt)
    bad = q.state_dict()
    bad["ema"] = {"0": torch.zeros(3)}
    with pytest.raises(ValueError, match="match"):
        q.load_state_dict(bad)
