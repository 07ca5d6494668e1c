"""SageAttention3 (NVFP4): the reference maths against exact float64 attention, the exactness of Q/K
smoothing, the Triton ``tl.dot_scaled`` kernel (interpreter) against the reference, and the
``sageattn3_blackwell`` API (GQA, causal, masks, layouts, padding, LSE, no mutation, bad input)."""

import os

import pytest
import torch
import torch.nn.functional as F
from sageattention import reference as exact_ref
from sageattention.sa3 import api, sageattn3_blackwell
from sageattention.sa3 import reference as sa3

pytest.importorskip("triton")


def _qkv(b=1, hq=4, hkv=2, nq=70, nk=150, d=64, dv=None, dtype=torch.float32, seed=0, q_bias=1.0, k_bias=3.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, hq, nq, d, generator=g) * 2 + q_bias * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = torch.randn(b, hkv, nk, dv or d, generator=g).to(dtype)
    return q, k, v


def _metrics(o, e):
    o, e = o.double().flatten(), e.double().flatten()
    return float(F.cosine_similarity(o, e, dim=0)), float((o - e).abs().sum() / e.abs().sum())


def _additive(mask):
    return torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))


# ------------------------------------------------------------------------------ reference maths
@pytest.mark.parametrize("per_block_mean", [True, False])
@pytest.mark.parametrize("case", ["plain", "causal", "mask"])
def test_smoothing_is_exact_without_quantization(per_block_mean, case):
    """Q block-mean subtraction + q̄·K'ᵀ correction and K smoothing (+ its LSE correction) change
    nothing in exact arithmetic: float64 result equals plain attention to 1e-10."""
    q, k, v = _qkv(nq=300, nk=260, d=40, dv=24, dtype=torch.float64)
    mask = None
    if case == "mask":
        mask = torch.rand(1, 4, 300, 260, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[..., 5, :] = False  # a fully masked row
    kw = dict(is_causal=case == "causal")
    e, le = exact_ref.attention_exact(q, k, v, sm_scale=0.2, mask=mask, **kw)
    o, lse = sa3.sa3_attention(
        q, k, v, sm_scale=0.2, mask=None if mask is None else _additive(mask), per_block_mean=per_block_mean,
        quantize=False, dtype=torch.float64, **kw,
    )  # fmt: skip
    assert (o - e).abs().max() < 1e-10
    fin = torch.isfinite(le)
    assert torch.equal(fin, torch.isfinite(lse))
    assert (lse[fin] - le[fin]).abs().max() < 1e-10
    if case == "mask":
        assert (o[..., 5, :] == 0).all() and (lse[..., 5] == float("-inf")).all()


def test_q_block_mean_uses_valid_rows_of_each_block():
    q = torch.randn(1, 1, 130, 16, dtype=torch.float64)
    m = sa3.q_block_mean(q, True)
    assert torch.allclose(m[0, 0, 0], q[0, 0, :128].mean(0)) and torch.allclose(
        m[0, 0, 129], q[0, 0, 128:].mean(0)
    )
    assert torch.allclose(sa3.q_block_mean(q, False)[0, 0, 7], q[0, 0].mean(0))


@pytest.mark.parametrize("sm_scale,bounds", [(0.125, (0.95, 0.30, 0.25)), (0.5, (0.89, 0.37, 1.0))])
def test_reference_accuracy_vs_exact(sm_scale, bounds):
    """FP4 bounds: E2M1 with a per-16 E4M3 scale keeps ~2 significant bits (~10% relative rms error
    per element). On unstructured Gaussian Q/K the Q·Kᵀ error dominates (alone: cos 0.973 / 0.919 at
    sm_scale 0.125 / 0.5; V alone 0.9955; two-level P alone 0.999): the larger sm_scale is, the more
    the same relative score error moves probability. Measured: cos 0.967 / 0.914, rel-L1 0.245 / 0.323
    (INT8 SageAttention2 on the same inputs: 0.9998 / 0.9993)."""
    q, k, v = _qkv(nq=256, nk=384, d=64)
    e, le = exact_ref.attention_exact(q, k, v, sm_scale=sm_scale)
    o, lse = sa3.sa3_attention(q, k, v, sm_scale=sm_scale)
    cos, rel = _metrics(o, e)
    assert cos > bounds[0] and rel < bounds[1], (cos, rel)
    assert (lse - le).abs().mean() < bounds[2]  # the same score error, in natural-log units


def test_two_level_p_scaling_and_range_guard_are_exact_power_of_two_scalings():
    """V times 2^-12 (its E4M3 scales would be subnormal without the guard): with the guard the
    output scales exactly by 2^-12; without it (upstream's recipe) accuracy is lost."""
    q, k, v = _qkv(nq=128, nk=128, d=64)
    o1, _ = sa3.sa3_attention(q, k, v, sm_scale=0.3)
    o2, _ = sa3.sa3_attention(q, k, v * 2.0**-12, sm_scale=0.3)
    assert torch.equal(o2, o1 * 2.0**-12)
    o3, _ = sa3.sa3_attention(q, k, v * 2.0**-12, sm_scale=0.3, range_guard=False)
    e, _ = exact_ref.attention_exact(q, k, v * 2.0**-12, sm_scale=0.3)
    assert _metrics(o3, e)[1] > 2 * _metrics(o2, e)[1]


def test_nvfp4_roundtrip_uses_shared_kernels_format():
    from shared_kernels import dequantize_nvfp4, quantize_nvfp4

    x = torch.randn(2, 3, 32, 48) * 100
    g = sa3.pow2_range_scale(x)
    want = dequantize_nvfp4(quantize_nvfp4((x / g).float().contiguous(), outer="none")) * g
    assert torch.equal(sa3.nvfp4_roundtrip(x, -1), want.float())
    y = sa3.nvfp4_roundtrip(x[..., :20, :40], -2)  # padding along both axes
    assert y.shape == (2, 3, 20, 40) and torch.isfinite(y).all()


# ------------------------------------------------------------------------------ audit vs paper / upstream
def _group(values, n=16):
    """One 16-group (padded with zeros) as a [1, 1, 1, n] float32 row."""
    x = torch.zeros(1, 1, 1, n)
    x[0, 0, 0, : len(values)] = torch.tensor(values)
    return x


def test_e2m1_elements_round_half_to_even():
    """amax 6 -> E4M3 scale exactly 1, so the elements are the E2M1 grid itself; the midpoints
    0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5 go to the even code (as cvt.rn.satfinite.e2m1x2)."""
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, -1.25, 6.0]
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0, -1.0, 6.0]
    for guard in (True, False):
        y = sa3.nvfp4_roundtrip(_group(ties), -1, guard)[0, 0, 0, : len(ties)]
        assert y.tolist() == want, (guard, y.tolist())


def test_scale_rounded_down_saturates_elements_at_6():
    """amax/6 = 1.06 rounds (RNE) down to the E4M3 value 1.0, so amax/scale = 6.36 > 6: the element
    saturates to 6 (upstream's cvt.rn.satfinite does the same). The clip error is < amax/16, below
    the top binade's half step (1·scale); rounding the scale UP instead (no clipping) costs more on
    Gaussian data, so RNE is kept."""
    y = sa3.nvfp4_roundtrip(_group([6.36, 2.6, -6.3]), -1, False)[0, 0, 0, :3]
    assert y.tolist() == [6.0, 3.0, -6.0]
    assert (6.36 - 6.0) < 6.36 / 16
    x = torch.randn(1, 1, 256, 64, generator=torch.Generator().manual_seed(0))
    rne_err = (sa3.nvfp4_roundtrip(x, -1, False) - x).pow(2).mean()
    xb = x.reshape(1, 1, 256, 4, 16)
    s = xb.abs().amax(-1, keepdim=True) / 6
    s_up = torch.where(s.to(torch.float8_e4m3fn).float() < s, (s * 1.0625).to(torch.float8_e4m3fn).float(), s)
    s_up = s_up.to(torch.float8_e4m3fn).float()  # smallest E4M3 value >= amax/6 (never clips)
    assert (s_up >= s).all()
    from shared_kernels.reference.microscaling import E2M1, decode, encode

    up = (decode(encode(xb / s_up, E2M1), E2M1) * s_up).reshape(x.shape)
    assert rne_err < (up - x).pow(2).mean()


def test_p_codes_against_fp32_scale_are_upstreams_recipe():
    """Upstream's kernel divides P by the UNROUNDED blockmax/6 and uses E4M3(blockmax/6) only in
    the MMA (``softmax_fused.h``); our default codes P against the decoded E4M3 scale (as for Q, K, V
    and the paper's φ). Group max 6.36: scale 1.06 -> E4M3 1.0; element 2.6: ours 2.6/1 -> 3,
    upstream 2.6/1.06 = 2.45 -> 2."""
    g = _group([6.36, 2.6, 1.0])
    assert sa3.nvfp4_roundtrip(g, -1, False)[0, 0, 0, :3].tolist() == [6.0, 3.0, 1.0]
    assert sa3.nvfp4_roundtrip_fp32_codes(g)[0, 0, 0, :3].tolist() == [6.0, 2.0, 1.0]
    q, k, v = _qkv(nq=128, nk=256, d=64)
    o, _ = sa3.sa3_attention(q, k, v, sm_scale=0.2)
    o_up, _ = sa3.sa3_attention(q, k, v, sm_scale=0.2, p_code_scale="fp32")
    assert not torch.equal(o, o_up) and (o - o_up).abs().max() < 0.05 * v.abs().max()
    e, _ = exact_ref.attention_exact(q, k, v, sm_scale=0.2)
    assert _metrics(o, e)[1] <= _metrics(o_up, e)[1] * 1.02  # ours is not worse


def test_reverse_key_order_equals_forward_on_block_reversed_keys():
    """``key_order='reverse'`` (upstream visits key blocks last to first) is the forward loop on K, V
    with their 128-key blocks reversed (quantization groups are unchanged by whole-block moves)."""
    q, k, v = _qkv(nq=64, nk=384, d=32)
    o_r, l_r = sa3.sa3_attention(q, k, v, sm_scale=0.3, key_order="reverse")
    flip = torch.cat([torch.arange(j, j + 128) for j in (256, 128, 0)])
    o_f, l_f = sa3.sa3_attention(q, k[:, :, flip], v[:, :, flip], sm_scale=0.3)
    assert torch.allclose(o_r, o_f, atol=1e-6) and torch.allclose(l_r, l_f, atol=1e-6)
    o, _ = sa3.sa3_attention(q, k, v, sm_scale=0.3)
    assert not torch.equal(o, o_r)  # the order changes the running max at which P is quantized
    o64, _ = sa3.sa3_attention(
        q, k, v, sm_scale=0.3, key_order="reverse", quantize=False, dtype=torch.float64
    )
    e, _ = exact_ref.attention_exact(q, k, v, sm_scale=0.3)
    assert (o64 - e).abs().max() < 1e-10


def test_mxfp4_roundtrip_is_ocp_floor_rule():
    """E8M0 scale 2^(floor(log2 amax) - 2): amax 5 -> scale 1 (5 is a tie between 4 and 6 -> 4);
    amax 7 -> scale 1, 7 saturates to 6; amax 12 -> scale 2. One scale per 32 (not 16) values."""
    y = sa3.mxfp4_roundtrip(_group([5.0, 0.75], 32), -1)[0, 0, 0, :2]
    assert y.tolist() == [4.0, 1.0]
    assert sa3.mxfp4_roundtrip(_group([7.0, 2.5], 32), -1)[0, 0, 0, :2].tolist() == [6.0, 2.0]
    row = _group([12.0] + [0.0] * 16 + [0.9], 32)  # 0.9/2 = 0.45 -> 0.5 -> 1.0; NVFP4 (own group) keeps 0.9
    assert sa3.mxfp4_roundtrip(row, -1)[0, 0, 0, [0, 17]].tolist() == [12.0, 1.0]
    assert sa3.nvfp4_roundtrip(row, -1)[0, 0, 0, 17].item() == pytest.approx(0.9, rel=0.07)
    x = torch.randn(2, 3, 40, 24) * 5  # padding along both axes (24 -> 32, 40 -> 64)
    for axis in (-1, -2):
        y = sa3.mxfp4_roundtrip(x, axis)
        assert y.shape == x.shape and (y - x).abs().max() <= x.abs().max() / 4


def test_mxfp4_is_less_accurate_than_nvfp4():
    """The paper's NVFP4 vs MXFP4 comparison (99.52% vs 98.37%): MXFP4's power-of-two scales over 32
    values lose more than NVFP4's E4M3 scales over 16."""
    q, k, v = _qkv(nq=128, nk=256, d=64, q_bias=0.3, k_bias=1.0)
    e, _ = exact_ref.attention_exact(q, k, v, sm_scale=0.125)
    cos_nv = _metrics(sa3.sa3_attention(q, k, v, sm_scale=0.125)[0], e)[0]
    cos_mx = _metrics(sa3.sa3_attention(q, k, v, sm_scale=0.125, fmt="mxfp4")[0], e)[0]
    assert 0.9 < cos_mx < cos_nv, (cos_mx, cos_nv)


def test_fp4_parts_switch_each_component():
    q, k, v = _qkv(nq=128, nk=200, d=48)
    kw = dict(sm_scale=0.2)
    exact_smooth, _ = sa3.sa3_attention(q, k, v, quantize=False, **kw)
    assert torch.equal(sa3.sa3_attention(q, k, v, fp4_parts=(), **kw)[0], exact_smooth)
    full, _ = sa3.sa3_attention(q, k, v, **kw)
    assert torch.equal(sa3.sa3_attention(q, k, v, fp4_parts=["v", "p", "qk"], **kw)[0], full)
    e, _ = exact_ref.attention_exact(q, k, v, **kw)
    errs = {}
    for part in sa3.FP4_PARTS:
        o, _ = sa3.sa3_attention(q, k, v, fp4_parts=(part,), **kw)
        errs[part] = _metrics(o, e)[1]
        assert 0 < errs[part] < _metrics(full, e)[1]
    assert errs["qk"] > errs["p"]  # Gaussian Q/K: the FP4 scores dominate


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(fmt="fp4"), ValueError, "fmt must be one of"),
        (dict(fp4_parts="qk"), TypeError, "fp4_parts must be a collection"),
        (dict(fp4_parts=("qk", "s")), ValueError, r"subset of .*\['s'\]"),
        (dict(key_order="backward"), ValueError, "key_order must be one of"),
        (dict(p_code_scale="bf16"), ValueError, "p_code_scale must be one of"),
        (dict(p_code_scale="fp32", fmt="mxfp4"), ValueError, "NVFP4"),
        (dict(dtype=torch.float16), TypeError, "dtype must be"),
    ],
)
def test_reference_rejects_bad_options(kw, exc, match):
    q, k, v = _qkv(nq=4, nk=4, d=16)
    with pytest.raises(exc, match=match):
        sa3.sa3_attention(q, k, v, sm_scale=0.25, **kw)
    with pytest.raises(ValueError, match="fmt must be one of"):
        sa3.fp4_roundtrip(q, -1, "int4")
    with pytest.raises(ValueError, match="axis must be -1 or -2"):
        sa3.mxfp4_roundtrip(q, 1)
    with pytest.raises(ValueError, match="axis must be -1 or -2"):
        sa3.nvfp4_roundtrip(q, 0)
    with pytest.raises(ValueError, match="multiple of 16"):
        sa3.nvfp4_roundtrip_fp32_codes(q.abs()[..., :8])
    with pytest.raises(ValueError, match="non-negative"):
        sa3.nvfp4_roundtrip_fp32_codes(-q.abs())


def test_reference_rejects_bad_tensors():
    q, k, v = _qkv(nq=4, nk=6, d=16)
    bad = [
        ((q[0], k, v), TypeError, "q must be a 4-D floating-point tensor"),
        ((q, k.long(), v), TypeError, "k must be a 4-D floating-point tensor"),
        ((q, k, v.numpy()), TypeError, "v must be .* got ndarray"),
        ((q, k, v[:, :, :5]), ValueError, "shapes must be"),
        ((q, k[..., :8], v), ValueError, "shapes must be"),
        ((q[:, :3], k, v), ValueError, "multiple of the k/v heads"),
    ]
    for args, exc, match in bad:
        with pytest.raises(exc, match=match):
            sa3.sa3_attention(*args, sm_scale=0.25)


def test_range_guard_keeps_large_values_from_saturating():
    """V times 2^12 (max|V|/6 > 448: upstream's E4M3 scales saturate and the elements clip at 6·448):
    with the guard the output scales exactly by 2^12; without it the result is far off."""
    q, k, v = _qkv(nq=128, nk=128, d=64)
    o1, _ = sa3.sa3_attention(q, k, v, sm_scale=0.3)
    o2, _ = sa3.sa3_attention(q, k, v * 2.0**12, sm_scale=0.3)
    assert torch.equal(o2, o1 * 2.0**12)
    o3, _ = sa3.sa3_attention(q, k, v * 2.0**12, sm_scale=0.3, range_guard=False)
    e, _ = exact_ref.attention_exact(q, k, v * 2.0**12, sm_scale=0.3)
    assert _metrics(o3, e)[1] > 1.5 * _metrics(o2, e)[1]  # measured 0.49 vs 0.26


# ------------------------------------------------------------------------------ Triton kernel
def _kernel_device() -> str:
    """CPU under the interpreter (NATIVE=False path); on a GPU machine the CUDA device, where the
    native NVFP4 ``tl.dot_scaled`` path runs (FP4 tensor cores: compute capability >= 10.0)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 10:
        return "cuda"
    pytest.skip("the NVFP4 Triton kernel needs TRITON_INTERPRET=1 or a GPU with compute capability >= 10.0")


def _close_to_reference(o_t, o_r, lse_t, lse_r, v):
    """Same quantized operands and block order; exp2 / summation order may flip a few FP4 codes of P."""
    vmax = v.abs().max().item()
    ulp = torch.finfo(o_t.dtype).eps * o_r.float().abs()  # the cast to bf16/fp16 can round either way
    err = (o_t.float() - o_r.float()).abs()
    assert (err - ulp).max() <= 2e-3 * vmax, err.max()
    assert (err - ulp > 1e-5 * vmax).float().mean() < 0.01
    fin = torch.isfinite(lse_r)
    assert torch.equal(fin, torch.isfinite(lse_t))
    assert (lse_t[fin] - lse_r[fin]).abs().max() < 1e-4


@pytest.mark.parametrize(
    "shape,kw",
    [
        (dict(hq=4, hkv=2, nq=70, nk=150, d=64), dict()),  # GQA, padded Nq/Nk
        (dict(hq=2, hkv=1, nq=130, nk=130, d=80, dv=48), dict(is_causal=True)),  # D padded to 128
        (dict(hq=2, hkv=2, nq=40, nk=200, d=128), dict(per_block_mean=False, sm_scale=0.3)),
        (dict(b=2, hq=1, hkv=1, nq=1, nk=17, d=32, dv=16), dict()),  # one query, D padded to 64
    ],
)
def test_triton_matches_reference(shape, kw):
    q, k, v = _qkv(**shape, dtype=torch.bfloat16)
    dev = _kernel_device()
    o_t, lse_t = sageattn3_blackwell(*(x.to(dev) for x in (q, k, v)), return_lse=True, backend="triton", **kw)
    o_t, lse_t = o_t.cpu(), lse_t.cpu()
    o_r, lse_r = sageattn3_blackwell(q, k, v, return_lse=True, backend="torch", **kw)
    want = (shape.get("b", 1), shape["hq"], shape["nq"], shape.get("dv") or shape["d"])
    assert o_t.dtype == torch.bfloat16 and o_t.shape == want
    _close_to_reference(o_t, o_r, lse_t, lse_r, v)
    e, _ = exact_ref.attention_exact(
        q, k, v, sm_scale=kw.get("sm_scale"), is_causal=kw.get("is_causal", False)
    )
    cos, _ = _metrics(o_t, e)
    assert cos > 0.95


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_triton_masks_and_nhd(mask_kind):
    q, k, v = _qkv(hq=2, hkv=1, nq=50, nk=140, d=64)
    g = torch.Generator().manual_seed(3)
    if mask_kind == "bool":
        mask = torch.rand(1, 1, 50, 140, generator=g) > 0.4
        mask[..., 7, :] = False
    else:
        mask = torch.randn(50, 140, generator=g) * 2  # broadcast over B, H
    qn, kn, vn = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    copies = [x.clone() for x in (qn, kn, vn, mask)]
    dev = _kernel_device()
    o_t, lse_t = sageattn3_blackwell(
        *(x.to(dev) for x in (qn, kn, vn, mask)), return_lse=True, tensor_layout="NHD", backend="triton"
    )
    o_t, lse_t = o_t.cpu(), lse_t.cpu()
    o_r, lse_r = sageattn3_blackwell(qn, kn, vn, mask, return_lse=True, tensor_layout="NHD", backend="torch")
    for x, c in zip((qn, kn, vn, mask), copies, strict=True):
        assert torch.equal(x, c)  # no mutation (upstream smooths K in place)
    assert o_t.shape == qn.shape
    _close_to_reference(o_t, o_r, lse_t, lse_r, v)
    e, _ = exact_ref.attention_exact(q, k, v, mask=mask)
    assert _metrics(o_t.transpose(1, 2), e)[0] > 0.95
    if mask_kind == "bool":
        assert (o_t[:, 7] == 0).all() and (lse_t[..., 7] == float("-inf")).all()
        assert not torch.isnan(o_t).any()


# ------------------------------------------------------------------------------ API
def test_api_torch_backend_layouts_lse_and_defaults():
    q, k, v = _qkv(nq=33, nk=47, d=96, dtype=torch.float16)
    o, lse = sageattn3_blackwell(q, k, v, return_lse=True, backend="torch")
    o_ref, lse_ref = sa3.sa3_attention(q, k, v, sm_scale=96**-0.5)
    assert torch.equal(o, o_ref.half()) and torch.equal(lse, lse_ref)
    assert torch.equal(sageattn3_blackwell(q, k, v), o)  # auto on the CPU: the same maths
    on = sageattn3_blackwell(*(x.transpose(1, 2) for x in (q, k, v)), tensor_layout="NHD", backend="torch")
    assert torch.equal(on.transpose(1, 2), o)
    _, le = exact_ref.attention_exact(q, k, v)
    assert (lse - le).abs().mean() < 0.1


def test_api_empty_inputs():
    q, k, v = _qkv(nq=5, nk=0)
    o, lse = sageattn3_blackwell(q, k, v, return_lse=True, backend="torch")
    assert o.shape == (1, 4, 5, 64) and (o == 0).all() and (lse == float("-inf")).all()


def test_fp4_kernel_refused_without_fp4_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    ok, why = api.fp4_kernel_available(torch.device("cuda", 0))
    assert not ok and "H100" in why and "sm90" in why and "10.0" in why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))
    assert api.fp4_kernel_available(torch.device("cuda", 0))[0]


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(nq=8, nk=8)
    with pytest.raises(ValueError, match=r"backend='triton' cannot run on cpu.*TRITON_INTERPRET=1.*'torch'"):
        sageattn3_blackwell(q, k, v, backend="triton")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(dropout_p=0.1), TypeError, "dropout_p"),
        (dict(smooth_k=False), TypeError, "smooth_k"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(tensor_layout="BHND"), TypeError, "tensor_layout"),
        (dict(is_causal=1), TypeError, "is_causal must be a bool"),
        (dict(per_block_mean="yes"), TypeError, "per_block_mean must be a bool"),
        (dict(return_lse=None), TypeError, "return_lse must be a bool"),
        (dict(sm_scale=float("nan")), ValueError, "sm_scale must be finite"),
        (dict(sm_scale="0.1"), TypeError, "sm_scale must be a float"),
        (dict(attn_mask=torch.ones(3, 8, 8, dtype=torch.bool)), ValueError, "broadcastable"),
        (dict(attn_mask=torch.ones(8, 8, dtype=torch.int32)), TypeError, "attn_mask must be bool"),
        (
            dict(attn_mask=torch.ones(8, 8, dtype=torch.bool), is_causal=True),
            ValueError,
            "cannot both be set",
        ),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    q, k, v = _qkv(nq=8, nk=8)
    with pytest.raises(exc, match=match):
        sageattn3_blackwell(q, k, v, **kwargs)


def test_no_backward_is_a_clear_error():
    q, k, v = _qkv(nq=8, nk=8)
    with pytest.raises(RuntimeError, match="no backward"):
        sageattn3_blackwell(q.requires_grad_(), k, v)
    with torch.no_grad():
        assert sageattn3_blackwell(q, k, v).shape == (1, 4, 8, 64)


def test_bad_tensors():
    q, k, v = _qkv(nq=8, nk=8)
    with pytest.raises(TypeError, match="q must be float16, bfloat16 or float32"):
        sageattn3_blackwell(q.long(), k, v)
    with pytest.raises(TypeError, match=r"k must be a torch\.Tensor"):
        sageattn3_blackwell(q, k.numpy(), v)
    with pytest.raises(ValueError, match="v must be 4-D"):
        sageattn3_blackwell(q, k, v[0])
    with pytest.raises(ValueError, match="multiple of the number of k/v heads"):
        sageattn3_blackwell(q[:, :3], k, v)
    with pytest.raises(TypeError, match="must share one dtype"):
        sageattn3_blackwell(q, k.half(), v)
    with pytest.raises(ValueError, match="share the head dim"):
        sageattn3_blackwell(q, k[..., :32], v)
    big = torch.zeros(1, 1, 4, 300)
    with pytest.raises(ValueError, match="head dims <= 256"):
        sageattn3_blackwell(big, big, big, backend="triton")
