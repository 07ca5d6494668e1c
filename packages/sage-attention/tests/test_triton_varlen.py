"""Triton varlen SageAttention (packed sequences, interpreter without a GPU) against the per-sequence
oracle and exact float64 attention."""

import pytest
import torch
import torch.nn.functional as F
from sageattention import reference as ref
from sageattention.triton.emulate import sage_attention_varlen_variant

pytest.importorskip("triton")
from sageattention.triton_api import sageattn_varlen_triton


def _packed(lens_q, lens_k, hq=4, hkv=2, d=64, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tq, tk = sum(lens_q), sum(lens_k)
    q = torch.randn(tq, hq, d, generator=g).to(dtype)
    k = (torch.randn(tk, hkv, d, generator=g) + 2 * torch.randn(d, generator=g)).to(dtype)
    v = torch.randn(tk, hkv, d, generator=g).to(dtype)
    cu = [
        torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        for lens in (lens_q, lens_k)
    ]
    return q, k, v, cu[0], cu[1]


@pytest.mark.parametrize(
    "lens_q,lens_k,kw",
    [
        ([130, 5, 70], [130, 5, 70], dict()),  # blocks must not straddle sequences
        ([40, 200, 1], [90, 65, 3], dict(is_causal=True)),  # causal, Nq != Nk per sequence
        ([64, 0, 33], [10, 7, 0], dict(qk_quant_gran="per_warp", smooth_k=False)),  # empty q / empty k
    ],
)
def test_varlen_matches_per_sequence_oracle_and_exact(lens_q, lens_k, kw):
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k)
    copies = [x.clone() for x in (q, k, v, cu_q, cu_k)]
    o, lse = sageattn_varlen_triton(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_lse=True, **kw)
    for x, c in zip((q, k, v, cu_q, cu_k), copies, strict=True):
        assert torch.equal(x, c)
    assert o.shape == (q.shape[0], 4, 64) and o.dtype == q.dtype and lse.shape == (4, q.shape[0])
    e, le = sage_attention_varlen_variant(
        q, k, v, cu_q, cu_k, sm_scale=0.125, is_causal=kw.get("is_causal", False),
        smooth_k=kw.get("smooth_k", True), q_group=32 if kw.get("qk_quant_gran") == "per_warp" else 128,
    )  # fmt: skip
    assert (o.float() - e).abs().max() <= 1e-3 * float(v.abs().max()) + 2**-10 * float(e.abs().max())
    assert torch.equal(torch.isinf(lse), torch.isinf(le))
    fin = torch.isfinite(le)
    assert (lse[fin] - le[fin]).abs().max() <= 1e-5 * max(1.0, float(le[fin].abs().max()))
    for s in range(len(lens_q)):  # and each sequence is close to exact attention on its own
        a, b, c, d = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        if b == a or d == c:
            assert (o[a:b] == 0).all() and (lse[:, a:b] == float("-inf")).all()
            continue
        x, _ = ref.attention_exact(
            *(t[i:j].transpose(0, 1)[None] for t, i, j in ((q, a, b), (k, c, d), (v, c, d))),
            is_causal=kw.get("is_causal", False),
        )
        ov = o[a:b].transpose(0, 1)[None].double()
        assert F.cosine_similarity(ov.flatten(), x.flatten(), dim=0) >= 0.999


@pytest.mark.parametrize(
    "over,exc,word",
    [
        (dict(cu_seqlens_q=torch.tensor([0, 5, 9], dtype=torch.int32)), ValueError, "cu_seqlens_q"),
        (dict(cu_seqlens_k=torch.tensor([0, 3.0, 10])), TypeError, "cu_seqlens_k"),
        (dict(cu_seqlens_k=torch.tensor([0, 10], dtype=torch.int32)), ValueError, "same number"),
        (dict(max_seqlen_q=2), ValueError, "max_seqlen_q"),
        (dict(q=torch.zeros(10, 4, 64, 1, dtype=torch.float16)), ValueError, "3-D"),
        (dict(qk_quant_gran="per_thread"), ValueError, "qk_quant_gran"),
        (dict(attn_mask=None), TypeError, "attn_mask"),
    ],
)
def test_varlen_bad_input(over, exc, word):
    q, k, v, cu_q, cu_k = _packed([4, 6], [7, 3])
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=6, max_seqlen_k=7)
    with pytest.raises(exc, match=word):
        sageattn_varlen_triton(**{**args, **over})


def test_varlen_opcheck():
    q, k, v, cu_q, cu_k = _packed([20, 9], [30, 5], dtype=torch.float32)
    torch.library.opcheck(
        torch.ops.sageattention.qk_int8_varlen_triton, (q, k, v, cu_q, cu_k, True, 0.125, True, 128)
    )


@pytest.mark.cuda
def test_varlen_gpu_matches_oracle():
    q, k, v, cu_q, cu_k = _packed([300, 17, 650], [280, 40, 650], hq=8, hkv=2, d=128, dtype=torch.bfloat16)
    o, lse = sageattn_varlen_triton(
        *(x.cuda() for x in (q, k, v, cu_q, cu_k)), 650, 650, is_causal=True, return_lse=True
    )
    e, le = sage_attention_varlen_variant(q, k, v, cu_q, cu_k, sm_scale=128**-0.5, is_causal=True)
    assert (o.cpu().float() - e).abs().max() <= 2e-3 * float(v.float().abs().max()) + 2**-7 * float(
        e.abs().max()
    )
    assert (lse.cpu() - le).abs().max() <= 1e-4 * float(le.abs().max())
