"""sageattn_varlen: packed sequences equal per-sequence sageattn, accuracy vs float64, validation."""

import pytest
import torch
import torch.nn.functional as F
from sageattention import sageattn, sageattn_varlen
from sageattention.reference import attention_exact

LQ, LK = [1, 77, 0, 130, 5], [3, 130, 4, 64, 0]


def _packed(lq=LQ, lk=LK, hq=4, hkv=2, d=64, dtype=torch.bfloat16, cu_dtype=torch.int32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lq), hq, d, generator=g).to(dtype)
    k = (torch.randn(sum(lk), hkv, d, generator=g) + 2 * torch.randn(d, generator=g)).to(dtype)
    v = torch.randn(sum(lk), hkv, d, generator=g).to(dtype)
    cq = torch.tensor([0, *torch.tensor(lq).cumsum(0).tolist()], dtype=cu_dtype)
    ck = torch.tensor([0, *torch.tensor(lk).cumsum(0).tolist()], dtype=cu_dtype)
    return q, k, v, cq, ck


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_equals_per_sequence_sageattn_and_close_to_exact(is_causal, cu_dtype):
    q, k, v, cq, ck = _packed(cu_dtype=cu_dtype)
    o, lse = sageattn_varlen(q, k, v, cq, ck, max(LQ), max(LK), is_causal=is_causal, return_lse=True)
    assert o.shape == q.shape and o.dtype == q.dtype and lse.shape == (4, sum(LQ))
    for i in range(len(LQ)):
        a, b = int(cq[i]), int(cq[i + 1])
        c, d = int(ck[i]), int(ck[i + 1])
        qi, ki, vi = (x.transpose(0, 1)[None] for x in (q[a:b], k[c:d], v[c:d]))
        want, want_lse = sageattn(qi, ki, vi, is_causal=is_causal, return_lse=True)
        assert torch.equal(o[a:b], want[0].transpose(0, 1)) and torch.equal(lse[:, a:b], want_lse[0])
        e, _ = attention_exact(qi, ki, vi, is_causal=is_causal)
        if b > a and d > c:
            ex, ox = e.flatten(), o[a:b].transpose(0, 1)[None].double().flatten()
            if ex.abs().sum() > 0:
                assert float(F.cosine_similarity(ox, ex, dim=0)) > 0.999
        else:
            assert (o[a:b] == 0).all()


def test_smooth_k_per_sequence_beats_a_shared_mean():
    """Two sequences with very different K offsets: each sequence's own mean is removed."""
    g = torch.Generator().manual_seed(1)
    k = torch.cat([torch.randn(100, 2, 64, generator=g) + 8, torch.randn(100, 2, 64, generator=g) - 8])
    q, v = torch.randn(200, 2, 64, generator=g), torch.randn(200, 2, 64, generator=g)
    cu = torch.tensor([0, 100, 200], dtype=torch.int32)
    o = sageattn_varlen(q, k, v, cu, cu, 100, 100)
    # upstream's varlen: one mean over the whole packed batch, then no further smoothing
    o_shared = sageattn_varlen(q, k - k.float().mean(0).to(k.dtype), v, cu, cu, 100, 100, smooth_k=False)
    for a in (0, 100):
        qi, ki, vi = (x[a : a + 100].transpose(0, 1)[None] for x in (q, k, v))
        e, _ = attention_exact(qi, ki, vi)
        rel = {}
        for name, out in (("own", o), ("shared", o_shared)):
            ox = out[a : a + 100].transpose(0, 1)[None]
            rel[name] = float((ox.double() - e).abs().sum() / e.abs().sum())
        assert rel["own"] < 0.02 and rel["own"] < rel["shared"] / 2, rel


def test_inputs_unchanged():
    q, k, v, cq, ck = _packed()
    before = [x.clone() for x in (q, k, v, cq, ck)]
    sageattn_varlen(q, k, v, cq, ck, 130, 130, backend="torch")
    for x, y in zip((q, k, v, cq, ck), before, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "change,exc,word",
    [
        (dict(cu_seqlens_q=torch.tensor([1, 78], dtype=torch.int32)), ValueError, "cu_seqlens_q"),
        (dict(cu_seqlens_q=torch.tensor([0, 50, 40, 213], dtype=torch.int32)), ValueError, "non-decreasing"),
        (dict(cu_seqlens_k=torch.tensor([0, 3, 201], dtype=torch.int32)), ValueError, "cu_seqlens_k"),
        (dict(cu_seqlens_q=torch.tensor([0.0, 213.0])), TypeError, "cu_seqlens_q"),
        (dict(cu_seqlens_q=torch.tensor([[0, 213]], dtype=torch.int32)), ValueError, "cu_seqlens_q"),
        (dict(cu_seqlens_q=[0, 213]), TypeError, "cu_seqlens_q"),
        (dict(cu_seqlens_q=torch.tensor([0, 100, 213], dtype=torch.int32)), ValueError, "same batch"),
        (dict(max_seqlen_q=100), ValueError, "max_seqlen_q"),
        (dict(max_seqlen_k=2.5), TypeError, "max_seqlen_k"),
        (dict(q=torch.randn(1, 213, 4, 64)), ValueError, "q"),
        (dict(v=torch.randn(10, 2, 64).bfloat16()), ValueError, "tokens"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(is_causal=1), TypeError, "is_causal"),
    ],
)
def test_bad_input(change, exc, word):
    q, k, v, cq, ck = _packed()
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=130, max_seqlen_k=130)
    args.update(change)
    with pytest.raises(exc, match=word):
        sageattn_varlen(**args)


def test_unknown_keyword_is_type_error():
    q, k, v, cq, ck = _packed()
    with pytest.raises(TypeError, match="foo"):
        sageattn_varlen(q, k, v, cq, ck, 130, 130, foo=1)


@pytest.mark.cuda
def test_auto_on_cuda_is_the_triton_varlen_kernel():
    from sageattention import sageattn_varlen_triton

    q, k, v, cq, ck = (x.cuda() for x in _packed(dtype=torch.float16))
    o, lse = sageattn_varlen(q, k, v, cq, ck, max(LQ), max(LK), is_causal=True, return_lse=True)
    o_t, lse_t = sageattn_varlen_triton(q, k, v, cq, ck, max(LQ), max(LK), is_causal=True, return_lse=True)
    assert torch.equal(o, o_t) and torch.equal(lse, lse_t)
    o_ref = sageattn_varlen(q, k, v, cq, ck, max(LQ), max(LK), is_causal=True, backend="torch")
    assert float((o.float() - o_ref.float()).abs().max()) <= 1e-2 * float(v.float().abs().max())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_gradients_go_through_sagebwd_per_sequence(device):
    """With q/k/v requiring grad, varlen trains (SageBwd per sequence; on CUDA instead of the packed
    Triton kernel, which has no backward), and its gradients are those of the per-sequence sageattn
    calls; close to exact attention's."""
    lq, lk = [5, 33, 17], [9, 20, 40]
    q, k, v, cq, ck = (x.to(device) for x in _packed(lq, lk, dtype=torch.float32))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = sageattn_varlen(q, k, v, cq, ck, max(lq), max(lk), is_causal=True)
    g = torch.randn_like(o)
    o.backward(g)
    want = [torch.zeros_like(x) for x in (q, k, v)]
    exact = [torch.zeros_like(x, dtype=torch.float64) for x in (q, k, v)]
    for i in range(len(lq)):
        a, b, c, d = int(cq[i]), int(cq[i + 1]), int(ck[i]), int(ck[i + 1])
        parts = [x.detach()[s:e].transpose(0, 1)[None].requires_grad_() for x, (s, e) in
                 zip((q, k, v), ((a, b), (c, d), (c, d)), strict=True)]  # fmt: skip
        oi = sageattn(*parts, is_causal=True)
        oi.backward(g[a:b].transpose(0, 1)[None])
        ex = [p.detach().double().requires_grad_() for p in parts]
        e, _ = attention_exact(*ex, is_causal=True)
        e.backward(g[a:b].transpose(0, 1)[None].double())
        for w, p, (s, t) in zip(want, parts, ((a, b), (c, d), (c, d)), strict=True):
            w[s:t] = p.grad[0].transpose(0, 1)
        for x, p, (s, t) in zip(exact, ex, ((a, b), (c, d), (c, d)), strict=True):
            x[s:t] = p.grad[0].transpose(0, 1)
    for got, w, x in zip((q.grad, k.grad, v.grad), want, exact, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)
        assert float(F.cosine_similarity(got.double().flatten(), x.flatten(), dim=0)) > 0.99
