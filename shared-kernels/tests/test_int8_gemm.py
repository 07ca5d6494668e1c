"""INT8 GEMM with per-block scales: every backend against the reference, bit for bit."""

from __future__ import annotations

import importlib

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _backend, _lib
from shared_kernels.reference import int8_gemm as ref
from shared_kernels.testing import assert_bit_exact

# ops/__init__ re-exports the function int8_gemm under the module's own name: fetch the module
ops_mod = importlib.import_module("shared_kernels.ops.int8_gemm")

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _operands(lead, m, n, k, block_m, block_n, seed, low=-128):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(low, 128, (*lead, m, k), generator=g, dtype=torch.int8)
    b = torch.randint(low, 128, (*lead, n, k), generator=g, dtype=torch.int8)
    sa = torch.rand((*lead, -(-m // block_m)), generator=g) * 0.02 + 1e-4
    sb = torch.rand((*lead, -(-n // block_n)), generator=g) * 0.02 + 1e-4
    return a, b, sa, sb


def assert_matches(got, want, what):
    """Bit-exact, except that NaNs only need to be NaN in the same places: the sign and payload of a
    NaN after float32 -> bf16/fp16 conversion differ between torch's own conversion paths."""
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), f"{what}: NaN positions differ"
    assert_bit_exact(got[~nan], want[~nan], what)


def _exact_int(a, b):
    """The integer sums, exact (int64), as an independent check of the reference."""
    return torch.matmul(a.long(), b.long().transpose(-1, -2))


SHAPES = [  # (lead, M, N, K, block_m, block_n)
    ((), 1, 1, 1, 128, 64),
    ((2,), 37, 29, 13, 16, 8),
    ((2, 3), 130, 67, 70, 128, 64),
    ((1,), 200, 150, 133, 64, 32),
    ((3,), 5, 65, 256, 3, 7),
]


def test_reference_is_exact():
    a, b, sa, sb = _operands((2,), 33, 17, 300, 8, 4, seed=1)
    got = ref.int8_gemm(a, b, sa, sb, 8, 4)
    acc = _exact_int(a, b).float()  # |acc| < 2^24 here: exact in float32
    want = (acc * ref.expand_scale(sa, 8, 33)[..., None]) * ref.expand_scale(sb, 4, 17)[..., None, :]
    assert_bit_exact(got, want, "reference")


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize(("lead", "m", "n", "k", "block_m", "block_n"), SHAPES)
def test_cpu_matches_reference(out_dtype, lead, m, n, k, block_m, block_n):
    a, b, sa, sb = _operands(lead, m, n, k, block_m, block_n, seed=m * 1000 + n + k)
    saved = [t.clone() for t in (a, b, sa, sb)]
    got = sk.int8_gemm(a, b, sa, sb, block_m=block_m, block_n=block_n, out_dtype=out_dtype, backend="cpu")
    for t, t0, what in zip((a, b, sa, sb), saved, ("a", "b", "a_scale", "b_scale"), strict=True):
        assert_bit_exact(t, t0, f"caller's {what}")
    want = ref.int8_gemm(a, b, sa, sb, block_m, block_n, out_dtype)
    assert got.shape == (*lead, m, n) and got.dtype == out_dtype
    assert_matches(got, want, "out")


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("k", [1, 3, 4, 64, 131, 1000])
def test_cpu_vnni_and_scalar_paths_identical(out_dtype, k):
    a, b, sa, sb = _operands((2,), 67, 131, k, 16, 64, seed=k)
    sa[0, 1] = float("nan")
    sb[1, 0] = float("inf")
    vec = ops_mod._run_native(a, b, sa, sb, 16, 64, out_dtype, force_scalar=False)
    sca = ops_mod._run_native(a, b, sa, sb, 16, 64, out_dtype, force_scalar=True)
    assert_bit_exact(vec, sca, "vnni vs scalar")
    assert_matches(sca, ref.int8_gemm(a, b, sa, sb, 16, 64, out_dtype), "scalar vs reference")


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_cpu_multithreaded_size(out_dtype):
    # >= 2^24 multiply-adds: the VNNI path runs its OpenMP region (smaller problems run on one thread)
    a, b, sa, sb = _operands((2,), 301, 255, 131, 128, 64, seed=21)
    assert a.shape[0] * 301 * 255 * 131 >= 2**24
    vec = ops_mod._run_native(a, b, sa, sb, 128, 64, out_dtype, force_scalar=False)
    sca = ops_mod._run_native(a, b, sa, sb, 128, 64, out_dtype, force_scalar=True)
    assert_bit_exact(vec, sca, "vnni vs scalar")
    assert_matches(vec, ref.int8_gemm(a, b, sa, sb, 128, 64, out_dtype), "vnni vs reference")


def test_vnni_path_reported():
    # informational: the VNNI test above compares two scalar runs on machines without VNNI
    assert isinstance(_lib.native().int8_gemm_cpu_vnni(), bool)


def test_extreme_values_and_largest_k():
    # -128 is allowed in a and b: the largest |product| is (-128)·(-128) = 16384, and with K = MAX_K
    # the sum 16384 · 131071 = 2^31 - 16384 still fits in int32.
    k = ops_mod.MAX_K
    a = torch.full((1, 2, k), -128, dtype=torch.int8)
    a[0, 1] = 127
    b = torch.full((1, 3, k), -128, dtype=torch.int8)
    b[0, 1] = 127
    b[0, 2, ::2] = 127
    sa, sb = torch.ones(1, 1), torch.ones(1, 1)
    exact = _exact_int(a, b)
    assert exact.abs().max().item() == 16384 * k
    for force_scalar in (False, True):
        got = ops_mod._run_native(a, b, sa, sb, 128, 64, torch.float32, force_scalar=force_scalar)
        assert_bit_exact(got, exact.float(), f"force_scalar={force_scalar}")
    assert_bit_exact(sk.int8_gemm(a, b, sa, sb, backend="torch"), exact.float(), "reference")


def test_all_zero_inputs_and_nonfinite_scales():
    a, b, sa, sb = _operands((2,), 40, 70, 24, 16, 32, seed=3)
    a[0] = 0  # all-zero operand: exact zeros (scale 0 too)
    sa[0] = 0.0
    sa[1, 1] = float("nan")  # NaN scale (a non-finite quantizer block): NaN rows
    sb[1, 2] = float("inf")  # inf scale: inf/NaN columns, as the formula says
    for backend in ("torch", "cpu"):
        out = sk.int8_gemm(a, b, sa, sb, block_m=16, block_n=32, backend=backend)
        assert (out[0] == 0).all()
        assert torch.isnan(out[1, 16:32]).all()
        assert_matches(out, ref.int8_gemm(a, b, sa, sb, 16, 32), backend)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_quantized_qk_close_to_float64(backend):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 300, 64, generator=g)
    kk = torch.randn(2, 3, 190, 64, generator=g) + 0.3
    qi, qs, _ = sk.quantize_int8_per_block(q, 128)
    ki, ks, _ = sk.quantize_int8_per_block(kk, 64)
    got = sk.int8_gemm(qi, ki, qs, ks, backend=backend)
    assert_bit_exact(got, ref.int8_gemm(qi, ki, qs, ks, 128, 64), "vs reference")
    want = torch.matmul(q.double(), kk.double().transpose(-1, -2))
    # per-element quantization error <= scale / 2 on each operand
    sq = ref.expand_scale(qs, 128, 300).double()[..., None]
    sk_ = ref.expand_scale(ks, 64, 190).double()[..., None, :]
    qa = q.double().abs().sum(-1, keepdim=True)
    ka = kk.double().abs().sum(-1)[..., None, :]
    bound = 1.01 * (0.5 * sq * ka + 0.5 * sk_ * qa + 0.25 * 64 * sq * sk_) + 1e-5 * want.abs() + 1e-6
    assert ((got.double() - want).abs() <= bound).all()
    cos = torch.nn.functional.cosine_similarity(got.double().flatten(), want.flatten(), dim=0)
    assert cos.item() > 0.999


def test_auto_backend_is_cpu():
    assert _backend.resolve_backend("int8_gemm", "auto", torch.device("cpu")) == "cpu"
    a, b, sa, sb = _operands((), 9, 10, 11, 128, 64, seed=2)
    assert_bit_exact(sk.int8_gemm(a, b, sa, sb), ref.int8_gemm(a, b, sa, sb), "auto")


def test_bad_inputs():
    a, b, sa, sb = _operands((2,), 8, 6, 4, 4, 4, seed=0)

    def call(**kw):
        args = {"a": a, "b": b, "a_scale": sa, "b_scale": sb, "block_m": 4, "block_n": 4} | kw
        return sk.int8_gemm(args.pop("a"), args.pop("b"), args.pop("a_scale"), args.pop("b_scale"), **args)

    with pytest.raises(TypeError, match="a "):
        call(a=a.numpy())
    with pytest.raises(TypeError, match="a "):
        call(a=a.float())
    with pytest.raises(TypeError, match="b "):
        call(b=b.to(torch.uint8))
    with pytest.raises(TypeError, match="a_scale"):
        call(a_scale=sa.double())
    with pytest.raises(TypeError, match="b_scale"):
        call(b_scale=sb.half())
    with pytest.raises(ValueError, match="a "):
        call(a=a[0, 0])
    with pytest.raises(ValueError, match="contiguous"):
        call(a=a.transpose(-1, -2).contiguous().transpose(-1, -2))
    with pytest.raises(ValueError, match="leading dims"):
        call(b=b[:1])
    with pytest.raises(ValueError, match="leading dims"):
        call(b=b[0])
    with pytest.raises(ValueError, match="K"):
        call(b=b[..., :3].contiguous())
    with pytest.raises(ValueError, match="M, N, K"):
        call(a=a[..., :0].contiguous(), b=b[..., :0].contiguous())
    with pytest.raises(ValueError, match="a_scale"):
        call(a_scale=sa[..., :1].contiguous())
    with pytest.raises(ValueError, match="b_scale"):
        call(block_n=2)
    with pytest.raises(ValueError, match="block_m"):
        call(block_m=0)
    with pytest.raises(TypeError, match="block_n"):
        call(block_n=4.0)
    with pytest.raises(TypeError, match="out_dtype"):
        call(out_dtype=torch.float64)
    with pytest.raises(TypeError, match="out_dtype"):
        call(out_dtype="float32")
    with pytest.raises(ValueError, match="backend"):
        call(backend="gpu")
    with pytest.raises(RuntimeError, match="cuda"):
        call(backend="cuda")
    big = torch.zeros(1, 1, ops_mod.MAX_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="131071"):
        sk.int8_gemm(big, big, torch.ones(1, 1), torch.ones(1, 1))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_opcheck(backend, out_dtype):
    a, b, sa, sb = _operands((2,), 19, 13, 24, 8, 4, seed=4)
    torch.library.opcheck(
        torch.ops.shared_kernels.int8_gemm.default, (a, b, sa, sb, 8, 4, out_dtype, backend)
    )


def test_torch_compile_fullgraph():
    a, b, sa, sb = _operands((2,), 40, 24, 32, 16, 8, seed=9)

    def f(x, y):
        return sk.int8_gemm(x, y, sa, sb, block_m=16, block_n=8, out_dtype=torch.float16, backend="cpu")

    got = torch.compile(f, fullgraph=True, backend="eager")(a, b)
    assert_bit_exact(got, f(a, b), "compiled")


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_triton_matches_reference(out_dtype):
    pytest.importorskip("triton")
    if not _backend.backend_status("triton", "cpu")[0] and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a, b, sa, sb = _operands((2,), 45, 37, 70, 16, 8, seed=11)
    sa[1, 0] = float("nan")
    a, b, sa, sb = (t.to(dev) for t in (a, b, sa, sb))
    got = sk.int8_gemm(a, b, sa, sb, block_m=16, block_n=8, out_dtype=out_dtype, backend="triton")
    assert_matches(got, ref.int8_gemm(a, b, sa, sb, 16, 8, out_dtype), "triton")


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize(
    ("lead", "m", "n", "k", "block_m", "block_n"), [*SHAPES, ((2, 4), 1000, 1000, 128, 128, 64)]
)
def test_cuda_matches_reference(out_dtype, lead, m, n, k, block_m, block_n):
    a, b, sa, sb = (t.cuda() for t in _operands(lead, m, n, k, block_m, block_n, seed=13))
    saved = [t.clone() for t in (a, b, sa, sb)]
    got = sk.int8_gemm(a, b, sa, sb, block_m=block_m, block_n=block_n, out_dtype=out_dtype, backend="cuda")
    for t, t0 in zip((a, b, sa, sb), saved, strict=True):
        assert_bit_exact(t, t0, "caller's input")
    assert_matches(got, ref.int8_gemm(a, b, sa, sb, block_m, block_n, out_dtype), "cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
def test_cuda_unaligned_k_and_extremes():
    k = 4099  # not a multiple of 16: the byte-wise load path
    a = torch.full((1, 70, k), -128, dtype=torch.int8).cuda()
    b = torch.full((1, 90, k), -128, dtype=torch.int8).cuda()
    b[0, ::3] = 127
    sa, sb = torch.ones(1, 1).cuda(), torch.ones(1, 2).cuda()
    got = sk.int8_gemm(a, b, sa, sb, backend="cuda")
    assert_bit_exact(got, _exact_int(a.cpu(), b.cpu()).float().cuda(), "cuda")
