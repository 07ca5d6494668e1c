"""SageAttention2 INT4 QKᵀ forward: nibble packing, INT4 per-thread quantizers, Q-smoothing bias, the
reference against float64 attention, the op's validation, and (``cuda``-marked) the kernel."""

from __future__ import annotations

import math

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _lib
from shared_kernels.reference import sage_attention as ref8
from shared_kernels.reference import sage_attention_int4 as ref
from shared_kernels.testing import assert_bit_exact, attention_inputs, cos_rl1, exact_attention


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _quantized(b, hq, hkv, nq, nk, d, seed, fp8=False, warp_q=32, smooth_q=True, bias_rows=64):
    qf, kf, vf = attention_inputs(b, hq, hkv, nq, nk, d, seed, q_bias=2.0)
    bias = None
    qq = qf
    if smooth_q:
        qq, qm = ref.smooth_q_per_block(qf, bias_rows)
        bias = ref.q_mean_bias(qm, kf, d**-0.5)
    q4, qs = ref.quantize_q_per_thread_int4(qq, warp_q)
    k4, ks = ref.quantize_k_per_thread_int4(kf)
    v8, vs = ref8.quantize_v_per_channel_fp8(vf) if fp8 else (vf.half(), None)
    return (q4, k4, v8, qs, ks, vs), bias, (qf, kf, vf)


# ---- packing and quantizers ---------------------------------------------------------------------


def test_pack_nibble_order_and_roundtrip():
    x = torch.tensor([[1, -2, 7, -8, 0, 3]], dtype=torch.int8)
    p = sk.pack_int4(x)
    assert p.dtype == torch.uint8 and p.tolist() == [[0xE1, 0x87, 0x30]]  # element 2i in the low nibble
    g = torch.Generator().manual_seed(0)
    y = torch.randint(-8, 8, (3, 5, 64), generator=g, dtype=torch.int8)
    assert_bit_exact(sk.unpack_int4(sk.pack_int4(y)), y, "roundtrip")


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (torch.zeros(2, 3, dtype=torch.int8), ValueError, "even last dimension"),
        (torch.full((2, 4), 8, dtype=torch.int8), ValueError, r"outside the int4 range"),
        (torch.zeros(2, 4), TypeError, "x has dtype"),
    ],
)
def test_pack_rejects_bad_input(x, exc, match):
    with pytest.raises(exc, match=match):
        sk.pack_int4(x)


@pytest.mark.parametrize("role", ["q", "k"])
def test_int4_quantizers_round_within_half_a_step(role):
    qf, kf, _ = attention_inputs(1, 2, 2, 77, 77, 64, seed=1, q_bias=2.0)
    x = qf if role == "q" else kf
    if role == "q":
        p, sc = ref.quantize_q_per_thread_int4(x, 16, sm_scale=1.0)
        sc = sc / ref8.LOG2E
        idx = ref8.q_group_index(77, 16)
    else:
        p, sc = ref.quantize_k_per_thread_int4(x)
        idx = ref8.k_group_index(77)
    xi = ref.unpack_int4(p)
    assert xi.abs().max().item() == 7  # [-7, 7]: every group's max maps to +-7
    s = sc[..., idx][..., None]
    assert ((xi.float() * s - x).abs() <= 0.5 * s * (1 + 1e-5)).all()
    amax = x.abs().amax(-1)
    for grp in range(int(idx.max()) + 1):  # scale = group amax / 7
        rows = (idx == grp).nonzero().flatten()
        torch.testing.assert_close(sc[..., grp], amax[..., rows].amax(-1) / 7, rtol=1e-6, atol=0)


def test_smooth_q_bias_is_exact():
    qf, kf, _ = attention_inputs(1, 4, 2, 100, 30, 64, seed=2, q_bias=2.0)
    qs, qm = ref.smooth_q_per_block(qf, 32)
    assert qm.shape == (1, 4, 4, 64)
    bias = ref.q_mean_bias(qm, kf, 0.125)
    kk = kf.repeat_interleave(2, 1).double()
    full = qf.double() @ kk.transpose(-1, -2)
    parts = qs.double() @ kk.transpose(-1, -2) + bias.double().repeat_interleave(32, -2)[..., :100, :] / (
        0.125 * ref8.LOG2E
    )
    torch.testing.assert_close(parts, full, rtol=1e-5, atol=1e-4)
    assert qs.view(1, 4, -1, 64)[..., :96, :].reshape(1, 4, 3, 32, 64).mean(-2).abs().max() < 1e-5


# ---- reference ----------------------------------------------------------------------------------


def test_reference_without_bias_is_the_int8_reference_on_the_unpacked_values():
    (q4, k4, v, qs, ks, _), _, _ = _quantized(2, 4, 2, 50, 70, 64, seed=3, smooth_q=False)
    out, lse = ref.sage_attention_fwd_int4(q4, k4, v, qs, ks, is_causal=True, out_dtype=torch.bfloat16)
    want, want_lse = ref8.sage_attention_fwd(
        ref.unpack_int4(q4), ref.unpack_int4(k4), v, qs, ks, None, True, 32, torch.bfloat16
    )
    assert_bit_exact(out, want, "out")
    assert_bit_exact(lse, want_lse, "lse")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fp8", [False, True])
def test_reference_close_to_float64_attention_and_smoothing_q_helps(causal, fp8):
    b, hq, hkv, nq, nk, d = 1, 4, 2, 130, 97, 64
    args, bias, (qf, kf, vf) = _quantized(b, hq, hkv, nq, nk, d, seed=4, fp8=fp8)
    want, want_lse = exact_attention(qf, kf, vf, causal)
    out, lse = ref.sage_attention_fwd_int4(*args, bias=bias, is_causal=causal, out_dtype=torch.float32)
    cos_sq = cos_rl1(out, want)[0]
    assert cos_sq > 0.99, cos_sq
    torch.testing.assert_close(lse.double(), want_lse, atol=0.5, rtol=0)  # INT4 score error: ~δ/2 per product
    # without Q smoothing the channel offset eats the INT4 range: clearly worse
    args_ns, _, _ = _quantized(b, hq, hkv, nq, nk, d, seed=4, fp8=fp8, smooth_q=False)
    out_ns, _ = ref.sage_attention_fwd_int4(*args_ns, is_causal=causal, out_dtype=torch.float32)
    assert 1 - cos_rl1(out_ns, want)[0] > 2 * (1 - cos_sq), (cos_rl1(out_ns, want)[0], cos_sq)
    # and dropping the bias of smoothed Q is wrong maths, not a rounding difference
    out_nb, _ = ref.sage_attention_fwd_int4(*args, is_causal=causal, out_dtype=torch.float32)
    assert cos_rl1(out_nb, want)[0] < cos_sq - 0.01


# ---- the op -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fp8", [False, True])
def test_op_torch_backend_is_the_reference_and_leaves_inputs_alone(fp8):
    args, bias, _ = _quantized(2, 4, 2, 50, 70, 128, seed=5, fp8=fp8, warp_q=16, bias_rows=32)
    saved = [None if t is None else t.clone() for t in (*args, bias)]
    out, lse = sk.sage_attention_fwd_int4(
        *args, bias=bias, bias_rows=32, is_causal=True, warp_q=16, out_dtype=torch.bfloat16
    )
    want, want_lse = ref.sage_attention_fwd_int4(*args, bias, 32, True, 16, torch.bfloat16)
    assert out.shape == (2, 4, 50, 128) and lse.shape == (2, 4, 50)
    assert_bit_exact(out, want, "out")
    assert_bit_exact(lse, want_lse, "lse")
    for t, t0 in zip((*args, bias), saved, strict=True):
        if t is not None:
            assert torch.equal(t.view(torch.uint8), t0.view(torch.uint8)), "caller's input changed"


def test_empty_queries():
    (q4, k4, v, qs, ks, _), _, _ = _quantized(1, 2, 1, 0, 10, 64, seed=6, smooth_q=False)
    out, lse = sk.sage_attention_fwd_int4(q4, k4, v, qs, ks)
    assert out.shape == (1, 2, 0, 64) and lse.shape == (1, 2, 0)


def _bad_inputs():
    (q4, k4, v, qs, ks, _), bias, _ = _quantized(1, 4, 2, 20, 30, 64, seed=7)
    (_, _, f8, _, _, vs), _, _ = _quantized(1, 4, 2, 20, 30, 64, seed=7, fp8=True)
    good = dict(q=q4, k=k4, v=v, q_scale=qs, k_scale=ks, bias=bias)
    return good, [
        (dict(q=ref.unpack_int4(q4)), TypeError, "q has dtype int8"),
        (dict(k=k4.to(torch.int16)), TypeError, "k has dtype int16"),
        (dict(q=q4[0]), ValueError, "q must have 4 dimensions"),
        (dict(q=torch.zeros(1, 4, 20, 48, dtype=torch.uint8)), ValueError, "head dim 96"),
        (dict(k=torch.zeros(1, 2, 30, 16, dtype=torch.uint8)), ValueError, "k must be"),
        (dict(k=torch.zeros(1, 3, 30, 32, dtype=torch.uint8)), ValueError, "multiple of the kv heads"),
        (dict(k=k4[:, :, :0]), ValueError, "at least 1"),
        (dict(v=v[..., :32].contiguous()), ValueError, "v must have shape"),
        (dict(q_scale=qs[..., :7].contiguous()), ValueError, "q_scale must be"),
        (dict(k_scale=ks[..., :3].contiguous()), ValueError, "k_scale must be"),
        (dict(v=f8), ValueError, "v_scale float32"),
        (dict(v_scale=vs), ValueError, "only used with a float8_e4m3fn v"),
        (dict(bias=bias.double()), TypeError, "bias has dtype"),
        (dict(bias=bias[:, :, :, :5].contiguous()), ValueError, "bias must have shape"),
        (dict(bias_rows=24), ValueError, "multiple of 16"),
        (dict(bias_rows=8), ValueError, "bias_rows must be >= 16"),
        (dict(is_causal=1), TypeError, "is_causal must be a bool"),
        (dict(warp_q=64), ValueError, "warp_q=64"),
        (dict(out_dtype=torch.float32), TypeError, "out_dtype"),
        (dict(backend="cpu"), ValueError, "no 'cpu' backend"),
        (dict(backend="cuda"), RuntimeError, "cuda"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs()[1])))
def test_bad_input_raises(case):
    good, cases = _bad_inputs()
    change, exc, match = cases[case]
    with pytest.raises(exc, match=match):
        sk.sage_attention_fwd_int4(**{**good, **change})


def test_unknown_keyword_is_an_error():
    good, _ = _bad_inputs()
    with pytest.raises(TypeError, match="smooth"):
        sk.sage_attention_fwd_int4(**good, smooth=True)


def test_opcheck():
    (q4, k4, v, qs, ks, _), bias, _ = _quantized(1, 2, 1, 9, 11, 64, seed=8)
    torch.library.opcheck(
        torch.ops.shared_kernels.sage_attention_fwd_int4.default,
        (q4, k4, v, qs, ks, None, bias, 64, True, 16, torch.float16, "torch"),
    )


def test_kernel_specs_list_the_int4_kernels():
    from shared_kernels import kernel_specs

    names = {s.name: s for s in kernel_specs.CUDA_KERNELS}
    assert names["sage_attn_fwd_int4_fp16pv"].match == "sk_sage_attn_fwd_int4_f16pv_kernel"
    assert names["sage_attn_fwd_int4_fp8pv"].expect[80] == ("none",)
    # the INT8 kernels' match strings do not catch the INT4 kernels
    assert "sk_sage_attn_fwd_f16pv_kernel" not in "sk_sage_attn_fwd_int4_f16pv_kernel"


# ---- CUDA kernel against the reference (GPU only) -----------------------------------------------

CUDA_SHAPES = [  # b, hq, hkv, nq, nk, d
    (1, 1, 1, 1, 1, 64),
    (2, 4, 2, 77, 130, 64),
    (1, 3, 1, 130, 67, 128),
    (1, 2, 2, 200, 333, 128),
    (1, 2, 1, 1000, 999, 128),
]


def _emulate_kernel(q4, k4, v, qs, ks, vs, bias, bias_rows, causal, warp_q, out_dtype):
    """The kernel's order in float32: 64-key blocks, running max, P rounded against it."""
    q8, k8 = ref.unpack_int4(q4), ref.unpack_int4(k4)
    nq, nk = q8.shape[-2], k8.shape[-2]
    rep = q8.shape[1] // k8.shape[1]
    fp8 = v.dtype == torch.float8_e4m3fn
    off = math.log2(ref8.FP8_P_SCALE) if fp8 else 0.0
    k = k8.repeat_interleave(rep, 1).double()
    vv = v.repeat_interleave(rep, 1).float()
    ksr = ks.repeat_interleave(rep, 1)[..., ref8.k_group_index(nk)]
    qsr = qs[..., ref8.q_group_index(nq, warp_q)]
    bfull = None if bias is None else bias.repeat_interleave(bias_rows, -2)[..., :nq, :]
    m = torch.full(q8.shape[:-1], float("-inf"))
    lsum = torch.zeros(q8.shape[:-1])
    o = torch.zeros(v.shape[0], q8.shape[1], nq, v.shape[-1])
    rows = torch.arange(nq)[:, None]
    for k0 in range(0, nk, 64):
        k1 = min(k0 + 64, nk)
        s = (q8.double() @ k[..., k0:k1, :].transpose(-1, -2)).float() * (
            qsr[..., :, None] * ksr[..., None, k0:k1]
        )
        if bfull is not None:
            s = s + bfull[..., k0:k1]
        if causal:
            s = s.masked_fill(torch.arange(k0, k1)[None, :] > rows, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        alpha = torch.exp2(m - m_use)
        p = torch.exp2(s - m_use[..., None] + off)
        lsum = lsum * alpha + p.sum(-1)
        pr = p.to(torch.float8_e4m3fn).float() if fp8 else p.half().float()
        o = o * alpha[..., None] + pr @ vv[..., k0:k1, :]
        m = m_new
    o = o / lsum[..., None]
    if fp8:
        o = o * vs.repeat_interleave(rep, 1)[..., None, :]
    return o.to(out_dtype), (m + torch.log2(lsum) - off) * math.log(2.0)


@pytest.mark.parametrize("case", [1, 2])
def test_emulation_meets_the_cuda_tolerances(case):
    b, hq, hkv, nq, nk, d = CUDA_SHAPES[case]
    args, bias, _ = _quantized(b, hq, hkv, nq, nk, d, seed=200 + case, warp_q=16)
    want, want_lse = ref.sage_attention_fwd_int4(*args, bias, 64, True, 16, torch.float32)
    out, lse = _emulate_kernel(*args, bias, 64, True, 16, torch.float16)
    torch.testing.assert_close(lse, want_lse, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(out.float(), want, atol=2e-3 * want.abs().max().item(), rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fp8", [False, True], ids=["pv_fp16", "pv_fp8"])
@pytest.mark.parametrize("smooth_q", [False, True])
@pytest.mark.parametrize("case", range(len(CUDA_SHAPES)))
def test_cuda_matches_reference(case, smooth_q, fp8, causal):
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 PV needs sm89+")
    b, hq, hkv, nq, nk, d = CUDA_SHAPES[case]
    warp_q = (16, 32)[case % 2]
    bias_rows = (64, 128, 16)[case % 3]
    out_dtype = (torch.float16, torch.bfloat16)[(case // 2) % 2]
    args, bias, _ = _quantized(b, hq, hkv, nq, nk, d, 300 + case, fp8, warp_q, smooth_q, bias_rows)
    cargs = [None if t is None else t.cuda() for t in (*args, bias)]
    saved = [None if t is None else t.clone() for t in cargs]
    out, lse = sk.sage_attention_fwd_int4(
        *cargs[:6], bias=cargs[6], bias_rows=bias_rows, is_causal=causal, warp_q=warp_q,
        out_dtype=out_dtype, backend="cuda",
    )  # fmt: skip
    for t, t0 in zip(cargs, saved, strict=True):
        if t is not None:
            assert torch.equal(t.view(torch.uint8), t0.view(torch.uint8)), "caller's input changed"
    out, lse = out.cpu().float(), lse.cpu()
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()  # poisoned: every element written
    emu, emu_lse = _emulate_kernel(*args, bias, bias_rows, causal, warp_q, out_dtype)
    assert cos_rl1(out, emu.float())[0] >= 0.99999
    torch.testing.assert_close(lse, emu_lse, atol=1e-4, rtol=1e-5)
    want, _ = ref.sage_attention_fwd_int4(*args, bias, bias_rows, causal, warp_q, torch.float32)
    assert cos_rl1(out, want)[0] >= (0.999 if fp8 else 0.9999)
