"""quantize_fp8 / dequantize_fp8: compiled kernels bit-exact against the reference."""

import pytest
import shared_kernels as sk
import torch
from shared_kernels.reference import fp8_quant as ref
from shared_kernels.testing import assert_bit_exact

GRANS = ["per_channel", "per_block", "per_tensor"]
SHAPES = [(3, 7, 96), (33, 64), (2, 3, 129, 5), (1, 1)]


def run_both(x, backend, **kw):
    q, s = sk.quantize_fp8(x, backend=backend, **kw)
    q_ref, s_ref = sk.quantize_fp8(x, backend="torch", **kw)
    assert s.shape == s_ref.shape
    assert_bit_exact(s.reshape(-1), s_ref.reshape(-1), "scale")  # (assert_bit_exact needs dim > 0)
    assert_bit_exact(q, q_ref, "q")
    return q, s


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_cpu_matches_reference(shape, gran, fmt):
    x = torch.randn(shape) * 3
    run_both(x, "cpu", fmt=fmt, granularity=gran, block_size=5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    x = (torch.randn(4, 37, 24) * 100).to(dtype)
    x[0, 0, 0] = 6e-8 if dtype == torch.float16 else 1e-30  # subnormal / tiny input
    for gran in GRANS:
        run_both(x, "cpu", granularity=gran, block_size=16, scale_max=2.25)


def test_reference_matches_torch_cast():
    x = torch.randn(5, 40, 32) * 10
    q, s = sk.quantize_fp8(x, granularity="per_block", block_size=16, backend="torch")
    scaled = x / ref.expand_scale(s, x.shape, "per_block", 16)
    assert_bit_exact(q, scaled.clamp(-448, 448).to(torch.float8_e4m3fn), "torch cast")


def test_edge_cases_and_nonfinite_policy():
    x = torch.randn(2, 8, 6)
    x[0, :, 0] = 0.0  # all-zero channel
    x[0, 3, 1] = 1e6  # outlier
    x[1, :, 2] = 1e-44  # subnormal channel: scale underflows to 0 -> q 0
    x.view(torch.int32)[1, 2, 3] = -4194013  # a negative NaN with a payload (0xFFC00123)
    x[1, 5, 4] = float("inf")
    q, s = run_both(x, "cpu", granularity="per_channel")
    qb = q.view(torch.uint8)
    assert s[0, 0] == 0 and (qb[0, :, 0] == 0).all()
    assert s[1, 2] == 0 and (qb[1, :, 2] == 0).all()
    assert qb[0, 3, 1] == 0x7E  # the outlier maps to 448
    assert torch.isnan(s[1, 3]) and (qb[1, :, 3] == 0x7F).all()  # NaN poisons its channel
    assert s.view(torch.int32)[1, 3] == 0x7FC00000  # canonical NaN scale on every backend
    assert torch.isinf(s[1, 4]) and qb[1, 5, 4] == 0x7F
    others = torch.cat([qb[1, :5, 4], qb[1, 6:, 4]])
    assert ((others & 0x7F) == 0).all()  # finite / inf -> +-0
    for gran in ("per_block", "per_tensor"):
        run_both(x, "cpu", granularity=gran, block_size=3)


@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_round_trip_error_bound(gran, fmt):
    x = torch.randn(3, 50, 40) * torch.logspace(-3, 3, 40)
    q, s = sk.quantize_fp8(x, fmt=fmt, granularity=gran, block_size=16)
    y = sk.dequantize_fp8(q, s, gran, 16)
    # |x/s| <= max, RNE error <= half the grid step of |x/s|'s binade (>= the subnormal step)
    mbits, emin = (3, -6) if fmt == "e4m3" else (2, -14)
    se = ref.expand_scale(s, x.shape, gran, 16)
    v = (x / se).abs()
    binade = torch.floor(torch.log2(v.clamp(min=2.0**emin)))
    bound = 0.5 * torch.exp2(binade - mbits) * se
    assert ((y - x).abs() <= bound * (1 + 1e-6)).all()
    assert sk.dequantize_fp8(q, s, gran, 16, torch.bfloat16).dtype == torch.bfloat16


def test_caller_tensor_unchanged_and_opcheck():
    x = torch.randn(2, 9, 8)
    x0 = x.clone()
    sk.quantize_fp8(x, granularity="per_block", block_size=4)
    assert_bit_exact(x, x0, "x")
    for be in ("cpu", "torch"):
        for gran in GRANS:
            torch.library.opcheck(torch.ops.shared_kernels.quantize_fp8, (x, "e4m3", gran, 4, 448.0, be))


def test_torch_compile_smoke():
    f = torch.compile(lambda t: sk.quantize_fp8(t, backend="cpu"), fullgraph=True, backend="eager")
    x = torch.randn(4, 16, 8)
    q, s = f(x)
    q2, s2 = sk.quantize_fp8(x, backend="torch")
    assert_bit_exact(q, q2, "compiled q")
    assert_bit_exact(s, s2, "compiled scale")


def test_bad_inputs():
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="x"):
        sk.quantize_fp8(x.to(torch.float64))
    with pytest.raises(ValueError, match="x"):
        sk.quantize_fp8(torch.randn(8))
    with pytest.raises(ValueError, match="contiguous"):
        sk.quantize_fp8(torch.randn(8, 4).t())
    with pytest.raises(ValueError, match="fmt"):
        sk.quantize_fp8(x, fmt="e3m4")
    with pytest.raises(ValueError, match="granularity"):
        sk.quantize_fp8(x, granularity="per_token")
    with pytest.raises(ValueError, match="block_size"):
        sk.quantize_fp8(x, block_size=0)
    with pytest.raises(ValueError, match="scale_max"):
        sk.quantize_fp8(x, scale_max=-1.0)
    with pytest.raises(TypeError, match="scale_max"):
        sk.quantize_fp8(x, scale_max="448")
    with pytest.raises(ValueError, match="backend"):
        sk.quantize_fp8(x, backend="triton")
    q, s = sk.quantize_fp8(x)
    with pytest.raises(ValueError, match="scale"):
        sk.dequantize_fp8(q, s[:2])
    with pytest.raises(TypeError, match="q"):
        sk.dequantize_fp8(x, s)


@pytest.mark.cuda
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_cuda_matches_reference(gran, fmt):
    for shape in SHAPES:
        x = torch.randn(shape, device="cuda") * 3
        x.view(-1)[0] = float("nan") if shape[-2] > 1 else 0.0
        run_both(x, "cuda", fmt=fmt, granularity=gran, block_size=5)
    x = torch.randn(3, 333, 64, device="cuda", dtype=torch.bfloat16)
    run_both(x, "cuda", fmt=fmt, granularity=gran, block_size=128, scale_max=2.25)


def test_empty_inputs():
    x = torch.randn(3, 0, 8)
    for gran in GRANS:
        for be in ("cpu", "torch"):
            q, s = sk.quantize_fp8(x, granularity=gran, block_size=4, backend=be)
            assert q.shape == x.shape and q.dtype == torch.float8_e4m3fn
            assert s.shape == ref.group_amax(x, gran, 4).shape and (s == 0).all()
