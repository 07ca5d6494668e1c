"""Minifloat codecs (include/shared_kernels/minifloat.h via CPU test hooks) and the microscaling
ops quantize_mx / quantize_nvfp4 against their references and torch / torchao."""

import pytest
import shared_kernels as sk
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


# --------------------------------------------------------------------------------- quantize_mx
MX_FMTS = ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2"]
MX_SHAPES = [(3, 7, 96), (33, 64), (2, 32, 32), (1, 2, 3, 64)]


def assert_mx_equal(a, b, what=""):
    assert a.fmt == b.fmt and a.axis == b.axis and a.shape == b.shape
    assert_bit_exact(a.scales, b.scales, f"{what} scales")
    assert_bit_exact(a.data, b.data, f"{what} data")


def mx_both(x, backend="cpu", **kw):
    a = sk.quantize_mx(x, backend=backend, **kw)
    b = sk.quantize_mx(x, backend="torch", **kw)
    assert_mx_equal(a, b, str(kw))
    return a


def mx_edge_input(shape=(4, 128)):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g) * 4
    x[0, :32] = 0.0  # all-zero block
    x[0, 40] = 3e4  # one huge outlier
    x[1, :32] = torch.randn(32, generator=g) * 1e-40  # float32 subnormals: scale clamps to 2^-127
    x[1, 32:64] = torch.randn(32, generator=g) * 1e-37  # scale near the bottom of E8M0
    x[2, :32] = 31.0  # OCP overflow case: 31 -> 7.75 clipped to 6 (mxfp4)
    x[2, 32:64] = torch.randn(32, generator=g) * 1e37
    x[3, 5] = float("nan")  # NaN block -> scale 0xFF
    x[3, 40] = float("inf")  # inf block: saturates
    x[3, 70] = -float("inf")
    return x


@pytest.mark.parametrize("shape", MX_SHAPES)
@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("scale_rule", ["floor", "truncation_free"])
def test_mx_rows_cpu_matches_reference(shape, fmt, scale_rule):
    x = torch.randn(shape) * torch.logspace(-2, 2, shape[-1])
    q = mx_both(x, fmt=fmt, scale_rule=scale_rule)
    assert q.scales.shape == (*shape[:-1], shape[-1] // 32) and q.scales.dtype == torch.uint8
    if fmt == "mxfp4":
        assert q.data.dtype == torch.uint8 and q.data.shape == (*shape[:-1], shape[-1] // 2)
    else:
        assert q.data.dtype == TORCH_FP8[fmt[-4:]] and q.data.shape == shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", MX_FMTS)
def test_mx_half_inputs(dtype, fmt):
    x = (torch.randn(5, 96) * 10).to(dtype)
    mx_both(x, fmt=fmt)
    mx_both(x, fmt=fmt, scale_rule="truncation_free")


@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("scale_rule", ["floor", "truncation_free"])
def test_mx_edge_cases(fmt, scale_rule):
    x = mx_edge_input()
    q = mx_both(x, fmt=fmt, scale_rule=scale_rule)
    s = q.scales
    assert s[0, 0] == 0  # all-zero block -> 2^-127
    assert s[1, 0] == 0
    assert s[3, 0] == 255  # NaN
    assert s[3, 1] != 255 and s[3, 2] != 255  # inf is not NaN
    y = sk.dequantize_mx(q)
    elem = ref.MX_ELEMENT[fmt]
    assert (y[0, :32] == 0).all()
    assert torch.isnan(y[3, :32]).all()
    assert y[3, 40] == elem.max_value * 2.0 ** (s[3, 1].item() - 127)
    assert y[3, 70] == -elem.max_value * 2.0 ** (s[3, 2].item() - 127)
    if fmt == "mxfp4":
        if scale_rule == "floor":  # 2^(floor(log2 31) - 2) = 4: 31 / 4 = 7.75 clips to 6
            assert (y[2, :32] == 24.0).all() and s[2, 0] == 127 + 2
        else:
            assert s[2, 0] == 127 + 3 and (y[2, :32] == 32.0).all()  # 31/8 = 3.875 -> RNE 4


def _torchao_to_mx():
    try:
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_mx
    except Exception as exc:  # pragma: no cover - torchao missing
        pytest.skip(f"torchao not importable: {exc!r}")
    return to_mx, ScaleCalculationMode


@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mx_matches_torchao_floor(fmt, dtype):
    """torchao 0.18 to_mx(FLOOR) == ours, scales and data bits. torchao divides by
    max(2^e, 2^-126), so blocks whose scale would be 2^-127 are kept out of the input."""
    to_mx, mode = _torchao_to_mx()
    elem_dtype = {
        "mxfp4": torch.float4_e2m1fn_x2,
        "mxfp8_e4m3": torch.float8_e4m3fn,
        "mxfp8_e5m2": torch.float8_e5m2,
    }
    g = torch.Generator().manual_seed(7)
    x = torch.randn(67, 256, generator=g) * torch.logspace(-6, 6, 256)
    x[:, 3] = 31.0 * torch.sign(x[:, 3])  # overflowing blocks
    x[0, :32] = 0.0
    x = x.to(dtype)
    scale_ao, data_ao = to_mx(x, elem_dtype[fmt], 32, mode.FLOOR)
    ours = sk.quantize_mx(x, fmt)
    mine_ref = sk.quantize_mx(x, fmt, backend="torch")
    assert_mx_equal(ours, mine_ref)
    nonzero = x.float().reshape(67, 8, 32).abs().amax(-1) > 0
    assert_bit_exact(ours.scales[nonzero], scale_ao.view(torch.uint8)[nonzero], "scales vs torchao")
    assert (ours.scales[~nonzero] == 0).all() and (scale_ao.view(torch.uint8)[~nonzero] == 0).all()
    # torchao's fp4 packing: low nibble = even element, like ours
    assert_bit_exact(ours.data.view(torch.uint8), data_ao.view(torch.uint8), "data vs torchao")


def test_mx_caller_unchanged_and_opcheck():
    x = torch.randn(4, 64)
    x0 = x.clone()
    for be in ("cpu", "torch"):
        for fmt in MX_FMTS:
            sk.quantize_mx(x, fmt, backend=be)
            args = (x, fmt, -1, "floor", "rne", 0, 0, be)
            torch.library.opcheck(torch.ops.shared_kernels.quantize_mx, args)
    assert_bit_exact(x, x0, "x")


def test_mx_torch_compile_smoke():
    f = torch.compile(
        lambda t: sk.quantize_mx(t, "mxfp4", backend="cpu").data, fullgraph=True, backend="eager"
    )
    x = torch.randn(8, 64)
    assert_bit_exact(f(x), sk.quantize_mx(x, "mxfp4", backend="torch").data, "compiled")


def test_mx_memory_footprint():
    x = torch.randn(64, 256)
    q4, q8 = sk.quantize_mx(x, "mxfp4"), sk.quantize_mx(x, "mxfp8_e4m3")
    nbytes = x.numel() * 4
    assert q4.data.untyped_storage().nbytes() == nbytes // 8
    assert q8.data.untyped_storage().nbytes() == nbytes // 4
    assert q4.scales.numel() == x.numel() // 32


def test_mx_bad_inputs():
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="divisible by 32"):
        sk.quantize_mx(torch.randn(4, 48))
    with pytest.raises(ValueError, match="divisible by 32"):
        sk.quantize_mx(torch.randn(48, 64), axis=-2)
    with pytest.raises(ValueError, match="x must have at least 2"):
        sk.quantize_mx(torch.randn(64))
    with pytest.raises(TypeError, match="x has dtype"):
        sk.quantize_mx(x.double())
    with pytest.raises(ValueError, match="contiguous"):
        sk.quantize_mx(torch.randn(64, 64).t())
    with pytest.raises(ValueError, match="fmt"):
        sk.quantize_mx(x, "mxfp6")
    with pytest.raises(ValueError, match="axis"):
        sk.quantize_mx(torch.randn(2, 32, 64), axis=0)
    with pytest.raises(ValueError, match="scale_rule"):
        sk.quantize_mx(x, scale_rule="ceil")
    with pytest.raises(ValueError, match="rounding"):
        sk.quantize_mx(x, rounding="sr")
    with pytest.raises(ValueError, match="seed"):
        sk.quantize_mx(x, seed=-3)
    with pytest.raises(TypeError, match="offset"):
        sk.quantize_mx(x, offset=None)
    with pytest.raises(ValueError, match="backend"):
        sk.quantize_mx(x, backend="triton")
    with pytest.raises(TypeError, match="mx"):
        sk.dequantize_mx(x)


def grid_half_step(v: torch.Tensor, elem) -> torch.Tensor:
    """Half the grid step of |v|'s binade in ``elem`` (the subnormal step below the normal range)."""
    binade = torch.floor(torch.log2(v.abs().clamp(min=2.0**elem.emin)))
    return 0.5 * torch.exp2(binade - elem.mbits)


@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("scale_rule", ["floor", "truncation_free"])
@pytest.mark.parametrize("axis", [-1, -2])
def test_mx_round_trip_error_bound(fmt, scale_rule, axis):
    x = torch.randn(64, 96) * torch.logspace(-4, 4, 96)
    q = sk.quantize_mx(x, fmt, axis=axis, scale_rule=scale_rule)
    y = sk.dequantize_mx(q)
    elem = ref.MX_ELEMENT[fmt]
    scale = ref.decode_e8m0(q.scales).repeat_interleave(32, dim=axis)
    v = x / scale
    inside = v.abs() <= elem.max_value  # floor may clip the top of a block (OCP overflow)
    if scale_rule == "truncation_free":
        assert inside.all()
    bound = grid_half_step(v, elem) * scale
    assert ((y - x).abs()[inside] <= bound[inside]).all()
    assert ((y.abs() <= elem.max_value * scale) | ~inside).all()


# ------------------------------------------------------------------------ stochastic rounding
@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 77), (2**64 - 5, 2**40 + 1)])
def test_mx_sr_cpu_matches_reference(fmt, seed, offset):
    x = torch.randn(3, 7, 96) * 5
    mx_both(x, fmt=fmt, rounding="stochastic", seed=seed, offset=offset)
    mx_both(mx_edge_input(), fmt=fmt, rounding="stochastic", seed=seed, offset=offset)


def test_mx_sr_seed_offset_semantics():
    x = torch.randn(8, 128)
    a = sk.quantize_mx(x, rounding="stochastic", seed=3)
    assert_mx_equal(a, sk.quantize_mx(x, rounding="stochastic", seed=3))  # same seed -> same bits
    b = sk.quantize_mx(x, rounding="stochastic", seed=3, offset=x.numel())
    c = sk.quantize_mx(x, rounding="stochastic", seed=4)
    assert (a.data != b.data).float().mean() > 0.2 and (a.data != c.data).float().mean() > 0.2
    assert_bit_exact(a.scales, b.scales, "scales do not depend on the rounding")
    # element i uses the bits of offset + i: quantizing rows 5.. alone with offset 5*128 agrees
    d = sk.quantize_mx(x[5:].contiguous(), rounding="stochastic", seed=3, offset=5 * 128)
    assert_bit_exact(d.data, a.data[5:], "offset addresses the flat element index")


@pytest.mark.parametrize("fmt", MX_FMTS)
def test_mx_sr_unbiased(fmt):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, generator=g) * torch.logspace(-3, 3, 64)
    draws = 4000
    q = sk.quantize_mx(x.repeat(draws, 1), fmt, scale_rule="truncation_free", rounding="stochastic", seed=99)
    y = sk.dequantize_mx(q).double().reshape(draws, 2, 64)
    elem = ref.MX_ELEMENT[fmt]
    scale = ref.decode_e8m0(q.scales[:2]).repeat_interleave(32, dim=-1).double()
    step = 2 * grid_half_step(x / scale.float(), elem).double() * scale  # grid step at x
    # each draw is one of the two grid points around x: sd <= step / 2; 5 sigma on the mean
    err = (y.mean(0) - x.double()).abs()
    assert (err <= 5 * step / 2 / draws**0.5 + 1e-30).all(), err.max()
    assert (y - x.double()).abs().max(0).values.le(step * (1 + 1e-9)).all()
    rne = sk.dequantize_mx(sk.quantize_mx(x, fmt, scale_rule="truncation_free")).double()
    assert ((y.mean(0) - x).abs() <= (rne - x).abs() + 5 * step / 2 / draws**0.5).all()


# ------------------------------------------------------------------------ 32x1 column blocks
@pytest.mark.parametrize("shape", [(3, 64, 7), (64, 33), (2, 3, 32, 96), (32, 1)])
@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("rounding", ["rne", "stochastic"])
def test_mx_columns_cpu_matches_reference(shape, fmt, rounding):
    x = torch.randn(shape) * 3
    q = mx_both(x, fmt=fmt, axis=-2, rounding=rounding, seed=5, offset=11)
    assert q.scales.shape == (*shape[:-2], shape[-2] // 32, shape[-1])
    if fmt == "mxfp4":
        assert q.data.shape == (*shape[:-2], shape[-2] // 2, shape[-1])


@pytest.mark.parametrize("fmt", MX_FMTS)
def test_mx_columns_equal_rows_of_transpose(fmt):
    """32x1 blocks of x are the 1x32 blocks of x^T (RNE); the fp4 layout packs rows pairwise."""
    x = mx_edge_input((4, 128)).t().contiguous()  # [128, 4]
    col = mx_both(x, fmt=fmt, axis=-2)
    row = sk.quantize_mx(x.t().contiguous(), fmt)
    assert_bit_exact(col.scales, row.scales.t().contiguous(), "scales")
    assert_bit_exact(col.data, row.data.t().contiguous(), "data")
    mx_both(x, fmt=fmt, axis=-2, scale_rule="truncation_free")
    assert col.axis == -2 and sk.quantize_mx(x, fmt, axis=x.dim() - 2).axis == -2


# ------------------------------------------------------------------------------------- NVFP4
def assert_nvfp4_equal(a, b, what=""):
    assert a.outer == b.outer and a.axis == b.axis and a.shape == b.shape
    assert_bit_exact(a.scales, b.scales, f"{what} block scales")
    assert_bit_exact(a.data, b.data, f"{what} data")
    if a.outer_scale is None:
        assert b.outer_scale is None
    else:
        assert a.outer_scale.shape == b.outer_scale.shape
        if a.outer_scale.numel():  # NaN outer scales are canonical (0x7FC00000) on every backend
            assert_bit_exact(a.outer_scale.reshape(-1), b.outer_scale.reshape(-1), f"{what} outer scales")


def nv_both(x, backend="cpu", **kw):
    a = sk.quantize_nvfp4(x, backend=backend, **kw)
    b = sk.quantize_nvfp4(x, backend="torch", **kw)
    assert_nvfp4_equal(a, b, str(kw))
    return a


@pytest.mark.parametrize("outer", ["tensor", "block128", "none"])
@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("rounding", ["rne", "stochastic"])
def test_nvfp4_cpu_matches_reference(outer, axis, rounding):
    for shape in [(3, 7, 256), (33, 128), (2, 128, 5)] if axis == -1 else [(3, 128, 7), (256, 33), (128, 1)]:
        if shape[axis] % (128 if outer == "block128" else 16):
            continue
        x = torch.randn(shape) * torch.logspace(-3, 3, shape[-1])
        q = nv_both(x, outer=outer, axis=axis, rounding=rounding, seed=8, offset=3)
        assert q.data.dtype == torch.uint8 and q.scales.dtype == torch.float8_e4m3fn
        nb = list(shape)
        nb[axis] //= 16
        assert tuple(q.scales.shape) == tuple(nb)
    x16 = (torch.randn(4, 256) * 50).to(torch.bfloat16)
    nv_both(x16 if axis == -1 else x16.t().contiguous(), outer=outer, axis=axis, rounding=rounding)


@pytest.mark.parametrize("outer", ["tensor", "block128", "none"])
def test_nvfp4_edge_cases(outer):
    x = torch.randn(4, 256) * 3
    x[0, :128] = 0.0  # zero blocks (and a zero 128-block)
    x[1, 3] = 1e5  # outlier
    x[1, 130:140] = 1e-41  # subnormal inputs
    x[2, 128:256] = torch.randn(128) * 1e-30  # tiny 128-block: block scales / outer scales underflow
    q = nv_both(x, outer=outer)
    y = sk.dequantize_nvfp4(q)
    assert (y[0, :128] == 0).all() and (q.scales[0, :8].view(torch.uint8) == 0).all()
    xn = x.clone()
    xn[3, 17] = float("nan")
    xn[3, 200] = float("inf")
    qn = nv_both(xn, outer=outer)
    yn = sk.dequantize_nvfp4(qn)
    if outer == "tensor":
        assert torch.isnan(yn).all()  # NaN poisons the tensor scale
    elif outer == "block128":
        assert torch.isnan(yn[3]).all() and not torch.isnan(yn[:3]).any()
    else:
        assert torch.isnan(yn[3, 16:32]).all() and yn[3, 200] == 6 * 448 and not torch.isnan(yn[:3]).any()


@pytest.mark.parametrize("outer", ["tensor", "block128", "none"])
def test_nvfp4_round_trip_error_bound(outer):
    x = torch.randn(32, 256) * torch.logspace(-2, 2, 256)
    q = sk.quantize_nvfp4(x, outer=outer)
    y = sk.dequantize_nvfp4(q)
    block = ref.decode(q.scales.view(torch.uint8).to(torch.int64), ref.E4M3)
    if outer == "tensor":
        block = block * q.outer_scale
    elif outer == "block128":
        block = block * q.outer_scale.repeat_interleave(8, dim=-1)
    denom = block.repeat_interleave(16, dim=-1)
    v = x / denom
    # RNE of amax/6 to E4M3 may round a normal block scale down by up to 1/17 relative: the block
    # max may then land in (6, 6.4] and saturate to 6 (a few % of the elements; inherent to NVFP4)
    inside = v.abs() <= 6.0
    normal = (q.scales.view(torch.uint8) & 0x78 != 0).repeat_interleave(16, dim=-1)
    assert inside.float().mean() > 0.9 and (v.abs() <= 6.4)[normal].all()
    bound = grid_half_step(v, ref.E2M1) * denom
    assert ((y - x).abs()[inside] <= bound[inside]).all()
    assert (y[~inside].abs() == 6.0 * denom[~inside]).all()


def test_nvfp4_sr_unbiased():
    x = torch.randn(2, 128) * 3
    draws = 4000
    q = sk.quantize_nvfp4(x.repeat(draws, 1), outer="none", rounding="stochastic", seed=1)
    y = sk.dequantize_nvfp4(q).double().reshape(draws, 2, 128)
    denom = ref.decode(q.scales[:2].view(torch.uint8).to(torch.int64), ref.E4M3)
    denom = denom.repeat_interleave(16, dim=-1).double()
    v = x.double() / denom
    inside = v.abs() <= 6  # saturated elements (see the round-trip test) are biased by design
    step = 2 * grid_half_step(v.float(), ref.E2M1).double() * denom
    err = (y.mean(0) - x.double()).abs()
    assert (err <= 5 * step / 2 / draws**0.5 + 1e-30)[inside].all(), err.max()
    a = sk.quantize_nvfp4(x, rounding="stochastic", seed=1)
    b = sk.quantize_nvfp4(x, rounding="stochastic", seed=1, offset=256)
    assert_nvfp4_equal(a, sk.quantize_nvfp4(x, rounding="stochastic", seed=1))
    assert (a.data != b.data).any()


@pytest.mark.parametrize("outer", ["tensor", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_matches_torchao(outer, dtype):
    """torchao 0.18 nvfp4_quantize (one level, or two level with per_tensor_amax_to_scale). Where the
    rules coincide (every block scale >= E4M3 tiny = 2^-6, which torchao clamps to) block scales
    agree bit-exactly; torchao scales the data by reciprocals (x * (1/s)), we divide (x / s), so a
    handful of elements within one float32 ulp of an E2M1 rounding boundary may differ by one code."""
    try:
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale
    except Exception as exc:  # pragma: no cover - torchao missing
        pytest.skip(f"torchao not importable: {exc!r}")
    g = torch.Generator().manual_seed(13)
    x = (torch.randn(64, 512, generator=g) * 4).to(dtype)
    pts = per_tensor_amax_to_scale(x.float().abs().amax()) if outer == "tensor" else None
    scales_ao, data_ao = nvfp4_quantize(x, 16, pts)
    ours = nv_both(x, outer=outer)
    assert_bit_exact(
        ours.scales.view(torch.uint8), scales_ao.view(torch.uint8).reshape(64, 32), "block scales"
    )
    if pts is not None:
        assert_bit_exact(ours.outer_scale.reshape(1), pts.reshape(1), "tensor scale")
    codes_ours = ref.unpack_fp4(ours.data, -1)
    codes_ao = ref.unpack_fp4(data_ao.view(torch.uint8), -1)
    diff = codes_ours != codes_ao
    assert diff.float().mean() < 5e-3
    assert ((codes_ours[diff] - codes_ao[diff]).abs() == 1).all()  # neighbouring codes, same sign
    # every difference sits on (within 2 ulp of) an E2M1 rounding midpoint of x / (s * outer)
    denom = ref.decode(ours.scales.view(torch.uint8).to(torch.int64), ref.E4M3).repeat_interleave(16, dim=-1)
    if ours.outer_scale is not None:
        denom = denom * ours.outer_scale
    v = (x.float() / denom)[diff].abs()
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    dist = (v.unsqueeze(-1) - mids).abs().min(-1).values
    assert (dist <= 2 * torch.finfo(torch.float32).eps * v).all()


def test_nvfp4_opcheck_and_bad_inputs():
    x = torch.randn(4, 128)
    x0 = x.clone()
    for be in ("cpu", "torch"):
        for outer in OUTER_NAMES:
            args = (x, -1, outer, "rne", 0, 0, be)
            torch.library.opcheck(torch.ops.shared_kernels.quantize_nvfp4, args)
    assert_bit_exact(x, x0, "x")
    with pytest.raises(ValueError, match="divisible by 16"):
        sk.quantize_nvfp4(torch.randn(4, 40))
    with pytest.raises(ValueError, match="divisible by 128"):
        sk.quantize_nvfp4(torch.randn(4, 64), outer="block128")
    with pytest.raises(ValueError, match="outer"):
        sk.quantize_nvfp4(x, outer="channel")
    with pytest.raises(ValueError, match="rounding"):
        sk.quantize_nvfp4(x, rounding="nearest")
    with pytest.raises(ValueError, match="axis"):
        sk.quantize_nvfp4(torch.randn(2, 16, 16), axis=0)
    with pytest.raises(TypeError, match="x has dtype"):
        sk.quantize_nvfp4(x.to(torch.int8))
    with pytest.raises(TypeError, match="q must be"):
        sk.dequantize_nvfp4(x)


OUTER_NAMES = ["tensor", "block128", "none"]


# ---------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("rounding", ["rne", "stochastic"])
def test_mx_cuda_matches_reference(fmt, axis, rounding):
    for scale_rule in ("floor", "truncation_free"):
        for shape in [(3, 64, 96), (64, 33) if axis == -2 else (33, 64), (2, 3, 32, 64)]:
            x = (torch.randn(shape) * torch.logspace(-3, 3, shape[-1])).cuda()
            mx_both(
                x,
                "cuda",
                fmt=fmt,
                axis=axis,
                scale_rule=scale_rule,
                rounding=rounding,
                seed=2**63 + 5,
                offset=9,
            )
        e = mx_edge_input((4, 128)).cuda()
        mx_both(e if axis == -1 else e.t().contiguous(), "cuda", fmt=fmt, axis=axis, scale_rule=scale_rule)
        xb = (torch.randn(64, 128, device="cuda") * 10).to(torch.bfloat16)
        mx_both(xb, "cuda", fmt=fmt, axis=axis, scale_rule=scale_rule, rounding=rounding)


@pytest.mark.cuda
@pytest.mark.parametrize("outer", ["tensor", "block128", "none"])
@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("rounding", ["rne", "stochastic"])
def test_nvfp4_cuda_matches_reference(outer, axis, rounding):
    for shape in [(3, 128, 256), (256, 33) if axis == -2 else (33, 256)]:
        x = (torch.randn(shape) * torch.logspace(-3, 3, shape[-1])).cuda()
        nv_both(x, "cuda", outer=outer, axis=axis, rounding=rounding, seed=17, offset=4)
    xn = torch.randn(256, 128, device="cuda").to(torch.float16)
    xn[3, 5] = float("nan")
    nv_both(xn, "cuda", outer=outer, axis=axis, rounding=rounding)


def test_empty_inputs():
    for be in ("cpu", "torch"):
        q = sk.quantize_mx(torch.randn(0, 128), backend=be)
        assert q.data.shape == (0, 64) and q.scales.shape == (0, 4)
        q = sk.quantize_mx(torch.randn(2, 0, 64), axis=-2, backend=be)
        assert q.data.shape == (2, 0, 64) and q.scales.shape == (2, 0, 64)
        n = sk.quantize_nvfp4(torch.randn(0, 128), backend=be)
        assert n.data.shape == (0, 64) and n.outer_scale.item() == 0.0
        n = sk.quantize_nvfp4(torch.randn(0, 128), outer="block128", backend=be)
        assert n.outer_scale.shape == (0, 1)


def test_nvfp4_torch_compile_smoke_and_backend_errors():
    f = torch.compile(lambda t: sk.quantize_nvfp4(t, backend="cpu").scales, fullgraph=True, backend="eager")
    x = torch.randn(8, 128)
    assert_bit_exact(f(x), sk.quantize_nvfp4(x, backend="torch").scales, "compiled")
    with pytest.raises(RuntimeError, match="cuda"):
        sk.quantize_nvfp4(x, backend="cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        sk.quantize_mx(x, backend="cuda")


# ------------------------------------------------- AVX-512 path == scalar path (force_scalar)
HALF_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_FORCEABLE = ("quantize_fp8_cpu", "quantize_mx_cpu", "quantize_nvfp4_cpu", "minifloat_encode_cpu")


class _ForceScalar:
    """The compiled module with force_scalar=True passed to the kernels that have an AVX-512 path."""

    def __init__(self, mod):
        self._mod = mod

    def __getattr__(self, name):
        fn = getattr(self._mod, name)
        return (lambda *a, **k: fn(*a, **k, force_scalar=True)) if name in _FORCEABLE else fn


@pytest.fixture
def scalar_path(monkeypatch):
    """A context manager: inside it the ops' "cpu" backend runs the scalar path of the kernels."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        proxy = _ForceScalar(_lib.native())
        with monkeypatch.context() as m:
            m.setattr(_lib, "native", lambda: proxy)
            yield

    return ctx


def special_floats() -> torch.Tensor:
    """inf, NaNs with payloads and both signs, huge values, float32 subnormals, signed zeros."""
    bits = [0x7F800000, 0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0x7FC00123, 0x7F7FFFFF, 0x7F000000, 0x00000001]
    bits += [0x00000002, 0x007FFFFF, 0x00400000, 0x00800000, 0x00000000, 0x5F800000, 0x4F800000, 0x3F800000]
    t = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([t, -t])


def codec_sweep(fmt: str) -> torch.Tensor:
    f = ref.FORMATS[fmt]
    every = torch.arange(0, 2**32, 65521, dtype=torch.int64).to(torch.int32).view(torch.float32)  # all ranges
    return torch.cat(
        [float32_sweep(2 * f.max_value, 1009), ties_and_neighbours(fmt), special_floats(), every]
    )


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3", "e5m2"])
def test_avx512_rne_codec_equals_scalar_dense_sweep(fmt):
    x = codec_sweep(fmt)[:-3]  # odd length: masked tail
    vec = native_encode(x, fmt)
    out = torch.empty(x.shape, dtype=torch.uint8)
    _lib.native().minifloat_encode_cpu(
        _lib.ptr(x), x.numel(), FMT_ID[fmt], 0, 0, _lib.ptr(out), force_scalar=True
    )
    assert_bit_exact(vec, out, f"{fmt} avx512 vs scalar")
    assert_bit_exact(vec, ref.encode(x, ref.FORMATS[fmt]).to(torch.uint8), f"{fmt} avx512 vs reference")


def mx_anchored_sweep(fmt: str, dtype: torch.dtype) -> torch.Tensor:
    """Blocks of 32 whose element values sit on every midpoint (and +-1 ulp) of the element grid
    after scaling: each block holds the format's max * 2^k (so the scale is 2^k) and 31 test values
    times 2^k, for several k (float32 subnormal and huge ranges included)."""
    elem = {"mxfp4": "e2m1", "mxfp8_e4m3": "e4m3", "mxfp8_e5m2": "e5m2"}[fmt]
    f = ref.FORMATS[elem]
    vals = ties_and_neighbours(elem)
    vals = vals[vals.abs() <= f.max_value]
    vals = torch.cat([vals, vals[: (-vals.numel()) % 31]])
    rows = []
    for k in (-140, -126, -20, 0, 3, 60, 110):
        body = (vals * 2.0**k).reshape(-1, 31)
        anchor = torch.full((body.shape[0], 1), f.max_value * 2.0**k)
        rows.append(torch.cat([anchor, body], dim=1).reshape(-1))
    x = torch.cat(rows)
    x = torch.cat([x, special_floats()[:32], torch.zeros(32)])  # inf/NaN block, zero block(s)
    x = torch.cat([x, torch.zeros((-x.numel()) % 64)])
    return x.reshape(-1, 64).to(dtype)


@pytest.mark.parametrize("fmt", MX_FMTS)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("scale_rule", ["floor", "truncation_free"])
def test_mx_avx512_equals_scalar(fmt, dtype, scale_rule, scalar_path):
    g = torch.Generator().manual_seed(11)
    inputs = [
        (mx_anchored_sweep(fmt, dtype), -1),
        (mx_anchored_sweep(fmt, dtype).t().contiguous(), -2),
        (mx_edge_input().to(dtype), -1),
        (mx_edge_input().t().contiguous().to(dtype), -2),
    ]
    for shape, axis in [
        ((3, 5, 96), -1),
        ((1, 2, 3, 64), -1),
        ((2, 64, 7), -2),
        ((32, 33), -2),
        ((3, 32, 1), -2),
    ]:
        inputs.append(
            ((torch.randn(shape, generator=g) * torch.logspace(-30, 30, shape[-1])).to(dtype), axis)
        )
    for x, axis in inputs:
        kw = dict(fmt=fmt, axis=axis, scale_rule=scale_rule)
        vec = mx_both(x, **kw)  # avx512 path vs reference
        with scalar_path():
            sca = sk.quantize_mx(x, backend="cpu", **kw)
        assert_mx_equal(vec, sca, f"avx512 vs scalar {kw} {tuple(x.shape)} {dtype}")


def nvfp4_sweep(dtype: torch.dtype) -> torch.Tensor:
    f = ref.FORMATS["e2m1"]
    vals = torch.cat([ties_and_neighbours("e2m1"), special_floats(), float32_sweep(f.max_value, 40009)])
    parts = [vals * 2.0**k for k in (-130, -10, 0, 7, 90)]
    x = torch.cat(parts)
    x = torch.cat([x, torch.zeros((-x.numel()) % 256)])
    return x.reshape(-1, 256).to(dtype)


@pytest.mark.parametrize("outer", ["tensor", "block128", "none"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_nvfp4_avx512_equals_scalar(outer, dtype, scalar_path):
    g = torch.Generator().manual_seed(12)
    sweep = nvfp4_sweep(dtype)
    finite = torch.nan_to_num(sweep.float(), nan=0.0, posinf=0.0, neginf=0.0).to(dtype)
    inputs = [(sweep, -1), (sweep.t().contiguous(), -2), (finite, -1), (finite.t().contiguous(), -2)]
    z = torch.randn(256, 21, generator=g)
    z[:, 3] = 0.0  # zero outer 128-blocks and zero 16-blocks
    z[:128, 5] = 0.0
    z[16:32, 6] = 0.0
    z[:, 7] = 1e-41  # float32 subnormals: outer scale and block scales underflow
    z[40, 8] = 1e30
    inputs += [(z.to(dtype), -2), (z.t().contiguous().to(dtype), -1)]
    for shape, axis in [
        ((3, 5, 256), -1),
        ((2, 384), -1),
        ((2, 128, 7), -2),
        ((256, 33), -2),
        ((128, 1), -2),
    ]:
        inputs.append(
            ((torch.randn(shape, generator=g) * torch.logspace(-20, 20, shape[-1])).to(dtype), axis)
        )
    for x, axis in inputs:
        if x.shape[axis] % (128 if outer == "block128" else 16):
            continue
        vec = nv_both(x, outer=outer, axis=axis)
        with scalar_path():
            sca = sk.quantize_nvfp4(x, outer=outer, axis=axis, backend="cpu")
        assert_nvfp4_equal(vec, sca, f"avx512 vs scalar {outer} axis={axis} {tuple(x.shape)} {dtype}")
