"""Minifloat codecs (include/shared_kernels/minifloat.h via CPU test hooks) and the microscaling
ops quantize_mx / quantize_nvfp4 against their references and torch / torchao."""

import pytest
import torch
from shared_kernels import _lib
from shared_kernels.reference import microscaling as ref
from shared_kernels.testing import assert_bit_exact

FMT_ID = {"e2m1": 0, "e4m3": 1, "e5m2": 2}
TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


# ------------------------------------------------------------------------------ codec hooks
def native_encode(v: torch.Tensor, fmt: str, bits: torch.Tensor | None = None) -> torch.Tensor:
    v = v.to(torch.float32).contiguous()
    out = torch.empty(v.shape, dtype=torch.uint8)
    b = None if bits is None else bits.to(torch.int64).contiguous()
    _lib.native().minifloat_encode_cpu(
        _lib.ptr(v), v.numel(), FMT_ID[fmt], int(b is not None), _lib.ptr(b), _lib.ptr(out)
    )
    return out


def native_decode(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    codes = codes.to(torch.uint8).contiguous()
    out = torch.empty(codes.shape, dtype=torch.float32)
    fid = 3 if fmt == "e8m0" else FMT_ID[fmt]
    _lib.native().minifloat_decode_cpu(_lib.ptr(codes), codes.numel(), fid, _lib.ptr(out))
    return out


def float32_sweep(max_value: float, stride: int) -> torch.Tensor:
    """Every ``stride``-th float32 bit pattern in [0, max] with both signs, plus the grid
    midpoints (ties) of every fp8 binade and their float32 neighbours."""
    top = torch.tensor(max_value, dtype=torch.float32).view(torch.int32).item()
    pos = torch.arange(0, top + 1, stride, dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([pos, -pos])


def ties_and_neighbours(fmt: str) -> torch.Tensor:
    f = ref.FORMATS[fmt]
    table = ref.decode_table(f)[: f.max_code + 1].double()
    mids = ((table[:-1] + table[1:]) / 2).float()
    ib = mids.view(torch.int32)
    near = torch.cat([mids, (ib + 1).view(torch.float32), (ib - 1).view(torch.float32), table.float()])
    return torch.cat([near, -near])


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_rne_equals_torch_cast_dense_sweep(fmt):
    f = ref.FORMATS[fmt]
    x = torch.cat([float32_sweep(f.max_value, 1009), ties_and_neighbours(fmt)])
    expected = x.clamp(-f.max_value, f.max_value).to(TORCH_FP8[fmt]).view(torch.uint8)
    assert_bit_exact(native_encode(x, fmt), expected, f"{fmt} native vs torch cast")
    assert_bit_exact(ref.encode(x, f).to(torch.uint8), expected, f"{fmt} reference vs torch cast")


def test_e2m1_rne_table_and_reference():
    # hand-derived: ties go to the even code (0, 1.0, 2.0, 4.0 have even codes)
    x = torch.tensor([0.0, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 7.0, 1e30, -0.25, -5.5, -0.1])
    want = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, -0.0, -6.0, -0.0])
    got = native_decode(native_encode(x, "e2m1"), "e2m1")
    assert_bit_exact(got, want, "e2m1 RNE")
    sweep = torch.cat([float32_sweep(8.0, 4099), ties_and_neighbours("e2m1")])
    assert_bit_exact(native_encode(sweep, "e2m1"), ref.encode(sweep, ref.E2M1).to(torch.uint8), "e2m1 sweep")


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3", "e5m2"])
def test_special_values(fmt):
    f = ref.FORMATS[fmt]
    x = torch.tensor(
        [float("inf"), -float("inf"), float("nan"), -float("nan"), 1e38, -1e38, -0.0, 1e-40, -1e-45]
    )
    sign = 1 << f.sign_shift
    want = [
        f.max_code,
        sign | f.max_code,
        f.nan_code,
        f.nan_code,
        f.max_code,
        sign | f.max_code,
        sign,
        0,
        sign,
    ]
    assert native_encode(x, fmt).tolist() == want
    assert ref.encode(x, f).tolist() == want


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3", "e5m2", "e8m0"])
def test_decode_all_codes(fmt):
    n = 16 if fmt == "e2m1" else 256
    codes = torch.arange(n, dtype=torch.uint8)
    got = native_decode(codes, fmt)
    if fmt == "e8m0":
        expected = codes.view(torch.float8_e8m0fnu).to(torch.float32)
        ref_vals = ref.decode_e8m0(codes)
        assert torch.isnan(ref_vals[255]) and not torch.isnan(ref_vals[:255]).any()
        assert_bit_exact(ref_vals[:255], expected[:255], "e8m0 reference")
    elif fmt == "e2m1":
        expected = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float32)
        expected = torch.cat([expected, -expected])
    else:
        expected = codes.view(TORCH_FP8[fmt]).to(torch.float32)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan)
    assert_bit_exact(got[~nan], expected[~nan], f"{fmt} decode")
    if fmt != "e8m0":
        ref_vals = ref.decode(codes.to(torch.int64), ref.FORMATS[fmt])
        assert torch.equal(torch.isnan(ref_vals), nan)
        assert_bit_exact(ref_vals[~nan], expected[~nan], f"{fmt} reference decode")


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3", "e5m2"])
def test_sr_native_equals_reference(fmt):
    f = ref.FORMATS[fmt]
    g = torch.Generator().manual_seed(3)
    x = torch.cat(
        [
            torch.randn(20000, generator=g) * f.max_value / 4,
            torch.randn(5000, generator=g) * 2.0 ** (f.emin - 1),  # subnormal range
            ties_and_neighbours(fmt),
            torch.tensor([f.max_value * 2, float("inf"), float("nan"), 0.0, -0.0]),
        ]
    )
    bits = torch.randint(0, 2**32, x.shape, generator=g, dtype=torch.int64)
    bits[:8] = torch.tensor([0, 1, 2**31, 2**32 - 1, 0, 1, 2**31, 2**32 - 1])
    assert_bit_exact(native_encode(x, fmt, bits), ref.encode(x, f, "sr", bits).to(torch.uint8), f"{fmt} SR")


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3", "e5m2"])
def test_sr_is_unbiased(fmt):
    f = ref.FORMATS[fmt]
    g = torch.Generator().manual_seed(11)
    # points inside grid cells, incl. a subnormal cell and the last cell below max
    vals = [0.3 * 2.0 ** (f.emin - f.mbits), 1.37, -2.71, f.max_value * 0.97]
    draws = 20000
    for v in vals:
        x = torch.full((draws,), v, dtype=torch.float32)
        bits = torch.randint(0, 2**32, (draws,), generator=g, dtype=torch.int64)
        deq = native_decode(native_encode(x, fmt, bits), fmt).double()
        lo, hi = deq.min().item(), deq.max().item()
        assert deq.unique().numel() == 2  # only the two neighbouring grid points are drawn
        sigma = (hi - lo) / 2 / draws**0.5  # Bernoulli sd bound: step * 0.5 / sqrt(n)
        assert abs(deq.mean().item() - float(torch.tensor(v, dtype=torch.float32))) <= 5 * sigma + 1e-30
        assert lo <= float(torch.tensor(v)) <= hi
