"""TetraJetLinear against hand-built references on awkward shapes.

The references call shared-kernels' quantizers directly (not tetrajet.fake_quant), pad the block
axis with zeros by hand, and spell out TetraJet's formulas:
  Y = Q1(X) Q2(W)ᵀ + b,  ∇X = Q3(∇Y) Q4(Ŵ),  ∇W = Q5(∇Yᵀ) Q6(X̂)  (Ŵ, X̂ double-quantized or not).
"""

import pytest
import torch
import torch.nn.functional as F
from shared_kernels import dequantize_mx, dequantize_nvfp4, quantize_mx, quantize_nvfp4
from tetrajet import (
    QuantizerSpec,
    TetraJetLinear,
    TetraJetRecipe,
    derive_seed,
    load_sr_state,
    quantize_operand,
    quantize_toward,
    register_gemm_backend,
    register_grad_transform,
    sr_state,
    tetrajet_linear,
)


# ----------------------------------------------------------------------------- hand references
def _q(t: torch.Tensor, spec: QuantizerSpec, axis: int, seed: int = 0) -> torch.Tensor:
    """Dequantized spec(t) with blocks along ``axis`` of the 2-D ``t``, zero padding by hand."""
    t = t.float()
    if not spec.enabled:
        return t
    n = t.shape[axis]
    pad = (-n) % spec.block_size
    tp = F.pad(t, (0, pad) if axis == -1 else (0, 0, 0, pad)).contiguous()
    if spec.fmt == "nvfp4":
        q = quantize_nvfp4(
            tp,
            axis=axis,
            outer=spec.effective_nvfp4_outer,
            rounding=spec.rounding,
            seed=seed,
            backend="torch",
        )
        d = dequantize_nvfp4(q)
    else:
        q = quantize_mx(
            tp,
            spec.fmt,
            axis=axis,
            scale_rule=spec.effective_scale_rule,
            rounding=spec.rounding,
            seed=seed,
            backend="torch",
        )
        d = dequantize_mx(q)
    return d[: t.shape[0], : t.shape[1]]


def _ax(spec: QuantizerSpec, reduction_axis: int) -> int:
    """Block axis of a 2-D operand: its reduction axis, or the other one for the ablation."""
    return reduction_axis if spec.blocks == "reduction" else -3 - reduction_axis


def _reference(x, w, b, dy, r: TetraJetRecipe, layer_id=0, call=0):
    k, n = x.shape[-1], w.shape[0]
    x2, dy2 = x.reshape(-1, k), dy.reshape(-1, n)
    qx, qw = _q(x2, r.x_fwd, _ax(r.x_fwd, -1)), _q(w, r.w_fwd, _ax(r.w_fwd, -1))
    y = qx @ qw.t() + (0 if b is None else b.float())

    def s(name):
        return derive_seed(r.seed, layer_id, name, call)

    w_src = qw if r.double_quantization else w
    x_src = qx if r.double_quantization else x2
    dx = _q(dy2, r.dy_for_dx, _ax(r.dy_for_dx, -1), s("dy_for_dx"))
    dx = dx @ _q(w_src, r.w_for_dx, _ax(r.w_for_dx, -2), s("w_for_dx"))
    dw = _q(dy2, r.dy_for_dw, _ax(r.dy_for_dw, -2), s("dy_for_dw")).t()
    dw = dw @ _q(x_src, r.x_for_dw, _ax(r.x_for_dw, -2), s("x_for_dw"))
    return y.reshape(*x.shape[:-1], n), dx.reshape(x.shape), dw, dy2.float().sum(0)


def _run(layer: TetraJetLinear, x: torch.Tensor, dy: torch.Tensor):
    x = x.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(dy)
    return y, x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad


def _layer(k, n, recipe, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return TetraJetLinear(k, n, bias=bias, dtype=dtype, recipe=recipe)


RECIPES = {
    "baseline": TetraJetRecipe.mxfp4_baseline(),
    "tetrajet": TetraJetRecipe.tetrajet(seed=11),
    "nvfp4": TetraJetRecipe.tetrajet(
        x_fwd=QuantizerSpec("nvfp4"),
        w_fwd=QuantizerSpec("nvfp4", nvfp4_outer="none"),
        dy_for_dx=QuantizerSpec("nvfp4", "stochastic", nvfp4_outer="block128"),
        x_for_dw=QuantizerSpec("mxfp8_e4m3", "stochastic", "truncation_free"),
    ),
    "mixed": TetraJetRecipe(
        x_fwd=QuantizerSpec("mxfp8_e5m2"),
        w_fwd=QuantizerSpec("mxfp4", scale_rule="truncation_free"),
        dy_for_dw=QuantizerSpec("mxfp4", "stochastic"),
        double_quantization=True,
    ),
    "non_reduction_ablation": TetraJetRecipe.tetrajet(
        x_fwd=QuantizerSpec("mxfp4", scale_rule="truncation_free", blocks="non_reduction"),
        w_for_dx=QuantizerSpec("nvfp4", "stochastic", blocks="non_reduction"),
        dy_for_dw=QuantizerSpec("mxfp4", "stochastic", blocks="non_reduction"),
    ),
}


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize(("lead", "k", "n"), [((3, 5), 50, 37), ((40,), 64, 33)])
def test_forward_and_backward_match_hand_reference(name, lead, k, n):
    r = RECIPES[name]
    layer = _layer(k, n, r, seed=len(lead) + k)
    x = torch.randn(*lead, k) * 3
    dy = torch.randn(*lead, n)
    y, dx, dw, db = _run(layer, x, dy)
    ry, rdx, rdw, rdb = _reference(x, layer.weight.detach(), layer.bias.detach(), dy, r)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, rdx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, rdw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db, rdb, rtol=1e-5, atol=1e-5)
    assert layer.sr_calls == 1


def test_double_quantization_differs_from_high_precision_backward():
    """The reference with double_quantization=False must not match a DQ layer (the test can fail)."""
    r = TetraJetRecipe.tetrajet(seed=5)
    layer = _layer(64, 32, r)
    x, dy = torch.randn(32, 64), torch.randn(32, 32)
    _, dx, dw, _ = _run(layer, x, dy)
    _, rdx, rdw, _ = _reference(
        x, layer.weight.detach(), layer.bias.detach(), dy, r.replace(double_quantization=False)
    )
    assert not torch.allclose(dx, rdx, atol=1e-4) and not torch.allclose(dw, rdw, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_quantizers_off_equals_nn_linear(dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(45, 19, dtype=dtype)
    tl = TetraJetLinear(45, 19, dtype=dtype, recipe=TetraJetRecipe.none())
    tl.load_state_dict(lin.state_dict())
    x = torch.randn(2, 7, 45, dtype=dtype)
    dy = torch.randn(2, 7, 19, dtype=dtype)
    outs = []
    for m in (lin, tl):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(dy)
        outs.append((y, xi.grad, m.weight.grad, m.bias.grad))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 2e-2}
    for a, b in zip(outs[0], outs[1], strict=True):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(b, a, **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_quantized_matches_reference_up_to_output_rounding(dtype):
    layer = _layer(40, 24, TetraJetRecipe.tetrajet(), dtype=dtype)
    x = torch.randn(3, 40, dtype=dtype)
    dy = torch.randn(3, 24, dtype=dtype)
    got = _run(layer, x, dy)
    assert all(t.dtype == dtype and torch.isfinite(t).all() for t in got)
    ref = _reference(x, layer.weight.detach(), layer.bias.detach(), dy, layer.recipe)
    for g, r in zip(got, ref, strict=True):  # float32 results rounded once to the half dtype
        torch.testing.assert_close(g, r.to(dtype), rtol=0, atol=0)


def test_autocast_bf16():
    """Inside torch.autocast Y has the autocast dtype (like nn.Linear), the maths stays the float32
    quantized maths (no bf16 matmul of dequantized values), gradients keep the fp32 dtypes."""
    layer = _layer(40, 24, TetraJetRecipe.nvfp4_v2(grad_transform="none"))
    x, dy = torch.randn(5, 40), torch.randn(5, 24)
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xr)
        h = layer(torch.randn(5, 40, dtype=torch.bfloat16))  # mixed dtypes allowed under autocast
    y.backward(dy.bfloat16())
    assert y.dtype == h.dtype == torch.bfloat16
    assert xr.grad.dtype == layer.weight.grad.dtype == torch.float32
    ref = _reference(x, layer.weight.detach(), layer.bias.detach(), dy.bfloat16().float(), layer.recipe)
    torch.testing.assert_close(y, ref[0].to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(xr.grad, ref[1], rtol=1e-5, atol=1e-5)


def test_double_backward_is_refused():
    layer = _layer(32, 8, TetraJetRecipe.tetrajet())
    x = torch.randn(4, 32, requires_grad=True)
    (g,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|twice"):
        g.sum().backward()


def test_no_bias_1d_input_and_inputs_not_mutated():
    layer = _layer(33, 8, TetraJetRecipe.tetrajet(), bias=False)
    x = torch.randn(33)
    x0, w0 = x.clone(), layer.weight.detach().clone()
    y, dx, dw, db = _run(layer, x, torch.randn(8))
    assert y.shape == (8,) and dx.shape == (33,) and dw.shape == (8, 33) and db is None
    assert torch.equal(x, x0) and torch.equal(layer.weight.detach(), w0)


def test_frozen_weight_and_input_without_grad():
    layer = _layer(32, 16, TetraJetRecipe.tetrajet())
    layer.weight.requires_grad_(False)
    x = torch.randn(4, 32, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None and layer.bias.grad is not None
    layer.weight.requires_grad_(True)
    x2 = torch.randn(4, 32)
    layer(x2).sum().backward()
    assert layer.weight.grad is not None


def test_empty_batch():
    layer = _layer(32, 16, TetraJetRecipe.tetrajet())
    x = torch.randn(0, 32, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (0, 16) and x.grad.shape == (0, 32)
    assert torch.equal(layer.weight.grad, torch.zeros(16, 32))


def test_stochastic_rounding_is_unbiased():
    """E[∇X] over SR draws equals the STE gradient of the quantized forward, ∇Y·dequant(Q2(W)),
    and E[∇W] equals ∇Yᵀ·dequant(Q1(X)). Tolerance: 6 standard errors of the sample mean
    (truncation-free scales: no clipping, so SR is exactly unbiased)."""
    r = TetraJetRecipe.tetrajet(seed=1)
    layer = _layer(32, 32, r, bias=False)
    torch.manual_seed(1)
    x, dy = torch.randn(32, 32), torch.randn(32, 32)
    draws_dx, draws_dw = [], []
    for _ in range(100):
        _, dx, dw, _ = _run(layer, x, dy)
        draws_dx.append(dx)
        draws_dw.append(dw)
    qx = _q(x, r.x_fwd, -1)
    qw = _q(layer.weight.detach(), r.w_fwd, -1)
    for draws, exact in ((draws_dx, dy @ qw), (draws_dw, dy.t() @ qx)):
        d = torch.stack(draws)
        se = d.std(0) / d.shape[0] ** 0.5
        assert se.min() > 0  # the draws really differ
        err = (d.mean(0) - exact).abs()
        assert (err <= 6 * se + 1e-6).all(), (err / se).max()
        single = (d[0] - exact).abs().mean()
        assert err.mean() < single / 5  # averaging converges: noise, not bias


def test_round_to_nearest_backward_is_biased_control():
    """Control for the unbiasedness test (it has power): with Q4 = RNE of the high-precision W
    (no double quantization) E[∇X] = ∇Y·Q4(W) ≠ ∇Y·Q2(W), and the same 6-sigma statistic rejects."""
    r = TetraJetRecipe.mxfp4_baseline(dy_for_dx=QuantizerSpec("mxfp4", "stochastic"))
    layer = _layer(32, 32, r, bias=False)
    torch.manual_seed(1)
    x, dy = torch.randn(32, 32), torch.randn(32, 32)
    d = torch.stack([_run(layer, x, dy)[1] for _ in range(50)])
    qw = _q(layer.weight.detach(), r.w_fwd, -1)
    exact = dy @ qw
    se = d.std(0) / d.shape[0] ** 0.5
    assert ((d.mean(0) - exact).abs() > 6 * se + 1e-6).any()


def test_reproducible_and_resumable_sr():
    r = TetraJetRecipe.tetrajet(seed=9)
    a, b = _layer(48, 20, r), _layer(48, 20, r)
    x, dy = torch.randn(6, 48), torch.randn(6, 20)
    first = [_run(a, x, dy)[2] for _ in range(2)]
    assert not torch.equal(first[0], first[1])  # counter advances: fresh draws
    assert sr_state(torch.nn.Sequential(a)) == {"0": 2}
    load_sr_state(torch.nn.Sequential(b), {"0": 1})
    torch.testing.assert_close(_run(b, x, dy)[2], first[1], rtol=0, atol=0)
    c = _layer(48, 20, r.replace(seed=10))
    assert not torch.equal(_run(c, x, dy)[2], first[0])
    # eval / no_grad forwards do not consume draws
    b.eval()
    b(x)
    b.train()
    with torch.no_grad():
        b(x)
    assert b.sr_calls == 2


def test_layer_ids_give_independent_streams():
    r = TetraJetRecipe.tetrajet()
    a = _layer(32, 32, r)
    b = TetraJetLinear(32, 32, recipe=r, layer_id=1)
    b.load_state_dict(a.state_dict())
    x, dy = torch.randn(4, 32), torch.randn(4, 32)
    assert not torch.equal(_run(a, x, dy)[2], _run(b, x, dy)[2])


def test_state_dict_keys_and_round_trip():
    lin = torch.nn.Linear(20, 10)
    tl = TetraJetLinear.from_linear(lin, TetraJetRecipe.tetrajet())
    assert tl.weight is lin.weight and tl.bias is lin.bias
    assert list(tl.state_dict()) == list(lin.state_dict()) == ["weight", "bias"]
    fresh = TetraJetLinear(20, 10, recipe=TetraJetRecipe.tetrajet())
    fresh.load_state_dict(tl.state_dict())
    lin2 = torch.nn.Linear(20, 10)
    lin2.load_state_dict(fresh.state_dict())
    assert torch.equal(lin2.weight, lin.weight) and torch.equal(lin2.bias, lin.bias)
    assert "double_quantization=True" in repr(tl)


def test_weight_rounding_reference_hook():
    """Q-EMA hook: of the two grid points bracketing W/S, Q2 takes the one nearer to ref/S."""
    r = TetraJetRecipe.tetrajet()
    layer = _layer(40, 16, r, bias=False)
    w = layer.weight.detach()
    scale_probe = quantize_operand(w, r.w_fwd, -1)
    rne = scale_probe.dequantize()
    up = quantize_toward(w, w + 10.0, r.w_fwd, -1).dequantize()
    down = quantize_toward(w, w - 10.0, r.w_fwd, -1).dequantize()
    assert (up >= w).all() and (down <= w).all()
    assert ((up == rne) | (down == rne)).all()  # RNE picked one of the two bracketing points
    assert (up != down).any()
    # same scales as RNE, so re-quantizing the result with RNE is lossless
    assert torch.equal(quantize_operand(up, r.w_fwd, -1).dequantize(), up)
    x = torch.randn(5, 40)
    layer.set_weight_rounding_reference(w + 10.0)
    torch.testing.assert_close(layer(x), _q(x, r.x_fwd, -1) @ up.t(), rtol=1e-5, atol=1e-5)
    layer.set_weight_rounding_reference(None)
    torch.testing.assert_close(layer(x), _q(x, r.x_fwd, -1) @ rne.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "spec",
    [
        QuantizerSpec("nvfp4", nvfp4_outer="block128"),
        QuantizerSpec("mxfp8_e4m3"),
        QuantizerSpec("mxfp8_e5m2", scale_rule="truncation_free"),
        QuantizerSpec("mxfp4"),
    ],
)
def test_weight_rounding_reference_other_formats(spec):
    w = torch.randn(8, 200)
    rne = quantize_operand(w, spec, -1).dequantize()
    up = quantize_toward(w, w + 5.0, spec, -1).dequantize()
    down = quantize_toward(w, w - 5.0, spec, -1).dequantize()
    # a saturated element (E4M3 block scale rounded down, OCP floor scale) has lo = hi = max: RNE too
    assert ((up >= w) | (up == rne)).all() and ((down <= w) | (down == rne)).all()
    assert (up >= w).float().mean() > 0.95 and (down <= w).float().mean() > 0.95
    assert ((up == rne) | (down == rne)).all()
    assert (up != down).any()


def test_gemm_backend_hook_receives_reduction_blocked_operands():
    calls = []

    def spy(a, b):
        calls.append(
            (tuple(a.shape), a.axis, tuple(a.padded_shape), tuple(b.shape), b.axis, tuple(b.padded_shape))
        )
        return a.dequantize() @ b.dequantize()

    register_gemm_backend("test_spy", spy, replace=True)
    r = TetraJetRecipe.tetrajet(gemm_backend="test_spy", dy_for_dw=QuantizerSpec("nvfp4", "stochastic"))
    layer = _layer(50, 24, r)
    _run(layer, torch.randn(10, 50), torch.randn(10, 24))
    # forward [10,50]x[50,24]; dX [10,24]x[24,50]; dW [24,10]x[10,50]; K padded alike in each pair
    assert calls == [
        ((10, 50), -1, (10, 64), (50, 24), -2, (64, 24)),
        ((10, 24), -1, (10, 32), (24, 50), -2, (32, 50)),
        ((24, 10), -1, (24, 32), (10, 50), -2, (32, 50)),
    ]


def test_grad_transform_hook_cancels():
    """A registered permutation transform (A·P and Pᵀ·B with the same seed) leaves unquantized
    gradients unchanged, and is applied (moves elements across blocks, so the result changes) when
    the gradient quantizers are on."""
    seen = []

    def permute(t, *, dim, seed, size, side):
        g = torch.Generator().manual_seed(seed % (1 << 63))
        perm = torch.randperm(t.shape[dim], generator=g)
        seen.append((dim, side, t.shape[dim] % size))
        return t.index_select(dim, perm)

    register_grad_transform("test_permute", permute, replace=True)
    x, dy = torch.randn(5, 20), torch.randn(5, 12)
    off = _layer(20, 12, TetraJetRecipe.none())
    on = _layer(20, 12, TetraJetRecipe.none(grad_transform="test_permute", grad_transform_size=8))
    for a, b in zip(_run(off, x, dy), _run(on, x, dy), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert seen == [(1, "left", 0), (0, "right", 0), (0, "left", 0), (0, "right", 0)]
    q = TetraJetRecipe.tetrajet()
    plain, permuted = _layer(20, 12, q), _layer(20, 12, q.replace(grad_transform="test_permute"))
    a, b = _run(plain, x, dy * torch.logspace(-3, 3, 12)), _run(permuted, x, dy * torch.logspace(-3, 3, 12))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)  # forward untouched
    assert not torch.equal(a[1], b[1]) and not torch.equal(a[2], b[2])


def test_functional_matches_module():
    r = TetraJetRecipe.tetrajet(seed=2)
    layer = _layer(36, 12, r)
    x = torch.randn(3, 36)
    y = tetrajet_linear(x, layer.weight, layer.bias, r, layer_id=0, call=0)
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["tetrajet", "nvfp4"])
def test_cuda_matches_cpu_bit_for_bit(name):
    """Same Philox bits and codecs on every backend: the CUDA layer equals the CPU layer (the
    float32 GEMMs may differ in summation order, hence the small tolerance)."""
    r = RECIPES[name]
    cpu = _layer(72, 40, r)
    gpu = TetraJetLinear(72, 40, device="cuda", recipe=r)
    gpu.load_state_dict(cpu.state_dict())
    x, dy = torch.randn(3, 9, 72), torch.randn(3, 9, 40)
    for a, b in zip(_run(cpu, x, dy), _run(gpu, x.cuda(), dy.cuda()), strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("x", "exc", "match"),
    [
        (torch.randn(4, 31), ValueError, "in_features=32"),
        (torch.randn(4, 32, dtype=torch.float64), TypeError, "float32, float16 or bfloat16"),
        (torch.randint(0, 3, (4, 32)), TypeError, "float32, float16 or bfloat16"),
        (torch.randn(4, 32, dtype=torch.bfloat16), TypeError, "must equal weight.dtype"),
        (torch.tensor(1.0), ValueError, "in_features"),
        ([1.0] * 32, TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_inputs(x, exc, match):
    layer = _layer(32, 8, TetraJetRecipe.tetrajet())
    with pytest.raises(exc, match=match):
        layer(x)


def test_bad_construction_and_hooks():
    with pytest.raises(TypeError, match="recipe must be a TetraJetRecipe"):
        TetraJetLinear(8, 8, recipe="tetrajet")
    with pytest.raises(ValueError, match="gemm_backend='nope' is not registered"):
        TetraJetLinear(8, 8, recipe=TetraJetRecipe(gemm_backend="nope"))
    with pytest.raises(ValueError, match="grad_transform='nope'"):
        TetraJetLinear(8, 8, recipe=TetraJetRecipe(grad_transform="nope"))
    with pytest.raises(NotImplementedError, match="OutControl"):
        TetraJetLinear(8, 8, recipe=TetraJetRecipe(outlier_channel_ratio=0.1))
    with pytest.raises(ValueError, match="layer_id"):
        TetraJetLinear(8, 8, layer_id=-1)
    with pytest.raises(TypeError, match=r"linear must be an nn\.Linear"):
        TetraJetLinear.from_linear(torch.nn.Conv1d(2, 2, 1), TetraJetRecipe())
    layer = _layer(32, 8, TetraJetRecipe.tetrajet())
    with pytest.raises(ValueError, match="must equal weight shape"):
        layer.set_weight_rounding_reference(torch.randn(8, 31))
    with pytest.raises(ValueError, match="enabled w_fwd"):
        _layer(32, 8, TetraJetRecipe.none()).set_weight_rounding_reference(torch.randn(8, 32))
    with pytest.raises(ValueError, match="already registered"):
        register_gemm_backend("emulated", lambda a, b: a)
    with pytest.raises(ValueError, match="call must be a non-negative int"):
        tetrajet_linear(torch.randn(2, 32), layer.weight, None, layer.recipe, call=-1)
    with pytest.raises(ValueError, match="bias must be a tensor"):
        tetrajet_linear(torch.randn(2, 32), layer.weight, torch.randn(3), layer.recipe)
    with pytest.raises(ValueError, match="quantizer='q7'"):
        derive_seed(0, 0, "q7", 0)
