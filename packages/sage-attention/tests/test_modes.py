"""sageattention.modes: every quantization mode against float64 attention, the granularity groups
against an independent per-token loop, exactness of the smoothing/rotation transforms, PV modes."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from sageattention import reference as ref
from sageattention.modes import (
    SageConfig,
    _round_fp22,
    quantize_int8_groups,
    rotate_hadamard,
    sage_attention_mode,
)


def _qkv(b=2, hq=4, hkv=2, nq=77, nk=130, d=64, dv=None, dtype=torch.bfloat16, k_bias=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = torch.randn(b, hkv, nk, dv or d, generator=g).to(dtype)
    return q, k, v


def _outlier_qkv(seed=0, n=256, d=128):
    """Diffusion-like: a few channels 20x larger in Q and K, a large per-channel K bias."""
    g = torch.Generator().manual_seed(seed)
    ch = torch.ones(d)
    ch[:4] = 20.0
    q = torch.randn(1, 2, n, d, generator=g) * ch
    k = torch.randn(1, 2, n, d, generator=g) * ch + 5 * torch.randn(d, generator=g)
    v = torch.randn(1, 2, n, d, generator=g)
    return q, k, v


def _metrics(o, e):
    o, e = o.double().flatten(), e.double().flatten()
    return float(F.cosine_similarity(o, e, dim=0)), float((o - e).abs().sum() / e.abs().sum())


FP8 = dict(pv_dtype="fp8", prescale_q=False)
SM90 = dict(blkq=64, warpq=16, blkk=128, warpk=128, pv_block=128)
MODES = {
    "per_block": {},
    "per_warp": dict(qk_quant_gran="per_warp", prescale_q=False),
    "per_thread": dict(qk_quant_gran="per_thread", prescale_q=False),
    "per_token": dict(qk_quant_gran="per_token"),
    "smooth_q": dict(smooth_q=True),
    "hadamard": dict(qk_rotation="hadamard"),
    "random_hadamard+per_thread+smooth_q": dict(
        qk_rotation="random_hadamard", qk_quant_gran="per_thread", smooth_q=True
    ),
    "no_smooth_k": dict(smooth_k=False),
    "pv_fp16_accum": dict(pv_accum_dtype="fp16"),
    "pv_fp16_accum+smooth_v": dict(pv_accum_dtype="fp16", smooth_v=True),
    "pv_fp16+fp32": dict(pv_accum_dtype="fp16+fp32"),
    "fp8_fp32": dict(pv_accum_dtype="fp32", **FP8),
    "fp8_fp32+smooth_v": dict(pv_accum_dtype="fp32", smooth_v=True, **FP8),
    "fp8_fp32+fp32": dict(pv_accum_dtype="fp32+fp32", **FP8),
    "fp8_fp32+fp16 (2++)": dict(pv_accum_dtype="fp32+fp16", v_scale_max=2.25, **FP8),
    "sm90": dict(pv_accum_dtype="fp32+fp32", qk_quant_gran="per_thread", **FP8, **SM90),
}


@pytest.mark.parametrize("kwargs", [{}, dict(is_causal=True), dict(mask="bool"), dict(smooth_k=False)])
def test_default_config_bit_identical_to_reference(kwargs):
    q, k, v = _qkv(nq=200, d=96)
    smooth_k = kwargs.pop("smooth_k", True)
    if kwargs.get("mask") == "bool":
        m = torch.rand(2, 1, 200, 130, generator=torch.Generator().manual_seed(1)) > 0.3
        kwargs["mask"] = torch.zeros(m.shape).masked_fill(~m, float("-inf"))
    a = ref.sage_attention(q, k, v, sm_scale=0.1, smooth_k=smooth_k, **kwargs)
    b = sage_attention_mode(q, k, v, sm_scale=0.1, cfg=SageConfig(smooth_k=smooth_k), **kwargs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_close_to_float64(name):
    cfg = SageConfig(**MODES[name])
    q, k, v = _qkv()
    mask = torch.rand(77, 130, generator=torch.Generator().manual_seed(3)) > 0.2
    add = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    for causal, m, mm in ((True, None, None), (False, add, mask)):
        e, lse_e = ref.attention_exact(q, k, v, sm_scale=0.125, is_causal=causal, mask=mm)
        o, lse = sage_attention_mode(q, k, v, sm_scale=0.125, cfg=cfg, is_causal=causal, mask=m)
        assert torch.isfinite(o).all() and o.dtype == torch.float32
        cos, rel = _metrics(o, e)
        # INT8 QK + fp16 PV: ~1% L1 here; FP8 (E4M3, 3 mantissa bits) P and V: ~3%; no smooth_k: ~2%
        loose = cfg.pv_dtype == "fp8" or not cfg.smooth_k
        assert cos >= (0.999 if loose else 0.9998) and rel <= (0.05 if loose else 0.02), (cos, rel)
        # without smooth_k the K bias inflates the K scales (as in test_sageattn's lse test)
        assert float((lse.double() - lse_e).abs().max()) < (0.05 if cfg.smooth_k else 0.25)


def _expected_group_scales(y, key):
    """Independent per-token loop: each token's scale is max|y| over the tokens with the same key."""
    n = y.shape[-2]
    amax = y.abs().amax(-1)
    out = torch.empty_like(amax)
    for i in range(n):
        same = [j for j in range(n) if key(j) == key(i)]
        out[..., i] = amax[..., same].amax(-1) / 127.0
    return out


@pytest.mark.parametrize(
    "role,gran,key",
    [
        ("q", "per_block", lambda n: n // 128),
        ("k", "per_block", lambda n: n // 64),
        ("q", "per_warp", lambda n: n // 32),
        ("k", "per_warp", lambda n: n // 64),
        ("q", "per_thread", lambda n: (n // 32, n % 8)),  # mma C rows lane//4 and lane//4 + 8
        ("k", "per_thread", lambda n: (n // 64, (n % 8) // 2)),  # mma C cols 2·(lane%4) + {0, 1}
        ("q", "per_token", lambda n: n),
    ],
)
def test_granularity_groups(role, gran, key):
    g = torch.Generator().manual_seed(4)
    y = torch.randn(2, 150, 16, generator=g) * torch.rand(2, 150, 1, generator=g) * 10  # 150: a partial tile
    x8, scale = quantize_int8_groups(y, role, gran, SageConfig())
    want = _expected_group_scales(y, key) + (1e-7 if gran == "per_thread" else 0.0)
    torch.testing.assert_close(scale, want, rtol=0, atol=0)
    assert x8.abs().max() <= 127 and torch.equal(x8, x8.round())
    # round half away from zero of y / scale
    r = y / scale[..., None]
    torch.testing.assert_close(x8, torch.sign(r) * torch.floor(r.abs() + 0.5), rtol=0, atol=0)


def test_per_thread_scale_count_matches_sa2():
    """8 Q scales per 32-token warp, 4 K scales per 64-token warp (SageAttention2, per_thread)."""
    y = torch.arange(1, 129, dtype=torch.float32)[:, None].expand(128, 4).contiguous()
    _, qs = quantize_int8_groups(y, "q", "per_thread", SageConfig())
    _, ks = quantize_int8_groups(y, "k", "per_thread", SageConfig())
    assert qs.unique().numel() == 4 * 8 and ks.unique().numel() == 2 * 4


@pytest.mark.parametrize("d", [32, 64, 96, 160, 256])
def test_hadamard_rotation_preserves_scores(d):
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(3, 40, d, generator=g), torch.randn(3, 50, d, generator=g)
    for kind in ("hadamard", "random_hadamard"):
        rq, rk = rotate_hadamard(q, kind), rotate_hadamard(k, kind)
        assert rq.shape[-1] >= d and rq.shape[-1] % 64 == 0
        torch.testing.assert_close(rq @ rk.transpose(-1, -2), q @ k.transpose(-1, -2), rtol=1e-4, atol=1e-4)


def test_rotation_and_finer_granularity_help_on_outlier_channels():
    q, k, v = _outlier_qkv()
    e, _ = ref.attention_exact(q, k, v)
    rel = {}
    for gran, rot in itertools.product(("per_block", "per_thread"), (None, "hadamard")):
        o, _ = sage_attention_mode(
            q, k, v, sm_scale=128**-0.5, cfg=SageConfig(qk_quant_gran=gran, qk_rotation=rot)
        )
        rel[gran, rot] = _metrics(o, e)[1]
    assert rel["per_block", "hadamard"] < rel["per_block", None] / 2, rel
    assert rel["per_thread", "hadamard"] < rel["per_thread", None] / 2, rel
    assert rel["per_thread", None] < rel["per_block", None], rel


def test_smooth_q_correction_is_exact_and_helps_on_q_bias():
    """A large shared Q offset: smoothing quantizes only the residual; the correction mean(Q)·Kᵀ
    keeps the scores exact (softmax would otherwise not be invariant to it)."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(1, 2, 256, 64, generator=g) * 0.3 + 3 * torch.randn(64, generator=g)
    k, v = torch.randn(1, 2, 200, 64, generator=g), torch.randn(1, 2, 200, 64, generator=g)
    e, lse_e = ref.attention_exact(q, k, v)
    rel = {}
    for sq in (False, True):
        o, lse = sage_attention_mode(
            q, k, v, sm_scale=0.125, cfg=SageConfig(smooth_q=sq, qk_quant_gran="per_thread")
        )
        rel[sq] = _metrics(o, e)[1]
        assert float((lse.double() - lse_e).abs().max()) < 0.05
    assert rel[True] < rel[False] / 2, rel


def test_round_fp22_keeps_13_mantissa_bits():
    x = torch.tensor([1 + 2**-13, 1 + 2**-14, -(1 + 3 * 2**-14), 3.0, 0.0])
    assert _round_fp22(x).tolist() == [1 + 2**-13, 1.0, -(1 + 2**-13), 3.0, 0.0]


def test_pv_accumulation_order_and_smooth_v_on_biased_v():
    """Long rows, V with a large mean: pure fp16 accumulation loses precision, two-level less,
    float32 least; smooth_v removes the mean before rounding and gets it back exactly."""
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 2, 128, 64, generator=g), torch.randn(1, 2, 2048, 64, generator=g)
    v = torch.randn(1, 2, 2048, 64, generator=g) + 8
    e, _ = ref.attention_exact(q, k, v, sm_scale=0.05)
    rel = {}
    for acc, sv in itertools.product(("fp32", "fp16+fp32", "fp16"), (False, True)):
        o, _ = sage_attention_mode(q, k, v, sm_scale=0.05, cfg=SageConfig(pv_accum_dtype=acc, smooth_v=sv))
        rel[acc, sv] = _metrics(o, e)[1]
    assert rel["fp32", False] <= rel["fp16+fp32", False] < rel["fp16", False], rel
    assert rel["fp16", True] < rel["fp16", False] / 10, rel
    o8, _ = sage_attention_mode(
        q, k, v, sm_scale=0.05, cfg=SageConfig(pv_accum_dtype="fp32", smooth_v=True, **FP8)
    )
    o8n, _ = sage_attention_mode(q, k, v, sm_scale=0.05, cfg=SageConfig(pv_accum_dtype="fp32", **FP8))
    assert _metrics(o8, e)[1] < _metrics(o8n, e)[1] / 5


@pytest.mark.parametrize("name", ["pv_fp16_accum", "pv_fp16+fp32", "fp8_fp32", "fp8_fp32+fp16 (2++)", "sm90"])
def test_large_v_no_overflow(name):
    q, k, v = _qkv(hkv=4, nk=300)
    v = (v.float() * (1e4 / v.float().abs().amax())).to(torch.bfloat16)
    e, _ = ref.attention_exact(q, k, v)
    o, _ = sage_attention_mode(q, k, v, sm_scale=0.125, cfg=SageConfig(**MODES[name]))
    assert torch.isfinite(o).all()
    assert _metrics(o, e)[1] < 0.05


def test_fully_masked_rows_zero_with_smooth_v():
    q, k, v = _qkv()
    mask = torch.zeros(2, 4, 77, 130)
    mask[:, :, 3] = float("-inf")
    for name in ("pv_fp16_accum+smooth_v", "fp8_fp32+smooth_v"):
        o, lse = sage_attention_mode(q, k, v, sm_scale=0.125, cfg=SageConfig(**MODES[name]), mask=mask)
        assert (o[:, :, 3] == 0).all() and (lse[:, :, 3] == float("-inf")).all()


@pytest.mark.parametrize("name", ["per_thread", "hadamard", "fp8_fp32+fp32", "smooth_q"])
def test_nan_propagates(name):
    q, k, v = _qkv(hkv=4)
    q[1, 2, 3, 4] = float("nan")
    o, _ = sage_attention_mode(q, k, v, sm_scale=0.125, cfg=SageConfig(**MODES[name]))
    assert torch.isnan(o[1, 2, 3]).all() and torch.isfinite(o[0]).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(qk_quant_gran="per_lane"),
        dict(qk_rotation="dct"),
        dict(pv_dtype="int8"),
        dict(pv_accum_dtype="fp32+fp16"),
        dict(pv_dtype="fp8", pv_accum_dtype="fp16"),
        dict(warpq=24),
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        SageConfig(**kwargs)


def test_q_chunk_changes_speed_not_maths():
    q, k, v = _qkv(nq=300)
    for name in ("smooth_q", "fp8_fp32+fp32", "sm90"):
        cfg = SageConfig(**MODES[name])
        a, la = sage_attention_mode(q, k, v, sm_scale=0.125, cfg=cfg, is_causal=True)
        b, lb = sage_attention_mode(q, k, v, sm_scale=0.125, cfg=cfg, is_causal=True, q_chunk=4 * cfg.blkq)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="q_chunk"):
        sage_attention_mode(q, k, v, sm_scale=0.125, q_chunk=100)
