from __future__ import annotations

import math

import pytest
import torch
from tetrajet import QuantizerSpec, TetraJetRecipe, convert_to_tetrajet, fake_quantize
from tetrajet.oscillation import OscillationCallback, OscillationTracker, oscillation_ratio
from torch import nn

MX = QuantizerSpec("mxfp4", "rne", "truncation_free")


def _model(k: int = 40, n: int = 24) -> nn.Module:
    torch.manual_seed(0)
    return convert_to_tetrajet(nn.Sequential(nn.Linear(k, n)), TetraJetRecipe.tetrajet())


def test_oscillation_ratio_values_and_zero_motion() -> None:
    dw = torch.tensor([0.0, 1.0, 2.0, 0.5])
    dq = torch.tensor([0.0, 16.0, 1.0, 0.0])
    r = oscillation_ratio(dw, dq)
    assert torch.equal(r, torch.tensor([0.0, 16.0, 0.5, 0.0]))
    assert dw.tolist() == [0.0, 1.0, 2.0, 0.5]  # inputs untouched
    with pytest.raises(ValueError, match="shape"):
        oscillation_ratio(dw, dq[:3])
    with pytest.raises(TypeError, match="floating"):
        oscillation_ratio(dw.long(), dq)


def test_tracker_matches_manual_statistics() -> None:
    model = _model(40, 24)  # 40: not a multiple of 32 (padded blocks)
    layer = model[0]
    tr = OscillationTracker(model)
    g = torch.Generator().manual_seed(1)
    ws = [layer.weight.detach().clone()]
    for _ in range(4):
        with torch.no_grad():
            layer.weight.add_(0.05 * torch.randn(layer.weight.shape, generator=g))
        ws.append(layer.weight.detach().clone())
        tr.update()
    qs = [fake_quantize(w, MX, -1) for w in ws]
    dist_w = sum((ws[i + 1] - ws[i]).abs() for i in range(4))
    dist_q = sum((qs[i + 1] - qs[i]).abs() for i in range(4))
    torch.testing.assert_close(tr.dist_w()["0"], dist_w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tr.dist_q()["0"], dist_q, rtol=0, atol=0)
    torch.testing.assert_close(tr.ratios()["0"], oscillation_ratio(dist_w, dist_q), rtol=1e-5, atol=1e-5)
    roc = sum(float((qs[i + 1] - qs[i]).norm() / qs[i].norm()) for i in range(4)) / 4
    assert math.isclose(tr.rate_of_change()["0"], roc, rel_tol=1e-5)
    flipped_last = int((qs[4] != qs[3]).sum()) / qs[4].numel()
    assert math.isclose(tr.flip_fraction(1), flipped_last, rel_tol=1e-9)
    flipped_any = int(torch.stack([qs[i + 1] != qs[i] for i in range(4)]).any(0).sum()) / qs[4].numel()
    assert math.isclose(tr.flip_fraction(4), flipped_any, rel_tol=1e-9)
    assert tr.flip_fraction(4) >= tr.flip_fraction(1) > 0
    edges, counts = tr.histogram()
    assert sum(counts) == int((dist_w > 0).sum())
    assert edges[-1] == math.inf


def test_oscillating_element_is_detected() -> None:
    model = _model(32, 8)
    layer = model[0]
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, 0] = 4.0  # block scale: amax 4 -> truncation-free S = 1
        layer.weight[0, 1] = 1.24  # just below the 1.0 / 1.5 rounding threshold 1.25
    tr = OscillationTracker(model)
    for i in range(8):
        with torch.no_grad():
            layer.weight[0, 1] = 1.26 if i % 2 == 0 else 1.24  # hops across the threshold
            layer.weight[0, 2] += 0.01  # drifts slowly, never crosses a threshold
        tr.update()
    r = tr.ratios()["0"]
    assert r[0, 1] == pytest.approx(0.5 * 8 / (0.02 * 8), rel=1e-3)  # 25 > 16
    assert r[0, 2] == 0.0
    assert tr.oscillating_fraction() == pytest.approx(1 / layer.weight.numel())
    assert tr.flip_fraction(1) == pytest.approx(1 / layer.weight.numel())


def test_tracker_follows_qema_reference() -> None:
    model = _model(32, 8)
    layer = model[0]
    ref = layer.weight.detach() + 0.3
    layer.set_weight_rounding_reference(ref)
    follow = OscillationTracker(model)
    plain = OscillationTracker(model, follow_reference=False)
    assert not torch.equal(follow._stats["0"].prev_q, plain._stats["0"].prev_q)


def test_state_dict_round_trip_and_reset() -> None:
    model = _model()
    tr = OscillationTracker(model)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.mul_(1.1)
        tr.update()
    sd = tr.state_dict()
    other = OscillationTracker(_model())
    other.load_state_dict(sd)
    assert torch.equal(other.dist_q()["0"], tr.dist_q()["0"])
    assert other.flip_fraction(2) == tr.flip_fraction(2)
    assert other.steps == tr.steps == 3
    tr.reset()
    assert tr.steps == 0 and float(tr.dist_w()["0"].sum()) == 0.0
    assert other.steps == 3  # loaded copy is independent
    with pytest.raises(ValueError, match="state"):
        other.load_state_dict({"steps": 1})


def test_callback_logs_every_n_steps() -> None:
    model = _model()
    logged = []
    cb = OscillationCallback(OscillationTracker(model), window=2, log_every=2, log_fn=logged.append)
    outs = []
    for _ in range(4):
        with torch.no_grad():
            model[0].weight.mul_(0.9)
        outs.append(cb())
    assert outs[0] is None and outs[2] is None
    assert len(logged) == 2 == len(cb.history)
    s = logged[-1]
    assert s["step"] == 4 and "flip_fraction_last_2" in s and len(s["ratio_hist_counts"]) == 8


def test_trainer_callback_adapter() -> None:
    pytest.importorskip("transformers")
    from transformers import TrainerCallback

    model = _model()
    cb = OscillationCallback(OscillationTracker(model), log_every=1, log_fn=lambda s: None)
    tc = cb.as_trainer_callback()
    assert isinstance(tc, TrainerCallback)
    tc.on_step_end(None, None, "control")
    assert cb.tracker.total_updates == 1


def test_bad_inputs() -> None:
    model = _model()
    with pytest.raises(ValueError, match="no TetraJetLinear"):
        OscillationTracker(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="rne"):
        OscillationTracker(model, spec=QuantizerSpec("mxfp4", "stochastic"))
    with pytest.raises(TypeError, match="QuantizerSpec"):
        OscillationTracker(model, spec="mxfp4")
    with pytest.raises(ValueError, match="not TetraJetLinear"):
        OscillationTracker(model, layers=["nope"])
    tr = OscillationTracker(model)
    with pytest.raises(ValueError, match="last_n"):
        tr.flip_fraction(0)
    with pytest.raises(ValueError, match="edges"):
        tr.histogram([1.0])
    with pytest.raises(ValueError, match="edges"):
        tr.histogram([2.0, 1.0])
    with pytest.raises(ValueError, match="threshold"):
        tr.oscillating_fraction(-1)
    with pytest.raises(ValueError, match="window"):
        OscillationCallback(tr, window=0)
    with pytest.raises(TypeError, match="tracker"):
        OscillationCallback(model)
