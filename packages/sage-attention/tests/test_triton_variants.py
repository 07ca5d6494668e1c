"""Triton kernels behind ``sageattn_qk_int8_pv_fp16_cuda`` (``triton_variants``) against the oracle
``modes.sage_attention_mode`` (interpreter): per-row/per-column scale quantizers bit-exact, attention
within ``1e-3·max|V|``, the registered kernel, the fallback for unsupported configs."""

import dataclasses
import math

import pytest
import torch
from sageattention import core, modes, variants

pytest.importorskip("triton")
from sageattention import triton_variants as tv
from sageattention.triton import pipeline
from sageattention.triton_api import sageattn_qk_int8_pv_fp16_triton

ATOL_REL, LSE_ATOL = 1e-3, 1e-5
GRANS = ("per_thread", "per_token", "per_block", "per_warp")
UPSTREAM = dict(blkq=128, warpq=32, blkk=64, warpk=64, prescale_q=False)  # the fp16 CUDA kernel's tiles


def _qkv(b=1, hq=4, hkv=2, nq=150, nk=90, d=64, dv=None, dtype=torch.float16, seed=0, k_bias=2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = torch.randn(b, hkv, nk, dv or d, generator=g).to(dtype)
    return q, k, v


# ---------------------------------------------------------------------------------------------- quant


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in the K mean
@pytest.mark.parametrize("gran", ["per_thread", "per_token"])
@pytest.mark.parametrize("role", ["q", "k"])
@pytest.mark.parametrize(
    "tiles", [dict(warpq=32, warpk=64), dict(blkq=64, warpq=16, blkk=128, warpk=128)], ids=["sm80", "sm90"]
)
def test_row_quantizer_bit_exact(gran, role, tiles):
    cfg = modes.SageConfig(qk_quant_gran=gran, **tiles)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 203, 72, generator=g).to(torch.bfloat16)
    x[0, 0, 5] *= 300.0  # outlier token
    x[0, 1, 64:128] = 0  # all-zero groups
    x[1, 2, 7, 3] = float("inf")
    x[1, 1, 40, 0] = float("nan")
    mult = 0.125 * 1.4426950408889634 if role == "q" else 1.0
    mean = None
    y = x.float()
    if role == "k":  # smoothed K, mean as modes computes it
        mean = (x.double().sum(dim=-2) / x.shape[-2]).float()
        y = y - mean[..., None, :]
    y = y * torch.tensor(mult, dtype=torch.float32)
    e8, es = modes.quantize_int8_groups(y, role, gran, cfg)
    x8, sc = pipeline._quant_qk(x, mean, tv._groups(role, cfg), mult, gran == "per_thread")
    assert torch.equal(sc.isnan(), es.isnan()) and torch.equal(sc.nan_to_num(-1.0), es.nan_to_num(-1.0))
    assert torch.equal(x8.float(), e8)
    assert torch.isnan(sc).any()  # the inf/NaN groups


def test_per_thread_groups_are_the_mma_fragment_rows():
    """Q: rows with equal n % 8 of a 32-row warp share a scale; K: equal (n % 8) // 2 of 64 keys."""
    cfg = modes.SageConfig(qk_quant_gran="per_thread")
    x = torch.ones(1, 1, 128, 16)
    x[0, 0, 3, 0] = 127.0  # Q: rows 3, 11, 19, 27 get scale 1; K: rows 2, 3, 10, 11, ..., 58, 59
    _, qs = pipeline._quant_qk(x, None, tv._groups("q", cfg), 1.0, False)
    _, ks = pipeline._quant_qk(x, None, tv._groups("k", cfg), 1.0, False)
    big_q = {i for i in range(128) if qs[0, 0, i] == 1.0}
    big_k = {i for i in range(128) if ks[0, 0, i] == 1.0}
    assert big_q == {3, 11, 19, 27}
    assert big_k == {n for n in range(64) if (n % 8) // 2 == 1}


# ------------------------------------------------------------------------------------------ attention


def _compare(p, cfg, o, lse):
    e, le = modes.sage_attention_mode(
        p.q, p.k, p.v, sm_scale=p.sm_scale, cfg=cfg, is_causal=p.is_causal, mask=p.mask
    )
    if p.layout == "NHD":
        o = o.transpose(1, 2)
    eps = torch.finfo(p.q.dtype).eps if p.q.dtype != torch.float32 else 0.0
    tol = ATOL_REL * float(p.v.float().abs().max()) + eps * float(e.abs().max())
    assert (o.float() - e).abs().max() <= tol, float((o.float() - e).abs().max())
    assert torch.equal(torch.isinf(lse), torch.isinf(le))
    fin = torch.isfinite(le)
    assert (lse[fin] - le[fin]).abs().max() <= LSE_ATOL * max(1.0, float(le[fin].abs().max()))


CASES = [
    dict(),
    dict(is_causal=True, nq=200, nk=200),
    dict(smooth_k=False, dtype=torch.bfloat16),
    dict(mask="bool", dtype=torch.float32),
    dict(layout="NHD", hq=2, hkv=1, nk=130, dv=40),
    dict(prescale_q=True, d=96, nq=70),
]


@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_triton_attention_matches_modes(gran, case):
    case = dict(case)
    layout, mask_kind = case.pop("layout", "HND"), case.pop("mask", None)
    is_causal, smooth_k = case.pop("is_causal", False), case.pop("smooth_k", True)
    cfg = modes.SageConfig(
        qk_quant_gran=gran, smooth_k=smooth_k, **{**UPSTREAM, "prescale_q": case.pop("prescale_q", False)}
    )
    q, k, v = _qkv(**case)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(1, 1, q.shape[2], k.shape[2], generator=torch.Generator().manual_seed(3)) > 0.3
        mask[..., :5, :] = False  # fully masked rows
    if layout == "NHD":
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    copies = [x.clone() for x in (q, k, v)]
    p = core.prepare_inputs(q, k, v, layout, is_causal, None, True, smooth_k, mask)
    o, lse = tv.triton_attention(p, cfg)
    assert o.dtype == q.dtype and o.shape[:-1] == q.shape[:-1]
    assert all(torch.equal(x, c) for x, c in zip((q, k, v), copies, strict=True))
    _compare(p, cfg, o, lse)


@pytest.mark.parametrize("gran", ["per_block", "per_warp"])
def test_per_block_per_warp_bit_identical_to_triton_api(gran):
    """The generalised kernel with Q-prescaled per-block/per-warp scales is the existing Triton path."""
    q, k, v = _qkv(nq=150, nk=130)
    o1, l1 = sageattn_qk_int8_pv_fp16_triton(q, k, v, qk_quant_gran=gran, return_lse=True)
    p = core.prepare_inputs(q, k, v, "HND", False, None, True, True)
    o2, l2 = tv.triton_attention(p, modes.SageConfig(qk_quant_gran=gran))
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


@pytest.mark.parametrize(
    "gran, kw",
    [
        ("per_thread", dict(smooth_q=True)),
        ("per_block", dict(smooth_q=True, prescale_q=True)),
        ("per_token", dict(qk_rotation="hadamard")),
        ("per_thread", dict(qk_rotation="random_hadamard", smooth_q=True, smooth_k=False)),
    ],
)
@pytest.mark.parametrize("is_causal", [False, True])
def test_smooth_q_and_rotation_match_modes(gran, kw, is_causal):
    """Q/K transforms quantized by modes itself, the mean(Q)·Kᵀ correction added in the kernel."""
    cfg = modes.SageConfig(qk_quant_gran=gran, **{**UPSTREAM, **kw})
    q, k, v = _qkv(nq=200, nk=170, d=72)
    q = q + 3.0 * torch.randn(1, 1, 1, 72, generator=torch.Generator().manual_seed(5)).half()  # Q bias
    p = core.prepare_inputs(q, k, v, "HND", is_causal, None, True, cfg.smooth_k)
    o, lse = tv.triton_attention(p, cfg)
    _compare(p, cfg, o, lse)


@pytest.mark.parametrize("kw", [dict(smooth_q=True), dict(qk_rotation="hadamard")])
def test_registered_kernel_with_q_transforms(monkeypatch, kw):
    (q, k, v), cfg, (eo, el) = _upstream_cfg(monkeypatch, **kw)
    p = core.prepare_inputs(q, k, v, "HND", False, None, True, True)
    assert tv.supported(p, cfg) is None
    o, lse = tv.qk_int8_pv_fp16_kernel(p, cfg)
    tol = ATOL_REL * float(v.float().abs().max()) + 2**-7 * float(eo.float().abs().max())
    assert (o.float() - eo.float()).abs().max() <= tol
    assert (lse - el).abs().max() <= LSE_ATOL * max(1.0, float(el.abs().max()))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on NaN in the interpreter
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("gran", ["per_thread", "per_token"])
def test_nan_propagates_as_in_modes(where, gran):
    """A NaN poisons its quantization group's rows (q), every row (k: smoothing mean), a channel (v)."""
    q, k, v = _qkv(dtype=torch.float32, hkv=4, nk=90)
    {"q": q, "k": k, "v": v}[where][0, 1, 37, 5] = float("nan")
    cfg = modes.SageConfig(qk_quant_gran=gran, **UPSTREAM)
    p = core.prepare_inputs(q, k, v, "HND", False, None, True, True)
    o, lse = tv.triton_attention(p, cfg)
    e, le = modes.sage_attention_mode(q, k, v, sm_scale=p.sm_scale, cfg=cfg)
    assert o.isnan().any() and torch.equal(o.isnan(), e.isnan()) and torch.equal(lse.isnan(), le.isnan())


def test_empty_sequence():
    q, k, v = _qkv(nk=0)
    p = core.prepare_inputs(q, k, v, "HND", False, None, True, True)
    o, lse = tv.triton_attention(p, modes.SageConfig(qk_quant_gran="per_thread", **UPSTREAM))
    assert torch.equal(o, torch.zeros_like(o)) and torch.isneginf(lse).all()


# ------------------------------------------------------------------------------------ registered fn


def _upstream_cfg(monkeypatch, shape=None, **kw):
    """The SageConfig ``variants.sageattn_qk_int8_pv_fp16_cuda(**kw)`` builds, and its torch result."""
    seen = {}
    real = variants.sage_attention_mode

    def spy(*a, cfg, **k):
        seen["cfg"] = cfg
        return real(*a, cfg=cfg, **k)

    monkeypatch.setattr(variants, "sage_attention_mode", spy)
    q, k, v = _qkv(**{"dtype": torch.bfloat16, **(shape or {})})
    out = variants.sageattn_qk_int8_pv_fp16_cuda(q, k, v, return_lse=True, backend="torch", **kw)
    monkeypatch.setattr(variants, "sage_attention_mode", real)
    return (q, k, v), seen["cfg"], out


def test_registered_for_the_upstream_name():
    # On a CUDA build the entry is KernelChain(compiled mma.sync kernel, Triton kernel).
    entry = variants.KERNELS["sageattn_qk_int8_pv_fp16_cuda"]
    assert tv.qk_int8_pv_fp16_kernel in getattr(entry, "kernels", (entry,))


@pytest.mark.parametrize("kw", [{}, {"qk_quant_gran": "per_warp", "is_causal": True}, {"smooth_k": False}])
def test_registered_kernel_on_cpu_through_interpreter(monkeypatch, kw):
    (q, k, v), cfg, (eo, el) = _upstream_cfg(monkeypatch, **kw)
    assert cfg.qk_quant_gran == kw.get("qk_quant_gran", "per_thread") and not cfg.prescale_q
    p = core.prepare_inputs(q, k, v, "HND", kw.get("is_causal", False), None, True, kw.get("smooth_k", True))
    assert tv.supported(p, cfg) is None
    o, lse = tv.qk_int8_pv_fp16_kernel(p, cfg)
    tol = ATOL_REL * float(v.float().abs().max()) + 2**-7 * float(eo.float().abs().max())
    assert (o.float() - eo.float()).abs().max() <= tol
    assert (lse - el).abs().max() <= LSE_ATOL * max(1.0, float(el.abs().max()))


@pytest.mark.parametrize(
    "kw",
    [
        {"pv_accum_dtype": "fp16+fp32"},
        {"pv_accum_dtype": "fp16", "smooth_v": True},
        {"pv_accum_dtype": "fp16", "is_causal": True, "qk_quant_gran": "per_token"},
    ],
)
def test_registered_kernel_fp16_accumulators(monkeypatch, kw):
    """The fp16 accumulators are emulated per 16-key k-step as modes does: the kernel is far closer
    to modes with that accumulator than to modes with fp32 accumulation."""
    (q, k, v), cfg, (eo, el) = _upstream_cfg(monkeypatch, shape=dict(dtype=torch.float32, nk=170), **kw)
    p = core.prepare_inputs(q, k, v, "HND", kw.get("is_causal", False), None, True, True)
    assert tv.supported(p, cfg) is None
    o, lse = tv.qk_int8_pv_fp16_kernel(p, cfg)
    assert (o - eo).abs().max() <= ATOL_REL * float(v.abs().max())
    assert (lse - el).abs().max() <= LSE_ATOL * max(1.0, float(el.abs().max()))
    f32, _ = modes.sage_attention_mode(
        p.q, p.k, p.v, sm_scale=p.sm_scale, cfg=dataclasses.replace(cfg, pv_accum_dtype="fp32", smooth_v=False),
        is_causal=p.is_causal,
    )  # fmt: skip
    assert (o - eo).abs().mean() < 0.1 * (o - f32).abs().mean()


def test_unsupported_config_raises_and_registered_fn_falls_back(monkeypatch):
    (q, k, v), cfg, (eo, el) = _upstream_cfg(monkeypatch, shape=dict(d=300, nq=40, nk=30))
    p = core.prepare_inputs(q, k, v, "HND", False, None, True, True)
    with pytest.raises(NotImplementedError, match="head dim"):
        tv.triton_attention(p, cfg)
    o, lse = tv.qk_int8_pv_fp16_kernel(p, cfg)  # the reference maths, bit for bit
    assert torch.equal(o, eo) and torch.equal(lse, el)


def test_bad_configs_name_the_option():
    small = core.prepare_inputs(*_qkv(), "HND", False, None, False, True)
    wide = core.prepare_inputs(*_qkv(d=300), "HND", False, None, False, True)
    for p, cfg, word in (
        (small, modes.SageConfig(pv_dtype="fp8"), "pv_dtype"),
        (small, modes.SageConfig(pv_dtype="fp8", pv_accum_dtype="fp32+fp16"), "pv_dtype"),
        (small, modes.SageConfig(pv_block=128), "pv_block"),
        (small, modes.SageConfig(blkk=128), "blkk"),
        (small, modes.SageConfig(smooth_q=True, blkq=64), "smooth_q"),
        (small, modes.SageConfig(qk_quant_gran="per_thread", blkq=96, warpq=24), "warpq"),
        (small, modes.SageConfig(qk_quant_gran="per_warp", blkq=96, warpq=24), "warpq"),
        (small, modes.SageConfig(blkq=96, warpq=24), "blkq"),
        (wide, modes.SageConfig(), "head dim"),
    ):
        with pytest.raises(NotImplementedError, match=word):
            tv.triton_attention(p, cfg)


def test_cpu_without_interpreter_falls_back(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = _qkv()
    p = core.prepare_inputs(q, k, v, "HND", False, None, False, True)
    cfg = modes.SageConfig(qk_quant_gran="per_thread", **UPSTREAM)
    assert "device" in tv.supported(p, cfg)
    e, _ = modes.sage_attention_mode(q, k, v, sm_scale=1 / math.sqrt(64), cfg=cfg)
    assert torch.equal(tv.qk_int8_pv_fp16_kernel(p, cfg), e.to(q.dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("gran", GRANS)
def test_gpu_kernel_matches_modes(gran):
    q, k, v = (x.cuda() for x in _qkv(nq=300, nk=260, d=128, dtype=torch.bfloat16))
    p = core.prepare_inputs(q, k, v, "HND", True, None, True, True)
    cfg = modes.SageConfig(qk_quant_gran=gran, **UPSTREAM)
    o, lse = tv.triton_attention(p, cfg)
    _compare(p, cfg, o, lse)
