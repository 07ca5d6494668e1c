"""SLA2 (sla2.py) against the SLA reference functions and sageattention's reference."""

import math

import pytest
import torch
from sageattention.modes import SageConfig, sage_attention_mode
from sparse_linear_attention import reference as ref
from sparse_linear_attention.feature_maps import get_feature_map
from sparse_linear_attention.sla2 import (
    SparseLinearAttention2,
    fake_quant_int8_per_block,
    fake_quant_p,
    fake_quant_v,
    route_topk,
    router_scores,
    sla2_attention,
)


def _qkv(B, H, L, D, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def _metrics(x, y):
    x, y = x.double().flatten(), y.double().flatten()
    return ((x - y).abs().sum() / y.abs().sum()).item(), torch.nn.functional.cosine_similarity(x, y, 0).item()


@pytest.mark.parametrize(
    "B,H,L,D,blkq,blkk,topk,fm",
    [
        (2, 3, 70, 32, 16, 16, 0.3, "softmax"),
        (1, 2, 45, 64, 8, 16, 0.5, "elu"),
        (1, 1, 33, 16, 16, 8, 0.2, "relu"),
    ],
)
def test_forward_equals_ratio_combination_of_sla_reference(B, H, L, D, blkq, blkk, topk, fm):
    """Untrained router = SLA's block_map_topk; o = α·o_s + (1−α)·o_l(complement) exactly."""
    q, k, v = _qkv(B, H, L, D)
    m = SparseLinearAttention2(D, H, topk, feature_map=fm, BLKQ=blkq, BLKK=blkk).double()
    with torch.no_grad():
        m.ratio_logit.copy_(torch.linspace(-1.0, 2.0, H))
    o, sparsity = m(q, k, v, return_sparsity=True)
    bm = ref.block_map_topk(q, k, topk, blkq, blkk)
    assert torch.equal(m.block_map(q, k)[0], bm)
    o_s, _ = ref.block_sparse_attention_ref(q, k, v, bm, blkq=blkq, blkk=blkk)
    phi = get_feature_map(fm)
    o_l = ref.linear_attention_ref(phi(q), phi(k), v, block_map=bm, blkq=blkq, blkk=blkk)
    a = torch.sigmoid(torch.linspace(-1.0, 2.0, H, dtype=torch.float64))[None, :, None, None]
    torch.testing.assert_close(o, a * o_s + (1 - a) * o_l, rtol=1e-10, atol=1e-12)
    assert o.shape == q.shape and o.dtype == q.dtype
    assert sparsity == pytest.approx(1.0 - bm.double().mean().item())


def test_topk_one_is_dense_attention():
    q, k, v = _qkv(2, 2, 50, 16, seed=13)
    m = SparseLinearAttention2(16, 2, 1.0, BLKQ=16, BLKK=8).double()
    o, sparsity = m(q, k, v, return_sparsity=True)
    dense = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    torch.testing.assert_close(o, dense, rtol=1e-10, atol=1e-12)
    assert sparsity == 0.0


def test_router_block_map_is_valid_at_budget():
    q, k, _ = _qkv(2, 2, 100, 16, seed=1)
    for topk, want in [(0.05, 1), (0.25, 1), (0.5, 3), (1.0, 7)]:  # Mk = ceil(100/16) = 7
        scores = router_scores(
            q,
            k,
            torch.randn(8, 16, dtype=torch.float64),
            torch.randn(8, 16, dtype=torch.float64),
            blkq=32,
            blkk=16,
        )
        assert scores.shape == (2, 2, 4, 7)
        bm, gate = route_topk(scores, topk)
        assert bm.dtype == torch.bool and bm.shape == scores.shape
        assert (bm.sum(-1) == want).all()
        torch.testing.assert_close(gate, bm.double(), rtol=0, atol=0)
        # the selected blocks are the best-scoring ones
        worst_kept = scores.masked_fill(~bm, math.inf).amin(-1)
        best_dropped = scores.masked_fill(bm, -math.inf).amax(-1)
        assert (worst_kept >= best_dropped).all()


def test_gradients_reach_router_ratio_and_inputs():
    q, k, v = _qkv(2, 2, 48, 16, dtype=torch.float32, grad=True, seed=2)
    m = SparseLinearAttention2(16, 2, 0.34, BLKQ=16, BLKK=8)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(3))
    (m(q, k, v) * w).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_router_gradient_is_the_soft_map_derivative():
    """The straight-through gate's backward equals the derivative of the soft (fractional) map."""
    q, k, v = _qkv(1, 2, 40, 8, seed=4)
    scores = router_scores(
        q, k, torch.eye(8, dtype=torch.float64), torch.eye(8, dtype=torch.float64), blkq=8, blkk=8
    )
    scores.requires_grad_(True)
    ratio = torch.tensor([0.7, 0.4], dtype=torch.float64)
    bm, gate = route_topk(scores, 0.4, temperature=0.5)
    w = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (sla2_attention(q, k, v, gate, ratio, blkq=8, blkk=8) * w).sum().backward()
    # finite difference of the same loss with the gate replaced by hard + soft(scores + h·dir) − soft(scores)
    n = 2  # topk_count(0.4, 5)
    srt = scores.detach().sort(dim=-1, descending=True).values
    tau = 0.5 * (srt[..., n - 1 : n] + srt[..., n : n + 1])
    spread = scores.detach().std(dim=-1, keepdim=True) * 0.5
    direction = torch.randn(scores.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def loss(h):
        soft = torch.sigmoid((scores.detach() + h * direction - tau) / spread)
        soft0 = torch.sigmoid((scores.detach() - tau) / spread)
        g = bm.double() + soft - soft0
        return (sla2_attention(q, k, v, g, ratio, blkq=8, blkk=8) * w).sum()

    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    assert (scores.grad * direction).sum().item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)


def test_soft_gate_interpolates_between_branches():
    """A gate of 0 on a block moves it fully to the linear branch (consistency of the soft map)."""
    q, k, v = _qkv(1, 1, 32, 8, seed=7)
    ratio = torch.tensor([0.5], dtype=torch.float64)
    g = torch.ones(1, 1, 2, 4, dtype=torch.float64)
    g[..., 1:] = 0.0
    bm = g > 0
    o = sla2_attention(q, k, v, g, ratio, blkq=16, blkk=8, feature_map="elu")
    o_s, _ = ref.block_sparse_attention_ref(q, k, v, bm, blkq=16, blkk=8)
    o_l = ref.linear_attention_ref(
        get_feature_map("elu")(q), get_feature_map("elu")(k), v, block_map=bm, blkq=16, blkk=8
    )
    torch.testing.assert_close(o, 0.5 * o_s + 0.5 * o_l)


@pytest.mark.parametrize("quant,max_l1,min_cos", [("int8-fp16", 0.015, 0.9998), ("int8-fp8", 0.06, 0.998)])
def test_qat_forward_within_8bit_error_of_float(quant, max_l1, min_cos):
    q, k, v = _qkv(2, 2, 96, 64, dtype=torch.float32, seed=8)
    m = SparseLinearAttention2(64, 2, 0.5, BLKQ=32, BLKK=32)
    mq = SparseLinearAttention2(64, 2, 0.5, BLKQ=32, BLKK=32, quant=quant)
    mq.load_state_dict(m.state_dict())
    l1, cos = _metrics(mq(q, k, v), m(q, k, v))
    assert 1e-5 < l1 < max_l1 and cos > min_cos  # quantized (not equal) and close


def test_qat_sparse_branch_matches_sageattention_reference():
    """Every block selected, α = 1: the int8-fp16 QAT branch is SageAttention2's per-block maths."""
    q, k, v = _qkv(1, 2, 60, 64, dtype=torch.float32, seed=9)
    gate = torch.ones(1, 2, 1, 1)
    o = sla2_attention(q, k, v, gate, torch.ones(2), blkq=128, blkk=64, quant="int8-fp16")
    o_sage, _ = sage_attention_mode(q, k, v, sm_scale=64**-0.5, cfg=SageConfig())
    o_float = sla2_attention(q, k, v, gate, torch.ones(2), blkq=128, blkk=64)
    # Same quantization; only rare rounding ties differ (exp vs exp2, Q pre-scaled by log2 e upstream),
    # far below the quantization error itself.
    l1_sage, cos_sage = _metrics(o, o_sage)
    l1_float, _ = _metrics(o_float, o_sage)
    assert l1_sage < 2e-5 and cos_sage > 0.9999999 and l1_float > 20 * l1_sage, (l1_sage, l1_float)


def test_qat_straight_through_gradients():
    x = torch.randn(2, 3, 20, 8, requires_grad=True)
    for y in (
        fake_quant_int8_per_block(x, 8),
        fake_quant_int8_per_block(x, 8, smooth=True),
        fake_quant_v(x, "fp8"),
        fake_quant_v(x, "fp16"),
    ):
        assert not torch.equal(y, x) and (y - x).abs().max() < 0.1 * x.abs().max()
        (g,) = torch.autograd.grad((y * 3.0).sum(), x)
        torch.testing.assert_close(g, torch.full_like(x, 3.0))
    p = torch.rand(4, 50, requires_grad=True)
    pq = fake_quant_p(p, "fp8")
    assert ((pq * 448).detach().to(torch.float8_e4m3fn).float() == (pq * 448).detach()).all()
    (g,) = torch.autograd.grad(pq.sum(), p)
    assert torch.equal(g, torch.ones_like(p))


def test_qat_gradients_reach_everything():
    q, k, v = _qkv(1, 2, 40, 16, dtype=torch.float32, grad=True, seed=10)
    m = SparseLinearAttention2(16, 2, 0.4, BLKQ=8, BLKK=8, quant="int8-fp8")
    m(q, k, v).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_low_precision_inputs_and_no_mutation():
    q, k, v = _qkv(1, 2, 40, 16, dtype=torch.bfloat16, seed=11)
    copies = [t.clone() for t in (q, k, v)]
    m = SparseLinearAttention2(16, 2, 0.5, BLKQ=16, BLKK=16, quant="int8-fp8")
    o = m(q, k, v)
    assert o.dtype == torch.bfloat16 and torch.isfinite(o.float()).all()
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies, strict=True))
    o32 = m(*(t.float() for t in (q, k, v)))
    assert _metrics(o, o32)[1] > 0.99


def test_large_scores_stay_finite():
    q, k, v = _qkv(1, 1, 64, 16, dtype=torch.float32, seed=12)
    q = q * 30.0
    m = SparseLinearAttention2(16, 1, 0.25, BLKQ=16, BLKK=16)
    qq = q.detach().requires_grad_(True)
    o = m(qq, k, v)
    o.sum().backward()
    assert torch.isfinite(o).all() and torch.isfinite(qq.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_triton_backend_matches_torch_path():
    """Interpreter run of the fused kernels (tiny: few Triton programs)."""
    q, k, v = _qkv(1, 2, 40, 16, dtype=torch.float32, seed=14, grad=True)
    m = SparseLinearAttention2(16, 2, 0.5, BLKQ=16, BLKK=16)
    mt = SparseLinearAttention2(16, 2, 0.5, BLKQ=16, BLKK=16, backend="triton")
    mt.load_state_dict(m.state_dict())
    o, ot = m(q, k, v), mt(q, k, v)
    torch.testing.assert_close(ot, o, rtol=1e-4, atol=1e-5)
    (ot * torch.linspace(-1, 1, 16)).sum().backward()
    assert mt.ratio_logit.grad.abs().sum() > 0 and q.grad.abs().sum() > 0
    assert mt.router_q.weight.grad is None  # hard map: the router is not trained on this path
    with pytest.raises(ValueError, match="quant"):
        SparseLinearAttention2(16, 2, 0.5, BLKQ=16, BLKK=16, backend="triton", quant="int8-fp8")
    with pytest.raises(ValueError, match="BLKK"):
        SparseLinearAttention2(16, 2, 0.5, BLKQ=16, BLKK=8, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        SparseLinearAttention2(16, 2, 0.5, backend="cuda")


def test_bad_input():
    q, k, v = _qkv(1, 2, 40, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="topk"):
        SparseLinearAttention2(16, 2, 0.0)
    with pytest.raises(ValueError, match="topk"):
        SparseLinearAttention2(16, 2, 1.5)
    with pytest.raises(ValueError, match="quant"):
        SparseLinearAttention2(16, 2, 0.5, quant="int4")
    with pytest.raises(ValueError, match="feature_map"):
        SparseLinearAttention2(16, 2, 0.5, feature_map="cosine")
    with pytest.raises(NotImplementedError, match="hedgehog"):
        SparseLinearAttention2(16, 2, 0.5, feature_map="hedgehog")
    with pytest.raises(ValueError, match="BLKQ"):
        SparseLinearAttention2(16, 2, 0.5, BLKQ=0)
    with pytest.raises(ValueError, match="ratio_init"):
        SparseLinearAttention2(16, 2, 0.5, ratio_init=1.0)
    with pytest.raises(ValueError, match="router_temperature"):
        SparseLinearAttention2(16, 2, 0.5, router_temperature=0)
    with pytest.raises(ValueError, match="num_heads"):
        SparseLinearAttention2(16, 0, 0.5)
    m = SparseLinearAttention2(16, 2, 0.5, BLKQ=16, BLKK=16)
    with pytest.raises(ValueError, match="head_dim"):
        m(*_qkv(1, 2, 40, 32, dtype=torch.float32))
    with pytest.raises(ValueError, match="same shape"):
        m(q, k[:, :, :30], v)
    with pytest.raises(TypeError, match="dtype"):
        m(q, k.double(), v)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        m(q.numpy(), k, v)
    with pytest.raises(TypeError, match="return_sparsity"):
        m(q, k, v, return_sparsity="yes")
    with pytest.raises(TypeError):
        m(q, k, v, is_causal=True)  # unknown keywords are never ignored
    gate = torch.ones(1, 2, 3, 3)
    with pytest.raises(ValueError, match="gate must have shape"):
        sla2_attention(q, k, v, gate[..., :2], torch.ones(2), blkq=16, blkk=16)
    with pytest.raises(ValueError, match="ratio must have shape"):
        sla2_attention(q, k, v, gate, torch.ones(3), blkq=16, blkk=16)
    gz = gate.clone()
    gz[0, 0, 1] = 0
    with pytest.raises(ValueError, match="at least one key block"):
        sla2_attention(q, k, v, gz, torch.ones(2), blkq=16, blkk=16)
    with pytest.raises(ValueError, match="sm_scale"):
        sla2_attention(q, k, v, gate, torch.ones(2), blkq=16, blkk=16, sm_scale=-1.0)
    with pytest.raises(ValueError, match="w_q"):
        router_scores(q, k, torch.eye(8), torch.eye(16), blkq=16, blkk=16)
    with pytest.raises(ValueError, match="temperature"):
        route_topk(torch.randn(1, 1, 2, 3), 0.5, temperature=-1.0)
