"""The PyTorch reference of SLA against independent formulations (dense masked attention, the
quadratic form of linear attention) on awkward shapes, plus its edge cases and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from sparse_linear_attention.reference import (
    block_map_skip,
    block_map_topk,
    block_scores,
    block_sparse_attention_ref,
    expand_block_map,
    linear_attention_ref,
    mean_pool,
    sla_reference,
    topk_count,
)

F64 = torch.float64


def _qkv(B=2, H=3, L=37, D=8, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=dtype) for _ in range(3)]


def test_mean_pool_partial_last_block():
    x = torch.randn(2, 1, 10, 3, dtype=F64)
    p = mean_pool(x, 4)
    assert p.shape == (2, 1, 3, 3)
    torch.testing.assert_close(p[:, :, 0], x[:, :, 0:4].mean(2))
    torch.testing.assert_close(p[:, :, 1], x[:, :, 4:8].mean(2))
    torch.testing.assert_close(p[:, :, 2], x[:, :, 8:10].mean(2))  # 2 valid tokens, not 4


@pytest.mark.parametrize(
    "topk,Mk,expected", [(0.5, 5, 2), (0.01, 5, 1), (1.0, 5, 5), (0.29, 100, 28), (0.2, 64, 12)]
)
def test_topk_count(topk, Mk, expected):
    assert topk_count(topk, Mk) == expected


@pytest.mark.parametrize("topk", [0.05, 0.4, 1.0])
def test_block_map_topk_keeps_the_highest_scores(topk):
    q, k, _ = _qkv(L=45)
    blkq, blkk = 8, 6
    bm = block_map_topk(q, k, topk, blkq, blkk)
    Mq, Mk = math.ceil(45 / blkq), math.ceil(45 / blkk)
    assert bm.shape == (2, 3, Mq, Mk) and bm.dtype == torch.bool
    count = min(Mk, max(1, int(topk * Mk)))
    assert (bm.sum(-1) == count).all()
    # independent score: explicit per-block loops over valid tokens
    km = k - k.mean(2, keepdim=True)
    pq = torch.stack([q[:, :, i * blkq : (i + 1) * blkq].mean(2) for i in range(Mq)], 2)
    pk = torch.stack([km[:, :, j * blkk : (j + 1) * blkk].mean(2) for j in range(Mk)], 2)
    score = pq @ pk.transpose(-1, -2)
    torch.testing.assert_close(block_scores(q, k, blkq, blkk), score)
    if count < Mk:
        lowest_kept = score.masked_fill(~bm, math.inf).amin(-1)
        highest_dropped = score.masked_fill(bm, -math.inf).amax(-1)
        assert (lowest_kept >= highest_dropped).all()


def test_block_sparse_all_selected_is_dense_attention():
    q, k, v = _qkv(L=29)
    bm = torch.ones(2, 3, 4, 5, dtype=torch.bool)
    o, lse = block_sparse_attention_ref(q, k, v, bm, blkq=8, blkk=6)
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) / math.sqrt(8), -1))


def test_block_sparse_matches_masked_sdpa_and_scale():
    q, k, v = _qkv(L=29)
    bm = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    bm[..., 0] = True  # every row selects something
    o, lse = block_sparse_attention_ref(q, k, v, bm, blkq=8, blkk=6, sm_scale=0.3)
    mask = torch.zeros(2, 3, 29, 29, dtype=torch.bool)
    for i in range(29):
        for t in range(29):
            mask[:, :, i, t] = bm[:, :, i // 8, t // 6]
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3))
    s = (q @ k.transpose(-1, -2) * 0.3).masked_fill(~mask, -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))


def test_block_sparse_empty_row_gives_zero_and_finite_grads():
    q, k, v = [x.requires_grad_() for x in _qkv(B=1, H=1, L=20)]
    bm = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    bm[0, 0, 1] = False  # query block 1 (rows 8..15) selects nothing
    o, lse = block_sparse_attention_ref(q, k, v, bm, blkq=8, blkk=8)
    assert (o[0, 0, 8:16] == 0).all() and torch.isneginf(lse[0, 0, 8:16]).all()
    assert torch.isfinite(lse[0, 0, :8]).all()
    (o.sum() + lse[0, 0, :8].sum()).backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert (q.grad[0, 0, 8:16] == 0).all()


def _linear_quadratic(fq, fk, v, allowed, eps=1e-5):
    a = (fq @ fk.transpose(-1, -2)) * allowed
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("C,D", [(8, 8), (5, 11)])
def test_linear_complement_matches_quadratic_form(C, D):
    g = torch.Generator().manual_seed(2)
    B, H, L = 2, 2, 41
    fq = torch.rand(B, H, L, C, generator=g, dtype=F64)
    fk = torch.rand(B, H, L, C, generator=g, dtype=F64)
    v = torch.randn(B, H, L, D, generator=g, dtype=F64)
    bm = torch.rand(B, H, 6, 4, generator=g) < 0.4
    bm[0, 0, 0] = True  # a row with an empty complement
    o = linear_attention_ref(fq, fk, v, block_map=bm, blkq=7, blkk=11)
    allowed = (~expand_block_map(bm, 7, 11, L)).to(F64)
    torch.testing.assert_close(o, _linear_quadratic(fq, fk, v, allowed))
    assert (o[0, 0, :7] == 0).all()
    o_all = linear_attention_ref(fq, fk, v)
    torch.testing.assert_close(o_all, _linear_quadratic(fq, fk, v, torch.ones(L, L, dtype=F64)))


def test_linear_relu_all_zero_features_are_finite():
    fq = torch.zeros(1, 1, 9, 4, dtype=F64)
    fk = torch.relu(torch.randn(1, 1, 9, 4, dtype=F64))
    v = torch.randn(1, 1, 9, 4, dtype=F64)
    o = linear_attention_ref(fq, fk, v, block_map=torch.zeros(1, 1, 2, 2, dtype=torch.bool), blkq=8, blkk=8)
    assert (o == 0).all()


def test_block_map_skip_third_class():
    q, k, _ = _qkv(L=60)
    crit = block_map_topk(q, k, 0.2, 6, 6)  # Mk = 10: 2 critical
    skip = block_map_skip(q, k, 0.5, 6, 6, crit)  # 5 negligible
    assert not (skip & crit).any()
    assert (skip.sum(-1) == 5).all()
    score = block_scores(q, k, 6, 6)
    marginal = ~(skip | crit)
    assert (
        score.masked_fill(~skip, -math.inf).amax(-1) <= score.masked_fill(~marginal, math.inf).amin(-1)
    ).all()
    assert not block_map_skip(q, k, 0.0, 6, 6, crit).any()
    # capped: never more than the non-selected blocks
    assert (block_map_skip(q, k, 0.99, 6, 6, crit).sum(-1) == 8).all()


def test_sla_reference_combines_branches():
    q, k, v = _qkv(L=33)
    D = 8
    g = torch.Generator().manual_seed(3)
    w = torch.randn(D, D, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    bm = block_map_topk(q, k, 0.3, 8, 8)
    o_s, _ = block_sparse_attention_ref(q, k, v, bm, blkq=8, blkk=8)
    torch.testing.assert_close(
        sla_reference(q, k, v, torch.zeros(D, D, dtype=F64), None, topk=0.3, blkq=8, blkk=8), o_s
    )
    for fm, phi in (("softmax", lambda x: x.softmax(-1)), ("elu", lambda x: F.elu(x) + 1), ("relu", F.relu)):
        for scope in ("complement", "all"):
            o = sla_reference(q, k, v, w, b, topk=0.3, blkq=8, blkk=8, feature_map=fm, linear_scope=scope)
            lm = bm if scope == "complement" else None
            o_l = linear_attention_ref(phi(q), phi(k), v, block_map=lm, blkq=8, blkk=8)
            torch.testing.assert_close(o, o_s + o_l @ w.T + b)
    skip = block_map_skip(q, k, 0.4, 8, 8, bm)
    o = sla_reference(q, k, v, w, b, topk=0.3, blkq=8, blkk=8, skip_topk=0.4)
    o_l = linear_attention_ref(q.softmax(-1), k.softmax(-1), v, block_map=bm | skip, blkq=8, blkk=8)
    torch.testing.assert_close(o, o_s + o_l @ w.T + b)


def test_reference_keeps_dtype_and_inputs():
    q, k, v = _qkv(L=21, dtype=torch.bfloat16)
    before = [x.clone() for x in (q, k, v)]
    o = sla_reference(q, k, v, torch.randn(8, 8), torch.randn(8), topk=0.5, blkq=8, blkk=8)
    assert o.dtype == torch.bfloat16 and o.shape == q.shape and torch.isfinite(o).all()
    for x, y in zip((q, k, v), before, strict=True):
        assert torch.equal(x, y)


def test_bad_input():
    q, k, v = _qkv(L=16)
    bm = block_map_topk(q, k, 0.5, 8, 8)
    w = torch.zeros(8, 8, dtype=F64)
    for topk in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="topk"):
            block_map_topk(q, k, topk, 8, 8)
    with pytest.raises(TypeError, match="topk"):
        block_map_topk(q, k, "0.5", 8, 8)
    with pytest.raises(ValueError, match="blkq"):
        block_map_topk(q, k, 0.5, 0, 8)
    with pytest.raises(TypeError, match="blkk"):
        block_map_topk(q, k, 0.5, 8, 8.0)
    with pytest.raises(ValueError, match="same shape"):
        block_sparse_attention_ref(q, k[:, :, :8], v, bm, blkq=8, blkk=8)
    with pytest.raises(ValueError, match="block_map must have shape"):
        block_sparse_attention_ref(q, k, v, bm[:, :, :1], blkq=8, blkk=8)
    with pytest.raises(TypeError, match="block_map"):
        block_sparse_attention_ref(q, k, v, bm.int(), blkq=8, blkk=8)
    with pytest.raises(TypeError, match="q must have dtype"):
        block_sparse_attention_ref(q.long(), k.long(), v.long(), bm, blkq=8, blkk=8)
    with pytest.raises(ValueError, match="sm_scale"):
        block_sparse_attention_ref(q, k, v, bm, blkq=8, blkk=8, sm_scale=-1.0)
    with pytest.raises(ValueError, match="eps"):
        linear_attention_ref(q, k, v, eps=0.0)
    with pytest.raises(ValueError, match="4 dims"):
        linear_attention_ref(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="linear_scope"):
        sla_reference(q, k, v, w, None, topk=0.5, blkq=8, blkk=8, linear_scope="none")
    with pytest.raises(ValueError, match="proj_l_weight"):
        sla_reference(q, k, v, w[:4], None, topk=0.5, blkq=8, blkk=8)
    with pytest.raises(NotImplementedError, match="softmax"):
        sla_reference(q, k, v, w, None, topk=0.5, blkq=8, blkk=8, feature_map="hedgehog")
    with pytest.raises(ValueError, match="feature_map"):
        sla_reference(q, k, v, w, None, topk=0.5, blkq=8, blkk=8, feature_map="cos")
    with pytest.raises(ValueError, match="skip_topk"):
        block_map_skip(q, k, 1.0, 8, 8, bm)
    with pytest.raises(ValueError, match="skip_topk"):
        sla_reference(q, k, v, w, None, topk=0.5, blkq=8, blkk=8, linear_scope="all", skip_topk=0.2)
