"""SageBwd (trainable INT8 attention): gradients against float64 autograd of exact attention, the
Triton kernels (interpreter) against the PyTorch reference, gradcheck of the un-quantized path,
and errors for backward through inference-only variants."""

from __future__ import annotations

import pytest
import sageattention
import torch
import torch.nn.functional as F
from sageattention import sageattn, sageattn_train
from sageattention.sagebwd import SageBwdFunction
from sageattention.sagebwd import reference as sref

# Gradient cosine bound vs float64 exact attention. SageBwd quantizes four of the five backward
# matmuls to INT8 with one scale per 64x64 tile; on these Gaussian inputs it measures 0.9990-0.9996
# (the paper reports dQ cosine 0.9977 on real activations, with coarser blocks). 0.995 leaves room
# for seeds; a wrong formula (e.g. dS without the rowsum term, no GQA sum, wrong scale) gives < 0.9.
COS_MIN = 0.995


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _exact_grads(q, k, v, do, *, is_causal=False, mask=None, dlse=None):
    """float64 autograd of SDPA (GQA by repetition) and of the exact logsumexp."""
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    ke, ve = kd.repeat_interleave(g, 1), vd.repeat_interleave(g, 1)
    s = qd @ ke.transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    if is_causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    dead = torch.isinf(s).all(-1, keepdim=True)  # fully masked rows: output 0, no gradient
    s = s.masked_fill(dead, 0.0)
    o = torch.softmax(s, -1).masked_fill(dead, 0.0) @ ve
    loss = (o * do.double()).sum()
    if dlse is not None:
        loss = loss + (torch.logsumexp(s, -1) * dlse.double().masked_fill(dead[..., 0], 0.0)).sum()
    loss.backward()
    return o, qd.grad, kd.grad, vd.grad


def _inputs(b, hq, hkv, nq, nk, d, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g) + 0.7 * torch.randn(1, 1, 1, d, generator=g)  # K bias
    v = torch.randn(b, hkv, nk, dv, generator=g)
    do = torch.randn(b, hq, nq, dv, generator=g)
    return (x.to(dtype) for x in (q, k, v, do))


@pytest.mark.parametrize(
    "b,hq,hkv,nq,nk,d,causal",
    [(1, 4, 2, 77, 77, 64, True), (2, 2, 2, 130, 97, 96, False), (1, 4, 1, 65, 129, 128, False)],
)
def test_sageattn_grads_close_to_float64(b, hq, hkv, nq, nk, d, causal):
    q, k, v, do = _inputs(b, hq, hkv, nq, nk, d, d)
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    o = sageattn(qg, kg, vg, is_causal=causal)  # requires grad: the SageBwd path
    assert o.grad_fn is not None
    o.backward(do)
    oe, dq, dk, dv = _exact_grads(q, k, v, do, is_causal=causal)
    assert _cos(o, oe) > 0.999
    for name, got, want in (("dq", qg.grad, dq), ("dk", kg.grad, dk), ("dv", vg.grad, dv)):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert _cos(got, want) >= COS_MIN, name


def test_grads_nhd_bool_mask_lse_and_bf16():
    q, k, v, do = _inputs(1, 2, 1, 70, 90, 64, 48, dtype=torch.bfloat16)
    mask = torch.rand(1, 1, 70, 90, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 5, :] = False  # a fully masked row: output 0, zero gradient
    dlse = torch.randn(1, 2, 70)
    qn, kn, vn = (x.transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    o, lse = sageattn(qn, kn, vn, tensor_layout="NHD", attn_mask=mask, return_lse=True)
    assert o.dtype == torch.bfloat16 and o.shape == (1, 70, 2, 48)
    (
        (o.float() * do.transpose(1, 2).float()).sum() + (torch.where(lse.isinf(), 0, lse) * dlse).sum()
    ).backward()
    _oe, dq, dk, dv = _exact_grads(q, k, v, do, mask=mask, dlse=dlse)
    assert torch.all(o[:, 5] == 0) and torch.all(lse[:, :, 5] == float("-inf"))
    assert torch.all(qn.grad[:, 5] == 0)
    for got, want in ((qn.grad, dq), (kn.grad, dk), (vn.grad, dv)):
        got = got.transpose(1, 2).float()
        assert torch.isfinite(got).all()
        assert _cos(got, want) >= COS_MIN


def test_tiny_and_huge_output_gradients_keep_their_accuracy():
    """dO is scaled by a power of two before its fp16 cast: 1e-9 does not underflow, 1e6 does not overflow."""
    q, k, v, do = _inputs(1, 2, 2, 40, 40, 32, 32)
    ref = None
    for mag in (1e-9, 1.0, 1e6):
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        sageattn(qg, kg, vg).backward(do * mag)
        grads = [x.grad / mag for x in (qg, kg, vg)]
        if ref is None:
            ref = grads
        for a, b in zip(grads, ref, strict=True):
            assert _cos(a, b) > 0.9999


def test_lse_gradient_and_smoothing_exact_unquantized():
    """With quantization off, smooth_k must not change the gradient, including through the lse
    (``dQ`` needs ``dlse·mean(K)`` added back)."""
    q, k, v, do = _inputs(1, 2, 1, 33, 47, 16, 8)
    k = k + 5.0  # a large K mean
    dlse = torch.randn(1, 2, 33)
    _, dq, dk, dv = _exact_grads(q, k, v, do, dlse=dlse)
    for smooth in (True, False):
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        o, lse = sageattn_train(qg, kg, vg, return_lse=True, quantize=False, smooth_k=smooth)
        ((o * do).sum() + (lse * dlse).sum()).backward()
        for got, want in ((qg.grad, dq), (kg.grad, dk), (vg.grad, dv)):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal,masked", [(False, False), (True, False), (False, True)])
def test_gradcheck_unquantized_float64(causal, masked):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 1, 7 if not causal else 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 1, k.shape[2], 3, dtype=torch.float64, generator=g, requires_grad=True)
    mask = None
    if masked:
        mask = torch.randn(1, 2, 5, 7, dtype=torch.float64, generator=g)
        mask[0, 0, 1, :3] = float("-inf")

    def fn(q, k, v):
        return SageBwdFunction.apply(q, k, v, mask, 0.7, causal, True, False, "torch")

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


def test_inputs_not_modified_and_no_grad_mode_keeps_inference_path():
    q, k, v, do = _inputs(1, 2, 2, 64, 64, 32, 32)
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    before = [x.detach().clone() for x in (qg, kg, vg)]
    sageattn(qg, kg, vg).backward(do)
    for x, y in zip((qg, kg, vg), before, strict=True):
        assert torch.equal(x.detach(), y)
    with torch.no_grad():
        o_inf = sageattn(qg, kg, vg)
    assert o_inf.grad_fn is None
    torch.testing.assert_close(o_inf, sageattn(q, k, v), rtol=0, atol=0)


def test_empty_sequence_gives_zero_gradients():
    q = torch.randn(1, 2, 0, 16, requires_grad=True)
    k = torch.randn(1, 2, 9, 16, requires_grad=True)
    v = torch.randn(1, 2, 9, 16, requires_grad=True)
    o = sageattn(q, k, v)
    assert o.shape == (1, 2, 0, 16)
    o.sum().backward()
    assert torch.all(k.grad == 0) and torch.all(v.grad == 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda q, k, v: sageattention.sageattn_qk_int8_pv_fp16_cuda(q, k, v),
        lambda q, k, v: sageattention.sageattn_qk_int8_pv_fp8_cuda(q, k, v),
        lambda q, k, v: sageattention.sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, return_lse=True)[0],
        lambda q, k, v: sageattention.sageattn_qk_int8_pv_fp16_triton(q, k, v),
        lambda q, k, v: sageattention.sageattn_qk_int4_pv_fp16_cuda(q, k, v),
        lambda q, k, v: sageattention.sageattn_qk_int4_pv_fp8_cuda(q, k, v, pv_accum_dtype="fp32+fp32"),
    ],
    ids=["fp16_cuda", "fp8_cuda", "fp8_cuda_sm90", "fp16_triton", "int4_fp16_cuda", "int4_fp8_cuda"],
)
def test_backward_through_inference_variant_raises(call):
    q, k, v, _ = _inputs(1, 2, 2, 20, 20, 32, 32)
    with torch.no_grad():
        want = call(q, k, v)
    qg = q.clone().requires_grad_()
    o = call(qg, k, v)
    torch.testing.assert_close(o, want, rtol=0, atol=0)  # the forward is still usable
    with pytest.raises(RuntimeError, match=r"inference kernel without a backward.*sageattn"):
        o.sum().backward()


def test_bad_inputs():
    q, k, v, _ = _inputs(1, 2, 2, 8, 8, 16, 16)
    qg = q.clone().requires_grad_()
    with pytest.raises(ValueError, match="attn_mask requires grad"):
        sageattn(qg, k, v, attn_mask=torch.zeros(8, 8, requires_grad=True))
    with pytest.raises(ValueError, match="backend must be one of"):
        sageattn_train(qg, k, v, backend="cuda")
    with pytest.raises(TypeError, match="quantize must be a bool"):
        sageattn_train(qg, k, v, quantize=1)
    with pytest.raises(ValueError, match="quantize=False runs in PyTorch only"):
        sageattn_train(qg, k, v, quantize=False, backend="triton")
    big = torch.randn(1, 1, 4, 300)
    with pytest.raises(ValueError, match="head dims <= 256"):
        sageattn_train(big, big, big, backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        sageattn_train(qg, k.half(), v)
    with pytest.raises(ValueError, match="dropout_p"):
        sageattn(qg, k, v, dropout_p=0.1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        sageattn_train(qg, k, v, foo=1)


def test_quantize_tiles_rounds_half_away_and_scales_per_tile():
    x = torch.zeros(3, 5)
    x[0, 0], x[0, 1], x[2, 4] = 127.0, 0.5, -63.5
    x8, s = sref.quantize_tiles(x, 2, 2)
    assert s[0, 0] == 1.0 and x8[0, 1] == 1.0  # 0.5 rounds away from zero
    assert s[2, 4] == 63.5 / 127 and x8[2, 4] == -127.0
    assert s[1, 2] == 0 and x8[1, 2] == 0  # all-zero tile: scale 0, zeros


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    "b,hq,hkv,nq,nk,d,dv,causal,masked",
    [(1, 2, 1, 70, 70, 96, 80, True, False), (2, 1, 1, 65, 100, 32, 32, False, True)],
)
def test_triton_kernels_match_reference(b, hq, hkv, nq, nk, d, dv, causal, masked, one_thread):
    from sageattention.sagebwd import kernels

    # Fixed inputs (dlse came from the global generator, so it changed with the test order) and one
    # thread (the reference's float32 matmuls then sum in one order whatever the machine's load): the
    # test failed twice in ~100 loaded multi-file runs, never alone; 40 dlse seeds pass at 1 thread.
    q, k, v, do = _inputs(b, hq, hkv, nq, nk, d, dv, seed=5)
    do = do * 1e-3
    dlse = torch.randn(b, hq, nq, generator=torch.Generator().manual_seed(11))
    mask = None
    if masked:
        g = torch.Generator().manual_seed(2)
        mask = torch.where(
            torch.rand(b, 1, nq, nk, generator=g) < 0.3, float("-inf"), torch.randn(b, 1, nq, nk, generator=g)
        )
        mask[..., 3, :] = float("-inf")
    kw = dict(sm_scale=d**-0.5, is_causal=causal, mask=mask)
    o, lse, saved = sref.sagebwd_forward(q, k, v, smooth_k=True, **kw)
    o2, lse2, saved2 = kernels.forward(q, k, v, smooth_k=True, **kw)
    torch.testing.assert_close(o2, o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse2, lse, rtol=1e-5, atol=1e-5)
    assert torch.equal(saved2.q8.float(), saved.q8.float()) and torch.equal(
        saved2.k8.float(), saved.k8.float()
    )
    want = sref.sagebwd_backward(saved, do, dlse, **kw)
    got = kernels.backward(saved2, do, dlse, **kw)
    for name, a, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        # float32 summation order only (an INT8 rounding tie may flip one level: 1/127 of a tile)
        err = (a - w).abs().max() / w.abs().max()
        assert err < 1e-4, (name, float(err))


def test_sageattn_train_triton_backend_end_to_end():
    q, k, v, do = _inputs(1, 2, 1, 50, 50, 64, 64, seed=7)
    res = {}
    for backend in ("torch", "triton"):
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        o = sageattn_train(qg, kg, vg, is_causal=True, backend=backend)
        o.backward(do)
        res[backend] = (o, qg.grad, kg.grad, vg.grad)
    for a, b in zip(res["triton"], res["torch"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sdpa_drop_in_trains():
    """A few optimizer steps through sageattn reduce the loss like SDPA (smoke: the gradient flows)."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, 24, 16)
    target = torch.randn(4, 2, 24, 16)
    losses = {}
    for name, fn in (("sdpa", F.scaled_dot_product_attention), ("sage", sageattn)):
        w = torch.nn.Parameter(
            torch.eye(16) + 0.1 * torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
        )
        opt = torch.optim.SGD([w], lr=0.5)
        hist = []
        for _ in range(10):
            h = x @ w
            loss = F.mse_loss(fn(h, h, h), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append(loss.item())
        losses[name] = hist
    assert losses["sage"][-1] < losses["sage"][0]
    assert abs(losses["sage"][-1] - losses["sdpa"][-1]) < 0.01 * losses["sdpa"][-1]


def test_triton_backend_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 1, 8, 16, requires_grad=True)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        sageattn_train(q, q, q, backend="triton")
    o = sageattn_train(q, q, q)  # "auto" on the CPU: the PyTorch reference
    o.sum().backward()
    assert torch.isfinite(q.grad).all()
