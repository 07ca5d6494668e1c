"""The shared-kernels Hopper kernel behind ``sageattn_qk_int8_pv_fp8_cuda_sm90`` (``cuda_sm90``): its
registration (monkeypatched capabilities), the wrapper's quantization/padding/LSE plumbing through the op's
float64 reference against the oracle ``modes.sage_attention_mode`` (CPU), the fallback for configs the
kernel lacks, and (``cuda``-marked, sm90 only) the kernel end to end against ``backend="torch"``."""

from __future__ import annotations

import dataclasses

import pytest
import shared_kernels
import torch
from sageattention import core, cuda_kernels, cuda_sm90, modes, variants

SM90_CFG = modes.SageConfig(
    qk_quant_gran="per_thread", blkq=64, warpq=16, blkk=128, warpk=128, prescale_q=False,
    pv_dtype="fp8", pv_accum_dtype="fp32+fp32", pv_block=128,
)  # fmt: skip  # what variants.sageattn_qk_int8_pv_fp8_cuda_sm90 builds by default


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _qkv(b=1, hq=4, hkv=2, nq=150, nk=90, d=64, dv=None, dtype=torch.float16, seed=0, k_bias=2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = torch.randn(b, hkv, nk, dv or d, generator=g).to(dtype)
    return q, k, v


def _prep(q, k, v, causal=False, layout="HND", smooth_k=True, mask=None):
    return core.prepare_inputs(q, k, v, layout, causal, None, True, smooth_k, mask)


def _close(got, want, lse, want_lse, cos_min=0.9999, rl1_max=0.01, lse_atol=2e-3):
    got, want = got.double().flatten(), want.double().flatten()
    assert torch.isfinite(got).all() and torch.isfinite(lse).all()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
    rl1 = ((got - want).abs().sum() / want.abs().sum()).item()
    assert cos >= cos_min and rl1 <= rl1_max, (cos, rl1)
    torch.testing.assert_close(lse, want_lse, atol=lse_atol, rtol=1e-4)


# ---- registration --------------------------------------------------------------------------------


def _fake_caps(usable=True, archs=("80", "89", "90a", "100a"), with_op=True):
    ops = {}
    if with_op:
        entry = (
            {"usable": True}
            if usable
            else {"usable": False, "reason": "compiled, but no CUDA GPU is present"}
        )
        ops[cuda_sm90._OP] = {"summary": "", "backends": {"torch": {"usable": True}, "cuda": entry}}
    return {"ops": ops, "cuda": {"archs": list(archs)}}


@pytest.mark.parametrize(
    "caps, capability, expect, reason",
    [
        (_fake_caps(), (9, 0), True, ""),
        (_fake_caps(), (8, 9), False, "sm89"),
        (_fake_caps(), (10, 0), False, "sm100"),
        (_fake_caps(usable=False), (9, 0), False, "no CUDA GPU"),
        (_fake_caps(archs=("80", "89")), (9, 0), False, "no sm_90a"),
        (_fake_caps(with_op=False), (9, 0), False, "no 'cuda' backend"),
    ],
)
def test_kernel_available_only_where_the_kernel_runs(monkeypatch, caps, capability, expect, reason):
    monkeypatch.setattr(shared_kernels, "capabilities", lambda: caps)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    ok, why = cuda_sm90.kernel_available()
    assert ok is expect and reason in why


@pytest.mark.parametrize(
    "build, expect",
    [((True, ("80", "89", "90a", "100a")), True), ((True, ("80", "89")), False), ((False, ()), False)],
)
def test_register_follows_the_build_not_the_device(monkeypatch, build, expect):
    seen = []
    monkeypatch.setattr(cuda_kernels, "_build_info", lambda op: seen.append(op) or build)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: pytest.fail("device queried"))
    monkeypatch.setattr(variants, "KERNELS", {})
    assert cuda_sm90.register() is expect and seen == [cuda_sm90._OP]
    assert (variants.KERNELS.get(cuda_sm90.KERNEL_NAME) is cuda_sm90.sm90_kernel) is expect
    assert cuda_sm90.register() is expect  # idempotent: one entry, not a chain of itself
    assert (variants.KERNELS.get(cuda_sm90.KERNEL_NAME) is cuda_sm90.sm90_kernel) is expect


def test_registration_matches_this_build_and_never_runs_without_a_gpu():
    has, archs = cuda_kernels._build_info(cuda_sm90._OP)
    entry = variants.KERNELS.get(cuda_sm90.KERNEL_NAME)
    assert (entry is cuda_sm90.sm90_kernel) is (has and "90a" in archs)
    if not torch.cuda.is_available():
        assert not cuda_sm90.kernel_available()[0]


def test_capabilities_failure_is_a_reason_not_a_crash(monkeypatch):
    def boom():
        raise RuntimeError("broken build")

    monkeypatch.setattr(shared_kernels, "capabilities", boom)
    ok, why = cuda_sm90.kernel_available()
    assert not ok and "broken build" in why


# ---- the wrapper through the op's reference (CPU) ------------------------------------------------

WRAPPER_CASES = [  # (shape kwargs, config changes, causal, layout, smooth_k)
    (dict(), dict(), False, "HND", True),
    (dict(nq=77, nk=300, hq=6, hkv=2), dict(), True, "HND", True),
    (dict(nq=130, nk=67, d=128, dtype=torch.bfloat16), dict(), False, "NHD", True),
    (dict(nq=40, nk=129, d=72, dv=100), dict(), True, "HND", True),  # padded to 128 (q/k 72, v 100)
    (dict(nq=65, nk=200, d=32), dict(qk_quant_gran="per_warp"), False, "HND", False),  # padded to 64
    (dict(nq=64, nk=256, hq=2, hkv=1), dict(qk_quant_gran="per_block"), True, "HND", True),
    (dict(nq=50, nk=140), dict(prescale_q=True), False, "HND", True),
]


@pytest.mark.parametrize("case", range(len(WRAPPER_CASES)))
def test_wrapper_matches_the_oracle(case):
    shape, change, causal, layout, smooth_k = WRAPPER_CASES[case]
    q, k, v = _qkv(seed=case, **shape)
    if layout == "NHD":
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    cfg = dataclasses.replace(SM90_CFG, smooth_k=smooth_k, **change)
    p = _prep(q, k, v, causal, layout, smooth_k)
    saved = [x.clone() for x in (q, k, v)]
    o, lse = cuda_sm90.sm90_attention(p, cfg, backend="torch")
    want_o, want_lse = modes.sage_attention_mode(
        p.q, p.k, p.v, sm_scale=p.sm_scale, cfg=cfg, is_causal=causal
    )
    want = p.finish(want_o, want_lse)[0]
    assert o.shape == want.shape and o.dtype == q.dtype
    # only the float32 order of the dequantization product and the oracle's fp22 block sums differ
    _close(o.float(), want.float(), lse, want_lse, cos_min=0.999999, rl1_max=1e-3, lse_atol=1e-5)
    for x, x0 in zip((q, k, v), saved, strict=True):
        assert torch.equal(x, x0), "caller's input changed"


def test_wrapper_empty_inputs():
    q, k, v = _qkv(nq=0, nk=10)
    p = _prep(q, k, v)
    o, lse = cuda_sm90.sm90_attention(p, SM90_CFG, backend="torch")
    assert o.shape == (1, 4, 0, 64) and lse.shape == (1, 4, 0)


UNSUPPORTED = [
    (dict(qk_quant_gran="per_token"), None, "qk_quant_gran"),
    (dict(smooth_q=True, blkq=64), None, "smooth_q"),
    (dict(qk_rotation="hadamard"), None, "qk_rotation"),
    (dict(pv_accum_dtype="fp32"), None, "pv_accum_dtype"),
    (dict(pv_dtype="fp16", pv_accum_dtype="fp32"), None, "pv_dtype"),
    (dict(warpq=32), None, "warpq"),
    (dict(pv_block=64), None, "pv_block"),
    (dict(v_scale_max=2.25), None, "v_scale_max"),
    (dict(), "mask", "attn_mask"),
    (dict(), "fp32", "dtype"),
    (dict(), "d160", "head dim"),
]


@pytest.mark.parametrize("case", range(len(UNSUPPORTED)))
def test_unsupported_configs_raise_and_the_kernel_falls_back(case):
    change, inputs, name = UNSUPPORTED[case]
    cfg = dataclasses.replace(SM90_CFG, **change)
    q, k, v = _qkv(
        nq=20,
        nk=30,
        d=160 if inputs == "d160" else 64,
        dtype=torch.float32 if inputs == "fp32" else torch.float16,
    )
    mask = torch.zeros(20, 30, dtype=torch.bool).tril() if inputs == "mask" else None
    p = _prep(q, k, v, mask=mask)
    with pytest.raises(NotImplementedError, match=name):
        cuda_sm90.sm90_attention(p, cfg, backend="torch")
    with pytest.raises(NotImplementedError, match=name):
        cuda_sm90.sm90_attention(p, cfg)  # the cuda default checks the options first
    assert name in cuda_sm90.sm90_kernel.supports(p, cfg)  # sageattn routes such calls elsewhere
    with pytest.raises(NotImplementedError, match=name):
        cuda_sm90.sm90_kernel(p, cfg)  # the variant's chain / reference takes over


def test_cpu_tensors_are_not_a_supported_device():
    q, k, v = _qkv(nq=20, nk=30)
    assert "device" in cuda_sm90.supported(_prep(q, k, v), SM90_CFG)
    assert cuda_sm90.supported(_prep(q, k, v), SM90_CFG, device_check=False) is None


# ---- end to end on an sm90 GPU ---------------------------------------------------------------------


def _need_sm90():
    ok, why = cuda_sm90.kernel_available() if torch.cuda.is_available() else (False, "no GPU")
    if not ok:
        pytest.skip(f"needs the sm90 kernel: {why}")


@pytest.mark.cuda
@pytest.mark.parametrize("gran", ["per_thread", "per_warp"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "shape", [dict(nq=333, nk=1000, hq=8, hkv=2, d=128), dict(nq=1, nk=77, d=64), dict(nq=200, nk=130, d=96)]
)
def test_cuda_end_to_end_vs_torch(shape, causal, gran):
    _need_sm90()
    assert variants.KERNELS.get(cuda_sm90.KERNEL_NAME) is cuda_sm90.sm90_kernel
    q, k, v = (x.cuda() for x in _qkv(seed=5, **shape))
    kw = dict(is_causal=causal, qk_quant_gran=gran, return_lse=True)
    o, lse = variants.sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, backend="cuda", **kw)
    want, want_lse = variants.sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, backend="torch", **kw)
    _close(o.float().cpu(), want.float().cpu(), lse.cpu(), want_lse.cpu())


@pytest.mark.cuda
def test_cuda_sageattn_dispatch_uses_the_kernel_on_sm90():
    _need_sm90()
    q, k, v = (x.cuda() for x in _qkv(nq=256, nk=256, d=128, dtype=torch.bfloat16, seed=6))
    o = variants.sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout="HND")
    want = variants.sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, backend="torch")
    _close(o.float().cpu(), want.float().cpu(), torch.zeros(1), torch.zeros(1))


def test_device_status_is_computed_once_per_device(monkeypatch):
    calls = []
    monkeypatch.setattr(cuda_sm90, "kernel_available", lambda dev: calls.append(dev) or (True, ""))
    cuda_sm90._device_status.cache_clear()
    try:
        assert cuda_sm90._device_status(0) == (True, "") == cuda_sm90._device_status(0)
        cuda_sm90._device_status(1)
        assert calls == [torch.device("cuda", 0), torch.device("cuda", 1)]
    finally:
        cuda_sm90._device_status.cache_clear()
