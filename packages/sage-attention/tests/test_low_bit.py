"""The opt-in 4-bit keywords: ``sageattn(qk_quant_dtype="int4" | "nvfp4")`` and
``sageattn_qk_int8_pv_*_cuda(qk_quant_dtype="int4")`` run exactly the INT4 variants /
``sageattn3_blackwell``, differ from INT8, validate, and never give gradients."""

import pytest
import torch
from sageattention import (
    low_bit,
    sageattn,
    sageattn3_blackwell,
    sageattn_qk_int8_pv_fp8_cuda,
    sageattn_qk_int8_pv_fp8_cuda_sm90,
    sageattn_qk_int8_pv_fp16_cuda,
)
from sageattention.int4 import sageattn_qk_int4_pv_fp8_cuda, sageattn_qk_int4_pv_fp16_cuda


def _qkv(b=1, hq=4, hkv=2, nq=37, nk=70, d=48, seed=0, layout="HND", dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    shape = (lambda h, n: (b, h, n, d)) if layout == "HND" else (lambda h, n: (b, n, h, d))
    q = torch.randn(*shape(hq, nq), generator=g) + torch.randn(d, generator=g)
    k = torch.randn(*shape(hkv, nk), generator=g) + 2 * torch.randn(d, generator=g)
    v = torch.randn(*shape(hkv, nk), generator=g)
    return tuple(x.to(dtype) for x in (q, k, v))


def _same(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a, b)


CASES = [
    dict(),
    dict(is_causal=True, return_lse=True),
    dict(layout="NHD", sm_scale=0.3),
    dict(mask=True, return_lse=True),
]


def _args(case, seed=0):
    case = dict(case)
    layout = case.pop("layout", "HND")
    q, k, v = _qkv(layout=layout, seed=seed)
    kw = dict(tensor_layout=layout, **{k_: v_ for k_, v_ in case.items() if k_ != "mask"})
    if case.get("mask"):
        g = torch.Generator().manual_seed(seed + 1)
        kw["attn_mask"] = torch.rand(1, 1, q.shape[2 if layout == "HND" else 1], 70, generator=g) > 0.3
    return q, k, v, kw


@pytest.mark.parametrize("case", CASES)
def test_sageattn_int4_is_the_int4_variant(case):
    q, k, v, kw = _args(case)
    copies = [x.clone() for x in (q, k, v)]
    got = sageattn(q, k, v, qk_quant_dtype="int4", **kw)
    _same(got, sageattn_qk_int4_pv_fp16_cuda(q, k, v, **kw))
    for x, c in zip((q, k, v), copies, strict=True):
        assert torch.equal(x, c)
    # and it is not the INT8 path
    o8 = sageattn(q, k, v, **kw)
    o4 = got[0] if isinstance(got, tuple) else got
    o8 = o8[0] if isinstance(o8, tuple) else o8
    assert (o4.float() - o8.float()).abs().max() > 1e-3


@pytest.mark.parametrize("case", CASES)
def test_sageattn_nvfp4_is_sageattention3(case):
    q, k, v, kw = _args(case, seed=3)
    got = sageattn(q, k, v, qk_quant_dtype="nvfp4", **kw)
    mask = kw.pop("attn_mask", None)
    _same(got, sageattn3_blackwell(q, k, v, mask, **kw))


def test_sageattn_scale_alias_reaches_the_4bit_paths():
    q, k, v = _qkv()
    _same(
        sageattn(q, k, v, scale=0.2, qk_quant_dtype="int4"),
        sageattn_qk_int4_pv_fp16_cuda(q, k, v, sm_scale=0.2),
    )
    _same(sageattn(q, k, v, scale=0.2, qk_quant_dtype="nvfp4"), sageattn3_blackwell(q, k, v, sm_scale=0.2))
    with pytest.raises(ValueError, match="scale"):
        sageattn(q, k, v, scale=0.2, sm_scale=0.3, qk_quant_dtype="int4")


@pytest.mark.parametrize(
    ("int8_name", "int4_name"),
    [
        (sageattn_qk_int8_pv_fp16_cuda, sageattn_qk_int4_pv_fp16_cuda),
        (sageattn_qk_int8_pv_fp8_cuda, sageattn_qk_int4_pv_fp8_cuda),
    ],
)
def test_int8_names_take_qk_quant_dtype_int4(int8_name, int4_name):
    q, k, v = _qkv(seed=5)
    accum = "fp32" if int8_name is sageattn_qk_int8_pv_fp16_cuda else "fp32+fp16"  # the INT8 names' defaults
    got = int8_name(q, k, v, is_causal=True, qk_quant_dtype="int4", return_lse=True)
    _same(got, int4_name(q, k, v, is_causal=True, pv_accum_dtype=accum, return_lse=True))
    # smooth_q defaults on for INT4 and can be turned off; off by default for INT8
    off = int8_name(q, k, v, qk_quant_dtype="int4", smooth_q=False)
    _same(off, int4_name(q, k, v, pv_accum_dtype=accum, smooth_q=False))
    assert not torch.equal(off, got[0])
    _same(int8_name(q, k, v), int8_name(q, k, v, smooth_q=False, qk_quant_dtype="int8"))
    assert not torch.equal(int8_name(q, k, v), int8_name(q, k, v, smooth_q=True))


def test_int4_device_choice(monkeypatch):
    cuda = torch.device("cuda", 0)
    for cap, fn, accum in [
        ((8, 0), sageattn_qk_int4_pv_fp16_cuda, "fp32"),
        ((8, 6), sageattn_qk_int4_pv_fp16_cuda, "fp32"),
        ((8, 9), sageattn_qk_int4_pv_fp8_cuda, "fp32+fp32"),
        ((9, 0), sageattn_qk_int4_pv_fp8_cuda, "fp32+fp32"),
        ((12, 0), sageattn_qk_int4_pv_fp8_cuda, "fp32+fp32"),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=cap: c)
        assert low_bit._int4_on(cuda) == (fn, accum), cap
    assert low_bit._int4_on(torch.device("cpu")) == (sageattn_qk_int4_pv_fp16_cuda, "fp32")


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        (
            dict(qk_quant_dtype="int2"),
            ValueError,
            r"qk_quant_dtype must be one of \('int8', 'int4', 'nvfp4'\)",
        ),
        (dict(qk_quant_dtype=4), TypeError, "qk_quant_dtype must be a str"),
        (dict(qk_quant_dtype="int4", backend="cpu"), ValueError, "backend='cpu' is the fused INT8"),
        (dict(qk_quant_dtype="nvfp4", backend="cpu"), ValueError, "backend='cpu' is the fused INT8"),
        (dict(qk_quant_dtype="nvfp4", smooth_k=False), ValueError, "smooth_k=False is not available"),
        (dict(qk_quant_dtype="int4", tensor_layout="BHND"), TypeError, "tensor_layout"),
        (dict(qk_quant_dtype="int4", dropout_p=0.1), ValueError, "dropout_p"),
    ],
)
def test_bad_input(kw, exc, match):
    q, k, v = _qkv()
    with pytest.raises(exc, match=match):
        sageattn(q, k, v, **kw)


def test_bad_input_variants():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="qk_quant_dtype must be one of"):
        sageattn_qk_int8_pv_fp16_cuda(q, k, v, qk_quant_dtype="nvfp4")
    with pytest.raises(TypeError, match="smooth_q must be a bool"):
        sageattn_qk_int8_pv_fp8_cuda(q, k, v, smooth_q="yes")
    with pytest.raises(TypeError, match="qk_quant_dtype"):  # Hopper has no INT4 MMA: no such keyword
        sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, qk_quant_dtype="int4")
    with pytest.raises(ValueError, match="number of q heads"):
        sageattn(q[:, :3], k, v, qk_quant_dtype="int4")


def test_no_4bit_gradients():
    q, k, v = (x.float().requires_grad_() for x in _qkv())
    o = sageattn(q, k, v, qk_quant_dtype="int4")  # the forward is usable ...
    assert torch.isfinite(o).all()
    with pytest.raises(RuntimeError, match="sageattn_qk_int4_pv_fp16_cuda is an inference kernel"):
        o.sum().backward()  # ... but never gives gradients
    with pytest.raises(RuntimeError, match="grad"):
        sageattn(q, k, v, qk_quant_dtype="nvfp4")
    o = sageattn_qk_int8_pv_fp16_cuda(q, k, v, qk_quant_dtype="int4")
    with pytest.raises(RuntimeError, match="inference kernel"):
        o.sum().backward()


@pytest.mark.cuda
@pytest.mark.parametrize("qk_quant_dtype", ["int4", "nvfp4"])
def test_cuda_4bit_paths(qk_quant_dtype):
    """On a GPU: the opt-in paths run their kernels (or the same maths) and stay close to exact attention."""
    q, k, v = (x.cuda() for x in _qkv(nq=300, nk=260, d=64))
    o = sageattn(q, k, v, qk_quant_dtype=qk_quant_dtype, is_causal=True)
    if qk_quant_dtype == "int4":
        fn, accum = low_bit._int4_on(q.device)
        _same(o, fn(q, k, v, is_causal=True, pv_accum_dtype=accum))
    else:
        _same(o, sageattn3_blackwell(q, k, v, is_causal=True))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(2, 1), v.float().repeat_interleave(2, 1), is_causal=True
    )
    cos = torch.nn.functional.cosine_similarity(o.float().flatten(), ref.flatten(), dim=0).item()
    assert cos > 0.97, cos
