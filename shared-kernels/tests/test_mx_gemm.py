"""MX block-scaled GEMM (shared_kernels.mx_gemm): torch reference against a hand-written
dequantize->matmul, the CUTLASS scale layout against its index formula, bad input, and the CUTLASS
sm100a kernel against the reference on a Blackwell GPU (cuda marker)."""

import pytest
import shared_kernels as sk
import torch
from shared_kernels.ops.mx_gemm import mx_scales_to_blocked


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny GEMMs: one thread (a shared 2-core machine makes the default pool spin for seconds)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _hand_dequant(data: torch.Tensor, scales: torch.Tensor, fmt: str) -> torch.Tensor:
    """Independent decode: E2M1 nibbles by table (low nibble first), float8 by torch's cast."""
    if fmt == "mxfp4":
        d = data.to(torch.int64)
        codes = torch.stack((d & 0xF, d >> 4), dim=-1).reshape(data.shape[0], -1)
        vals = E2M1[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    else:
        vals = data.float()
    scale = torch.exp2(scales.to(torch.float64) - 127).float()
    return vals * scale.repeat_interleave(32, dim=1)


def _operands(m, n, k, fmt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.logspace(-4, 4, k)
    w = torch.randn(n, k, generator=g)
    return sk.quantize_mx(x, fmt), sk.quantize_mx(w, fmt)


@pytest.mark.parametrize(
    ("fmt", "m", "n", "k", "out_dtype"),
    [
        ("mxfp4", 37, 21, 96, torch.float32),
        ("mxfp4", 1, 130, 32, torch.bfloat16),
        ("mxfp8_e4m3", 45, 7, 160, torch.float32),
        ("mxfp8_e4m3", 129, 3, 64, torch.bfloat16),
    ],
)
def test_torch_backend_matches_hand_reference(fmt, m, n, k, out_dtype):
    qa, qb = _operands(m, n, k, fmt, m + n + k)
    before = [t.clone() for t in (qa.data, qa.scales, qb.data, qb.scales)]
    out = sk.mx_gemm(qa.data, qa.scales, qb.data, qb.scales, fmt, out_dtype=out_dtype)  # auto -> torch here
    a, b = _hand_dequant(qa.data, qa.scales, fmt), _hand_dequant(qb.data, qb.scales, fmt)
    ref = a.double() @ b.double().T
    assert out.shape == (m, n) and out.dtype == out_dtype
    bound = 2 * k * torch.finfo(torch.float32).eps * (a.abs().double() @ b.abs().double().T)
    if out_dtype == torch.bfloat16:
        bound = bound + ref.abs() * 2**-8
    assert ((out.double() - ref).abs() <= bound + 1e-30).all()
    for t0, t in zip(before, (qa.data, qa.scales, qb.data, qb.scales), strict=True):
        assert torch.equal(t0.view(torch.uint8), t.view(torch.uint8))


def test_nan_scale_propagates_and_zero_blocks_stay_finite():
    qa, qb = _operands(2, 3, 64, "mxfp4", 0)
    sa = qa.scales.clone()
    sa[0, 1] = 255  # E8M0 NaN
    sa[1] = 0  # 2^-127
    out = sk.mx_gemm(qa.data, sa, qb.data, qb.scales, out_dtype=torch.float32)
    assert torch.isnan(out[0]).all()
    assert torch.isfinite(out[1]).all()


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (130, 5), (128, 4), (257, 9)])
def test_blocked_scale_layout_matches_cutlass_index_formula(rows, cols):
    s = torch.randint(0, 255, (rows, cols), dtype=torch.uint8)
    flat = mx_scales_to_blocked(s)
    rb, cb = -(-rows // 128), -(-cols // 4)
    assert flat.shape == (rb * cb * 512,)
    for r in range(rows):
        for c in range(cols):
            tile = (r // 128) * cb + c // 4
            off = tile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
            assert flat[off] == s[r, c], (r, c)
    pad = torch.ones(flat.shape, dtype=torch.bool)
    for r in range(rows):
        for c in range(cols):
            pad[((r // 128) * cb + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4] = False
    assert (flat[pad] == 127).all()


def test_opcheck():
    qa, qb = _operands(5, 6, 64, "mxfp4", 1)
    torch.library.opcheck(
        torch.ops.shared_kernels.mx_gemm,
        (qa.data, qa.scales, qb.data, qb.scales, "mxfp4", torch.float32, "torch"),
    )


def test_cuda_backend_says_why_it_is_missing():
    qa, qb = _operands(4, 8, 64, "mxfp4", 2)
    with pytest.raises(RuntimeError, match="mx_gemm: backend 'cuda' is not available"):
        sk.mx_gemm(qa.data, qa.scales, qb.data, qb.scales, backend="cuda")
    ok, why = sk.mx_gemm_sm100_available("cpu")
    assert not ok and why


def _good():
    qa, qb = _operands(4, 8, 64, "mxfp4", 3)
    return {"a_data": qa.data, "a_scales": qa.scales, "b_data": qb.data, "b_scales": qb.scales}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fmt": "mxfp8_e5m2"}, ValueError, "fmt='mxfp8_e5m2' is not supported"),
        ({"fmt": "mxfp8_e4m3"}, TypeError, "a_data has dtype uint8; supported: float8_e4m3fn"),
        ({"a_scales": torch.zeros(4, 2, dtype=torch.float32)}, TypeError, "a_scales has dtype float32"),
        ({"b_scales": torch.zeros(8, 3, dtype=torch.uint8)}, ValueError, r"b_scales must have shape \(8, K / 32 = 2\)"),
        ({"b_data": torch.zeros(8, 16, dtype=torch.uint8)}, ValueError, "b_data must have K = 64"),
        ({"a_data": torch.zeros(4, 8, dtype=torch.uint8), "b_data": torch.zeros(8, 8, dtype=torch.uint8),
          "a_scales": torch.zeros(4, 0, dtype=torch.uint8), "b_scales": torch.zeros(8, 0, dtype=torch.uint8)},
         ValueError, "K a positive multiple of 32"),
        ({"a_data": torch.zeros(8, 32, dtype=torch.uint8).t()}, ValueError, "a_data must be contiguous"),
        ({"a_data": torch.zeros(2, 4, 32, dtype=torch.uint8)}, ValueError, "a_data must have 2 dimensions"),
        ({"out_dtype": torch.float16}, TypeError, "out_dtype=torch.float16 is not supported"),
        ({"out_dtype": "bf16"}, TypeError, "out_dtype must be a torch.dtype"),
        ({"backend": "triton"}, ValueError, "backend='triton' is not supported"),
        ({"b_data": [0]}, TypeError, "b_data must be a torch.Tensor"),
    ],
)  # fmt: skip
def test_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sk.mx_gemm(**{**_good(), **kwargs})


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError):
        sk.mx_gemm(**_good(), alpha=2.0)


@pytest.mark.cuda
@pytest.mark.parametrize(("fmt", "out_dtype"), [("mxfp4", torch.bfloat16), ("mxfp8_e4m3", torch.float32)])
def test_cutlass_sm100_matches_reference(fmt, out_dtype):
    ok, why = sk.mx_gemm_sm100_available("cuda")
    if not ok:
        pytest.skip(why)
    for m, n, k in ((300, 264, 320), (1, 8, 32), (129, 136, 1056)):
        qa, qb = _operands(m, n, k, fmt, m)
        qa = sk.MXQuantized(qa.data.cuda(), qa.scales.cuda(), fmt, -1, qa.shape)
        qb = sk.MXQuantized(qb.data.cuda(), qb.scales.cuda(), fmt, -1, qb.shape)
        out = sk.mx_gemm(qa.data, qa.scales, qb.data, qb.scales, fmt, out_dtype=out_dtype, backend="cuda")
        ref = sk.mx_gemm(
            qa.data, qa.scales, qb.data, qb.scales, fmt, out_dtype=torch.float32, backend="torch"
        )
        torch.testing.assert_close(
            out.float(), ref, rtol=1e-2 if out_dtype == torch.bfloat16 else 1e-5, atol=1e-3
        )
