"""Upstream-named variants: signatures/defaults, accuracy vs float64 in every option, backends,
capability dispatch of sageattn, and bad input (NaN policy, empty, head dims, masks, shapes)."""

import inspect
import warnings

import pytest
import sageattention
import torch
import torch.nn.functional as F
from sageattention import core as core_mod
from sageattention import (
    sageattn,
    sageattn_qk_int8_pv_fp8_cuda,
    sageattn_qk_int8_pv_fp8_cuda_sm90,
    sageattn_qk_int8_pv_fp16_cuda,
    variants,
)
from sageattention.reference import attention_exact

FP16, FP8, SM90 = (
    sageattn_qk_int8_pv_fp16_cuda,
    sageattn_qk_int8_pv_fp8_cuda,
    sageattn_qk_int8_pv_fp8_cuda_sm90,
)


def _qkv(b=2, hq=4, hkv=2, nq=77, nk=130, d=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) + 2 * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = torch.randn(b, hkv, nk, d, generator=g).to(dtype)
    return q, k, v


def _metrics(o, e):
    o, e = o.double().flatten(), e.double().flatten()
    return float(F.cosine_similarity(o, e, dim=0)), float((o - e).abs().sum() / e.abs().sum())


UPSTREAM_DEFAULTS = {
    FP16: dict(
        tensor_layout="HND",
        is_causal=False,
        qk_quant_gran="per_thread",
        sm_scale=None,
        pv_accum_dtype="fp32",
        smooth_k=True,
        smooth_v=False,
        return_lse=False,
    ),
    FP8: dict(
        tensor_layout="HND",
        is_causal=False,
        qk_quant_gran="per_thread",
        sm_scale=None,
        pv_accum_dtype="fp32+fp16",
        smooth_k=True,
        smooth_v=False,
        return_lse=False,
    ),
    SM90: dict(
        tensor_layout="HND",
        is_causal=False,
        qk_quant_gran="per_thread",
        sm_scale=None,
        pv_accum_dtype="fp32+fp32",
        smooth_k=True,
        return_lse=False,
    ),
}


@pytest.mark.parametrize("fn", list(UPSTREAM_DEFAULTS), ids=lambda f: f.__name__)
def test_upstream_signature_and_defaults(fn):
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional[:3]] == ["q", "k", "v"]
    assert {p.name: p.default for p in positional[3:]} == UPSTREAM_DEFAULTS[fn]
    assert fn.__name__ in sageattention.__all__


CASES = [
    (FP16, dict(pv_accum_dtype="fp32", qk_quant_gran="per_warp")),
    (FP16, dict(pv_accum_dtype="fp32")),
    (FP16, dict(pv_accum_dtype="fp16+fp32")),
    (FP16, dict(pv_accum_dtype="fp16", smooth_v=True)),
    (FP16, dict(pv_accum_dtype="fp16", qk_quant_gran="per_block", smooth_q=True)),
    (FP8, dict()),
    (FP8, dict(pv_accum_dtype="fp32", smooth_v=True, qk_quant_gran="per_warp")),
    (FP8, dict(pv_accum_dtype="fp32+fp32", qk_rotation="hadamard")),
    (SM90, dict()),
    (SM90, dict(qk_quant_gran="per_token", qk_rotation="random_hadamard", smooth_q=True)),
]


@pytest.mark.parametrize("fn,kw", CASES, ids=lambda x: x.__name__ if callable(x) else str(x))
def test_variant_accuracy_layouts_gqa_causal_lse(fn, kw):
    q, k, v = _qkv()
    e, lse_e = attention_exact(q, k, v, is_causal=True)
    qn, kn, vn = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    o, lse = fn(qn, kn, vn, tensor_layout="NHD", is_causal=True, return_lse=True, **kw)
    assert o.shape == qn.shape and o.dtype == q.dtype and lse.shape == (2, 4, 77)
    o_hnd = fn(q, k, v, is_causal=True, **kw)
    assert torch.equal(o.transpose(1, 2), o_hnd)
    cos, rel = _metrics(o_hnd, e)
    fp8 = fn is not FP16
    assert cos >= (0.999 if fp8 else 0.9998) and rel <= (0.05 if fp8 else 0.02), (cos, rel)
    assert float((lse.double() - lse_e).abs().max()) < 0.05


@pytest.mark.parametrize("fn", [FP16, FP8, SM90], ids=lambda f: f.__name__)
def test_mask_bool_and_additive(fn):
    q, k, v = _qkv()
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(2, 1, 77, 130, generator=g) > 0.5
    mask[..., 0] = True
    e, _ = attention_exact(q, k, v, mask=mask)
    add = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    for m in (mask, add):
        cos, rel = _metrics(fn(q, k, v, attn_mask=m), e)
        assert cos >= 0.999 and rel <= 0.05
    assert _metrics(fn(q, k, v), e)[1] > 0.2  # the mask really is applied


@pytest.mark.parametrize("d", [32, 96, 160, 192, 256])
def test_head_dims_32_to_256(d):
    q, k, v = _qkv(d=d, nq=40, nk=70)
    e, _ = attention_exact(q, k, v)
    for fn, kw in ((FP16, {}), (FP8, dict(qk_rotation="hadamard")), (SM90, {})):
        o = fn(q, k, v, **kw)
        assert o.shape == q.shape
        cos, rel = _metrics(o, e)
        assert cos >= 0.999 and rel <= 0.05, (fn.__name__, cos, rel)


def test_smooth_v_ignored_with_warning_like_upstream():
    q, k, v = _qkv()
    for fn, acc in ((FP16, "fp32"), (FP16, "fp16+fp32"), (FP8, "fp32+fp32"), (FP8, "fp32+fp16")):
        with pytest.warns(UserWarning, match="smooth_v will be ignored"):
            a = fn(q, k, v, pv_accum_dtype=acc, smooth_v=True)
        assert torch.equal(a, fn(q, k, v, pv_accum_dtype=acc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        honoured = FP8(q, k, v, pv_accum_dtype="fp32", smooth_v=True)
    assert not torch.equal(honoured, FP8(q, k, v, pv_accum_dtype="fp32"))


def test_sm90_fp32_not_implemented_like_upstream():
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="fp32\\+fp32"):
        SM90(q, k, v, pv_accum_dtype="fp32")


@pytest.mark.parametrize("fn", [FP16, FP8, SM90], ids=lambda f: f.__name__)
def test_backend_cuda_without_kernel_names_device_and_backends(fn):
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match=r"cpu.*'torch'"):
        fn(q, k, v, backend="cuda")
    assert torch.equal(fn(q, k, v, backend="torch"), fn(q, k, v))


@pytest.mark.parametrize(
    "cap,name,kw",
    [
        ((8, 0), "sageattn_qk_int8_pv_fp16_cuda", {"pv_accum_dtype": "fp32"}),
        ((8, 6), "sageattn_qk_int8_pv_fp16_triton", {}),
        ((8, 9), "sageattn_qk_int8_pv_fp8_cuda", {"pv_accum_dtype": "fp32+fp16"}),
        ((9, 0), "sageattn_qk_int8_pv_fp8_cuda_sm90", {"pv_accum_dtype": "fp32+fp32"}),
        (
            (12, 0),
            "sageattn_qk_int8_pv_fp8_cuda",
            {"qk_quant_gran": "per_warp", "pv_accum_dtype": "fp32+fp16"},
        ),
        (
            (12, 1),
            "sageattn_qk_int8_pv_fp8_cuda",
            {"qk_quant_gran": "per_warp", "pv_accum_dtype": "fp32+fp16"},
        ),
        (
            (10, 0),
            "sageattn_qk_int8_pv_fp8_cuda",
            {"qk_quant_gran": "per_thread", "pv_accum_dtype": "fp32+fp32"},
        ),
        ((7, 5), "reference", {}),
    ],
)
def test_cuda_dispatch_table(cap, name, kw):
    assert core_mod.cuda_dispatch(cap) == (name, kw)


@pytest.mark.parametrize("cap", [(8, 0), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_dispatch_calls_the_variant_when_its_kernel_is_built(monkeypatch, cap):
    """_dispatch_cuda with a faked capability (CPU tensors): upstream's variant and kwargs when this
    build registers a kernel for it in ``variants.KERNELS``."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    name, kw = core_mod.cuda_dispatch(cap)
    monkeypatch.setitem(
        variants.KERNELS, name, lambda p, cfg: pytest.fail("CPU tensors reached a CUDA kernel")
    )
    q, k, v = _qkv()
    got = core_mod._dispatch_cuda(q, k, v, "HND", True, None, True, None, True)
    # CPU tensors: the variant runs its reference maths (its kernel needs CUDA tensors)
    want = getattr(sageattention, name)(q, k, v, is_causal=True, return_lse=True, backend="torch", **kw)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("cap", [(7, 5), (8, 0), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_dispatch_without_the_variant_kernel_uses_triton(monkeypatch, cap):
    """No compiled kernel of upstream's variant: the Triton kernel (per-warp Q, fp16 P·V) runs."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(variants, "KERNELS", {})
    q, k, v = _qkv()
    got = core_mod._dispatch_cuda(q, k, v, "HND", True, None, True, None, True)
    want = sageattention.sageattn_qk_int8_pv_fp16_triton(
        q, k, v, is_causal=True, return_lse=True, qk_quant_gran="per_warp"
    )
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sageattn_cpu_default_unchanged():
    """On the CPU, "auto" is the CPU path of the default per-block mode (no capability dispatch)."""
    q, k, v = _qkv()
    o = sageattn(q, k, v)
    assert torch.equal(o, sageattn(q, k, v, backend="cpu"))
    # the CPU kernel may differ from the reference by an fp16 ulp of P (sage-cpu's documented bound)
    bound = 2**-9 * v.float().abs().amax() + 2**-7 * o.float().abs().amax()  # + bf16 output rounding
    assert float((o.float() - sageattn(q, k, v, backend="torch").float()).abs().max()) <= bound


def test_inputs_unchanged_and_empty():
    q, k, v = _qkv(nq=130, nk=77)
    before = [x.clone() for x in (q, k, v)]
    for fn in (FP16, FP8, SM90):
        fn(q, k, v, qk_rotation="hadamard", smooth_q=True)
        for x, y in zip((q, k, v), before, strict=True):
            assert torch.equal(x, y)
    q0, k0, v0 = _qkv(nk=0)
    for fn in (FP16, FP8, SM90):
        o, lse = fn(q0, k0, v0, return_lse=True)
        assert o.shape == q0.shape and (o == 0).all() and (lse == float("-inf")).all()
        assert fn(*_qkv(nq=0)).shape == (2, 4, 0, 64)


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_policy(where):
    """NaN propagates, never finite garbage: in q -> its row (its quant group's rows may be NaN too),
    in k -> that head's rows, in v -> that output channel (FP8 per-channel V: that channel)."""
    q, k, v = _qkv(hkv=4)
    {"q": q, "k": k, "v": v}[where][1, 2, 3, 4] = float("nan")
    for fn in (FP16, FP8, SM90):
        o = fn(q, k, v)
        assert torch.isnan(o[1, 2, :, 4] if where == "v" else o[1, 2, 3]).all()
        assert torch.isfinite(o[0]).all() and torch.isfinite(o[1, 3]).all()


def test_inf_input_gives_nan_not_garbage():
    q, k, v = _qkv(hkv=4)
    k[0, 1, 5, 0] = float("inf")
    o = FP8(q, k, v)
    assert torch.isnan(o[0, 1]).all() and torch.isfinite(o[1]).all()


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(qk_quant_gran="per_lane"), ValueError, "qk_quant_gran"),
        (dict(qk_quant_gran=3), TypeError, "qk_quant_gran"),
        (dict(pv_accum_dtype="fp16+fp16"), ValueError, "pv_accum_dtype"),
        (dict(qk_rotation="dct"), ValueError, "qk_rotation"),
        (dict(smooth_q=1), TypeError, "smooth_q"),
        (dict(smooth_v="yes"), TypeError, "smooth_v"),
        (dict(backend="triton"), ValueError, "backend"),
        (dict(attn_mask=torch.ones(77, 131, dtype=torch.bool)), ValueError, "attn_mask"),
        (dict(attn_mask=torch.ones(77, 130, dtype=torch.bool), is_causal=True), ValueError, "is_causal"),
        (dict(k=torch.randn(3, 2, 130, 64).bfloat16()), ValueError, "batch"),
        (
            dict(k=torch.randn(2, 3, 130, 64).bfloat16(), v=torch.randn(2, 3, 130, 64).bfloat16()),
            ValueError,
            "heads",
        ),
        (dict(v=torch.randn(2, 2, 130, 64).half()), TypeError, "dtype"),
        (dict(q=torch.randn(77, 64)), ValueError, "q"),
        (dict(tensor_layout="BHND"), TypeError, "tensor_layout"),
        (dict(dropout_p=0.0), TypeError, "dropout_p"),
    ],
)
def test_bad_input(kwargs, exc, word):
    q, k, v = _qkv()
    args = {"q": q, "k": k, "v": v, **kwargs}
    with pytest.raises(exc, match=word):
        FP16(**args)


@pytest.mark.parametrize(
    "fn,kw",
    [(FP8, dict(qk_rotation="hadamard")), (FP16, dict(smooth_q=True, pv_accum_dtype="fp16"))],
    ids=["fp8+hadamard", "fp16+smooth_q"],
)
def test_torch_compile_fullgraph(fn, kw):
    """The reference maths traces without graph breaks (shared-kernels ops are custom ops)."""
    q, k, v = _qkv(b=1, hq=2, hkv=1, nq=40, nk=70, d=32, dtype=torch.float32)

    def f(q, k, v):
        return fn(q, k, v, is_causal=True, **kw) * 2

    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v), f(q, k, v))


def test_dispatch_without_triton_falls_back_to_the_reference(monkeypatch):
    """CUDA without Triton installed: `_dispatch_cuda` returns None (sageattn then runs the reference)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(variants, "KERNELS", {})
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    q, k, v = _qkv()
    assert core_mod._dispatch_cuda(q, k, v, "HND", False, None, False, None, True) is None
