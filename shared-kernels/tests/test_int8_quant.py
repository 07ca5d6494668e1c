"""INT8 per-block quantization: every backend against the reference, bit for bit."""

from __future__ import annotations

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _backend, _lib
from shared_kernels.ops import int8_quant as ops_mod
from shared_kernels.reference import int8_quant as ref
from shared_kernels.testing import assert_bit_exact

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rand(shape, dtype, seed, scale=3.0, offset=0.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale + offset).to(dtype)


def _check_against_ref(x, block_size, subtract_mean, multiplier, got):
    q, scale, mean = got
    if subtract_mean:
        assert mean is not None and mean.shape == (*x.shape[:-2], 1, x.shape[-1])
        # float64 sums in another order: equal up to the last bit of the float32 result
        torch.testing.assert_close(mean, ref.channel_mean(x), rtol=2**-23, atol=1e-30, equal_nan=True)
    else:
        assert mean is None
    qr, sr, _ = ref.quantize_int8_per_block(
        x, block_size, subtract_mean=subtract_mean, multiplier=multiplier, mean=mean
    )
    assert_bit_exact(scale, sr, "scale")
    assert_bit_exact(q, qr, "q")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subtract_mean", [False, True])
@pytest.mark.parametrize(
    ("shape", "block_size"),
    [((3, 301, 72), 64), ((2, 2, 129, 128), 128), ((77, 40), 16), ((1, 5, 33), 1), ((2, 50, 24), 100)],
)
def test_cpu_matches_reference(dtype, subtract_mean, shape, block_size):
    x = _rand(shape, dtype, seed=hash((shape, block_size)) % 1000)
    x0 = x.clone()
    got = sk.quantize_int8_per_block(
        x, block_size, subtract_mean=subtract_mean, multiplier=0.18033688, backend="cpu"
    )
    assert_bit_exact(x, x0, "caller's x")
    assert got[0].dtype == torch.int8 and got[1].shape == (*shape[:-2], -(-shape[-2] // block_size))
    _check_against_ref(x, block_size, subtract_mean, 0.18033688, got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subtract_mean", [False, True])
def test_cpu_scalar_and_avx512_paths_identical(dtype, subtract_mean):
    x = _rand((3, 257, 100), dtype, seed=7, scale=50.0)
    x[1, 3, 5] = float("inf")
    vec = ops_mod._run_native(x, 32, subtract_mean, 1.7, force_scalar=False)
    sca = ops_mod._run_native(x, 32, subtract_mean, 1.7, force_scalar=True)
    for a, b, what in zip(vec, sca, ("q", "scale", "mean"), strict=True):
        if a.numel():  # the mean output is empty without subtract_mean
            assert_bit_exact(a, b, what)


def test_auto_backend_is_cpu_and_mean_none():
    assert _backend.resolve_backend("quantize_int8_per_block", "auto", torch.device("cpu")) == "cpu"
    x = _rand((64, 4), torch.float32, 1)
    q, s, m = sk.quantize_int8_per_block(x, 32)
    assert m is None and q.shape == x.shape and s.shape == (2,)


def test_round_half_away_from_zero_by_hand():
    # amax 127 -> scale exactly 1.0: y / scale + copysign(0.5, y) truncated
    x = torch.tensor([[127.0, 2.5, -2.5, 0.5, -0.5, 1.49, -1.51, 0.0, -0.0, -126.5]])
    q, s, _ = sk.quantize_int8_per_block(x.T.contiguous(), 16, backend="cpu")
    assert s.tolist() == [1.0]
    assert q.flatten().tolist() == [127, 3, -3, 1, -1, 1, -2, 0, 0, -127]


def test_zero_block_outliers_and_nonfinite_policy():
    x = _rand((2, 96, 16), torch.float32, 3)
    x[0, 0:32] = 0.0  # all-zero block -> scale 0, q 0
    x[0, 40, 2] = 1e30  # outlier: its block is scaled by it, others untouched
    x[1, 33, 7] = float("nan")  # non-finite -> scale NaN, q 0 for that block only
    x[1, 70, 0] = float("-inf")
    for backend in ("torch", "cpu"):
        q, s, _ = sk.quantize_int8_per_block(x, 32, backend=backend)
        assert s[0, 0].item() == 0.0 and (q[0, :32] == 0).all()
        assert s[0, 1].item() == pytest.approx(1e30 / 127) and q[0, 40, 2].item() == 127
        assert torch.isnan(s[1, 1:]).all() and (q[1, 32:] == 0).all()
        assert torch.isfinite(s[1, 0]) and torch.isfinite(s[0]).all()
        _check_against_ref(x, 32, False, 1.0, (q, s, None))


def test_multiplier_overflow_gives_nan_block():
    x = torch.full((4, 8), 1e38)
    q, s, _ = sk.quantize_int8_per_block(x, 4, multiplier=100.0, backend="cpu")
    assert torch.isnan(s).all() and (q == 0).all()


def test_subnormal_scale_is_clamped():
    x = torch.tensor([[1e-43], [-5e-44], [1e-45], [0.0]])
    for backend in ("torch", "cpu"):
        q, _, _ = sk.quantize_int8_per_block(x, 4, backend=backend)
        assert q.abs().max().item() <= 127
    _check_against_ref(x, 4, False, 1.0, sk.quantize_int8_per_block(x, 4, backend="cpu"))


def test_bad_inputs():
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="x"):
        sk.quantize_int8_per_block(x.numpy())
    with pytest.raises(TypeError, match="x"):
        sk.quantize_int8_per_block(x.to(torch.int32))
    with pytest.raises(ValueError, match="x"):
        sk.quantize_int8_per_block(torch.randn(8))
    with pytest.raises(ValueError, match="contiguous"):
        sk.quantize_int8_per_block(torch.randn(8, 4).T)
    with pytest.raises(ValueError, match="x"):
        sk.quantize_int8_per_block(torch.randn(2, 0, 8))
    with pytest.raises(ValueError, match="block_size"):
        sk.quantize_int8_per_block(x, 0)
    with pytest.raises(TypeError, match="block_size"):
        sk.quantize_int8_per_block(x, 16.0)
    with pytest.raises(TypeError, match="subtract_mean"):
        sk.quantize_int8_per_block(x, subtract_mean=1)
    with pytest.raises(TypeError, match="multiplier"):
        sk.quantize_int8_per_block(x, multiplier="2")
    with pytest.raises(ValueError, match="multiplier"):
        sk.quantize_int8_per_block(x, multiplier=float("inf"))
    with pytest.raises(ValueError, match="backend"):
        sk.quantize_int8_per_block(x, backend="gpu")
    with pytest.raises(RuntimeError, match="cuda"):
        sk.quantize_int8_per_block(x, backend="cuda")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("subtract_mean", [False, True])
def test_opcheck(backend, subtract_mean):
    x = _rand((2, 19, 24), torch.float32, 5)
    torch.library.opcheck(
        torch.ops.shared_kernels.quantize_int8_per_block.default, (x, 8, subtract_mean, 0.5, backend)
    )


def test_torch_compile_fullgraph():
    x = _rand((2, 40, 32), torch.float16, 9)

    def f(t):
        return sk.quantize_int8_per_block(t, 16, subtract_mean=True, backend="cpu")

    got = torch.compile(f, fullgraph=True, backend="eager")(x)
    want = f(x)
    for a, b, what in zip(got, want, ("q", "scale", "mean"), strict=True):
        assert_bit_exact(a, b, what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subtract_mean", [False, True])
def test_triton_matches_reference(dtype, subtract_mean):
    pytest.importorskip("triton")
    if not _backend.backend_status("triton", "cpu")[0] and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = _rand((2, 77, 40), dtype, seed=11).to(dev)
    x[1, 70, 3] = float("nan")
    got = sk.quantize_int8_per_block(x, 32, subtract_mean=subtract_mean, multiplier=0.37, backend="triton")
    _check_against_ref(x, 32, subtract_mean, 0.37, got)


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subtract_mean", [False, True])
@pytest.mark.parametrize(
    ("shape", "block_size"), [((3, 301, 72), 64), ((2, 4, 1000, 128), 128), ((5, 33), 7)]
)
def test_cuda_matches_reference(dtype, subtract_mean, shape, block_size):
    x = _rand(shape, dtype, seed=13).cuda()
    x.view(-1)[17] = float("inf")
    x0 = x.clone()
    got = sk.quantize_int8_per_block(
        x, block_size, subtract_mean=subtract_mean, multiplier=1.3, backend="cuda"
    )
    assert_bit_exact(x, x0, "caller's x")
    _check_against_ref(x, block_size, subtract_mean, 1.3, got)
