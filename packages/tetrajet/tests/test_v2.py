from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from shared_kernels import random_hadamard_signs
from shared_kernels.reference.hadamard import hadamard_matrix
from tetrajet import QuantizerSpec, TetraJetLinear, TetraJetRecipe, convert_to_tetrajet, fake_quantize
from tetrajet.backends import available_grad_transforms
from tetrajet.v2 import (
    OsciReset,
    OutControlLinear,
    enable_outcontrol,
    nvfp4_v2_recipe,
    outcontrol_recipe,
    random_hadamard,
)
from torch import nn


# ------------------------------------------------------------------ random Hadamard transform
@pytest.mark.parametrize("size", [16, 32])
def test_rht_matches_explicit_matrix_and_cancels(size: int) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3 * size, generator=g)  # reduction along dim 1
    b = torch.randn(3 * size, 7, generator=g)  # reduction along dim 0
    seed = 2**63 + 12345  # 64-bit keys from derive_seed are accepted
    ta = random_hadamard(a, dim=1, seed=seed, size=size, side="left")
    tb = random_hadamard(b, dim=0, seed=seed, size=size, side="right")
    h = hadamard_matrix(size) / math.sqrt(size)
    s = random_hadamard_signs(size, seed % (1 << 63))
    m = h @ torch.diag(s)  # group g -> H D g
    want_a = (a.reshape(5, 3, size) @ m.T).reshape(5, -1)
    torch.testing.assert_close(ta, want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ta @ tb, a @ b, rtol=1e-4, atol=1e-4)
    other = random_hadamard(a, dim=1, seed=seed + 1, size=size)
    assert not torch.allclose(other, ta)
    assert torch.equal(
        a, torch.randn(5, 3 * size, generator=torch.Generator().manual_seed(0))
    )  # input untouched


def test_rht_registered_and_recipe() -> None:
    assert "rht" in available_grad_transforms()
    r = nvfp4_v2_recipe()
    assert r.grad_transform == "rht" and r.grad_transform_size == 16
    assert r.x_fwd == QuantizerSpec("nvfp4", "rne", nvfp4_outer="block128")
    assert r.dy_for_dw.rounding == "stochastic" and r.double_quantization


def test_rht_cancels_inside_linear_without_quantizers() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    ref = copy.deepcopy(lin)
    tj = TetraJetLinear.from_linear(lin, TetraJetRecipe.none(grad_transform="rht", grad_transform_size=16))
    x = torch.randn(3, 7, 40, requires_grad=True)  # M = 21, K = 40: both padded to 32/48
    x2 = x.detach().clone().requires_grad_(True)
    gy = torch.randn(3, 7, 24)
    tj(x).backward(gy)
    ref(x2).backward(gy)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tj.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)


def test_rht_changes_quantized_gradients() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(128, 128)
    x = torch.randn(128, 128)
    x[:, 3] *= 50  # an outlier channel
    grads = {}
    for t in ("none", "rht"):
        layer = TetraJetLinear.from_linear(copy.deepcopy(lin), nvfp4_v2_recipe(grad_transform=t))
        layer(x).pow(2).sum().backward()
        grads[t] = layer.weight.grad
    exact = copy.deepcopy(lin)
    exact(x).pow(2).sum().backward()
    assert not torch.equal(grads["none"], grads["rht"])
    for g in grads.values():  # both are estimates of the same gradient
        assert float((g - exact.weight.grad).norm() / exact.weight.grad.norm()) < 0.5


def test_rht_bad_inputs() -> None:
    t = torch.randn(4, 32)
    with pytest.raises(ValueError, match="size"):
        random_hadamard(t, dim=1, seed=0, size=8)
    with pytest.raises(ValueError, match="divisible"):
        random_hadamard(torch.randn(4, 24), dim=1, seed=0)
    with pytest.raises(ValueError, match="dim"):
        random_hadamard(t, dim=2, seed=0)
    with pytest.raises(ValueError, match="side"):
        random_hadamard(t, dim=1, seed=0, side="up")
    with pytest.raises(ValueError, match="seed"):
        random_hadamard(t, dim=1, seed=-1)
    with pytest.raises(TypeError, match="dtype"):
        random_hadamard(t.double(), dim=1, seed=0)


# ------------------------------------------------------------------ OsciReset
def _osc_model() -> nn.Module:
    m = nn.Sequential(nn.Linear(32, 4, bias=False))
    convert_to_tetrajet(m, TetraJetRecipe.tetrajet())
    with torch.no_grad():
        m[0].weight.zero_()
        m[0].weight[:, 0] = 4.0  # truncation-free scale 1 for every row block
    return m


def test_osci_reset_resets_only_oscillating_weights_on_schedule() -> None:
    m = _osc_model()
    w = m[0].weight
    osr = OsciReset(m, start=2, stop=9, period=4, window=2, threshold=8.0)
    opened = []
    for s in range(1, 12):
        with torch.no_grad():
            w[0, 1] = 1.26 if s % 2 else 1.24  # oscillates across the 1.0/1.5 threshold
            w[1, 1] += 0.05  # drifts
        before = w.detach().clone()
        frac = osr.step()
        if osr.tracker is not None and osr.tracker.steps == 0:
            opened.append(s)
        if frac is not None:
            assert s in (4, 8)  # windows opened at 2 and 6 close 2 steps later
            q = fake_quantize(before, QuantizerSpec("mxfp4", "rne", "truncation_free"), -1)
            assert float(w.detach()[0, 1]) == float(q[0, 1]) in (1.0, 1.5)  # reset to the bin centre
            diff = (w.detach() != before).nonzero().tolist()
            assert diff in ([[0, 1]], [])  # nothing else touched
            assert frac == pytest.approx(1 / w.numel())
    assert opened == [2, 6]  # 10 >= stop: no window
    assert [s for s, _ in osr.history] == [4, 8]


def test_osci_reset_state_dict_round_trip() -> None:
    m = _osc_model()
    osr = OsciReset(m, start=1, stop=50, period=5, window=3)
    for _ in range(2):
        osr.step()
    sd = osr.state_dict()
    osr2 = OsciReset(m, start=1, stop=50, period=5, window=3)
    osr2.load_state_dict(sd)
    assert osr2.num_steps == 2 and osr2.tracker is not None and osr2.tracker.steps == osr.tracker.steps


def test_osci_reset_bad_inputs() -> None:
    m = _osc_model()
    with pytest.raises(ValueError, match="stop"):
        OsciReset(m, start=5, stop=5)
    with pytest.raises(ValueError, match="window"):
        OsciReset(m, start=0, stop=9, period=2, window=3)
    with pytest.raises(ValueError, match="threshold"):
        OsciReset(m, start=0, stop=9, threshold=0)
    with pytest.raises(ValueError, match="no TetraJetLinear"):
        OsciReset(nn.Linear(3, 3), start=0, stop=9)


# ------------------------------------------------------------------ OutControl
def _oc_model(recipe: TetraJetRecipe) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 48))
    return convert_to_tetrajet(m, recipe)


def _oc_input(seed: int) -> torch.Tensor:
    x = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(seed))
    x[..., 5] *= 30
    x[..., 40] *= 20
    return x


def test_outcontrol_picks_top_channels_and_splits_exactly() -> None:
    recipe = TetraJetRecipe.none()
    m = _oc_model(recipe)
    plain = copy.deepcopy(m)
    params = [id(p) for p in m.parameters()]
    enable_outcontrol(m, ratio=0.03, record_start=1, record_steps=2)  # ceil(0.03*64) = 2 channels
    layer = m[0]
    assert isinstance(layer, OutControlLinear)
    assert [id(p) for p in m.parameters()] == params  # same Parameter objects: optimizers stay valid
    for s in range(3):
        y = layer(_oc_input(s))
        torch.testing.assert_close(y, plain[0](_oc_input(s)))  # same maths before the choice
    assert layer.channels_chosen
    assert layer.outlier_idx.tolist() == [5, 40]
    x = _oc_input(7).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = layer(x), plain[0](x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)  # split along K is exact without quantizers
    y.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, plain[0].weight.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # eval forwards do not record
        layer.eval()
        layer(_oc_input(1))
    assert int(layer.record_calls) == 3


def test_outcontrol_routes_outliers_through_mxfp8() -> None:
    m = _oc_model(TetraJetRecipe.mxfp4_baseline())
    enable_outcontrol(m, ratio=0.03, record_start=0, record_steps=1)
    layer = m[0]
    layer(_oc_input(0))
    assert layer.outlier_recipe.x_fwd.fmt == "mxfp8_e4m3"
    assert layer.outlier_recipe.outlier_channel_ratio == 0.0
    x = _oc_input(3)
    ref = x @ layer.weight.detach().T + layer.bias.detach()
    err_oc = float((layer(x) - ref).norm())
    base = TetraJetLinear.from_linear(nn.Linear(64, 48), TetraJetRecipe.mxfp4_baseline())
    base.weight, base.bias = layer.weight, layer.bias
    err_fp4 = float((base(x) - ref).norm())
    assert err_oc < err_fp4  # outlier channels in MXFP8 -> smaller error
    sd = m.state_dict()
    assert torch.equal(sd["0.outlier_idx"], layer.outlier_idx)
    m2 = enable_outcontrol(_oc_model(TetraJetRecipe.mxfp4_baseline()), ratio=0.03)
    m2.load_state_dict(sd)
    assert m2[0].channels_chosen and torch.equal(m2[0](x), layer(x))


def test_outcontrol_with_v2_recipe_trains() -> None:
    torch.manual_seed(0)
    m = convert_to_tetrajet(
        nn.Sequential(nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 8)), nvfp4_v2_recipe()
    )
    enable_outcontrol(m, ratio=0.1, record_start=0, record_steps=1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, y = torch.randn(32, 256), torch.randint(0, 8, (32,))
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses) and m[0].channels_chosen
    assert m[0].outlier_idx.numel() == math.ceil(0.1 * 256)


def test_outcontrol_bad_inputs() -> None:
    m = _oc_model(TetraJetRecipe.none())
    for ratio in (0.0, 1.0, -0.1, True):
        with pytest.raises(ValueError, match="ratio"):
            enable_outcontrol(copy.deepcopy(m), ratio=ratio)
    with pytest.raises(ValueError, match="record_steps"):
        enable_outcontrol(copy.deepcopy(m), record_steps=0)
    with pytest.raises(ValueError, match="no TetraJetLinear"):
        enable_outcontrol(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(TypeError, match="TetraJetRecipe"):
        outcontrol_recipe("nvfp4")
    enable_outcontrol(m, ratio=0.1)
    m[0].outlier_idx.fill_(0)
    with pytest.raises(ValueError, match="in_features"):
        m[0](torch.randn(3, 63))
