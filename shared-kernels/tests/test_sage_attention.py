"""SageAttention2 forward (INT8 QKᵀ per-thread, FP16/FP8 PV): the reference against float64 attention,
the op's validation, and (``cuda``-marked) the CUDA kernel against the reference on awkward shapes."""

from __future__ import annotations

import math

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _lib
from shared_kernels.reference import sage_attention as ref
from shared_kernels.testing import assert_bit_exact, attention_inputs, cos_rl1, exact_attention


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small float64 matmuls: one thread is faster than many on a shared, oversubscribed machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _quantized(b, hq, hkv, nq, nk, d, seed, fp8, warp_q=32, v_max=448.0):
    qf, kf, vf = attention_inputs(b, hq, hkv, nq, nk, d, seed)
    q8, qs = ref.quantize_q_per_thread(qf, warp_q)
    k8, ks = ref.quantize_k_per_thread(kf)
    v8, vs = ref.quantize_v_per_channel_fp8(vf, v_max) if fp8 else (vf.half(), None)
    return (q8, k8, v8, qs, ks, vs), (qf, kf, vf)


# ---- layout and quantizers ----------------------------------------------------------------------


@pytest.mark.parametrize("warp_q", [16, 32])
def test_q_groups_are_the_rows_of_one_mma_lane(warp_q):
    idx = ref.q_group_index(3 * warp_q, warp_q)
    assert idx.max().item() + 1 == ref.num_q_groups(3 * warp_q, warp_q)
    for r in range(3 * warp_q):
        lane_rows = [(r // warp_q) * warp_q + (r % 8) + 8 * i for i in range(warp_q // 8)]
        assert {idx[x].item() for x in lane_rows} == {idx[r].item()}
    assert len(set(idx[:16].tolist())) == 8  # one 16-row mma tile: 8 lane groups


def test_k_groups_are_the_columns_of_one_mma_lane():
    idx = ref.k_group_index(130)
    assert ref.num_k_groups(130) == 12 and idx.max().item() == 8  # 3 blocks; keys 128, 129: t = 0 -> entry 8
    for n in range(130):
        t = (n % 8) // 2  # lane t holds score columns 2t, 2t + 1 of every n8 tile
        assert idx[n].item() == (n // 64) * 4 + t


@pytest.mark.parametrize("kind", ["q16", "q32", "k"])
def test_quantizers_round_within_half_a_step(kind):
    x = torch.randn(2, 3, 77, 64) * torch.linspace(0.1, 5.0, 64)
    x[0, 0, 5] = 0.0
    if kind == "k":
        xi, s = ref.quantize_k_per_thread(x)
        idx = ref.k_group_index(77)
    else:
        wq = int(kind[1:])
        xi, s = ref.quantize_q_per_thread(x, wq, sm_scale=1.0 / ref.LOG2E)
        idx = ref.q_group_index(77, wq)
    srow = s[..., idx][..., None]
    amax = torch.zeros_like(s).scatter_reduce(-1, idx.expand(2, 3, 77), x.abs().amax(-1), "amax")
    torch.testing.assert_close(s, amax / 127, rtol=1e-6, atol=0)
    assert (xi.float() * srow - x).abs().le(srow / 2 * (1 + 1e-5) + 1e-30).all()


def test_dequant_scores_formula():
    (q8, k8, _, qs, ks, _), _ = _quantized(1, 4, 2, 33, 70, 64, seed=3, fp8=False)
    s = ref.dequant_scores(q8, k8, qs, ks, 32)
    qd = q8.double() * qs.double()[..., ref.q_group_index(33, 32)][..., None]
    kd = (k8.double() * ks.double()[..., ref.k_group_index(70)][..., None]).repeat_interleave(2, 1)
    torch.testing.assert_close(s, qd @ kd.transpose(-1, -2), rtol=1e-12, atol=1e-12)


# ---- reference vs float64 attention -------------------------------------------------------------

SHAPES = [  # b, hq, hkv, nq, nk
    (1, 1, 1, 1, 1),
    (2, 4, 2, 77, 130),
    (1, 3, 1, 130, 67),
    (1, 2, 2, 64, 200),
]


@pytest.mark.parametrize("fp8", [False, True], ids=["pv_fp16", "pv_fp8"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_close_to_float64_attention(shape, d, causal, fp8):
    (q8, k8, v8, qs, ks, vs), (qf, kf, vf) = _quantized(*shape, d, seed=sum(shape) + d, fp8=fp8)
    out, lse = ref.sage_attention_fwd(q8, k8, v8, qs, ks, vs, causal, 32, torch.float32)
    want, want_lse = exact_attention(qf, kf, vf, causal)
    cos, rl1 = cos_rl1(out, want)
    # measured: fp16 PV cos ~0.99995, rel L1 ~0.01; fp8 PV cos ~0.9994, rel L1 ~0.035
    assert cos >= (0.998 if fp8 else 0.9999), cos
    assert rl1 <= (0.06 if fp8 else 0.02), rl1
    torch.testing.assert_close(lse.double(), want_lse, atol=0.05, rtol=0)


@pytest.mark.parametrize("fp8", [False, True])
def test_reference_lse_is_logsumexp_of_its_scores(fp8):
    (q8, k8, v8, qs, ks, vs), _ = _quantized(2, 2, 1, 40, 90, 64, seed=5, fp8=fp8)
    _, lse = ref.sage_attention_fwd(q8, k8, v8, qs, ks, vs, True, 32, torch.float16)
    s = ref.dequant_scores(q8, k8, qs, ks, 32)
    s = s.masked_fill(~torch.ones(40, 90, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(lse.double(), torch.logsumexp(s * math.log(2.0), -1), rtol=1e-6, atol=1e-6)


def test_zero_scores_average_v():
    (q8, k8, v8, qs, ks, _), (_, _, vf) = _quantized(1, 2, 1, 20, 100, 64, seed=6, fp8=False)
    out, lse = sk.sage_attention_fwd(torch.zeros_like(q8), k8, v8, qs, ks, out_dtype=torch.float16)
    torch.testing.assert_close(
        out.float(), vf.half().float().mean(-2, keepdim=True).expand(1, 2, 20, 64), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(lse, torch.full_like(lse, math.log(100.0)))


# ---- P·V accumulation modes (pv_accum) ----------------------------------------------------------

F16_MODES = [(False, "fp16+fp32"), (False, "fp16"), (True, "fp32+fp16")]  # (fp8 V, pv_accum)
F16_IDS = ["fp16+fp32", "fp16", "fp8-fp32+fp16"]


def _mode_quantized(b, hq, hkv, nq, nk, d, seed, fp8, warp_q=32):
    """As :func:`_quantized`; FP8 V scaled to max 2.25 (SageAttention2++: an f16 block sum cannot overflow)."""
    return _quantized(b, hq, hkv, nq, nk, d, seed, fp8, warp_q, v_max=2.25 if fp8 else 448.0)


@pytest.mark.parametrize("fp8,mode", F16_MODES, ids=F16_IDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_f16_accumulation_close_to_float64_attention(shape, causal, fp8, mode):
    (q8, k8, v8, qs, ks, vs), (qf, kf, vf) = _mode_quantized(*shape, 64, seed=sum(shape), fp8=fp8)
    out, lse = ref.sage_attention_fwd(q8, k8, v8, qs, ks, vs, causal, 32, torch.float32, mode)
    want, want_lse = exact_attention(qf, kf, vf, causal)
    cos, rl1 = cos_rl1(out, want)
    assert cos >= (0.998 if fp8 else 0.9998), cos
    assert rl1 <= (0.06 if fp8 else 0.02), rl1
    # the row sums do not depend on the accumulator: the lse is the default mode's
    _, lse_default = ref.sage_attention_fwd(q8, k8, v8, qs, ks, vs, causal, 32, torch.float32)
    torch.testing.assert_close(lse, lse_default, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse.double(), want_lse, atol=0.05, rtol=0)


@pytest.mark.parametrize("fp8,mode", F16_MODES, ids=F16_IDS)
def test_f16_accumulation_is_exact_when_the_sums_are(fp8, mode):
    """Zero scores (P = c for every key) and small integer V: every f16 partial sum is exact, so each
    mode equals the default one bit for bit (checks the block walk, scaling and lse, not the rounding)."""
    (q8, k8, _, qs, ks, _), _ = _quantized(2, 4, 2, 37, 130, 64, seed=12, fp8=fp8)
    g = torch.Generator().manual_seed(13)
    v = torch.randint(-2 if fp8 else -4, 3 if fp8 else 5, (2, 2, 130, 64), generator=g).float()
    args = (torch.zeros_like(q8), k8, v.to(torch.float8_e4m3fn) if fp8 else v.half(), qs, ks)
    vs = torch.rand(2, 2, 64, generator=g) + 0.5 if fp8 else None
    for causal in (False, True):
        got = ref.sage_attention_fwd(*args, vs, causal, 32, torch.float32, mode)
        want = ref.sage_attention_fwd(*args, vs, causal, 32, torch.float32)
        assert_bit_exact(got[0], want[0], "out")
        torch.testing.assert_close(got[1], want[1], rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("mode", ["fp16+fp32", "fp16"])
def test_f16_accumulator_rounds_like_a_scalar_f16_loop(mode):
    """Zero scores (P = 1), V = 1 + (j·5 mod 11)·2^-10 in one channel over 3000 keys: the sums outgrow
    fp16's 2^-10 steps. The reference must round where an f16 MMA accumulator rounds: after every
    16-key k-step, the block sum kept in f16 (``fp16+fp32``, blocks added exactly) or the whole sum
    (``fp16``)."""
    import numpy as np

    nk = 3000
    x = 1.0 + ((torch.arange(nk, dtype=torch.float64) * 5) % 11) * 2.0**-10  # exact in fp16
    (q8, k8, _, qs, ks, _), _ = _quantized(1, 1, 1, 3, nk, 64, seed=14, fp8=False)
    v = torch.zeros(1, 1, nk, 64, dtype=torch.float16)
    v[0, 0, :, 0] = x.half()
    out, _ = ref.sage_attention_fwd(torch.zeros_like(q8), k8, v, qs, ks, None, False, 32, torch.float32, mode)
    total, run = 0.0, np.float16(0.0)
    for j0 in range(0, nk, 64):
        blk = run if mode == "fp16" else np.float16(0.0)
        for i0 in range(j0, min(j0 + 64, nk), 16):
            blk = np.float16(float(blk) + float(x[i0 : min(i0 + 16, nk)].sum()))
        if mode == "fp16":
            run = blk
        else:
            total += float(blk)
    acc = float(run) if mode == "fp16" else total
    assert acc != float(x.sum())  # the rounding is visible in the result
    assert out[0, 0, :, 0].tolist() == [np.float32(acc / nk)] * 3
    assert (out[..., 1:] == 0).all()


def test_f16_accumulator_overflow_is_inf():
    """An f16 block accumulator past 65504 is inf (FP8 V at scale max 448 instead of 2.25): the
    reference shows it rather than hiding it in float64."""
    (q8, k8, _, qs, ks, _), _ = _quantized(1, 1, 1, 2, 64, 64, seed=15, fp8=True)
    v = torch.full((1, 1, 64, 64), 448.0).to(torch.float8_e4m3fn)
    vs = torch.ones(1, 1, 64)
    args = (torch.zeros_like(q8), k8, v, qs, ks, vs, False, 32, torch.float32)
    assert torch.isinf(ref.sage_attention_fwd(*args, "fp32+fp16")[0]).all()
    assert torch.isfinite(ref.sage_attention_fwd(*args, "fp32+fp32")[0]).all()


@pytest.mark.parametrize("fp8,mode", [(False, "fp32"), (True, "fp32+fp32"), *F16_MODES])
def test_op_passes_pv_accum_to_the_reference(fp8, mode):
    args, _ = _mode_quantized(1, 2, 1, 30, 150, 64, seed=16, fp8=fp8)
    out, lse = sk.sage_attention_fwd(*args, is_causal=True, pv_accum=mode, out_dtype=torch.float16)
    want, want_lse = ref.sage_attention_fwd(*args, True, 32, torch.float16, mode)
    assert_bit_exact(out, want, "out")
    assert_bit_exact(lse, want_lse, "lse")
    assert ref.resolve_pv_accum(args[2].dtype, None) == ("fp32+fp32" if fp8 else "fp32")


# ---- the op -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fp8", [False, True])
def test_op_torch_backend_is_the_reference_and_leaves_inputs_alone(fp8):
    args, _ = _quantized(2, 4, 2, 50, 70, 64, seed=7, fp8=fp8)
    saved = [None if t is None else t.clone() for t in args]
    out, lse = sk.sage_attention_fwd(*args, is_causal=True, out_dtype=torch.bfloat16)
    want, want_lse = ref.sage_attention_fwd(*args, True, 32, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 50, 64) and lse.shape == (2, 4, 50)
    assert_bit_exact(out, want, "out")
    assert_bit_exact(lse, want_lse, "lse")
    for t, t0 in zip(args, saved, strict=True):
        if t is not None:
            assert_bit_exact(t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t,
                             t0.view(torch.uint8) if t0.dtype == torch.float8_e4m3fn else t0, "caller's input")  # fmt: skip


def test_empty_queries_and_padded_scales():
    (q8, k8, v8, qs, ks, _), _ = _quantized(1, 2, 1, 0, 10, 64, seed=8, fp8=False)
    out, lse = sk.sage_attention_fwd(q8, k8, v8, qs, ks)
    assert out.shape == (1, 2, 0, 64) and lse.shape == (1, 2, 0)
    # upstream pads the scale tensors to whole CTA blocks: extra entries are ignored
    (q8, k8, v8, qs, ks, _), _ = _quantized(1, 2, 1, 20, 10, 64, seed=8, fp8=False)
    qp = torch.cat([qs, torch.full((1, 2, 24), float("nan"))], -1)
    kp = torch.cat([ks, torch.full((1, 1, 4), float("nan"))], -1)
    assert_bit_exact(
        sk.sage_attention_fwd(q8, k8, v8, qp, kp)[0], sk.sage_attention_fwd(q8, k8, v8, qs, ks)[0]
    )


def _bad_inputs():
    (q8, k8, v8, qs, ks, _), _ = _quantized(1, 4, 2, 20, 30, 64, seed=9, fp8=False)
    (_, _, f8, _, _, vs), _ = _quantized(1, 4, 2, 20, 30, 64, seed=9, fp8=True)
    good = dict(q=q8, k=k8, v=v8, q_scale=qs, k_scale=ks)
    return good, [
        (dict(q=q8.float()), TypeError, "q has dtype float32"),
        (dict(k=k8.to(torch.int16)), TypeError, "k has dtype int16"),
        (dict(v=v8.float()), TypeError, "v has dtype float32"),
        (dict(q_scale=qs.double()), TypeError, "q_scale has dtype"),
        (dict(q=q8[0]), ValueError, "q must have 4 dimensions"),
        (dict(q=q8.transpose(2, 3)), ValueError, "q must be contiguous"),
        (dict(q=torch.zeros(1, 4, 20, 96, dtype=torch.int8)), ValueError, "head dim 96"),
        (dict(k=torch.zeros(1, 3, 30, 64, dtype=torch.int8)), ValueError, "multiple of the kv heads"),
        (dict(k=k8[:, :, :0]), ValueError, "at least 1"),
        (dict(v=v8[:, :, :29].contiguous()), ValueError, "v must have k's shape"),
        (dict(q_scale=qs[..., :7].contiguous()), ValueError, "q_scale must be"),
        (dict(k_scale=ks[..., :3].contiguous()), ValueError, "k_scale must be"),
        (dict(v=f8), ValueError, "v_scale float32"),
        (dict(v=f8, v_scale=vs[..., :5].contiguous()), ValueError, "v_scale must have shape"),
        (dict(v_scale=vs), ValueError, "only used with a float8_e4m3fn v"),
        (dict(is_causal=1), TypeError, "is_causal must be a bool"),
        (dict(warp_q=64), ValueError, "warp_q=64"),
        (dict(out_dtype=torch.float32), TypeError, "out_dtype"),
        (dict(pv_accum="fp32+fp16"), ValueError, r"pv_accum='fp32\+fp16' is not supported with fp16 v"),
        (dict(pv_accum="fp32+fp32"), ValueError, r"supported: \('fp32', 'fp16\+fp32', 'fp16'\)"),
        (dict(v=f8, v_scale=vs, pv_accum="fp32"), ValueError, "not supported with FP8"),
        (dict(v=f8, v_scale=vs, pv_accum="fp16"), ValueError, r"\('fp32\+fp32', 'fp32\+fp16'\)"),
        (dict(pv_accum="FP16"), ValueError, "pv_accum='FP16'"),
        (dict(pv_accum=16), TypeError, "pv_accum must be a str"),
        (dict(backend="gpu"), ValueError, "backend='gpu'"),
        (dict(backend="cpu"), ValueError, "no 'cpu' backend"),
        (dict(backend="cuda"), RuntimeError, "cuda"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs()[1])))
def test_bad_input_raises(case):
    good, cases = _bad_inputs()
    change, exc, match = cases[case]
    with pytest.raises(exc, match=match):
        sk.sage_attention_fwd(**{**good, **change})


@pytest.mark.parametrize("fp8", [False, True])
def test_opcheck(fp8):
    (q8, k8, v8, qs, ks, vs), _ = _quantized(1, 2, 1, 9, 11, 64, seed=10, fp8=fp8)
    # opcheck's schema check compares fp8 tensors with ops the CPU lacks for float8: skip only that one
    utils = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(
        torch.ops.shared_kernels.sage_attention_fwd.default,
        (q8, k8, v8, qs, ks, vs, True, 16, torch.float16, "fp32+fp16" if fp8 else "fp16", "torch"),
        test_utils=utils if fp8 else (*utils, "test_schema"),
    )


def test_torch_compile_fullgraph():
    (q8, k8, v8, qs, ks, _), _ = _quantized(1, 2, 1, 9, 11, 64, seed=11, fp8=False)

    def f(q, k):
        return sk.sage_attention_fwd(q, k, v8, qs, ks, is_causal=True, backend="torch")

    got = torch.compile(f, fullgraph=True, backend="eager")(q8, k8)
    for a, b in zip(got, f(q8, k8), strict=True):
        assert_bit_exact(a, b, "compiled")


# ---- CUDA kernel against the reference (GPU only) -----------------------------------------------

CUDA_SHAPES = [  # b, hq, hkv, nq, nk, d
    (1, 1, 1, 1, 1, 64),
    (2, 4, 2, 77, 130, 64),
    (1, 3, 1, 130, 67, 128),
    (1, 2, 2, 200, 333, 128),
    (2, 8, 1, 64, 64, 64),
    (1, 2, 1, 1000, 999, 128),
]


def _fp8_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


ALL_MODES = [(False, "fp32"), (True, "fp32+fp32"), *F16_MODES]
ALL_IDS = ["fp16-fp32", "fp8-fp32+fp32", *F16_IDS]


def _assert_kernel_close(out, lse, want, want_lse, fp8, out_dtype, mode=None):
    """The tolerance of a kernel result against the float64 reference (CUDA tests and their CPU emulation)."""
    out = out.float()
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()  # poisoned outputs: every element written
    torch.testing.assert_close(lse, want_lse, atol=2e-4, rtol=1e-5)
    if mode in ("fp16+fp32", "fp16", "fp32+fp16"):
        # the reference rounds P and the f16 accumulator in the kernel's block order; exp2f and the
        # fp32 sum inside an MMA k-step can flip a rounding by one step (an f16 step of the accumulator
        # is 2^-10 of its size: up to max|V| · 2^-10 per step for "fp16", whose sum spans all keys)
        vmax = want.abs().max().item()
        err = (out - want).abs()
        assert err.max().item() <= (2.0**-5 if mode == "fp16" else 2.0**-7) * vmax, err.max().item()
        assert err.mean().item() <= 2.0**-10 * vmax, err.mean().item()
        cos, _ = cos_rl1(out, want)
        assert cos >= 0.9999, cos
    elif fp8:  # P rounded to e4m3 against the running max (kernel) vs the final max (reference)
        cos, rl1 = cos_rl1(out, want)
        assert cos >= 0.999 and rl1 <= 0.03, (cos, rl1)
    else:
        out_tol = 4e-3 if out_dtype == torch.bfloat16 else 1e-3
        torch.testing.assert_close(out, want, atol=2e-3 * want.abs().max().item(), rtol=out_tol)


def _emulate_kernel(q8, k8, v8, qs, ks, vs, causal, warp_q, out_dtype, mode=None):
    """The kernel's algorithm in float32 (vectorized, not lane by lane): 64-key blocks in order, fp32
    dequantization ``acc · (q_scale · k_scale)``, running max, P rounded against it, fp32 accumulation
    (FP8: a fresh sum per block added to the running one) or, for the f16 ``mode``s, an f16 rounding
    after each MMA k-step (16 / 32 keys) of the block's (or, ``"fp16"``, the whole) accumulator;
    normalization and LSE in the epilogue."""
    nq, nk = q8.shape[-2], k8.shape[-2]
    rep = q8.shape[1] // k8.shape[1]
    fp8 = v8.dtype == torch.float8_e4m3fn
    off = math.log2(ref.FP8_P_SCALE) if fp8 else 0.0
    k = k8.repeat_interleave(rep, 1).double()
    v = v8.repeat_interleave(rep, 1).float()
    ksr = ks.repeat_interleave(rep, 1)[..., ref.k_group_index(nk)]
    qsr = qs[..., ref.q_group_index(nq, warp_q)]
    m = torch.full(q8.shape[:-1], float("-inf"))
    lsum = torch.zeros(q8.shape[:-1])
    o = torch.zeros(q8.shape)
    rows = torch.arange(nq)[:, None]
    for k0 in range(0, nk, ref.BLOCK_K):
        k1 = min(k0 + ref.BLOCK_K, nk)
        acc = (q8.double() @ k[..., k0:k1, :].transpose(-1, -2)).float()  # exact int32 values
        s = acc * (qsr[..., :, None] * ksr[..., None, k0:k1])
        if causal:
            s = s.masked_fill(torch.arange(k0, k1)[None, :] > rows, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1))
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        alpha = torch.exp2(m - m_use)
        p = torch.exp2(s - m_use[..., None] + off)
        lsum = lsum * alpha + p.sum(-1)
        pr = p.to(torch.float8_e4m3fn).float() if fp8 else p.half().float()
        if mode in (None, "fp32", "fp32+fp32"):
            o = o * alpha[..., None] + pr @ v[..., k0:k1, :]
        else:
            step = 32 if fp8 else 16
            blk = (o * alpha[..., None]).half().float() if mode == "fp16" else torch.zeros_like(o)
            for i0 in range(k0, k1, step):
                i1 = min(i0 + step, k1)
                blk = (blk + pr[..., i0 - k0 : i1 - k0] @ v[..., i0:i1, :]).half().float()
            o = blk if mode == "fp16" else o * alpha[..., None] + blk
        m = m_new
    o = o / lsum[..., None]
    if fp8:
        o = o * vs.repeat_interleave(rep, 1)[..., None, :]
    return o.to(out_dtype), (m + torch.log2(lsum) - off) * math.log(2.0)


def _cuda_case(case, fp8, mode):
    b, hq, hkv, nq, nk, d = CUDA_SHAPES[case]
    warp_q = (16, 32)[case % 2]
    out_dtype = (torch.float16, torch.bfloat16)[(case // 2) % 2]
    quant = _mode_quantized if mode == "fp32+fp16" else _quantized
    args, _ = quant(b, hq, hkv, nq, nk, d, seed=100 + case, fp8=fp8, warp_q=warp_q)
    return args, warp_q, out_dtype


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fp8,mode", ALL_MODES, ids=ALL_IDS)
@pytest.mark.parametrize("case", range(len(CUDA_SHAPES)))
def test_emulated_kernel_algorithm_meets_the_cuda_tolerances(case, fp8, mode, causal):
    """Runs the CUDA tests' shapes and checks through a float32 emulation of the kernel's algorithm, so
    the tolerances the GPU tests use are known to hold for the kernel's rounding order."""
    args, warp_q, out_dtype = _cuda_case(case, fp8, mode)
    want, want_lse = ref.sage_attention_fwd(*args, causal, warp_q, torch.float32, mode)
    out, lse = _emulate_kernel(*args, causal, warp_q, out_dtype, mode)
    _assert_kernel_close(out, lse, want, want_lse, fp8, out_dtype, mode)


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fp8,mode", ALL_MODES, ids=ALL_IDS)
@pytest.mark.parametrize("case", range(len(CUDA_SHAPES)))
def test_cuda_matches_reference(case, fp8, mode, causal):
    if fp8 and not _fp8_supported():
        pytest.skip("FP8 PV needs sm89+")
    args, warp_q, out_dtype = _cuda_case(case, fp8, mode)
    want, want_lse = ref.sage_attention_fwd(*args, causal, warp_q, torch.float32, mode)
    cargs = [None if t is None else t.cuda() for t in args]
    saved = [None if t is None else t.clone() for t in cargs]
    out, lse = sk.sage_attention_fwd(
        *cargs, is_causal=causal, warp_q=warp_q, out_dtype=out_dtype, pv_accum=mode, backend="cuda"
    )
    for t, t0 in zip(cargs, saved, strict=True):
        if t is not None:
            assert torch.equal(t.view(torch.uint8), t0.view(torch.uint8)), "caller's input changed"
    _assert_kernel_close(out.cpu(), lse.cpu(), want, want_lse, fp8, out_dtype, mode)
    # tighter: the emulation rounds P in the kernel's order (only fp32 op order and exp2f differ)
    emu, emu_lse = _emulate_kernel(*args, causal, warp_q, out_dtype, mode)
    cos, rl1 = cos_rl1(out.cpu().float(), emu.float())
    assert cos >= 0.99999 and rl1 <= 0.005, (cos, rl1)
    torch.testing.assert_close(lse.cpu(), emu_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
def test_cuda_launchers_refuse_unknown_pv_modes():
    """The launchers check the P·V mode code before touching the device (runs on a CUDA build without
    a GPU): 0-4 for the INT8 kernel, 0/1 (``pv_fp8``) for the INT4 one."""
    args = (0,) * 8 + (1, 1, 1, 1, 1, 64, 8, 4, 32, False)
    with pytest.raises(ValueError, match="pv_mode must be 0"):
        _lib.native().sage_attention_fwd_cuda(*args, 5, 1, 0)
    with pytest.raises(ValueError, match="pv_mode must be 0"):
        _lib.native().sage_attention_fwd_cuda(*args, -1, 1, 0)
    with pytest.raises(ValueError, match="pv_fp8 must be 0 or 1"):
        _lib.native().sage_attention_fwd_int4_cuda(*args, 2, 1, 0, 0, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
def test_cuda_unaligned_views_and_zero_queries():
    (q8, k8, v8, qs, ks, _), _ = _quantized(1, 2, 1, 70, 90, 64, seed=20, fp8=False)
    buf = torch.zeros(q8.numel() + 1, dtype=torch.int8, device="cuda")
    qv = buf[1:].view(q8.shape)  # 1-byte offset: the op copies it to an aligned buffer
    qv.copy_(q8.cuda())
    out, _ = sk.sage_attention_fwd(qv, k8.cuda(), v8.cuda(), qs.cuda(), ks.cuda(), backend="cuda")
    want, _ = ref.sage_attention_fwd(q8, k8, v8, qs, ks, None, False, 32, torch.float32)
    torch.testing.assert_close(out.cpu().float(), want, atol=2e-3 * want.abs().max().item(), rtol=1e-3)
    z, _ = sk.sage_attention_fwd(
        torch.zeros_like(qv), k8.cuda(), v8.cuda(), qs.cuda(), ks.cuda(), backend="cuda"
    )
    torch.testing.assert_close(
        z.cpu().float(), v8.float().mean(-2, keepdim=True).expand(1, 2, 70, 64), atol=1e-3, rtol=0
    )


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
def test_cuda_fp8_refused_below_sm89():
    if _fp8_supported():
        pytest.skip("this GPU has FP8 mma")
    (q8, k8, v8, qs, ks, vs), _ = _quantized(1, 1, 1, 16, 16, 64, seed=21, fp8=True)
    with pytest.raises(ValueError, match=r"8\.9"):
        sk.sage_attention_fwd(*(t.cuda() for t in (q8, k8, v8, qs, ks, vs)), backend="cuda")


# ---- lane-level emulation of the kernel's fragment plumbing (CPU) -------------------------------
# The CUDA kernel cannot run here, so its index arithmetic is transcribed below, lane by lane, and run
# through the fragment layouts of the PTX ISA (mma.m16n8k32 8-bit A/B, mma.m16n8k16 f16 A/B, the m16n8
# C/D layout, ldmatrix .x4 .trans). A wrong permutation in the kernel's transcription (P packing, the
# FP8 key order of the transposed V tile, ldmatrix addresses) makes these products disagree.

D_EMU, KS, VS, VTS = 64, 64 + 16, 2 * 64 + 16, 64 + 16  # k_stride<64>, v_stride<64>, kVtStride


def _lanes():
    return [(lane, lane >> 2, lane & 3) for lane in range(32)]


def _mma_k32(a_regs, b_regs):
    """m16n8k32 with 8-bit A (4 regs x 4 elements) and B (2 regs x 4): per-lane C (4 values)."""
    a, b = torch.zeros(16, 32, dtype=torch.float64), torch.zeros(32, 8, dtype=torch.float64)
    for lane, g, t in _lanes():
        for i in range(4):
            for j in range(4):
                a[g + 8 * (i % 2), 4 * t + 16 * (i // 2) + j] = a_regs[lane][i][j]
        for i in range(2):
            for j in range(4):
                b[4 * t + 16 * i + j, g] = b_regs[lane][i][j]
    return _c_lanes(a @ b)


def _mma_k16(a_regs, b_regs):
    """m16n8k16 with 16-bit A (4 regs x 2 elements) and B (2 regs x 2): per-lane C."""
    a, b = torch.zeros(16, 16, dtype=torch.float64), torch.zeros(16, 8, dtype=torch.float64)
    for lane, g, t in _lanes():
        for i in range(4):
            for j in range(2):
                a[g + 8 * (i % 2), 2 * t + 8 * (i // 2) + j] = a_regs[lane][i][j]
        for i in range(2):
            for j in range(2):
                b[2 * t + 8 * i + j, g] = b_regs[lane][i][j]
    return _c_lanes(a @ b)


def _c_lanes(c):
    return [[c[g + 8 * (i // 2), 2 * t + (i % 2)].item() for i in range(4)] for _, g, t in _lanes()]


def _ldmatrix_x4_trans(smem_h, addr_of_lane):
    """smem_h: fp16 shared memory as elements per 2 bytes; lanes 8i..8i+7 address the rows of matrix i."""
    out = []
    for _, g, t in _lanes():
        regs = []
        for i in range(4):
            rows = [addr_of_lane(8 * i + r) // 2 for r in range(8)]
            regs.append([smem_h[rows[2 * t + j] + g] for j in range(2)])
        out.append(regs)
    return out


def _fp8_slot(kk):  # transcribed from sage_attention_fwd.cu
    c, h, r = kk >> 5, (kk >> 4) & 1, kk & 15
    col = r & 7
    return c * 32 + h * 16 + 4 * (col >> 1) + 2 * (r >> 3) + (col & 1)


def test_emulated_qk_fragments_and_scale_groups():
    g0 = torch.Generator().manual_seed(30)
    q = torch.randint(-128, 128, (16, D_EMU), generator=g0).double()  # one warp's rows
    k = torch.randint(-128, 128, (64, D_EMU), generator=g0).double()  # one key block
    sk_ = [0.0] * (64 * KS)
    for r in range(64):
        for c in range(D_EMU):
            sk_[r * KS + c] = k[r, c].item()  # load_k_tile: row r at r * k_stride
    acc = [[[0.0] * 4 for _ in range(8)] for _ in range(32)]
    for kk in range(D_EMU // 32):
        a_regs = []
        for _, g, t in _lanes():
            c = kk * 32 + 4 * t
            a_regs.append([q[g, c : c + 4].tolist(), q[g + 8, c : c + 4].tolist(),
                           q[g, c + 16 : c + 20].tolist(), q[g + 8, c + 16 : c + 20].tolist()])  # fmt: skip
        for nt in range(8):
            b_regs = []
            for _, g, t in _lanes():
                p = (nt * 8 + g) * KS + kk * 32 + 4 * t
                b_regs.append([sk_[p : p + 4], sk_[p + 16 : p + 20]])
            part = _mma_k32(a_regs, b_regs)
            for lane in range(32):
                acc[lane][nt] = [x + y for x, y in zip(acc[lane][nt], part[lane], strict=True)]
    s = q @ k.T
    for lane, g, t in _lanes():
        for nt in range(8):
            for e in range(4):
                row, key = g + 8 * (e >> 1), nt * 8 + 2 * t + (e & 1)
                assert acc[lane][nt][e] == s[row, key].item()
                # the lane's single scale product covers every element it holds
                assert ref.k_group_index(64)[key].item() == t
                for wq in (16, 32):
                    assert ref.q_group_index(32, wq)[row].item() == ref.q_group_index(32, wq)[g].item()


@pytest.mark.parametrize("f16_acc", [False, True], ids=["fp32", "f16acc"])
def test_emulated_fp16_pv_fragments(f16_acc):
    """``f16_acc``: the f16-accumulating modes' loop order (all P fragments packed first, then per output
    tile pair dn the 4 k16 MMAs from ``vbase + kc * 16 * v_stride + dn * 32``) instead of kc-outer."""
    g0 = torch.Generator().manual_seed(31)
    p = torch.randint(0, 9, (16, 64), generator=g0).double()  # exact in fp16 and in the products
    v = torch.randint(-8, 9, (64, D_EMU), generator=g0).double()
    s = [[[p[g + 8 * (e >> 1), nt * 8 + 2 * t + (e & 1)].item() for e in range(4)] for nt in range(8)]
         for _, g, t in _lanes()]  # fmt: skip  # scores in the C layout
    smem_h = [0.0] * (64 * VS // 2)
    for r in range(64):
        for c in range(D_EMU):
            smem_h[(r * VS + c * 2) // 2] = v[r, c].item()  # load_v_tile_f16
    o = [[[0.0] * 4 for _ in range(D_EMU // 8)] for _ in range(32)]
    a_all = [[[s[lane][2 * kc][0:2], s[lane][2 * kc][2:4], s[lane][2 * kc + 1][0:2], s[lane][2 * kc + 1][2:4]]
              for lane in range(32)] for kc in range(4)]  # fmt: skip
    if f16_acc:  # dn outer; vbase = sV + (lane & 15) * v_stride + (lane >> 4) * 16
        steps = [(dn, kc) for dn in range(D_EMU // 16) for kc in range(4)]
    else:
        steps = [(dn, kc) for kc in range(4) for dn in range(D_EMU // 16)]
    for dn, kc in steps:
        if f16_acc:
            regs = _ldmatrix_x4_trans(
                smem_h, lambda ln, kc=kc, dn=dn: (ln & 15) * VS + (ln >> 4) * 16 + kc * 16 * VS + dn * 32
            )
        else:
            regs = _ldmatrix_x4_trans(
                smem_h, lambda ln, kc=kc, dn=dn: (kc * 16 + (ln & 15)) * VS + (ln >> 4) * 16 + dn * 32
            )
        for half in range(2):
            part = _mma_k16(a_all[kc], [r[2 * half : 2 * half + 2] for r in regs])
            for lane in range(32):
                o[lane][2 * dn + half] = [
                    x + y for x, y in zip(o[lane][2 * dn + half], part[lane], strict=True)
                ]
    want = p @ v
    for lane, g, t in _lanes():
        for dt in range(D_EMU // 8):
            for e in range(4):
                assert o[lane][dt][e] == want[g + 8 * (e >> 1), dt * 8 + 2 * t + (e & 1)].item()


def test_emulated_fp8_pv_fragments():
    g0 = torch.Generator().manual_seed(32)
    p = torch.randint(0, 9, (16, 64), generator=g0).double()
    v = torch.randint(-8, 9, (64, D_EMU), generator=g0).double()
    s = [[[p[g + 8 * (e >> 1), nt * 8 + 2 * t + (e & 1)].item() for e in range(4)] for nt in range(8)]
         for _, g, t in _lanes()]  # fmt: skip
    vt = [0.0] * (D_EMU * VTS)
    for r in range(64):
        for c in range(D_EMU):
            vt[_fp8_slot(r) + c * VTS] = v[r, c].item()  # load_v_tile_f8: dst[(col + e) * kVtStride]
    a = []
    for lane in range(32):
        x = s[lane]
        a.append([[[x[n][0], x[n][1], x[n + 1][0], x[n + 1][1]], [x[n][2], x[n][3], x[n + 1][2], x[n + 1][3]],
                   [x[n + 2][0], x[n + 2][1], x[n + 3][0], x[n + 3][1]],
                   [x[n + 2][2], x[n + 2][3], x[n + 3][2], x[n + 3][3]]] for n in (0, 4)])  # fmt: skip
    want = p @ v
    for dt in range(D_EMU // 8):
        part = [[0.0] * 4 for _ in range(32)]
        for c in range(2):
            b_regs = []
            for _, g, t in _lanes():
                base = (dt * 8 + g) * VTS + 4 * t + c * 32
                b_regs.append([vt[base : base + 4], vt[base + 16 : base + 20]])
            res = _mma_k32([a[lane][c] for lane in range(32)], b_regs)
            part = [[x + y for x, y in zip(part[ln], res[ln], strict=True)] for ln in range(32)]
        for lane, g, t in _lanes():
            for e in range(4):
                assert part[lane][e] == want[g + 8 * (e >> 1), dt * 8 + 2 * t + (e & 1)].item()
