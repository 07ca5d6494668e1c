"""SageAttention2's INT4 option (``sageattention.int4``): the quantizer's groups and range, the mode's
accuracy against float64 attention (and against INT8), the public functions' validation, the
pack-and-call path of the compiled INT4 kernel run on the op's float64 reference (CPU), and
(``cuda``) the compiled kernel against the mode."""

import pytest
import torch
from sageattention import core, int4, modes
from sageattention import cuda_kernels as ck


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small matmuls on a shared, oversubscribed machine: one thread is faster than many."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _qkv(b=1, hq=4, hkv=2, nq=45, nk=64, d=64, dtype=torch.float32, seed=0, device="cpu"):
    """Q and K with shared per-channel offsets (what Q/K smoothing removes)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g) + 1.5 * torch.randn(1, 1, 1, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g) + 2 * torch.randn(1, 1, 1, d, generator=g)
    v = torch.randn(b, hkv, nk, d, generator=g)
    return tuple(x.to(dtype).to(device) for x in (q, k, v))


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _sdpa64(q, k, v, causal=False):
    rep = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = q.double() @ kk.transpose(-1, -2) * q.shape[-1] ** -0.5
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ vv


def test_config_and_quantizer():
    cfg = int4.int4_config(64)
    assert cfg.qk_quant_dtype == "int4" and cfg.smooth_q and cfg.qk_quant_gran == "per_thread"
    assert int4.int4_config(128, pv_dtype="fp8").pv_accum_dtype == "fp32+fp32"
    with pytest.raises(ValueError, match="qk_quant_dtype must be one of"):
        modes.SageConfig(qk_quant_dtype="int2")
    with pytest.raises(ValueError, match="pv_dtype must be one of"):
        int4.int4_config(64, pv_dtype="fp4")
    y = torch.randn(1, 2, 70, 64) * torch.linspace(0.1, 5, 64)
    x4, sc = int4.quantize_int4_groups(y, "k", "per_thread", cfg)
    assert x4.abs().max() == 7 and torch.equal(x4, x4.round())
    assert ((x4 * sc[..., None] - y).abs() <= 0.5 * sc[..., None] * (1 + 1e-5)).all()
    # per-thread K groups: keys n and n' share a scale iff same 64-block and same (n % 8) // 2
    n = torch.arange(64)
    same = ((n[:, None] % 8) // 2) == ((n[None, :] % 8) // 2)
    s0 = sc[0, 0, :64]
    assert torch.equal(s0[:, None] == s0[None, :], same)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pv", ["fp16", "fp8"])
def test_int4_mode_is_accurate_and_behind_int8(causal, pv):
    q, k, v = _qkv(hq=2, hkv=1, nq=80, nk=131, d=64, seed=1)
    want = _sdpa64(q, k, v, causal)
    fn = int4.sageattn_qk_int4_pv_fp16_cuda if pv == "fp16" else int4.sageattn_qk_int4_pv_fp8_cuda
    o4 = fn(q, k, v, is_causal=causal)
    assert o4.shape == q.shape and o4.dtype == q.dtype
    cos4 = _cos(o4, want)
    assert cos4 > 0.98, cos4  # Gaussian D=64: INT4 per-thread ~0.985
    cfg8 = dict(int4.int4_config(64, pv_dtype=pv).__dict__, qk_quant_dtype="int8")
    o8, _ = modes.sage_attention_mode(q, k, v, sm_scale=0.125, cfg=modes.SageConfig(**cfg8), is_causal=causal)
    assert _cos(o8, want) > cos4  # INT8 is the more accurate
    # smooth_q matters for INT4 on inputs with a Q channel offset
    o4n = fn(q, k, v, is_causal=causal, smooth_q=False)
    assert 1 - _cos(o4n, want) > 1.5 * (1 - cos4)


def test_return_lse_layout_gqa_and_inputs_untouched():
    q, k, v = _qkv(hq=6, hkv=2, nq=33, nk=70, d=96, dtype=torch.bfloat16, seed=2)
    saved = [t.clone() for t in (q, k, v)]
    o, lse = int4.sageattn_qk_int4_pv_fp16_cuda(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), tensor_layout="NHD", return_lse=True
    )
    assert o.shape == (1, 33, 6, 96) and lse.shape == (1, 6, 33) and o.dtype == torch.bfloat16
    want_lse = torch.logsumexp(
        q.double() @ k.double().repeat_interleave(3, 1).transpose(-1, -2) * 96**-0.5, -1
    )
    torch.testing.assert_close(lse.double(), want_lse, atol=0.5, rtol=0)  # INT4 score error
    for t, t0 in zip((q, k, v), saved, strict=True):
        assert torch.equal(t, t0)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(qk_quant_gran="per_lane"), ValueError, "qk_quant_gran"),
        (dict(pv_accum_dtype="fp8"), ValueError, "pv_accum_dtype"),
        (dict(smooth_q=1), TypeError, "smooth_q must be a bool"),
        (dict(tensor_layout="BHND"), TypeError, "tensor_layout"),
        (dict(backend="tpu"), ValueError, "backend"),
        (dict(backend="cuda"), RuntimeError, "no kernel runs this call"),
        (dict(qk_quant_dtype="int4"), TypeError, "qk_quant_dtype"),  # unknown keyword: not swallowed
    ],
)
def test_bad_input(kw, exc, match):
    q, k, v = _qkv(seed=3)
    with pytest.raises(exc, match=match):
        int4.sageattn_qk_int4_pv_fp16_cuda(q, k, v, **kw)


@pytest.mark.parametrize("pv", ["fp16", "fp8"])
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_path_on_the_op_reference_matches_the_mode(pv, causal):
    """Packing, scale gathering, the Q-smoothing bias and the V scaling of the compiled path, run on
    ``shared_kernels.sage_attention_fwd_int4``'s float64 reference, against ``modes`` (float32)."""
    q, k, v = _qkv(hq=4, hkv=2, nq=77, nk=130, d=80, seed=4)
    cfg = int4.int4_config(80, pv_dtype=pv)
    p = core.prepare_inputs(q, k, v, "HND", causal, None, True, True)
    assert ck.supported(p, cfg) is None
    o, lse = ck.compiled_attention(p, cfg, op_backend="torch")
    want, want_lse = modes.sage_attention_mode(q, k, v, sm_scale=80**-0.5, cfg=cfg, is_causal=causal)
    assert _cos(o, want) > (0.9999 if pv == "fp16" else 0.999)
    torch.testing.assert_close(lse, want_lse, atol=2e-3, rtol=0)
    # without the bias (smoothed Q but no correction) the result is clearly different: the bias is used
    nob = modes.SageConfig(**dict(cfg.__dict__, smooth_q=False))
    o_ns, _ = ck.compiled_attention(p, nob, op_backend="torch")
    assert _cos(o_ns, want) < _cos(o, want)


def test_int4_kernel_refuses_cpu_and_masks():
    q, k, v = _qkv(seed=5)
    cfg = int4.int4_config(64)
    kern = int4.int4_kernel("sageattn_qk_int4_pv_fp16_cuda")
    p = core.prepare_inputs(q, k, v, "HND", False, None, False, True)
    assert "CUDA tensors" in kern.supports(p, cfg)
    with pytest.raises(NotImplementedError, match="does not run here"):
        kern(p, cfg)
    mask = torch.ones(45, 64, dtype=torch.bool)
    pm = core.prepare_inputs(q, k, v, "HND", False, None, False, True, mask)
    assert ck.supported(pm, cfg) == "attn_mask='a mask'"
    with pytest.raises(ValueError, match="name must be one of"):
        int4.int4_kernel("sageattn_qk_int4_pv_fp4_cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("pv", ["fp16", "fp8"])
@pytest.mark.parametrize("shape", [(1, 4, 2, 77, 130, 64), (2, 2, 2, 300, 257, 128), (1, 3, 1, 1, 5, 80)])
def test_cuda_kernel_matches_the_mode(shape, pv):
    if pv == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 P·V needs sm89+")
    b, hq, hkv, nq, nk, d = shape
    q, k, v = _qkv(b, hq, hkv, nq, nk, d, dtype=torch.float16, seed=6, device="cuda")
    fn = int4.sageattn_qk_int4_pv_fp16_cuda if pv == "fp16" else int4.sageattn_qk_int4_pv_fp8_cuda
    o, lse = fn(q, k, v, is_causal=True, return_lse=True, backend="cuda")
    want, want_lse = modes.sage_attention_mode(
        q.cpu().float(), k.cpu().float(), v.cpu().float(), sm_scale=d**-0.5,
        cfg=int4.int4_config(d, pv_dtype=pv), is_causal=True,
    )  # fmt: skip
    assert _cos(o.cpu(), want) > (0.9995 if pv == "fp16" else 0.998)
    torch.testing.assert_close(lse.cpu(), want_lse, atol=5e-3, rtol=0)
