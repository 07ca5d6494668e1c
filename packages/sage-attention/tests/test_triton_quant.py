"""Triton quantizers (run in the interpreter without a GPU) against the reference, bit for bit."""

import pytest
import torch
from sageattention import reference as ref
from shared_kernels.testing import assert_bit_exact

pytest.importorskip("triton")
from sageattention.triton import quant
from sageattention.triton.emulate import fp8_channel_quant

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _x(shape, dtype, seed=0, bias=1.5, layout="HND"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + bias * torch.randn(shape[-1], generator=g)).to(dtype)
    if layout == "NHD":  # the same values seen through a [B, N, H, D] buffer
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x


def _int8(x, mean, group, mult):
    b, h, n, d = x.shape
    out = torch.empty((b, h, n, d), dtype=torch.int8)
    scale = torch.empty((b, h, -(-n // group)), dtype=torch.float32)
    quant.quant_int8(x, mean, out, scale, group, mult)
    return out, scale


def _mean(x):
    return quant.token_reduce(x, torch.empty(x.shape[0], x.shape[1], x.shape[3]), True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_k_smoothing_and_per_block_int8_bit_exact(dtype, layout):
    x = _x((2, 3, 150, 72), dtype, layout=layout)
    x0 = x.clone()
    r8, rs, rm = ref.quantize_int8_per_block(x, ref.BLKK, smooth=True)
    mean = _mean(x)
    assert_bit_exact(mean, rm[..., 0, :], "mean")
    out, scale = _int8(x, mean, ref.BLKK, 1.0)
    assert_bit_exact(out, r8, "k8")
    assert_bit_exact(scale, rs, "k scale")
    assert torch.equal(x, x0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [128, 32])  # per block, per warp
def test_q_per_block_and_per_warp_with_folded_scale_bit_exact(dtype, group):
    x = _x((1, 2, 200, 64), dtype, seed=1, layout="NHD")
    mult = 0.125 * ref.LOG2E
    r8, rs, _ = ref.quantize_int8_per_block(x, group, multiplier=mult)
    out, scale = _int8(x, None, group, mult)
    assert_bit_exact(out, r8, "q8")
    assert_bit_exact(scale, rs, "q scale")


def test_int8_edge_cases_zero_block_outlier_inf_nan():
    x = _x((1, 4, 130, 40), torch.float32, seed=2)
    x[0, 0, :64] = 0.0  # all-zero block: scale 0, zeros
    x[0, 1, 70, 3] = 1e30  # outlier
    x[0, 2, 5, 5] = float("inf")
    x[0, 3, 100, 0] = float("nan")
    r8, rs, _ = ref.quantize_int8_per_block(x, 64)
    out, scale = _int8(x, None, 64, 1.0)
    assert scale[0, 0, 0] == 0 and (out[0, 0, :64] == 0).all()
    assert torch.isnan(scale[0, 2, 0]) and torch.isnan(scale[0, 3, 1])
    assert (out[0, 2, :64] == 0).all() and (out[0, 3, 64:128] == 0).all()
    assert torch.equal(torch.isnan(scale), torch.isnan(rs))
    ok = ~torch.isnan(rs)
    assert torch.equal(scale[ok], rs[ok])
    ok_rows = ok.repeat_interleave(64, dim=-1)[..., :130]
    assert torch.equal(out[ok_rows], r8[ok_rows])


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_amax_and_fp8_v_bit_exact(dtype):
    x = _x((2, 2, 97, 48), dtype, seed=3, layout="NHD")
    x[0, 1, :, 7] = 0  # zero channel: scale 0, zeros
    if dtype != torch.float16:
        x[1, 0, 11, 2] = 1e4  # large V (bf16/fp32)
    amax = quant.token_reduce(x, torch.empty(2, 2, 48), False)
    assert_bit_exact(amax, x.float().abs().amax(dim=-2), "amax")
    r8, rscale = fp8_channel_quant(x)
    assert_bit_exact(amax / 448.0, rscale, "v scale")
    v8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
    quant.quant_fp8(x, rscale, v8)
    assert_bit_exact(v8.view(torch.uint8), r8.view(torch.uint8), "v8")
    assert (v8[0, 1, :, 7].float() == 0).all()


def test_fp8_rounding_ties_and_binade_carries():
    """Every E4M3 value, the midpoints between neighbours (ties to even) and values just around
    them, incl. round-ups that carry into the exponent (the interpreter's own cast gets those wrong)."""
    grid = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    mid = (grid[:-1] + grid[1:]) / 2
    vals = torch.cat([grid, mid, mid.nextafter(torch.tensor(0.0)), mid.nextafter(torch.tensor(1e9))])
    vals = torch.cat([vals, -vals, torch.tensor([-0.0, 1e-12, -1e-12])])
    x = vals.reshape(1, 1, -1, 1)
    v8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
    quant.quant_fp8(x, torch.ones(1, 1, 1), v8)
    assert_bit_exact(v8.view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8), "e4m3")


def test_mean_nan_and_amax_nan_propagate():
    x = _x((1, 1, 70, 16), torch.float32, seed=4)
    x[0, 0, 33, 5] = float("nan")
    assert torch.isnan(_mean(x)[0, 0, 5]) and torch.isfinite(_mean(x)[0, 0, :5]).all()
    amax = quant.token_reduce(x, torch.empty(1, 1, 16), False)
    assert torch.isnan(amax[0, 0, 5]) and torch.isfinite(amax[0, 0, 6:]).all()


def test_kernel_specs_name_every_kernel_argument():
    """Each TritonKernelSpec types or fixes every argument of its kernel (the AOT report needs it)."""
    from sageattention.kernel_specs import TRITON_KERNELS

    assert len({s.name for s in TRITON_KERNELS}) == len(TRITON_KERNELS)
    for spec in TRITON_KERNELS:
        names = set(spec.fn().arg_names)
        assert names == set(spec.signature) | set(spec.constexprs), spec.name
        assert set(spec.divisible_by_16) <= set(spec.signature), spec.name
        assert not set(spec.signature) & set(spec.constexprs), spec.name
