"""Walsh-Hadamard transform: CPU/CUDA butterflies bit-exact against the reference, the Triton
matmul within a derived tolerance, and the maths against an explicit Hadamard matrix."""

from __future__ import annotations

import math

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _backend, _lib
from shared_kernels.ops import hadamard as ops_mod
from shared_kernels.reference import hadamard as ref
from shared_kernels.testing import assert_bit_exact

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIZES = (16, 32, 64, 128)


def _rand(shape, dtype, seed, spread=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if spread:  # magnitudes over many binades, incl. values that round to subnormal halves
        x = x * torch.exp2(torch.randint(-20, 8, shape, generator=g).float())
    return x.to(dtype)


def _sylvester(n: int) -> torch.Tensor:
    """H[i, j] = (-1)^popcount(i & j): the Sylvester matrix, built independently of the recursion."""
    i = torch.arange(n)
    bits = i[:, None] & i[None, :]
    parity = torch.zeros(n, n, dtype=torch.int64)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).double()


def _explicit_hadamard(n: int) -> torch.Tensor:
    try:
        import scipy.linalg
    except ImportError:
        return _sylvester(n)
    return torch.from_numpy(scipy.linalg.hadamard(n)).double()


def test_reference_matrix_is_sylvester():
    for n in SIZES:
        assert torch.equal(ref.hadamard_matrix(n, torch.float64), _sylvester(n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_cpu_matches_reference_bit_exact(dtype, n):
    x = _rand((3, 5, 2 * n), dtype, seed=n)
    x0 = x.clone()
    signs32 = sk.random_hadamard_signs(n, seed=n)
    for signs in (None, signs32, signs32.to(dtype)):
        for normalize in (True, False):
            got = sk.hadamard_transform(x, n, signs=signs, normalize=normalize, backend="cpu")
            want = ref.hadamard_transform(x, n, signs=signs, normalize=normalize)
            assert_bit_exact(got, want, f"n={n} signs={signs is not None} normalize={normalize}")
    assert_bit_exact(x, x0, "caller's x")
    assert_bit_exact(signs32, sk.random_hadamard_signs(n, seed=n), "caller's signs")


def test_one_dimensional_and_many_groups():
    x = _rand((384,), torch.float32, 1)
    assert_bit_exact(sk.hadamard_transform(x, 128, backend="cpu"), ref.hadamard_transform(x, 128), "1-D")
    x = _rand((1001, 32), torch.bfloat16, 2)
    assert_bit_exact(sk.hadamard_transform(x, 16, backend="cpu"), ref.hadamard_transform(x, 16), "1001x32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_cpu_scalar_and_avx512_paths_identical(dtype, n):
    x = _rand((7, 2 * n), dtype, seed=3 * n)
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    x[3, 0] = float("-inf")
    signs = sk.random_hadamard_signs(n, seed=1)
    for s in (None, signs):
        vec = ops_mod._run_native(x, n, s, True, force_scalar=False)
        sca = ops_mod._run_native(x, n, s, True, force_scalar=True)
        assert_bit_exact(vec, sca, f"n={n}")


@pytest.mark.parametrize("n", SIZES)
def test_matches_explicit_matrix_product(n):
    x = _rand((4, 3 * n), torch.float32, seed=5, spread=False)
    signs = sk.random_hadamard_signs(n, seed=9)
    h = _explicit_hadamard(n)
    for s in (None, signs):
        xs = x.double().reshape(-1, n) * (1.0 if s is None else s.double())
        want = (xs @ h.T / math.sqrt(n)).reshape(x.shape)
        got = sk.hadamard_transform(x, n, signs=s, backend="cpu").double()
        # float32 butterfly: log2(n) rounded additions per output, each bounded by u·sum|x|
        tol = math.log2(n) * 2**-24 * xs.abs().sum(-1).max().item() / math.sqrt(n) * 2
        assert (got - want).abs().max().item() <= tol


@pytest.mark.parametrize("n", SIZES)
def test_orthonormal_self_inverse_and_signs_inverse(n):
    x = _rand((6, 2 * n), torch.float32, seed=n + 1, spread=False)
    y = sk.hadamard_transform(x, n, backend="cpu")
    torch.testing.assert_close(sk.hadamard_transform(y, n, backend="cpu"), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-6, atol=0)
    s = sk.random_hadamard_signs(n, seed=4)
    ys = sk.hadamard_transform(x, n, signs=s, backend="cpu")
    torch.testing.assert_close(
        sk.hadamard_transform(ys, n, backend="cpu") * s.repeat(2), x, rtol=0, atol=1e-5
    )
    # without normalization H·H = n·I
    z = sk.hadamard_transform(sk.hadamard_transform(x, n, normalize=False, backend="cpu"), n, normalize=False)
    torch.testing.assert_close(z, x * n, rtol=0, atol=1e-5 * n)


def test_nonfinite_policy_poisons_only_its_group():
    x = _rand((2, 64), torch.float16, seed=8, spread=False)
    x[0, 3] = float("nan")  # group 0 of row 0
    x[1, 40] = float("inf")  # group 1 of row 1: inf propagates, inf - inf = NaN
    for backend in ("torch", "cpu"):
        y = sk.hadamard_transform(x, 32, backend=backend)
        assert torch.isnan(y[0, :32]).all() and torch.isfinite(y[0, 32:]).all()
        assert (~torch.isfinite(y[1, 32:])).all() and torch.isfinite(y[1, :32]).all()


def test_random_hadamard_signs():
    a = sk.random_hadamard_signs(128, 7)
    assert a.shape == (128,) and a.dtype == torch.float32 and bool((a.abs() == 1).all())
    assert torch.equal(a, sk.random_hadamard_signs(128, 7))
    assert not torch.equal(a, sk.random_hadamard_signs(128, 8))
    assert (a == 1).any() and (a == -1).any()
    assert sk.random_hadamard_signs(16, 7, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="seed"):
        sk.random_hadamard_signs(16, 1.5)


def test_bad_inputs():
    x = torch.randn(2, 64)
    with pytest.raises(TypeError, match="x"):
        sk.hadamard_transform([1.0] * 16, 16)
    with pytest.raises(TypeError, match="x"):
        sk.hadamard_transform(x.to(torch.float64), 16)
    with pytest.raises(ValueError, match="block_size"):
        sk.hadamard_transform(x, 24)
    with pytest.raises(TypeError, match="block_size"):
        sk.hadamard_transform(x, 16.0)
    with pytest.raises(ValueError, match="divisible by block_size"):
        sk.hadamard_transform(torch.randn(2, 48), 32)
    with pytest.raises(ValueError, match="contiguous"):
        sk.hadamard_transform(torch.randn(64, 2).T, 16)
    with pytest.raises(ValueError, match="signs"):
        sk.hadamard_transform(x, 16, signs=torch.ones(32))
    with pytest.raises(TypeError, match="signs"):
        sk.hadamard_transform(x, 16, signs=torch.ones(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="signs"):
        sk.hadamard_transform(x, 16, signs=torch.full((16,), 2.0))
    with pytest.raises(TypeError, match="normalize"):
        sk.hadamard_transform(x, 16, normalize=1)
    with pytest.raises(ValueError, match="backend"):
        sk.hadamard_transform(x, 16, backend="fast")
    with pytest.raises(RuntimeError, match="cuda"):
        sk.hadamard_transform(x, 16, backend="cuda")
    assert _backend.resolve_backend("hadamard_transform", "auto", torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("with_signs", [False, True])
def test_opcheck(backend, with_signs):
    x = _rand((3, 32), torch.float32, seed=2, spread=False)
    s = sk.random_hadamard_signs(16, 0) if with_signs else None
    torch.library.opcheck(torch.ops.shared_kernels.hadamard_transform.default, (x, 16, s, True, backend))


def test_torch_compile_fullgraph():
    x = _rand((4, 64), torch.bfloat16, seed=6)
    s = sk.random_hadamard_signs(32, 1)

    def f(t):
        return sk.hadamard_transform(t, 32, signs=s, backend="cpu")

    assert_bit_exact(torch.compile(f, fullgraph=True, backend="eager")(x), f(x), "compiled")


def _matmul_tolerance(x, want, n, signs_applied_x):
    """|triton - ref| bound: both sum the same n exact ±x_i in float32 — the butterfly with log2(n)
    roundings, the matmul with up to n (tensor-core accumulation may truncate: 2u each) — so the
    float32 results differ by at most (n + log2 n)·2u·c·sum|x_g| (u = 2^-24); then each is rounded
    to x.dtype, which may add one unit in the last place of the output format."""
    c = 1 / math.sqrt(n)
    l1 = signs_applied_x.float().abs().reshape(-1, n).sum(-1, keepdim=True).expand(-1, n).reshape(x.shape)
    mant = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}[x.dtype]
    tiny = {torch.float32: 1e-45, torch.float16: 2**-24, torch.bfloat16: 1e-38}[x.dtype]
    return (n + math.log2(n)) * 2**-23 * c * l1 + 2.0 ** (1 - mant) * want.float().abs() + tiny


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 128])
def test_triton_within_tolerance(dtype, n):
    pytest.importorskip("triton")
    if not _backend.backend_status("triton", "cpu")[0] and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = _rand((3, 7, 2 * n), dtype, seed=n).to(dev)
    s = sk.random_hadamard_signs(n, seed=2, device=dev)
    for signs in (None, s):
        got = sk.hadamard_transform(x, n, signs=signs, backend="triton")
        want = ref.hadamard_transform(x, n, signs=signs)
        assert got.dtype == dtype and got.shape == x.shape
        tol = _matmul_tolerance(x, want, n, x)
        err = (got.float() - want.float()).abs()
        assert bool((err <= tol).all()), f"max excess {(err - tol).max().item()}"


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_cuda_matches_reference_bit_exact(dtype, n):
    x = _rand((5, 3, 3 * n), dtype, seed=n).cuda()
    x0 = x.clone()
    s = sk.random_hadamard_signs(n, seed=3, device="cuda")
    for signs in (None, s):
        for normalize in (True, False):
            got = sk.hadamard_transform(x, n, signs=signs, normalize=normalize, backend="cuda")
            want = ref.hadamard_transform(
                x.cpu(), n, signs=None if signs is None else signs.cpu(), normalize=normalize
            )
            assert_bit_exact(got.cpu(), want, f"n={n}")
    assert_bit_exact(x, x0, "caller's x")
