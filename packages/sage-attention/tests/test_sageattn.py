"""sageattn against exact float64 attention; backends bit-identical; SDPA keywords; bad input."""

import pytest
import torch
import torch.nn.functional as F
from sageattention import sageattn
from sageattention.reference import attention_exact

COS_MIN, REL_L1_MAX = 0.99, 0.05  # brief's bar; SA2 paper reports ~0.994 cosine on real models


def _qkv(b=2, hq=8, hkv=2, nq=77, nk=130, d=64, dv=None, dtype=torch.bfloat16, k_bias=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g).to(dtype)
    # a per-channel K bias (what smooth_k removes), like real diffusion / LLM activations
    k = (torch.randn(b, hkv, nk, d, generator=g) + k_bias * torch.randn(1, 1, 1, d, generator=g)).to(dtype)
    v = torch.randn(b, hkv, nk, dv or d, generator=g).to(dtype)
    return q, k, v


def _metrics(o, e):
    o, e = o.double().flatten(), e.double().flatten()
    return float(F.cosine_similarity(o, e, dim=0)), float((o - e).abs().sum() / e.abs().sum())


def _assert_close_to_exact(o, e):
    assert torch.isfinite(o).all()
    cos, rel = _metrics(o, e)
    assert cos >= COS_MIN and rel <= REL_L1_MAX, (cos, rel)


@pytest.mark.parametrize("d", [64, 96, 128, 160, 256])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_accuracy_awkward_shapes_gqa(d, layout):
    q, k, v = _qkv(d=d)
    e, _ = attention_exact(q, k, v)
    if layout == "NHD":
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    o = sageattn(q, k, v, tensor_layout=layout)
    assert o.dtype == q.dtype and o.shape == q.shape
    if layout == "NHD":
        o = o.transpose(1, 2)
    _assert_close_to_exact(o, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_dtypes_and_distinct_v_head_dim(dtype):
    q, k, v = _qkv(d=64, dv=40, dtype=dtype, hkv=1)
    o = sageattn(q, k, v)
    assert o.dtype == dtype and o.shape == (2, 8, 77, 40)
    _assert_close_to_exact(o, attention_exact(q, k, v)[0])


@pytest.mark.parametrize("nq,nk", [(77, 130), (130, 77), (200, 200)])
def test_causal_top_left_like_sdpa(nq, nk):
    q, k, v = _qkv(nq=nq, nk=nk, hkv=8)
    e, _ = attention_exact(q, k, v, is_causal=True)
    sdpa = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(e, sdpa)  # the oracle's causal alignment is SDPA's
    _assert_close_to_exact(sageattn(q, k, v, is_causal=True), e)


@pytest.mark.parametrize(
    "shape,kind",
    [((77, 130), "bool"), ((2, 1, 1, 130), "bool"), ((1, 8, 77, 130), "additive"), ((130,), "additive")],
)
def test_masks_broadcast(shape, kind):
    q, k, v = _qkv()
    g = torch.Generator().manual_seed(2)
    if kind == "bool":
        mask = torch.rand(shape, generator=g) > 0.5
        mask[..., 0] = True  # no fully masked row here (tested separately)
    else:
        mask = (3 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    e, _ = attention_exact(q, k, v, mask=mask)
    _assert_close_to_exact(sageattn(q, k, v, attn_mask=mask), e)
    # the mask really is applied: the unmasked result is far from the masked exact result
    assert _metrics(sageattn(q, k, v), e)[1] > 4 * _metrics(sageattn(q, k, v, attn_mask=mask), e)[1]


def test_lse_natural_log_of_unsmoothed_scores():
    q, k, v = _qkv(k_bias=4.0)
    mask = torch.rand(77, 130, generator=torch.Generator().manual_seed(3)) > 0.2
    _, e = attention_exact(q, k, v, mask=mask)
    err = {}
    for smooth_k in (True, False):
        _, lse = sageattn(q, k, v, return_lse=True, smooth_k=smooth_k, attn_mask=mask)
        assert lse.shape == (2, 8, 77) and lse.dtype == torch.float32
        err[smooth_k] = float((lse.double() - e).abs().max())
    # INT8 score errors are ~1% of |q·k|·sm_scale; the lse (~-5..15 here) inherits them. Smoothing
    # removes the K bias before quantization (smaller K scales) and the correction term is exact.
    assert err[True] < 0.05 and err[False] < 0.25 and err[True] < err[False], err


def test_fully_masked_rows_are_zero_with_lse_minus_inf():
    q, k, v = _qkv()
    mask = torch.ones(2, 8, 77, 130, dtype=torch.bool)
    mask[:, :, 5] = False
    mask[1, 3, 60:] = False
    add = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    for m in (mask, add):
        for backend in ("cpu", "torch"):
            o, lse = sageattn(q, k, v, attn_mask=m, return_lse=True, backend=backend)
            dead = ~mask.any(-1)
            assert (o[dead] == 0).all() and (lse[dead] == float("-inf")).all()
            assert torch.isfinite(o).all() and torch.isfinite(lse[~dead]).all()
            _assert_close_to_exact(o, attention_exact(q, k, v, mask=mask)[0])


def test_empty_sequences():
    q, k, v = _qkv(nq=0)
    assert sageattn(q, k, v).shape == (2, 8, 0, 64)
    q, k, v = _qkv(nk=0)
    o, lse = sageattn(q, k, v, return_lse=True)
    assert (o == 0).all() and (lse == float("-inf")).all()


@pytest.mark.parametrize("vmax", [1e4, 1e6])
def test_large_v_bf16_no_fp16_overflow(vmax):
    q, k, v = _qkv(hkv=8, d=128)
    v = (v.float() * (vmax / v.float().abs().amax())).to(torch.bfloat16)  # |V| up to vmax, past fp16's 65504
    o = sageattn(q, k, v)
    _assert_close_to_exact(o, attention_exact(q, k, v)[0])


def test_inputs_unchanged():
    q, k, v = _qkv(nq=130, nk=77)
    mask = torch.randn(1, 1, 130, 77)
    before = [x.clone() for x in (q, k, v, mask)]
    for backend in ("cpu", "torch"):
        sageattn(q, k, v, attn_mask=mask, backend=backend)
        for x, y in zip((q, k, v, mask), before, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(q="x"), TypeError, "q"),
        (dict(k=torch.ones(2, 2, 130, 64, dtype=torch.int32)), TypeError, "k"),
        (dict(v=torch.randn(2, 2, 130, 64, dtype=torch.float16)), TypeError, "v"),
        (dict(q=torch.randn(77, 64)), ValueError, "q"),
        (dict(k=torch.randn(3, 2, 130, 64).bfloat16()), ValueError, "batch"),
        (
            dict(k=torch.randn(2, 3, 130, 64).bfloat16(), v=torch.randn(2, 3, 130, 64).bfloat16()),
            ValueError,
            "heads",
        ),
        (dict(v=torch.randn(2, 2, 131, 64).bfloat16()), ValueError, "v"),
        (dict(k=torch.randn(2, 2, 130, 32).bfloat16()), ValueError, "head dim"),
        (dict(tensor_layout="BHND"), TypeError, "tensor_layout"),
        (dict(tensor_layout=torch.ones(77, 130, dtype=torch.bool)), TypeError, "attn_mask"),
        (dict(is_causal=1), TypeError, "is_causal"),
        (dict(dropout_p=0.1), ValueError, "dropout_p"),
        (dict(sm_scale=0.1, scale=0.2), ValueError, "scale"),
        (dict(sm_scale=float("nan")), ValueError, "sm_scale"),
        (dict(attn_mask=torch.ones(77, 131, dtype=torch.bool)), ValueError, "attn_mask"),
        (dict(attn_mask=torch.ones(77, 130, dtype=torch.int64)), TypeError, "attn_mask"),
        (dict(attn_mask=torch.ones(77, 130, dtype=torch.bool), is_causal=True), ValueError, "is_causal"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_input(kwargs, exc, word):
    q, k, v = _qkv()
    args = {"q": q, "k": k, "v": v, **kwargs}
    with pytest.raises(exc, match=word):
        sageattn(**args)


def test_unknown_keyword_is_type_error():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="qk_quant_gran"):
        sageattn(q, k, v, qk_quant_gran="per_thread")


def test_scale_alias_and_equal_values():
    q, k, v = _qkv()
    a = sageattn(q, k, v, scale=0.07)
    assert torch.equal(a, sageattn(q, k, v, sm_scale=0.07))
    assert torch.equal(a, sageattn(q, k, v, sm_scale=0.07, scale=0.07))
    _assert_close_to_exact(a, attention_exact(q, k, v, sm_scale=0.07)[0])


class _Block(torch.nn.Module):
    """A tiny self-attention block calling F.scaled_dot_product_attention (no nn.MultiheadAttention)."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True, scale=None)
        return self.out(o.transpose(1, 2).reshape(b, n, c))


def test_sdpa_replaced_by_sageattn(monkeypatch):
    torch.manual_seed(0)
    block, x = _Block(), torch.randn(2, 50, 64)
    with torch.no_grad():
        want = block(x)
        monkeypatch.setattr(F, "scaled_dot_product_attention", sageattn)
        got = block(x)
    assert got.shape == want.shape
    _assert_close_to_exact(got, want)


def test_torch_compile_fullgraph():
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return sageattn(q, k, v, is_causal=True) * 2

    q, k, v = _qkv(b=1, hq=2, hkv=1, nq=40, nk=70, d=32, dtype=torch.float32)
    eager = M()(q, k, v)
    torch._dynamo.reset()
    compiled = torch.compile(M(), fullgraph=True, backend="aot_eager")(q, k, v)
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_inputs_propagate(where):
    """Policy: NaN propagates, never finite garbage. A NaN in q gives NaN in that row (its whole
    128-query block shares the NaN scale); in k, every row of that head; in v, that channel."""
    q, k, v = _qkv(hkv=8)
    x = {"q": q, "k": k, "v": v}[where]
    x[1, 2, 3, 4] = float("nan")
    for backend in ("cpu", "torch"):
        o = sageattn(q, k, v, backend=backend)
        assert torch.isnan(o[1, 2, :, 4] if where == "v" else o[1, 2, 3]).all()
        assert torch.isfinite(o[0]).all() and torch.isfinite(o[1, 3]).all()
