"""fake_quant helpers: zero padding is exact, transposed views dequantize to the transpose, SR keys
are deterministic and distinct, bad input raises."""

import pytest
import torch
from shared_kernels import dequantize_mx, quantize_mx
from tetrajet import QuantizerSpec, derive_seed, fake_quantize, quantize_operand


@pytest.mark.parametrize("axis", [-1, -2])
def test_padding_is_exact(axis):
    """A block-axis length of 45 is padded to 64; the valid part equals quantizing the tensor
    extended with explicit zeros, and the padded part of the payload is zero."""
    spec = QuantizerSpec("mxfp4", scale_rule="truncation_free")
    x = torch.randn(45, 45)
    op = quantize_operand(x, spec, axis)
    assert op.shape == (45, 45) and op.padded_shape == ((45, 64) if axis == -1 else (64, 45))
    xp = torch.zeros(op.padded_shape)
    xp[:45, :45] = x
    full = dequantize_mx(quantize_mx(xp, "mxfp4", axis=axis, scale_rule="truncation_free"))
    assert torch.equal(op.dequantize(), full[:45, :45])
    assert torch.equal(full.abs().sum(), full[:45, :45].abs().sum())
    assert torch.equal(fake_quantize(x, spec, axis), full[:45, :45])


@pytest.mark.parametrize(
    "spec",
    [
        QuantizerSpec("mxfp4"),
        QuantizerSpec("nvfp4", nvfp4_outer="block128"),
        QuantizerSpec("mxfp8_e4m3"),
        QuantizerSpec(),
    ],
)
def test_transpose_view(spec):
    x = torch.randn(40, 256)
    op = quantize_operand(x, spec, -1, pad_multiple=max(spec.block_size, 32) if spec.enabled else None)
    t = op.t()
    assert t.axis == -2 and t.shape == (256, 40)
    assert torch.equal(t.dequantize(), op.dequantize().t())


def test_inputs_not_modified_and_dtype():
    x = torch.randn(8, 40, dtype=torch.bfloat16)
    x0 = x.clone()
    out = fake_quantize(x, QuantizerSpec("mxfp4", "stochastic"), -1, seed=3)
    assert torch.equal(x, x0) and out.dtype == torch.float32 and out.shape == x.shape


def test_derive_seed():
    seeds = {
        derive_seed(s, layer, q, c)
        for s in (0, 1)
        for layer in (0, 1)
        for q in ("dy_for_dx", "x_for_dw")
        for c in (0, 1, 2)
    }
    assert len(seeds) == 24 and all(0 <= s < 1 << 64 for s in seeds)
    assert derive_seed(5, 2, "w_for_dx", 7) == derive_seed(5, 2, "w_for_dx", 7)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: quantize_operand(torch.randn(2, 3, 32), QuantizerSpec("mxfp4")), ValueError, "2-D"),
        (lambda: quantize_operand(torch.randn(2, 32).double(), QuantizerSpec("mxfp4")), TypeError, "dtype"),
        (lambda: quantize_operand(torch.randn(2, 32), "mxfp4"), TypeError, "QuantizerSpec"),
        (lambda: quantize_operand(torch.randn(2, 32), QuantizerSpec("mxfp4"), 2), ValueError, "axis=2"),
        (
            lambda: quantize_operand(torch.randn(2, 32), QuantizerSpec("mxfp4"), pad_multiple=48),
            ValueError,
            "pad_multiple",
        ),
        (lambda: derive_seed(-1, 0, "x_fwd", 0), ValueError, "global_seed"),
        (lambda: derive_seed(0, 0, "x_fwd", True), ValueError, "call"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
