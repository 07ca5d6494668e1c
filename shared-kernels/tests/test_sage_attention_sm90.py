"""SageAttention2 forward of the Hopper wgmma kernel: the reference against float64 attention, the op's
validation and fake impl, a lane-level CPU emulation of the kernel's wgmma fragment / shared-memory plumbing,
and (``cuda``-marked, sm90 only) the CUDA kernel against the reference on awkward shapes."""

from __future__ import annotations

import math

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _lib
from shared_kernels.ops import sage_attention_sm90 as op_mod
from shared_kernels.reference import sage_attention_sm90 as ref
from shared_kernels.testing import assert_bit_exact, attention_inputs, cos_rl1, exact_attention


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small float64 matmuls: one thread is faster than many on a shared, oversubscribed machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _quantized(b, hq, hkv, nq, nk, d, seed):
    qf, kf, vf = attention_inputs(b, hq, hkv, nq, nk, d, seed)
    q8, qs = ref.quantize_q_sm90(qf)
    k8, ks = ref.quantize_k_sm90(kf)
    vt, vs = ref.quantize_v_sm90(vf)
    return (q8, k8, vt, qs, ks, vs), (qf, kf, vf)


# ---- layout, quantizers, reference --------------------------------------------------------------


def test_q_groups_are_the_rows_of_one_wgmma_lane():
    idx = ref.q_group_index(64)
    assert ref.num_q_groups(64) == 32 and ref.num_q_groups(65) == 40
    for r in range(64):  # lane g of warp w holds rows 16w + g and 16w + g + 8
        w, g = r // 16, r % 8
        assert idx[r].item() == w * 8 + g == idx[16 * w + g + 8].item()


def test_k_groups_and_the_kernels_key_permutation():
    idx = ref.k_group_index(260)
    assert ref.num_k_groups(260) == 12 and idx.max().item() == 9  # keys 256..259: groups 8, 9 of block 2
    perm = [op_perm_key(p) for p in range(128)]
    assert sorted(perm) == list(range(128))
    assert [op_perm_row(perm[p]) for p in range(128)] == list(range(128))
    for t in range(4):  # lane t: score columns 8j + 2t + e are keys 16(j // 2) + 4t + 2(j % 2) + e
        for j in range(16):
            for e in range(2):
                key = perm[8 * j + 2 * t + e]
                assert key == 16 * (j // 2) + 4 * t + 2 * (j % 2) + e
                # two K groups per lane: one for even, one for odd 8-column tiles
                assert idx[key].item() == 2 * (t & 1) + (j & 1)


def op_perm_key(p):  # transcribed from sage_attention_sm90.h: k_tile_key
    return (p & ~15) | (4 * ((p & 7) >> 1) + 2 * ((p >> 3) & 1) + (p & 1))


def op_perm_row(r):  # k_tile_row
    return (r & ~15) | (2 * ((r & 15) >> 2) + (r & 1) + 8 * ((r >> 1) & 1))


def test_quantizers_round_within_half_a_step():
    qf, kf, vf = attention_inputs(2, 2, 1, 37, 150, 64, seed=1)
    q8, qs = ref.quantize_q_sm90(qf, sm_scale=1.0)
    back = q8.float() * (qs[..., ref.q_group_index(37)] / ref.LOG2E)[..., None]
    assert (back - qf).abs().max() <= 0.5 * qs.max() / ref.LOG2E + 1e-6
    k8, ks = ref.quantize_k_sm90(kf)
    assert ks.shape == (2, 1, 8) and k8.abs().max() == 127
    back = k8.float() * ks[..., ref.k_group_index(150)][..., None]
    assert (back - kf).abs().max() <= 0.5 * ks.max() + 1e-6
    vt, vs = ref.quantize_v_sm90(vf)
    assert vt.shape == (2, 1, 64, 160) and vt.dtype == torch.float8_e4m3fn
    assert (vt[..., 150:].float() == 0).all()
    back = vt[..., :150].float().transpose(-1, -2) * vs[..., None, :]
    assert ((back - vf).abs() <= vf.abs() * 2**-4 + vs[..., None, :] * 2**-9).all()


SHAPES = [  # b, hq, hkv, nq, nk, d
    (1, 1, 1, 1, 1, 64),
    (2, 4, 2, 77, 130, 64),
    (1, 3, 1, 130, 67, 128),
    (1, 2, 2, 200, 333, 128),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_reference_close_to_float64_attention(case, causal):
    b, hq, hkv, nq, nk, d = SHAPES[case]
    args, (qf, kf, vf) = _quantized(b, hq, hkv, nq, nk, d, seed=2 + case)
    out, lse = ref.sage_attention_fwd_sm90(*args, causal, torch.float32)
    want, want_lse = exact_attention(qf, kf, vf, causal)
    cos, rl1 = cos_rl1(out, want)
    assert cos >= 0.995 and rl1 <= 0.08, (cos, rl1)
    torch.testing.assert_close(lse.double(), want_lse, atol=0.05, rtol=0.01)


def test_reference_rounds_p_against_the_running_max():
    # two 128-key blocks; the second holds a larger score: block 0's P is rounded against its own max
    q8 = torch.ones(1, 1, 1, 64, dtype=torch.int8)
    k8 = torch.zeros(1, 1, 256, 64, dtype=torch.int8)
    k8[..., 200, :] = 1
    qs, ks = torch.full((1, 1, 8), 1.0 / 64), torch.full((1, 1, 8), 3.3)  # S = 3.3 at key 200, else 0
    v = torch.zeros(1, 1, 256, 64)
    v[..., :128, 0] = 1.0
    vt, vs = ref.quantize_v_sm90(v)
    out, lse = ref.sage_attention_fwd_sm90(q8, k8, vt, qs, ks, vs, False, torch.float32)
    lsum = 255 + 2**3.3
    # rounded at block 0's max (m = 0) P = 448 is exact; at the final max it would be e4m3(448 · 2^-3.3) = 44
    assert torch.tensor(448 * 2**-3.3).to(torch.float8_e4m3fn).item() == 44.0
    torch.testing.assert_close(out[0, 0, 0, 0].double(), torch.tensor(128 / lsum, dtype=torch.float64))
    torch.testing.assert_close(lse[0, 0, 0].double(), torch.tensor(math.log(lsum), dtype=torch.float64))


def test_reference_lse_is_logsumexp_of_its_scores():
    args, _ = _quantized(1, 2, 1, 33, 300, 64, seed=7)
    _, lse = ref.sage_attention_fwd_sm90(*args, True, torch.float32)
    s = ref.dequant_scores(*args[:2], *args[3:5]) * math.log(2.0)
    s = s.masked_fill(~torch.ones(33, 300, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), atol=1e-5, rtol=1e-6)


# ---- the op: validation, torch backend, fake impl -----------------------------------------------


def test_op_torch_backend_is_the_reference_and_leaves_inputs_alone():
    args, _ = _quantized(2, 4, 2, 40, 150, 64, seed=8)
    saved = [t.clone() for t in args]
    out, lse = sk.sage_attention_fwd_sm90(*args, is_causal=True, out_dtype=torch.bfloat16, backend="torch")
    want, want_lse = ref.sage_attention_fwd_sm90(*args, True, torch.bfloat16)
    assert_bit_exact(out, want, "out")
    assert_bit_exact(lse, want_lse, "lse")
    for t, t0 in zip(args, saved, strict=True):
        assert_bit_exact(t, t0, "input")
    auto = sk.sage_attention_fwd_sm90(*args, is_causal=True, out_dtype=torch.bfloat16)  # CPU: the reference
    assert_bit_exact(auto[0], want, "auto")


def test_zero_queries_and_padded_scales_and_vt():
    (q8, k8, vt, qs, ks, vs), _ = _quantized(1, 2, 1, 0, 20, 128, seed=9)
    out, lse = sk.sage_attention_fwd_sm90(q8, k8, vt, qs, ks, vs, backend="torch")
    assert out.shape == (1, 2, 0, 128) and lse.shape == (1, 2, 0)
    (q8, k8, vt, qs, ks, vs), _ = _quantized(1, 2, 1, 20, 20, 64, seed=9)
    want = sk.sage_attention_fwd_sm90(q8, k8, vt, qs, ks, vs, backend="torch")
    pad_vt = torch.cat([vt, torch.full((1, 1, 64, 48), float("nan")).to(torch.float8_e4m3fn)], -1)
    pad_qs = torch.cat([qs, torch.full((1, 2, 5), float("nan"))], -1)
    pad_ks = torch.cat([ks, torch.full((1, 1, 3), float("nan"))], -1)
    got = sk.sage_attention_fwd_sm90(q8, k8, pad_vt, pad_qs, pad_ks, vs, backend="torch")
    for a, b in zip(got, want, strict=True):
        assert_bit_exact(a, b, "padded")


def _bad_inputs():
    (q8, k8, vt, qs, ks, vs), _ = _quantized(1, 2, 1, 20, 20, 64, seed=10)
    good = dict(q=q8, k=k8, v_t=vt, q_scale=qs, k_scale=ks, v_scale=vs)
    return good, [
        (dict(q=q8.float()), TypeError, "q has dtype float32"),
        (dict(q=q8.tolist()), TypeError, "q must be a torch.Tensor"),
        (dict(q=q8[0]), ValueError, "q must have 4 dimensions"),
        (dict(q=q8.transpose(2, 3).contiguous().transpose(2, 3)), ValueError, "q must be contiguous"),
        (dict(q=torch.zeros(1, 2, 20, 96, dtype=torch.int8)), ValueError, "head dim 96"),
        (dict(k=k8[..., :32].contiguous()), ValueError, "k must be"),
        (dict(k=torch.zeros(1, 3, 20, 64, dtype=torch.int8)), ValueError, "multiple of the kv heads"),
        (dict(k=k8[:, :, :0]), ValueError, "at least 1"),
        (dict(v_t=vt.float()), TypeError, "v_t has dtype"),
        (dict(v_t=vt[..., :8].contiguous()), ValueError, "v_t must be V transposed"),
        (dict(v_t=torch.zeros(1, 1, 64, 24).to(torch.float8_e4m3fn)), ValueError, "multiple of 16"),
        (dict(v_t=vt.transpose(-1, -2).contiguous()), ValueError, "v_t must be V transposed"),
        (dict(q_scale=qs[..., :7].contiguous()), ValueError, "q_scale must be"),
        (dict(q_scale=qs.double()), TypeError, "q_scale has dtype"),
        (dict(k_scale=ks[:, :, :3].contiguous()), ValueError, "k_scale must be"),
        (dict(k_scale=ks[0]), ValueError, "k_scale must have 3 dimensions"),
        (dict(v_scale=vs[..., :32].contiguous()), ValueError, "v_scale must have shape"),
        (dict(v_scale=None), TypeError, "v_scale must be a torch.Tensor"),
        (dict(is_causal=1), TypeError, "is_causal"),
        (dict(out_dtype=torch.float32), TypeError, "out_dtype"),
        (dict(out_dtype="float16"), TypeError, "out_dtype must be a torch.dtype"),
        (dict(backend="gpu"), ValueError, "backend='gpu'"),
        (dict(backend="triton"), ValueError, "no 'triton' backend"),
        (dict(backend="cuda"), RuntimeError, "cuda"),
        (dict(window=4), TypeError, "window"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs()[1])))
def test_bad_input_raises(case):
    good, cases = _bad_inputs()
    change, exc, match = cases[case]
    with pytest.raises(exc, match=match):
        sk.sage_attention_fwd_sm90(**{**good, **change})


def test_status_says_why_not_here():
    ok, why = sk.sage_attention_sm90_status()
    if not torch.cuda.is_available():
        assert not ok and why
    assert op_mod.CUDA_SPECS[0].expect[90] == ("wgmma",)


@pytest.mark.parametrize(
    "archs, binding, capability, expect",
    [
        ("80,89,90a,100a", True, (9, 0), ""),
        ("80,89,90a,100a", True, (8, 9), "sm89"),
        ("80,89,90a,100a", True, (10, 0), "sm100"),
        ("80,89,100a", True, (9, 0), "no sm_90a code"),
        ("80,89,90a,100a", False, (9, 0), "lacks sage_attention_fwd_sm90_cuda"),
    ],
)
def test_status_logic(monkeypatch, archs, binding, capability, expect):
    class FakeC:
        cuda_archs = archs

    if binding:
        FakeC.sage_attention_fwd_sm90_cuda = staticmethod(lambda *a: None)
    monkeypatch.setattr(op_mod._backend, "backend_status", lambda b, d: (True, ""))
    monkeypatch.setattr(op_mod._lib, "native", lambda: FakeC)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    ok, why = sk.sage_attention_sm90_status("cuda:0")
    assert ok is (expect == "") and expect in why
    assert "not on cpu" in sk.sage_attention_sm90_status("cpu")[1]


_LAUNCH_OK = dict(
    q=16, k=16, v_t=16, q_scale=16, k_scale=16, v_scale=16, out=16, lse=16, B=1, Hq=2, Hkv=1, Nq=70, Nk=90,
    Nkp=96, D=64, q_scale_len=40, k_scale_len=4, causal=False, out_dtype=1, stream=0,
)  # fmt: skip  # fake addresses: every case below is refused before any pointer is touched


@pytest.mark.skipif(
    not hasattr(_lib._C, "sage_attention_fwd_sm90_cuda"), reason="CPU-only build: no CUDA launcher"
)
@pytest.mark.parametrize(
    "change, match",
    [
        (dict(D=96), "head dim D must be 64 or 128"),
        (dict(Hkv=3), "bad sizes"),
        (dict(Nk=0), "bad sizes"),
        (dict(Nkp=80), "Nkp must be >= Nk and a multiple of 16"),
        (dict(Nkp=100), "Nkp must be >= Nk and a multiple of 16"),
        (dict(q_scale_len=39), "too few groups"),
        (dict(k_scale_len=3), "too few groups"),
        (dict(out_dtype=3), "out_dtype code"),
        (dict(k=24), "16-byte aligned"),
        (dict(lse=18), "16-byte aligned"),
        (dict(Hq=70000, Hkv=70000), "max 65535"),
    ],
)
def test_cuda_launcher_refuses_bad_arguments(change, match):
    """The C++ launcher's own checks (they run before any CUDA call, so also on a machine without a GPU)."""
    with pytest.raises(ValueError, match=match):
        _lib._C.sage_attention_fwd_sm90_cuda(**{**_LAUNCH_OK, **change})


@pytest.mark.skipif(
    not hasattr(_lib._C, "sage_attention_fwd_sm90_cuda") or torch.cuda.is_available(),
    reason="needs a CUDA build on a machine without a GPU",
)
def test_cuda_launcher_without_a_device_raises_instead_of_launching():
    with pytest.raises(RuntimeError, match="cudaGetDevice"):
        _lib._C.sage_attention_fwd_sm90_cuda(**_LAUNCH_OK)
    _lib._C.sage_attention_fwd_sm90_cuda(**{**_LAUNCH_OK, "Nq": 0})  # nothing to do: returns at once


def test_opcheck():
    args, _ = _quantized(1, 2, 1, 9, 11, 64, seed=11)
    # opcheck's schema check compares fp8 tensors with ops the CPU lacks for float8: skip only that one
    torch.library.opcheck(
        torch.ops.shared_kernels.sage_attention_fwd_sm90.default,
        (*args, True, torch.float16, "torch"),
        test_utils=("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"),
    )


def test_torch_compile_fullgraph():
    (q8, k8, vt, qs, ks, vs), _ = _quantized(1, 2, 1, 9, 11, 64, seed=12)

    def f(q, k):
        return sk.sage_attention_fwd_sm90(q, k, vt, qs, ks, vs, is_causal=True, backend="torch")

    got = torch.compile(f, fullgraph=True, backend="eager")(q8, k8)
    for a, b in zip(got, f(q8, k8), strict=True):
        assert_bit_exact(a, b, "compiled")


# ---- the kernel's algorithm in float32 and the tolerances of the GPU tests ----------------------

CUDA_SHAPES = [  # b, hq, hkv, nq, nk, d
    (1, 1, 1, 1, 1, 64),
    (2, 4, 2, 77, 130, 64),
    (1, 3, 1, 130, 67, 128),
    (1, 2, 2, 200, 333, 128),
    (2, 8, 1, 64, 128, 64),
    (1, 2, 1, 1000, 999, 128),
]


def _emulate_kernel(q8, k8, vt, qs, ks, vs, causal, out_dtype):
    """The kernel's algorithm in float32 (vectorized): 128-key blocks in order, fp32 dequantization
    ``acc · (q_scale · k_scale)``, running max, P = e4m3(2^(S - m + log2 448)), a fresh sum per block added
    to the running output, normalization, V scale and LSE in the epilogue."""
    nq, nk = q8.shape[-2], k8.shape[-2]
    rep = q8.shape[1] // k8.shape[1]
    off = math.log2(ref.FP8_P_SCALE)
    k = k8.repeat_interleave(rep, 1).double()
    v = vt[..., :nk].float().transpose(-1, -2).repeat_interleave(rep, 1)
    ksr = ks.repeat_interleave(rep, 1)[..., ref.k_group_index(nk)]
    qsr = qs[..., ref.q_group_index(nq)]
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
        o = o * alpha[..., None] + p.to(torch.float8_e4m3fn).float() @ v[..., k0:k1, :]
        m = m_new
    o = o / lsum[..., None] * vs.repeat_interleave(rep, 1)[..., None, :]
    return o.to(out_dtype), (m + torch.log2(lsum) - off) * math.log(2.0)


def _assert_kernel_close(out, lse, want, want_lse):
    out = out.float()
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()  # poisoned outputs: every element written
    torch.testing.assert_close(lse, want_lse, atol=2e-4, rtol=1e-5)
    cos, rl1 = cos_rl1(out, want)  # exp2 in float32 vs float64 moves a few P elements by one e4m3 step
    assert cos >= 0.9999 and rl1 <= 0.01, (cos, rl1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", [1, 3])
def test_emulated_kernel_algorithm_meets_the_cuda_tolerances(case, causal):
    b, hq, hkv, nq, nk, d = CUDA_SHAPES[case]
    out_dtype = (torch.float16, torch.bfloat16)[case % 2]
    args, _ = _quantized(b, hq, hkv, nq, nk, d, seed=100 + case)
    want, want_lse = ref.sage_attention_fwd_sm90(*args, causal, torch.float32)
    out, lse = _emulate_kernel(*args, causal, out_dtype)
    _assert_kernel_close(out, lse, want, want_lse)


# ---- lane-level emulation of the wgmma fragment and shared-memory plumbing (CPU) -----------------
# The kernel cannot run here, so its index arithmetic (cp.async destinations of load_stage, the GMMA
# descriptors, the score -> P fragment packing, the k_scale choice) is transcribed below and run through the
# layouts of the PTX ISA for wgmma .m64nNk32 with 8-bit operands: A from registers (lane (w, g, t) holds rows
# 16w + g (+8) and k 4t..4t+3 (+16)), B K-major from a no-swizzle descriptor (element (n, k) at
# start + (n // 8)·SBO + (k // 16)·LBO + (n % 8)·16 + k % 16), D lane layout (rows 16w + g (+8), columns
# 8j + 2t + {0, 1}). A wrong offset or permutation makes these products disagree with plain matmuls.


def _threads():
    return [(tid, tid >> 5, (tid & 31) >> 2, tid & 3) for tid in range(128)]


def _wgmma_b(smem, start, lbo, sbo, n):
    """The N x 32 B operand (K-major, no swizzle) a descriptor addresses."""
    b = torch.zeros(n, 32, dtype=torch.float64)
    for r in range(n):
        for k in range(32):
            b[r, k] = smem[start + (r // 8) * sbo + (k // 16) * lbo + (r % 8) * 16 + k % 16]
    return b


def _wgmma(a_regs, b, acc):
    """acc[tid][reg] += (A from per-thread registers, 64 x 32) @ b.T, in the m64nN D layout."""
    a = torch.zeros(64, 32, dtype=torch.float64)
    for tid, w, g, t in _threads():
        for i in range(4):
            for e in range(4):
                a[16 * w + g + 8 * (i % 2), 4 * t + 16 * (i // 2) + e] = a_regs[tid][i][e]
    c = a @ b.T
    for tid, w, g, t in _threads():
        for r in range(len(acc[tid])):
            j, e = r // 4, r % 4
            acc[tid][r] += c[16 * w + g + 8 * (e >> 1), 8 * j + 2 * t + (e & 1)].item()


def _load_stage(k_blk, vt_blk, d):
    """load_stage<D> transcribed: smem bytes of the K tile then the V^T tile."""
    kchunks = d // 16
    smem = [None] * (2 * 128 * d)
    for i in range(128 * kchunks):
        pl, c, pg = i & 7, (i >> 3) % kchunks, i // (8 * kchunks)
        key = op_perm_key(pg * 8 + pl)
        dst = pg * (8 * d) + c * 128 + pl * 16
        smem[dst : dst + 16] = k_blk[key, c * 16 : c * 16 + 16].tolist()
    for i in range(d * 8):
        dl, c, dg = i & 7, (i >> 3) & 7, i >> 6
        dst = 128 * d + dg * 1024 + c * 128 + dl * 16
        smem[dst : dst + 16] = vt_blk[dg * 8 + dl, c * 16 : c * 16 + 16].tolist()
    assert None not in smem  # every byte written exactly by one chunk
    return smem


@pytest.mark.parametrize("d", [64, 128])
def test_emulated_wgmma_plumbing(d):
    g0 = torch.Generator().manual_seed(40 + d)
    q = torch.randint(-128, 128, (64, d), generator=g0).double()
    k = torch.randint(-128, 128, (128, d), generator=g0).double()
    vt = torch.randint(-8, 9, (d, 128), generator=g0).double()  # V^T of one block
    smem = _load_stage(k, vt, d)
    # S = Q.K^T: D / 32 wgmma m64n128k32, descriptors start + 256 kk, LBO 128, SBO 8D
    s = [[0.0] * 64 for _ in range(128)]
    for kk in range(d // 32):
        a_regs = []
        for _, w, g, t in _threads():
            r_lo, r_hi, c = 16 * w + g, 16 * w + g + 8, kk * 32 + 4 * t
            a_regs.append([q[r_lo, c : c + 4].tolist(), q[r_hi, c : c + 4].tolist(),
                           q[r_lo, c + 16 : c + 20].tolist(), q[r_hi, c + 16 : c + 20].tolist()])  # fmt: skip
        _wgmma(a_regs, _wgmma_b(smem, kk * 256, 128, 8 * d, 128), s)
    full = q @ k.T
    kidx = ref.k_group_index(128)
    for tid, w, g, t in _threads():
        for j in range(16):
            for e in range(4):
                key = 16 * (j >> 1) + 4 * t + 2 * (j & 1) + (e & 1)  # the kernel's key of this element
                row = 16 * w + g + 8 * (e >> 1)
                assert s[tid][4 * j + e] == full[row, key].item()
                assert kidx[key].item() == 2 * (t & 1) + (j & 1)  # the kernel's sc_even / sc_odd choice
                assert ref.q_group_index(64)[row].item() == ref.q_group_index(64)[16 * w + g].item()
    # P.V: small integer "P" in the score layout, packed as the kernel packs pf, 4 wgmma m64nDk32
    p = torch.randint(0, 9, (64, 128), generator=g0).double()
    pl = []
    for _, w, g, t in _threads():
        x = [0.0] * 64
        for j in range(16):
            for e in range(4):
                x[4 * j + e] = p[
                    16 * w + g + 8 * (e >> 1), 16 * (j >> 1) + 4 * t + 2 * (j & 1) + (e & 1)
                ].item()
        pl.append(x)
    o = [[0.0] * (d // 2) for _ in range(128)]
    for c in range(4):
        a_regs = []
        for tid in range(128):
            x = pl[tid][16 * c : 16 * c + 16]
            a_regs.append([[x[0], x[1], x[4], x[5]], [x[2], x[3], x[6], x[7]],
                           [x[8], x[9], x[12], x[13]], [x[10], x[11], x[14], x[15]]])  # fmt: skip
        _wgmma(a_regs, _wgmma_b(smem, 128 * d + c * 256, 128, 1024, d), o)
    want = p @ vt.T
    for tid, w, g, t in _threads():
        for j in range(d // 8):
            for e in range(4):
                assert o[tid][4 * j + e] == want[16 * w + g + 8 * (e >> 1), 8 * j + 2 * t + (e & 1)].item()


# ---- CUDA kernel against the reference (sm90 GPU only) -------------------------------------------


def _sm90() -> bool:
    return sk.sage_attention_sm90_status()[0]


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", range(len(CUDA_SHAPES)))
def test_cuda_matches_reference(case, causal):
    if not _sm90():
        pytest.skip(f"needs sm90: {sk.sage_attention_sm90_status()[1]}")
    b, hq, hkv, nq, nk, d = CUDA_SHAPES[case]
    out_dtype = (torch.float16, torch.bfloat16)[case % 2]
    args, _ = _quantized(b, hq, hkv, nq, nk, d, seed=100 + case)
    want, want_lse = ref.sage_attention_fwd_sm90(*args, causal, torch.float32)
    cargs = [t.cuda() for t in args]
    saved = [t.clone() for t in cargs]
    out, lse = sk.sage_attention_fwd_sm90(*cargs, is_causal=causal, out_dtype=out_dtype, backend="cuda")
    for t, t0 in zip(cargs, saved, strict=True):
        assert torch.equal(t.view(torch.uint8), t0.view(torch.uint8)), "caller's input changed"
    _assert_kernel_close(out.cpu(), lse.cpu(), want, want_lse)
    emu, emu_lse = _emulate_kernel(*args, causal, out_dtype)  # tighter: P rounded in the kernel's order
    cos, rl1 = cos_rl1(out.cpu().float(), emu.float())
    assert cos >= 0.99999 and rl1 <= 0.005, (cos, rl1)
    torch.testing.assert_close(lse.cpu(), emu_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
def test_cuda_padding_is_ignored_and_unaligned_views_copied():
    if not _sm90():
        pytest.skip(f"needs sm90: {sk.sage_attention_sm90_status()[1]}")
    (q8, k8, vt, qs, ks, vs), _ = _quantized(1, 2, 1, 70, 90, 64, seed=20)
    want = ref.sage_attention_fwd_sm90(q8, k8, vt, qs, ks, vs, False, torch.float16)
    pad_vt = torch.cat([vt, torch.full((1, 1, 64, 32), float("nan")).to(torch.float8_e4m3fn)], -1)
    pad_vt[..., 90:96] = torch.tensor(float("nan")).to(torch.float8_e4m3fn)  # NaN right after the last key
    buf = torch.zeros(q8.numel() + 1, dtype=torch.int8, device="cuda")
    qv = buf[1:].view(q8.shape)
    qv.copy_(q8.cuda())
    out, lse = sk.sage_attention_fwd_sm90(qv, k8.cuda(), pad_vt.cuda(), qs.cuda(), ks.cuda(), vs.cuda())
    _assert_kernel_close(out.cpu(), lse.cpu(), want[0].float(), want[1])


@pytest.mark.cuda
@pytest.mark.skipif(not _lib.cuda_compiled(), reason="this build has no CUDA code")
def test_cuda_refused_off_sm90():
    if _sm90() or not torch.cuda.is_available():
        pytest.skip("this GPU is sm90 (or none)")
    args, _ = _quantized(1, 1, 1, 16, 16, 64, seed=21)
    with pytest.raises(RuntimeError, match=r"9\.0"):
        sk.sage_attention_fwd_sm90(*(t.cuda() for t in args), backend="cuda")
    out, _ = sk.sage_attention_fwd_sm90(*(t.cuda() for t in args))  # auto: the reference
    assert torch.isfinite(out).all()


# ---- the whole CTA, thread by thread (CPU) -------------------------------------------------------
# attn_fwd_sm90 transcribed per thread (128 threads, registers as [thread, reg] tensors): qf loads, the
# block loop with load_stage's zero-fill, the wgmma products through the emulated fragments/descriptors,
# sc_even / sc_odd, need_mask and the key/row of every register, the quad-shuffle row max and sum, the e4m3
# packing, two-level accumulation and the epilogue (row >= Nq skipped, lse). Held to the vectorized
# emulation (same float32 operations up to summation order) and to the reference.


def _load_stage_full(kh, vth, nk, k0, d):
    kchunks = d // 16
    smem = [0.0] * (2 * 128 * d)
    for i in range(128 * kchunks):
        pl, c, pg = i & 7, (i >> 3) % kchunks, i // (8 * kchunks)
        key = k0 + op_perm_key(pg * 8 + pl)
        dst = pg * (8 * d) + c * 128 + pl * 16
        smem[dst : dst + 16] = kh[key, c * 16 : c * 16 + 16].tolist() if key < nk else [0.0] * 16
    for i in range(d * 8):
        dl, c, dg = i & 7, (i >> 3) & 7, i >> 6
        key = k0 + c * 16
        n = max(0, min(16, nk - key))
        dst = 128 * d + dg * 1024 + c * 128 + dl * 16
        smem[dst : dst + 16] = vth[dg * 8 + dl, key : key + n].tolist() + [0.0] * (16 - n)
    return smem


def _emulate_cta(q8h, k8h, vth, qsh, ksh, vsh, q0, causal):
    nq, d = q8h.shape
    nk = k8h.shape[0]
    tid = torch.arange(128)
    w, g, t = tid >> 5, (tid & 31) >> 2, tid & 3
    wrow0 = q0 + 16 * w
    r_lo = wrow0 + g
    r_hi = r_lo + 8
    qh = q8h.double()
    a_qk = []
    for kk in range(d // 32):
        regs = []
        for i in range(128):
            c = kk * 32 + 4 * int(t[i])

            def row(r, c0, c=c):
                return qh[r, c0 + c : c0 + c + 4].tolist() if r < nq else [0.0] * 4

            lo, hi = int(r_lo[i]), int(r_hi[i])
            regs.append([row(lo, 0), row(hi, 0), row(lo, 16), row(hi, 16)])
        a_qk.append(regs)
    q_sc = torch.where(wrow0 < nq, qsh[torch.clamp((r_lo // 16) * 8 + r_lo % 8, max=qsh.numel() - 1)], 0.0)
    kv_end = min(nk, q0 + 64) if causal else nk
    nkb = -(-kv_end // 128)
    reg = torch.arange(64)
    j, e = reg >> 2, reg & 3
    half = (reg >> 1) & 1
    o = torch.zeros(128, d // 2)
    m = torch.full((128, 2), float("-inf"))
    lsum = torch.zeros(128, 2)
    off = torch.tensor(math.log2(448.0), dtype=torch.float32)
    for kb in range(nkb):
        k0 = kb * 128
        smem = _load_stage_full(k8h.double(), vth.double(), nk, k0, d)
        s = [[0.0] * 64 for _ in range(128)]
        for kk in range(d // 32):
            _wgmma(a_qk[kk], _wgmma_b(smem, kk * 256, 128, 8 * d, 128), s)
        sc_even = q_sc * ksh[kb * 4 + 2 * (t & 1)]
        sc_odd = q_sc * ksh[kb * 4 + 2 * (t & 1) + 1]
        x = torch.tensor(s, dtype=torch.float32) * torch.where(
            (j & 1).bool()[None, :], sc_odd[:, None], sc_even[:, None]
        )
        need_mask = k0 + 128 > nk or (causal and k0 + 127 > q0)
        if need_mask:
            key = k0 + 16 * (j >> 1)[None, :] + 4 * t[:, None] + 2 * (j & 1)[None, :] + (e & 1)[None, :]
            row = torch.where((e < 2)[None, :], r_lo[:, None], r_hi[:, None])
            x = x.masked_fill((key >= nk) | ((key > row) & causal), float("-inf"))
        mx = torch.stack([x[:, half == h].amax(1) for h in (0, 1)], 1)
        mx = mx.view(32, 4, 2).amax(1).repeat_interleave(4, 0)  # shfl_xor 1, 2 inside each quad
        m_new = torch.maximum(m, mx)
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        alpha = torch.exp2(m - m_use)
        m = m_new
        p = torch.exp2(x - m_use[:, half] + off)
        lsum = lsum * alpha + torch.stack([p[:, half == h].sum(1) for h in (0, 1)], 1)
        pe = p.to(torch.float8_e4m3fn).double()
        ob = [[0.0] * (d // 2) for _ in range(128)]
        for c in range(4):
            regs = []
            for i in range(128):
                xx = pe[i, 16 * c : 16 * c + 16].tolist()
                regs.append([[xx[0], xx[1], xx[4], xx[5]], [xx[2], xx[3], xx[6], xx[7]],
                             [xx[8], xx[9], xx[12], xx[13]], [xx[10], xx[11], xx[14], xx[15]]])  # fmt: skip
            _wgmma(regs, _wgmma_b(smem, 128 * d + c * 256, 128, 1024, d), ob)
        o = o * alpha[:, (torch.arange(d // 2) >> 1) & 1] + torch.tensor(ob, dtype=torch.float32)
    lsum = lsum.view(32, 4, 2).sum(1).repeat_interleave(4, 0)
    out = torch.full((64, d), float("nan"))
    lse = torch.full((64,), float("nan"))
    for i in range(128):
        for h in range(2):
            r = int(r_lo[i]) + 8 * h
            if r >= nq:
                continue
            inv = 1.0 / lsum[i, h] if lsum[i, h] > 0 else 0.0
            for jj in range(d // 8):
                col = jj * 8 + 2 * int(t[i])
                out[r - q0, col] = o[i, 4 * jj + 2 * h] * inv * vsh[col]
                out[r - q0, col + 1] = o[i, 4 * jj + 2 * h + 1] * inv * vsh[col + 1]
            if t[i] == 0:
                lse[r - q0] = (m[i, h] + torch.log2(lsum[i, h]) - off) * math.log(2.0)
    return out[: max(0, min(64, nq - q0))], lse[: max(0, min(64, nq - q0))]


@pytest.mark.parametrize(
    "shape, causal",
    [((1, 2, 1, 70, 200, 64), True), ((1, 1, 1, 70, 140, 64), False), ((1, 1, 1, 20, 130, 128), False)],
)
def test_emulated_cta_thread_by_thread(shape, causal):
    b, hq, hkv, nq, nk, d = shape
    (q8, k8, vt, qs, ks, vs), _ = _quantized(b, hq, hkv, nq, nk, d, seed=50 + nq)
    want, want_lse = ref.sage_attention_fwd_sm90(q8, k8, vt, qs, ks, vs, causal, torch.float32)
    emu, emu_lse = _emulate_kernel(q8, k8, vt, qs, ks, vs, causal, torch.float32)
    hq_, hk = hq - 1, (hq - 1) // (hq // hkv)  # the last q head (GQA: kv head hk)
    outs, lses = [], []
    for q0 in range(0, nq, 64):
        o, lse = _emulate_cta(q8[0, hq_], k8[0, hk], vt[0, hk], qs[0, hq_], ks[0, hk], vs[0, hk], q0, causal)
        outs.append(o)
        lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses)
    torch.testing.assert_close(out, emu[0, hq_], atol=1e-5 * emu.abs().max().item(), rtol=1e-4)
    torch.testing.assert_close(lse, emu_lse[0, hq_], atol=1e-5, rtol=1e-6)
    _assert_kernel_close(out, lse, want[0, hq_], want_lse[0, hq_])
