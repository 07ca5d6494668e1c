"""The compiled mma.sync kernel behind the upstream ``*_cuda`` names (``sageattention.cuda_kernels``).

CPU: arch/capability logic, registration order in ``variants.KERNELS`` and the chain's fallback with
a faked build and device, ``sageattn``'s capability dispatch onto it, and the quantize-and-call path
run on the op's float64 reference (``op_backend="torch"``) against ``backend="torch"`` of the
variant. ``cuda``: the compiled kernel end to end against the reference maths.
"""

import dataclasses
import importlib.util
import math

import pytest
import sageattention
import torch
from sageattention import core, modes, variants
from sageattention import cuda_kernels as ck

FP16 = "sageattn_qk_int8_pv_fp16_cuda"
FP8 = "sageattn_qk_int8_pv_fp8_cuda"


def _qkv(b=1, hq=4, hkv=2, nq=45, nk=64, d=64, dv=None, dtype=torch.bfloat16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g) + 2 * torch.randn(1, 1, 1, d, generator=g)
    v = torch.randn(b, hkv, nk, dv or d, generator=g) * torch.linspace(0.1, 3.0, dv or d)
    return tuple(x.to(dtype).to(device) for x in (q, k, v))


def _cfg(name, d, **kw):
    return variants.variant_config(name, d, **kw)


def _prep(q, k, v, is_causal=False, mask=None):
    return core.prepare_inputs(q, k, v, "HND", is_causal, None, True, True, mask)


@pytest.fixture
def fake_build(monkeypatch):
    """A build with the op's cuda backend for sm80/89/90a/100a and a registry holding only Triton's kernel."""
    monkeypatch.setattr(ck, "_build_info", lambda op=None: (True, ("80", "89", "90a", "100a")))
    ck._device_reason_cached.cache_clear()
    kernels = {k: v for k, v in variants.KERNELS.items() if k != FP8}
    fp16 = kernels.get(FP16)
    if isinstance(fp16, variants.KernelChain):  # a CUDA build registered the compiled kernel at import
        rest = tuple(k for k in fp16.kernels if k is not ck.qk_int8_pv_fp16_cuda_kernel)
        kernels[FP16] = rest[0] if len(rest) == 1 else variants.KernelChain(rest)
    monkeypatch.setattr(variants, "KERNELS", kernels)
    yield kernels
    ck._device_reason_cached.cache_clear()


# ---------------------------------------------------------------- arch / registration / chain


@pytest.mark.parametrize(
    "cap,archs,ok",
    [
        ((8, 0), ["80"], True),
        ((8, 6), ["80"], True),  # same major, newer minor: SASS runs
        ((8, 0), ["89"], False),
        ((9, 0), ["90a"], True),
        ((10, 0), ["90a"], False),  # arch-specific code runs only on its own capability
        ((12, 0), ["80", "89", "90a", "100a"], True),  # PTX of compute_89 JIT-compiles
        ((7, 5), ["80", "89", "90a", "100a"], False),
        ((8, 9), [], False),
    ],
)
def test_runs_on(cap, archs, ok):
    assert ck.runs_on(cap, archs) is ok


@pytest.mark.parametrize(
    "cap,name,ok",
    [
        ((8, 0), FP16, True),
        ((8, 0), FP8, False),
        ((8, 6), FP8, False),
        ((8, 9), FP8, True),
        ((7, 5), FP16, False),
        ((8, 0), "sageattn_qk_int4_pv_fp16_cuda", True),  # int4.py registers its variants here
        ((8, 0), "sageattn_qk_int4_pv_fp8_cuda", False),
        ((8, 9), "sageattn_qk_int4_pv_fp8_cuda", True),
    ],
)
def test_device_reason_by_capability(monkeypatch, fake_build, cap, name, ok):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    why = ck.device_reason(torch.device("cuda", 0), name)
    assert (why is None) is ok
    if not ok:
        assert "compute capability" in why
    assert "CUDA tensors" in ck.device_reason(torch.device("cpu"), name)
    with pytest.raises(ValueError, match="name"):
        ck.device_reason(torch.device("cpu"), "sageattn_qk_int8_pv_fp8_cuda_sm90")


def test_build_info_agrees_with_capabilities():
    import shared_kernels

    caps = shared_kernels.capabilities()
    has = "cuda" in caps["ops"]["sage_attention_fwd"]["backends"] and caps["cuda"]["compiled"]
    assert ck._build_info() == (bool(has), tuple(caps["cuda"]["archs"]))


def test_no_cuda_build_registers_nothing(monkeypatch):
    monkeypatch.setattr(ck, "_build_info", lambda: (False, ()))
    kernels = dict(variants.KERNELS)
    monkeypatch.setattr(variants, "KERNELS", kernels)
    assert ck.register() is False
    assert variants.KERNELS == kernels


def test_registration_order_compiled_first(fake_build):
    triton = fake_build.get(FP16)
    assert ck.register() is True
    assert ck.register() is True  # idempotent
    fp16 = variants.KERNELS[FP16]
    if triton is None:  # no Triton installed
        assert fp16 is ck.qk_int8_pv_fp16_cuda_kernel
    else:
        assert isinstance(fp16, variants.KernelChain)
        assert fp16.kernels == (ck.qk_int8_pv_fp16_cuda_kernel, triton)
    assert variants.KERNELS[FP8] is ck.qk_int8_pv_fp8_cuda_kernel


def test_chain_falls_through_not_implemented():
    calls = []

    def lacks(p, cfg):
        calls.append("lacks")
        raise NotImplementedError("no such config")

    def runs(p, cfg):
        calls.append("runs")
        return "ran"

    lacks.supports = lambda p, cfg: "no such config"
    chain = variants.KernelChain((lacks, runs))
    assert chain(None, None) == "ran" and calls == ["lacks", "runs"]
    assert chain.supports(None, None) is None  # `runs` does not say: assumed to run
    only = variants.KernelChain((lacks,))
    with pytest.raises(NotImplementedError, match="no such config"):
        only(None, None)
    assert only.supports(None, None) == "no such config"
    with pytest.raises(TypeError, match="kernels"):
        variants.KernelChain(())


def test_register_kernel_validates(fake_build):
    with pytest.raises(ValueError, match="name"):
        variants.register_kernel("sageattn_qk_int8_pv_fp4", lambda p, c: None)
    with pytest.raises(TypeError, match="fn"):
        variants.register_kernel(FP8, "not callable")


def test_compiled_kernel_on_cpu_tensors_falls_back(fake_build):
    """CPU tensors: the compiled kernel raises NotImplementedError (device) and the chain runs the next."""
    q, k, v = _qkv()
    p, cfg = _prep(q, k, v), _cfg(FP16, 64)
    with pytest.raises(NotImplementedError, match="CUDA tensors"):
        ck.qk_int8_pv_fp16_cuda_kernel(p, cfg)
    assert "CUDA tensors" in ck.qk_int8_pv_fp8_cuda_kernel.supports(p, _cfg(FP8, 64))
    ck.register()
    sentinel = object()
    chain = variants.KernelChain((ck.qk_int8_pv_fp16_cuda_kernel, lambda p, cfg: sentinel))
    assert chain(p, cfg) is sentinel


def test_backend_cuda_on_cpu_raises(fake_build):
    ck.register()
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="no kernel runs this call"):
        sageattention.sageattn_qk_int8_pv_fp8_cuda(q, k, v, backend="cuda")


@pytest.mark.parametrize(
    "kw,why",
    [
        (dict(pv_accum_dtype="fp16", qk_quant_gran="per_token"), "qk_quant_gran"),
        (dict(smooth_q=True), "smooth_q"),
        (dict(qk_quant_gran="per_token"), "qk_quant_gran"),
    ],
)
def test_supported_fp16_rejects(kw, why):
    q, k, v = _qkv()
    assert why in ck.supported(_prep(q, k, v), _cfg(FP16, 64, **kw))
    with pytest.raises(NotImplementedError, match=why):
        ck.compiled_attention(_prep(q, k, v), _cfg(FP16, 64, **kw), op_backend="torch")


@pytest.mark.parametrize(
    "kw,why",
    [
        (dict(pv_accum_dtype="fp32"), "pv_accum_dtype"),  # upstream's single-level FP8 accumulator
        (dict(pv_accum_dtype="fp32+fp32", qk_quant_gran="per_token"), "qk_quant_gran"),
    ],
)
def test_supported_fp8_rejects(kw, why):
    q, k, v = _qkv()
    assert why in ck.supported(_prep(q, k, v), _cfg(FP8, 64, **kw))


@pytest.mark.parametrize(
    "name,kw",
    [
        (FP16, dict(pv_accum_dtype="fp16+fp32")),
        (FP16, dict(pv_accum_dtype="fp16", smooth_v=True)),
        (FP8, dict()),  # SageAttention2++ fp32+fp16, V scale max 2.25
        (FP8, dict(pv_accum_dtype="fp32+fp32")),
    ],
)
def test_supported_accumulation_modes(name, kw):
    q, k, v = _qkv()
    cfg = _cfg(name, 128, **kw)
    assert ck.supported(_prep(q, k, v), cfg) is None
    if name == FP8 and cfg.pv_accum_dtype == "fp32+fp16":
        assert cfg.v_scale_max == 2.25 <= ck.F16_BLOCK_V_MAX
        # an f16 block sum of P (<= 448) times V at scale max 448 overflows: not this kernel's maths
        why = ck.supported(_prep(q, k, v), dataclasses.replace(cfg, v_scale_max=448.0))
        assert "v_scale_max=" in why and "fp32+fp16" in why
        assert "v_scale_max" in ck.supported(_prep(q, k, v), dataclasses.replace(cfg, v_scale_max=2.3))
    if name == FP8 and cfg.pv_accum_dtype == "fp32+fp32":
        assert "v_scale_max" in ck.supported(_prep(q, k, v), dataclasses.replace(cfg, v_scale_max=2.25))


def test_supported_int4_only_fp32_accumulators():
    q, k, v = _qkv()
    for pv, accum in (("fp16", "fp16+fp32"), ("fp16", "fp16"), ("fp8", "fp32+fp16")):
        cfg = modes.SageConfig(
            qk_quant_gran="per_thread", qk_quant_dtype="int4", prescale_q=False, pv_dtype=pv,
            pv_accum_dtype=accum, v_scale_max=2.25 if pv == "fp8" else 448.0,
        )  # fmt: skip
        assert "INT4" in ck.supported(_prep(q, k, v), cfg)


def test_supported_rejects_mask_and_big_head_dim():
    q, k, v = _qkv()
    mask = torch.ones(45, 64, dtype=torch.bool)
    assert "attn_mask" in ck.supported(_prep(q, k, v, mask=mask), _cfg(FP16, 64))
    q, k, v = _qkv(d=160)
    assert "head dim" in ck.supported(_prep(q, k, v), _cfg(FP16, 160))
    q, k, v = _qkv(d=64, dv=136)
    assert "head dim" in ck.supported(_prep(q, k, v), _cfg(FP16, 64))
    q, k, v = _qkv(d=100)
    assert ck.supported(_prep(q, k, v), _cfg(FP16, 100, qk_rotation="hadamard")) is None  # rotated to 128


def test_compiled_attention_bad_backend():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="op_backend"):
        ck.compiled_attention(_prep(q, k, v), _cfg(FP16, 64), op_backend="triton")


# ---------------------------------------------------------------- sageattn's capability dispatch


@pytest.fixture
def any_device(monkeypatch, fake_build):
    """The compiled kernels registered and told every device is fine (CPU tensors then run the
    variant's reference maths inside ``variants._run``)."""
    monkeypatch.setattr(ck, "device_reason", lambda device, name: None)
    ck.register()
    return fake_build


@pytest.mark.parametrize(
    "cap,name,kw",
    [
        ((8, 0), FP16, {"pv_accum_dtype": "fp32"}),
        ((8, 9), FP8, {"pv_accum_dtype": "fp32+fp16"}),  # upstream's SageAttention2++, compiled
        ((12, 0), FP8, {"qk_quant_gran": "per_warp", "pv_accum_dtype": "fp32+fp16"}),
        ((10, 0), FP8, {"qk_quant_gran": "per_thread", "pv_accum_dtype": "fp32+fp32"}),
    ],
)
def test_sageattn_dispatch_to_compiled(monkeypatch, any_device, cap, name, kw):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    q, k, v = _qkv(nk=130)
    got = core._dispatch_cuda(q, k, v, "HND", True, None, True, None, True)
    want = getattr(sageattention, name)(q, k, v, is_causal=True, return_lse=True, backend="torch", **kw)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sageattn_dispatch_mask_goes_to_triton(monkeypatch, any_device):
    """sm89 with a mask: the compiled FP8 kernel has no masks, so the Triton kernel runs."""
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    q, k, v = _qkv(nk=70)
    mask = torch.rand(45, 70, generator=torch.Generator().manual_seed(1)) > 0.3
    got = core._dispatch_cuda(q, k, v, "HND", False, None, False, mask, True)
    want = sageattention.sageattn_qk_int8_pv_fp16_triton(q, k, v, attn_mask=mask, qk_quant_gran="per_warp")
    assert torch.equal(got, want)


def test_variant_config_validates():
    assert _cfg(FP8, 64, pv_accum_dtype="fp32+fp32").pv_accum_dtype == "fp32+fp32"
    with pytest.raises(TypeError):
        _cfg(FP16, 64, bogus=1)
    with pytest.raises(ValueError, match="name"):
        variants.variant_config("sageattn", 64)
    with pytest.raises(ValueError, match="head_dim"):
        variants.variant_config(FP16, 0)
    with pytest.raises(ValueError, match="pv_accum_dtype"):
        _cfg(FP16, 64, pv_accum_dtype="fp32+fp16")


# ---------------------------------------------------------------- quantize-and-call vs the reference


def _compare(name, q, k, v, *, is_causal=False, tight=True, **kw):
    """compiled_attention on the op's float64 reference vs ``backend="torch"`` of the variant."""
    p = core.prepare_inputs(q, k, v, "HND", is_causal, None, True, kw.get("smooth_k", True))
    cfg = _cfg(name, q.shape[-1], **kw)
    before = [x.clone() for x in (q, k, v)]
    o, lse = ck.compiled_attention(p, cfg, op_backend="torch")
    for x, y in zip((q, k, v), before, strict=True):
        assert torch.equal(x, y)
    eo, el = getattr(sageattention, name)(
        q, k, v, is_causal=is_causal, return_lse=True, backend="torch", **kw
    )
    assert o.dtype == eo.dtype and o.shape == eo.shape and lse.shape == el.shape
    assert torch.isfinite(o).all()
    vmax = v.float().abs().amax(dim=2).repeat_interleave(q.shape[1] // k.shape[1], dim=1)[:, :, None, :]
    err = (o.float() - eo.float()).abs()
    out_ulp = 2.0**-7 if q.dtype == torch.bfloat16 else 2.0**-10
    # Nk <= 64: one key block, the op's global max is the kernel's running max, P rounds identically
    p_step = 2.0**-10 if tight or cfg.pv_dtype == "fp16" else 2.0**-3
    bound = p_step * vmax + out_ulp * eo.float().abs() + 1e-6
    assert (err <= bound).all(), float((err - bound).max())
    if not tight:  # one-step P rounding differences are rare and unbiased: the mean stays small
        assert float(err.mean()) <= 2.0**-8 * float(vmax.mean())
    assert torch.allclose(lse, el, rtol=1e-5, atol=1e-4)
    return o, eo


F16_ACC = [
    (FP16, {"pv_accum_dtype": "fp16+fp32"}),
    (FP16, {"pv_accum_dtype": "fp16"}),
    (FP16, {"pv_accum_dtype": "fp16", "smooth_v": True}),
    (FP8, {"pv_accum_dtype": "fp32+fp16"}),
]
F16_ACC_IDS = ["fp16+fp32", "fp16", "fp16-smooth_v", "fp8-fp32+fp16"]
ALL_ACC = [(FP16, {}), (FP8, {"pv_accum_dtype": "fp32+fp32"}), *F16_ACC]
ALL_ACC_IDS = ["fp16", "fp8", *F16_ACC_IDS]


@pytest.mark.parametrize("name,kw", ALL_ACC, ids=ALL_ACC_IDS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(nq=45, nk=64, d=64),
        dict(nq=130, nk=37, d=128, hq=6, hkv=2),
        dict(nq=1, nk=1, d=32, hq=3, hkv=3),
        dict(nq=77, nk=50, d=96, hq=4, hkv=1),
    ],
    ids=["d64", "d128-gqa", "n1-d32", "d96-mqa"],
)
@pytest.mark.parametrize("is_causal", [False, True])
def test_quantize_and_call_one_block(name, kw, shape, is_causal):
    _compare(name, *_qkv(**shape), is_causal=is_causal, **kw)


@pytest.mark.parametrize(
    "name,kw",
    [
        (FP16, {"qk_quant_gran": "per_warp"}),
        (FP16, {"qk_rotation": "hadamard", "smooth_k": False}),
        (FP8, {"pv_accum_dtype": "fp32+fp32", "qk_quant_gran": "per_block"}),
    ],
    ids=["fp16-per_warp", "fp16-hadamard", "fp8-per_block"],
)
def test_quantize_and_call_options(name, kw):
    _compare(name, *_qkv(nq=100, nk=61, d=80, dtype=torch.float16), is_causal=True, **kw)


@pytest.mark.parametrize("name,kw", ALL_ACC, ids=ALL_ACC_IDS)
def test_quantize_and_call_many_blocks(name, kw):
    """Nk > 64: for the fp32 accumulators the op's reference rounds P from the global max, the variant
    (and the GPU kernel) from the running max; equal within one P rounding step. The f16 accumulators'
    reference walks the kernel's blocks with the running max, as the variant: equal within one rounding."""
    q, k, v = _qkv(b=2, hq=2, hkv=1, nq=70, nk=200, d=64, dtype=torch.float32)
    tight = kw.get("pv_accum_dtype") in ("fp16+fp32", "fp16", "fp32+fp16")
    _compare(name, q, k, v, is_causal=True, tight=tight, **kw)
    _compare(name, q, k, v, is_causal=False, tight=tight, **kw)


def test_quantize_and_call_fp32_wide_range():
    """fp32 inputs beyond fp16's range: the power-of-two V scale keeps the kernel's fp16 output finite."""
    q, k, v = _qkv(nq=20, nk=40, d=64, dtype=torch.float32)
    _compare(FP16, q, k, v * 1e6)
    _compare(FP8, q, k, v * 1e6, pv_accum_dtype="fp32+fp32")


@pytest.mark.parametrize(
    "pv,accum,rising",
    [
        ("fp16", "fp16+fp32", False),
        ("fp16", "fp16", False),
        ("fp16", "fp16", True),
        ("fp8", "fp32+fp16", False),
    ],
)
def test_op_reference_rounds_like_modes_bit_for_bit(pv, accum, rising):
    """The op's float64 reference (``attention_from_scores`` with ``pv_accum``) against
    ``modes.softmax_pv`` on inputs where every partial sum is exact in float32: integer log2 scores
    (P a power of two, times 448 for FP8), V on a coarse grid, block maxima flat (no rescale) or rising
    by 4 per block (``"fp16"``: the f16 accumulator rescaled by 2^-2). The only roundings left are the
    ones both model (P to fp16 / e4m3, the f16 accumulator after each k-step), so they agree bit for bit,
    and the f16 rounding is visible (the result differs from float32 accumulation)."""
    from shared_kernels.reference import sage_attention as op_ref

    g = torch.Generator().manual_seed(7)
    fp8, nk = pv == "fp8", 150
    s = torch.randint(-6, 1, (2, 3, 20, nk), generator=g).float()
    s[..., ::64] = 0.0  # every block's maximum is 0 ...
    if rising:
        s += 2.0 * (torch.arange(nk) // 64).float()  # ... or 2b
    if fp8:
        v = torch.empty(2, 3, nk, 64).uniform_(-2.25, 2.25, generator=g).to(torch.float8_e4m3fn)
        v = torch.where(v.float().abs() < 0.125, torch.zeros_like(v.float()), v.float()).to(
            torch.float8_e4m3fn
        )
    else:
        v = (torch.randint(-1024, 1025, (2, 3, nk, 64), generator=g) / 256.0).half()
    cfg = modes.SageConfig(pv_dtype=pv, pv_accum_dtype=accum, v_scale_max=2.25 if fp8 else 448.0)
    acc, lsum, lse2 = modes.softmax_pv(s, v.float(), cfg)
    c = 448.0 if fp8 else 1.0
    want = (acc.double() / (lsum.double()[..., None] * c)).float()
    vs = torch.ones(2, 3, 64) if fp8 else None
    got, lse = op_ref.attention_from_scores(s.double(), v, vs, False, torch.float32, accum)
    assert torch.equal(got, want)
    torch.testing.assert_close(lse, (lse2.double() * math.log(2.0)).float(), rtol=1e-6, atol=1e-6)
    fp32_acc = op_ref.attention_from_scores(s.double(), v, vs, False, torch.float32)[0]
    assert not torch.equal(got, fp32_acc)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("name,kw", ALL_ACC, ids=ALL_ACC_IDS)
def test_nan_policy_matches_the_reference(where, name, kw):
    q, k, v = _qkv(b=2, hq=4, hkv=4, nq=40, nk=50)
    {"q": q, "k": k, "v": v}[where][1, 2, 3, 4] = float("nan")
    p = _prep(q, k, v)
    o, _ = ck.compiled_attention(p, _cfg(name, 64, **kw), op_backend="torch")
    eo, _ = getattr(sageattention, name)(q, k, v, return_lse=True, backend="torch", **kw)
    assert torch.equal(torch.isnan(o), torch.isnan(eo))
    assert torch.isnan(o[1, 2, :, 4] if where == "v" else o[1, 2, 3]).all()


def test_empty():
    q, k, v = _qkv(nk=0)
    o, lse = ck.compiled_attention(_prep(q, k, v), _cfg(FP16, 64), op_backend="torch")
    assert (o == 0).all() and (lse == float("-inf")).all()


def test_nhd_layout():
    q, k, v = _qkv(nq=33, nk=60)
    qn, kn, vn = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    p = core.prepare_inputs(qn, kn, vn, "NHD", False, None, False, True)
    o = ck.compiled_attention(p, _cfg(FP16, 64), op_backend="torch")
    want = sageattention.sageattn_qk_int8_pv_fp16_cuda(q, k, v, backend="torch")
    assert torch.allclose(o.transpose(1, 2).float(), want.float(), atol=2e-2)


# ---------------------------------------------------------------- GPU (compiled kernel)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [64, 96, 128])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("name,kw", ALL_ACC, ids=ALL_ACC_IDS)
def test_gpu_kernel_vs_reference(d, is_causal, name, kw):
    cap = torch.cuda.get_device_capability()
    f16_acc = kw.get("pv_accum_dtype") in ("fp16+fp32", "fp16", "fp32+fp16")
    why = ck.device_reason(torch.device("cuda"), name)
    if why is not None:
        pytest.skip(why)
    q, k, v = _qkv(b=2, hq=6, hkv=2, nq=333, nk=517, d=d, device="cuda")
    p = core.prepare_inputs(q, k, v, "HND", is_causal, None, True, True)
    cfg = _cfg(name, d, **kw)
    assert variants.kernel_supports(name, p, cfg), cap
    o, lse = ck.compiled_attention(p, cfg, op_backend="cuda")
    eo, el = getattr(sageattention, name)(
        q, k, v, is_causal=is_causal, return_lse=True, backend="torch", **kw
    )
    vmax = float(v.float().abs().max())
    err = (o.float() - eo.float()).abs()
    # exp2.approx and the summation order can move a P element (or an f16 accumulator) by one rounding step
    assert float(err.max()) <= (2e-3 if name == FP16 else 6e-2) * vmax * (4 if f16_acc else 1)
    assert float(err.mean()) <= (5e-4 if f16_acc else 2e-4) * vmax
    assert torch.allclose(lse, el, rtol=1e-4, atol=1e-3)
    # the registered chain runs the compiled kernel for the public function
    got = getattr(sageattention, name)(q, k, v, is_causal=is_causal, backend="cuda", **kw)
    assert torch.equal(got, o)


@pytest.mark.cuda
def test_gpu_mask_falls_back_and_sageattn_dispatches():
    q, k, v = _qkv(b=1, hq=4, hkv=2, nq=100, nk=150, d=64, device="cuda")
    mask = torch.rand(100, 150, device="cuda") > 0.2
    o = sageattention.sageattn_qk_int8_pv_fp16_cuda(q, k, v, attn_mask=mask)
    want = sageattention.sageattn_qk_int8_pv_fp16_cuda(q, k, v, attn_mask=mask, backend="torch")
    assert float((o.float() - want.float()).abs().max()) <= 2e-2 * float(v.float().abs().max())
    out = sageattention.sageattn(q, k, v, is_causal=True)
    exact = sageattention.reference.attention_exact(q, k, v, is_causal=True)[0]
    rel = float((out.double() - exact).abs().sum() / exact.abs().sum())
    assert rel < 0.02


def test_live_registry_puts_the_compiled_kernels_first():
    """After ``import sageattention`` (whatever the order its modules register in), each variant's entry
    starts with the compiled kernel where this build has it, and keeps the Triton kernel behind it."""
    has, _ = ck._build_info()
    fp16 = variants.KERNELS[FP16]
    fp16_chain = getattr(fp16, "kernels", (fp16,))
    if has:
        fp8 = variants.KERNELS[FP8]
        assert fp16_chain[0] is ck.qk_int8_pv_fp16_cuda_kernel
        assert getattr(fp8, "kernels", (fp8,))[0] is ck.qk_int8_pv_fp8_cuda_kernel
    else:  # a CPU-only build registers no kernel for the FP8 variant (Triton has none for it)
        assert FP8 not in variants.KERNELS
    if importlib.util.find_spec("triton") is not None:
        from sageattention import triton_variants

        assert fp16_chain[-1] is triton_variants.qk_int8_pv_fp16_kernel
