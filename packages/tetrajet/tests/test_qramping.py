from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tetrajet import TetraJetRecipe, convert_to_tetrajet, sr_state
from tetrajet.oscillation import OscillationTracker
from tetrajet.qramping import QRamping, ramping_periods
from torch import nn


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(40, 32), nn.GELU(), nn.Linear(32, 5))
    return convert_to_tetrajet(m, TetraJetRecipe.tetrajet())


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(16, 40, generator=g), torch.randint(0, 5, (16,), generator=g)


def _backward(model: nn.Module, i: int) -> None:
    x, y = _batch(i)
    F.cross_entropy(model(x), y).backward()


def test_ramping_periods_formula() -> None:
    dw = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0])
    dq = torch.tensor([15.9, 16.0, 33.0, 48.0, 0.0, 64.0, 1000.0])
    k = ramping_periods(dw, dq, k1=16, k2=5, n_max=20)
    # R = [15.9, 16, 33, 48, 0, 32, 1000] -> 5*floor(R/16)+1 = [1, 6, 11, 16, 1, 11, 316 -> 20]
    assert k.tolist() == [1, 6, 11, 16, 1, 11, 20]
    assert k.dtype == torch.int32
    assert ramping_periods(dw, dq, k1=8, k2=3, n_max=100).tolist() == [
        min(3 * math.floor(r / 8) + 1, 100) for r in [15.9, 16, 33, 48, 0, 32, 1000]
    ]
    for kw, match in (({"k1": 0}, "k1"), ({"k2": -1}, "k2"), ({"n_max": 0}, "n_max")):
        with pytest.raises(ValueError, match=match):
            ramping_periods(dw, dq, **kw)


def test_period_one_equals_adamw() -> None:
    a, b = _model(), _model()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.8, 0.95))
    qr = QRamping(torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.8, 0.95)), b)
    for i in range(4):
        opt_a.zero_grad()
        _backward(a, i)
        opt_a.step()
        qr.zero_grad()
        _backward(b, i)
        qr.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def _reference_element(
    w0: float, grads: list[float], k: int, lr: float, b1: float, b2: float, eps: float, wd: float
):
    """AdamW_BS_Ramping for one scalar, written out plainly."""
    w, m, v, t, acc, cnt = w0, 0.0, 0.0, 0, 0.0, 0
    for g in grads:
        w *= 1 - lr * wd
        acc += g
        cnt += 1
        if cnt == k:
            gm = acc / cnt
            m = b1 * m + (1 - b1) * gm
            v = b2 * v + (1 - b2) * gm * gm
            t += 1
            w -= lr * cnt * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
            acc, cnt = 0.0, 0
    return w


def test_per_element_accumulation_matches_reference() -> None:
    model = convert_to_tetrajet(nn.Sequential(nn.Linear(2, 2, bias=False)), TetraJetRecipe.tetrajet())
    p = model[0].weight
    w0 = p.detach().clone()
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.99, 1e-8, 0.01
    qr = QRamping(torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), model)
    periods = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    qr.set_periods({"0": periods})
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(2, 2, generator=g) for _ in range(7)]
    for gr in grads:
        p.grad = gr.clone()
        qr.step()
    for i in range(2):
        for j in range(2):
            want = _reference_element(
                float(w0[i, j]), [float(gr[i, j]) for gr in grads], int(periods[i, j]), lr, b1, b2, eps, wd
            )
            assert float(p.detach()[i, j]) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_calibrate_restores_state_and_sets_periods() -> None:
    model = _model()
    qr = QRamping(torch.optim.AdamW(model.parameters(), lr=5e-2), model, t0=6, k1=0.5, k2=2, n_max=9)
    for i in range(2):
        qr.zero_grad()
        _backward(model, i)
        qr.step()
    before = copy.deepcopy(model.state_dict())
    opt_before = copy.deepcopy(qr.optimizer.state_dict())
    sr_before = sr_state(model)
    # expected periods: the same 6 plain-AdamW steps on a copy, tracked
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=5e-2)
    twin_opt.load_state_dict(copy.deepcopy(opt_before))
    twin_qr = QRamping(twin_opt, twin)
    twin_qr.load_state_dict(copy.deepcopy(qr.state_dict()))
    tracker = OscillationTracker(twin, follow_reference=False)
    for i in range(6):
        twin_qr.zero_grad()
        _backward(twin, 10 + i)
        twin_qr.step()
        tracker.update()
    counter = iter(range(10, 16))
    info = qr.calibrate(lambda: _backward(model, next(counter)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert sr_state(model) == sr_before
    st = qr.optimizer.state_dict()["state"]
    for idx, s in opt_before["state"].items():
        assert torch.equal(st[idx]["exp_avg"], s["exp_avg"])
    want = {
        n: ramping_periods(tracker.dist_w()[n], tracker.dist_q()[n], k1=0.5, k2=2, n_max=9)
        for n in qr.layer_names
    }
    got = qr.periods()
    for n in qr.layer_names:
        assert torch.equal(got[n], want[n]), n
    assert info["max_k"] > 1 and 0 < info["ramped_fraction"] <= 1
    qr.zero_grad()
    _backward(model, 20)
    qr.step()  # ramped step runs and stays finite
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_state_dict_round_trip() -> None:
    model = _model()
    qr = QRamping(torch.optim.AdamW(model.parameters(), lr=1e-2), model)
    qr.set_periods({n: torch.full_like(k, 2) for n, k in qr.periods().items()})
    for i in range(3):
        qr.zero_grad()
        _backward(model, i)
        qr.step()
    ck = copy.deepcopy({"m": model.state_dict(), "q": qr.state_dict(), "sr": sr_state(model)})
    qr.zero_grad()
    _backward(model, 3)
    qr.step()
    ref = [p.detach().clone() for p in model.parameters()]
    m2 = _model(seed=9)
    qr2 = QRamping(torch.optim.AdamW(m2.parameters(), lr=1e-2), m2)
    m2.load_state_dict(ck["m"])
    qr2.load_state_dict(ck["q"])
    for layer, c in zip([m2[0], m2[2]], ck["sr"].values(), strict=True):
        layer.sr_calls = c
    qr2.zero_grad()
    _backward(m2, 3)
    qr2.step()
    for a, b in zip(ref, m2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_inputs() -> None:
    model = _model()
    with pytest.raises(TypeError, match="AdamW"):
        QRamping(torch.optim.Adam(model.parameters()), model)
    with pytest.raises(ValueError, match="amsgrad"):
        QRamping(torch.optim.AdamW(model.parameters(), amsgrad=True), model)
    with pytest.raises(ValueError, match="TetraJetLinear weight"):
        QRamping(torch.optim.AdamW([model[0].bias]), model)
    with pytest.raises(ValueError, match="t0"):
        QRamping(torch.optim.AdamW(model.parameters()), model, t0=0)
    qr = QRamping(torch.optim.AdamW(model.parameters()), model)
    with pytest.raises(ValueError, match=">= 1"):
        qr.set_periods({n: torch.zeros_like(k) for n, k in qr.periods().items()})
    with pytest.raises(ValueError, match="integer tensor"):
        qr.set_periods({n: k.float() for n, k in qr.periods().items()})
    with pytest.raises(TypeError, match="callable"):
        qr.calibrate(3)
