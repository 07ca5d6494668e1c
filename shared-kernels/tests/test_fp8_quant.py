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


# ------------------------------------------------- AVX-512 path == scalar path (force_scalar)
class _ForceScalar:
    """The compiled module with force_scalar=True passed to quantize_fp8_cpu."""

    def __init__(self, mod):
        self._mod = mod

    def __getattr__(self, name):
        fn = getattr(self._mod, name)
        return (lambda *a, **k: fn(*a, **k, force_scalar=True)) if name == "quantize_fp8_cpu" else fn


def fp8_scalar(monkeypatch, x, **kw):
    from shared_kernels import _lib

    proxy = _ForceScalar(_lib.native())
    with monkeypatch.context() as m:
        m.setattr(_lib, "native", lambda: proxy)
        return sk.quantize_fp8(x, backend="cpu", **kw)


def fp8_sweep(fmt: str) -> torch.Tensor:
    """Every midpoint of the FP8 grid and its +-1 ulp neighbours, the grid itself, a dense stride
    over [0, 2 * max], float32 subnormals, huge values, with both signs (all finite)."""
    max_value = {"e4m3": 448.0, "e5m2": 57344.0}[fmt]
    tf = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[fmt]
    codes = torch.arange(0, 256, dtype=torch.int64).to(torch.uint8).view(tf).float()
    grid = codes[torch.isfinite(codes) & (codes >= 0)].unique().double()
    mids = ((grid[:-1] + grid[1:]) / 2).float()
    ib = mids.view(torch.int32)
    top = torch.tensor(2 * max_value).view(torch.int32).item()
    dense = torch.arange(0, top, 997, dtype=torch.int64).to(torch.int32).view(torch.float32)
    pos = torch.cat([mids, (ib + 1).view(torch.float32), (ib - 1).view(torch.float32), grid.float(), dense])
    pos = torch.cat([pos, torch.tensor([1e-45, 1e-40, 1.1754942e-38, 1e30, 3.4028235e38])])
    return torch.cat([pos, -pos])


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_avx512_equals_scalar(fmt, dtype, monkeypatch):
    g = torch.Generator().manual_seed(3)
    max_value = {"e4m3": 448.0, "e5m2": 57344.0}[fmt]
    sweep = fp8_sweep(fmt)
    n = sweep.numel() // 48 * 48
    finite = sweep.to(dtype).float()
    finite = finite[torch.isfinite(finite)]  # exact in dtype
    cases = [
        # per_tensor with scale 1: the sweep itself goes through the codec (values above max saturate)
        (finite.reshape(1, -1), dict(granularity="per_tensor", scale_max=float(finite.abs().max()))),
        (sweep[:n].reshape(48, -1), dict(granularity="per_block", block_size=7)),
        (sweep[:n].reshape(-1, 48), dict(granularity="per_channel")),
    ]
    special = torch.randn(6, 37, generator=g) * 10
    special[0, 3] = float("inf")
    special[1, :] = 0.0
    special[2, 5] = -float("nan")
    special[3, 7] = 3e38
    special[4, :] = 1e-41
    for gran in GRANS:
        cases.append((special, dict(granularity=gran, block_size=2)))
    for shape in [(3, 7, 1), (2, 5, 17), (33, 129), (2, 3, 9, 65)]:
        x = torch.randn(shape, generator=g) * torch.logspace(-3, 3, shape[-1])
        for gran in GRANS:
            cases.append((x, dict(granularity=gran, block_size=3, scale_max=max_value / 2)))
    for x, kw in cases:
        x = x.to(dtype)
        vec = run_both(x, "cpu", fmt=fmt, **kw)  # avx512 path vs reference
        sca = fp8_scalar(monkeypatch, x, fmt=fmt, **kw)
        what = f"avx512 vs scalar {kw} {tuple(x.shape)} {dtype}"
        assert_bit_exact(vec[0].view(torch.uint8), sca[0].view(torch.uint8), what)
        assert_bit_exact(vec[1].reshape(-1), sca[1].reshape(-1), what)
