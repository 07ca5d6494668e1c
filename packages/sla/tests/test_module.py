"""SparseLinearAttention: upstream semantics, gradients against the float64 reference (torch
backend) and against the torch backend (Triton backend, interpreter), sparsity, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from sparse_linear_attention import SparseLinearAttention
from sparse_linear_attention.reference import (
    block_map_topk,
    block_sparse_attention_ref,
    sla_reference,
)

F64 = torch.float64


def _qkv(B=2, H=2, L=40, D=16, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=dtype) for _ in range(3)]


def _randomize(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.proj_l.weight.copy_(torch.randn(m.proj_l.weight.shape, generator=g) * 0.5)
        m.proj_l.bias.copy_(torch.randn(m.proj_l.bias.shape, generator=g))
    return m


def test_upstream_parameters_and_zero_init():
    m = SparseLinearAttention(16, 0.2)
    assert {n: tuple(p.shape) for n, p in m.named_parameters()} == {
        "proj_l.weight": (16, 16),
        "proj_l.bias": (16,),
    }
    assert m.proj_l.weight.dtype == torch.float32
    assert (m.proj_l.weight == 0).all() and (m.proj_l.bias == 0).all()
    assert m.BLKQ == 64 and m.BLKK == 64 and m.dtype == torch.bfloat16
    assert SparseLinearAttention(16, 0.2, use_bf16=False).dtype == torch.float16
    assert m.feature_map_k is m.feature_map_q
    untied = SparseLinearAttention(16, 0.2, tie_feature_map_qk=False)
    assert untied.feature_map_k is not untied.feature_map_q
    assert [n for n, _ in untied.named_parameters()] == ["proj_l.weight", "proj_l.bias"]


def test_zero_init_equals_sparse_attention():
    q, k, v = _qkv()
    m = SparseLinearAttention(16, 0.3, BLKQ=8, BLKK=8, backend="torch")
    bm = block_map_topk(q, k, 0.3, 8, 8)
    o_s, _ = block_sparse_attention_ref(q, k, v, bm, blkq=8, blkk=8)
    torch.testing.assert_close(m(q, k, v), o_s)


@pytest.mark.parametrize("fm", ["softmax", "elu", "relu"])
@pytest.mark.parametrize("scope", ["complement", "all"])
def test_torch_backend_outputs_and_grads_match_reference(fm, scope):
    q, k, v = _qkv(L=37)
    m = _randomize(
        SparseLinearAttention(16, 0.4, fm, BLKQ=8, BLKK=16, linear_scope=scope, backend="torch").double()
    )
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    o = m(*xs)
    do = torch.randn_like(o)
    o.backward(do)
    ys = [x.clone().requires_grad_() for x in (q, k, v)]
    w = m.proj_l.weight.detach().clone().requires_grad_()
    b = m.proj_l.bias.detach().clone().requires_grad_()
    o_ref = sla_reference(*ys, w, b, topk=0.4, blkq=8, blkk=16, feature_map=fm, linear_scope=scope)
    o_ref.backward(do)
    torch.testing.assert_close(o, o_ref)
    for x, y in zip(xs, ys, strict=True):
        torch.testing.assert_close(x.grad, y.grad)
    torch.testing.assert_close(m.proj_l.weight.grad, w.grad)
    torch.testing.assert_close(m.proj_l.bias.grad, b.grad)


def test_torch_backend_gradcheck():
    q, k, v = _qkv(B=1, H=1, L=12, D=4, seed=3)
    m = _randomize(SparseLinearAttention(4, 0.5, BLKQ=4, BLKK=4, backend="torch").double())
    xs = [x.requires_grad_() for x in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c), xs, fast_mode=True)


def test_linear_branch_is_the_complement():
    """With proj_l = identity and no bias, o − o_s is linear attention over the non-selected blocks,
    computed here by the quadratic form on the token mask."""
    q, k, v = _qkv(L=30)
    m = SparseLinearAttention(16, 0.25, BLKQ=8, BLKK=8, backend="torch").double()
    with torch.no_grad():
        m.proj_l.weight.copy_(torch.eye(16))
    bm = block_map_topk(q, k, 0.25, 8, 8)
    o_s, _ = block_sparse_attention_ref(q, k, v, bm, blkq=8, blkk=8)
    keep = torch.ones(2, 2, 30, 30, dtype=torch.bool)
    for i in range(30):
        for t in range(30):
            keep[:, :, i, t] = ~bm[:, :, i // 8, t // 8]
    fq, fk = q.softmax(-1), k.softmax(-1)
    a = (fq @ fk.transpose(-1, -2)) * keep
    torch.testing.assert_close(m(q, k, v) - o_s, (a @ v) / (a.sum(-1, keepdim=True) + 1e-5))


def test_return_sparsity_is_the_skipped_fraction():
    q, k, v = _qkv(L=70)
    m = SparseLinearAttention(16, 0.3, BLKQ=16, BLKK=8, backend="torch")
    o, s = m(q, k, v, return_sparsity=True)
    Mk = math.ceil(70 / 8)  # 9 blocks, int(0.3 * 9) = 2 kept
    assert isinstance(s, float) and s == pytest.approx(1 - 2 / Mk, abs=1e-12)
    assert torch.equal(o, m(q, k, v))


def test_sequence_shorter_than_one_block_is_dense_attention():
    q, k, v = _qkv(L=5)
    m = _randomize(SparseLinearAttention(16, 0.1, backend="torch").double())
    o, s = m(q, k, v, return_sparsity=True)
    assert s == 0.0
    # the linear branch is empty (o_l = 0): what is left of proj_l is its bias
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v) + m.proj_l.bias)


def test_skip_class():
    q, k, v = _qkv(L=64)
    m = _randomize(SparseLinearAttention(16, 0.25, BLKQ=8, BLKK=8, backend="torch", skip_topk=0.5).double())
    o_ref = sla_reference(
        q, k, v, m.proj_l.weight.double(), m.proj_l.bias.double(), topk=0.25, blkq=8, blkk=8, skip_topk=0.5
    )
    torch.testing.assert_close(m(q, k, v), o_ref)
    two_class = SparseLinearAttention(16, 0.25, BLKQ=8, BLKK=8, backend="torch").double()
    two_class.load_state_dict(m.state_dict())
    assert not torch.allclose(m(q, k, v), two_class(q, k, v))


def test_dtypes_kept_and_inputs_untouched():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q, k, v = _qkv(L=33, dtype=dtype)
        before = [x.clone() for x in (q, k, v)]
        m = _randomize(SparseLinearAttention(16, 0.5, BLKQ=16, BLKK=16, backend="torch"))
        o = m(q, k, v)
        assert o.dtype == dtype and o.shape == q.shape and torch.isfinite(o).all()
        for x, y in zip((q, k, v), before, strict=True):
            assert torch.equal(x, y)


def test_auto_picks_torch_on_cpu():
    m = SparseLinearAttention(16, 0.5)
    assert m.resolved_backend(torch.device("cpu")) == "torch"


@pytest.mark.parametrize("scope,skip", [("complement", 0.0), ("all", 0.0), ("complement", 0.3)])
def test_triton_backend_matches_torch_backend(scope, skip):
    """Triton backend (interpreter on CPU): bf16 compute as upstream, so inputs are bf16-exact and
    the tolerance is bf16's; outputs and gradients of q, k, v and proj_l."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, H, L, D = 1, 2, 40, 32
    q, k, v = [x.to(torch.bfloat16).float().to(dev) for x in _qkv(B, H, L, D, dtype=torch.float32)]
    mt = _randomize(SparseLinearAttention(D, 0.4, BLKQ=16, BLKK=16, linear_scope=scope, backend="triton")).to(
        dev
    )
    mr = SparseLinearAttention(D, 0.4, BLKQ=16, BLKK=16, linear_scope=scope, backend="torch").to(dev)
    mr.load_state_dict(mt.state_dict())
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    ys = [x.clone().requires_grad_() for x in (q, k, v)]
    o, s = mt(*xs, return_sparsity=True)
    o_ref, s_ref = mr(*ys, return_sparsity=True)
    assert s == s_ref and o.dtype == torch.float32
    do = torch.randn_like(o)
    o.backward(do)
    o_ref.backward(do)

    def close(a, b, what):
        err = (a - b).abs().max().item()
        assert err <= 2e-2 * b.abs().max().item() + 1e-3, f"{what}: {err:.3g}"

    close(o, o_ref, "o")
    for name, x, y in zip("qkv", xs, ys, strict=True):
        close(x.grad, y.grad, f"d{name}")
    close(mt.proj_l.weight.grad, mr.proj_l.weight.grad, "dW")
    close(mt.proj_l.bias.grad, mr.proj_l.bias.grad, "db")


def test_bad_input():
    for topk in (0.0, 1.01, -0.5):
        with pytest.raises(ValueError, match="topk"):
            SparseLinearAttention(16, topk)
    with pytest.raises(TypeError, match="topk"):
        SparseLinearAttention(16, None)
    with pytest.raises(NotImplementedError, match="hedgehog"):
        SparseLinearAttention(16, 0.2, "hedgehog")
    with pytest.raises(ValueError, match="feature_map"):
        SparseLinearAttention(16, 0.2, "gelu")
    with pytest.raises(ValueError, match=r"BLKQ=48 .*supported: \(16, 32, 64, 128\)"):
        SparseLinearAttention(16, 0.2, BLKQ=48)
    with pytest.raises(ValueError, match="BLKK=256"):
        SparseLinearAttention(16, 0.2, BLKK=256, backend="triton")
    SparseLinearAttention(16, 0.2, BLKQ=48, BLKK=24, backend="torch")  # any block size on torch
    with pytest.raises(ValueError, match="BLKK must be > 0"):
        SparseLinearAttention(16, 0.2, BLKK=0, backend="torch")
    with pytest.raises(ValueError, match="head_dim=256"):
        SparseLinearAttention(256, 0.2, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        SparseLinearAttention(16, 0.2, backend="cuda")
    with pytest.raises(ValueError, match="linear_scope"):
        SparseLinearAttention(16, 0.2, linear_scope="none")
    with pytest.raises(ValueError, match="skip_topk"):
        SparseLinearAttention(16, 0.2, skip_topk=0.9)
    with pytest.raises(ValueError, match="skip_topk"):
        SparseLinearAttention(16, 0.2, skip_topk=0.1, linear_scope="all")
    with pytest.raises(TypeError, match="use_bf16"):
        SparseLinearAttention(16, 0.2, use_bf16=1)
    with pytest.raises(TypeError):
        SparseLinearAttention(16, 0.2, unknown=1)
    m = SparseLinearAttention(16, 0.2, BLKQ=16, BLKK=16, backend="torch")
    q, k, v = _qkv(L=20, dtype=torch.float32)
    with pytest.raises(ValueError, match="head dim 16"):
        m(q[..., :8], k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="same shape"):
        m(q, k[:, :, :10], v)
    with pytest.raises(TypeError, match="one dtype"):
        m(q, k.double(), v)
    with pytest.raises(TypeError, match="dtype"):
        m(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="4 dims"):
        m(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="one device"):
        m(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="module"):
        m(q.to("meta"), k.to("meta"), v.to("meta"))
    with pytest.raises(TypeError, match="return_sparsity"):
        m(q, k, v, return_sparsity="yes")


@pytest.mark.cuda
def test_gpu_auto_backend_bf16_training_step():
    """On a GPU 'auto' takes the Triton kernels; a bf16 forward/backward at SLA's defaults agrees
    with the float32 torch backend on the same bf16 inputs."""
    B, H, L, D = 1, 2, 1000, 128
    q, k, v = [x.to("cuda", torch.bfloat16) for x in _qkv(B, H, L, D, dtype=torch.float32)]
    ma = _randomize(SparseLinearAttention(D, 0.1)).cuda()
    assert ma.resolved_backend(q.device) == "triton"
    mr = SparseLinearAttention(D, 0.1, backend="torch").cuda()
    mr.load_state_dict(ma.state_dict())
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    ys = [x.float().requires_grad_() for x in (q, k, v)]
    o = ma(*xs)
    o_ref = mr(*ys)
    assert o.dtype == torch.bfloat16
    do = torch.randn_like(o_ref)
    o.backward(do.bfloat16())
    o_ref.backward(do)
    for a, b in [(o.float(), o_ref), *((x.grad.float(), y.grad) for x, y in zip(xs, ys, strict=True))]:
        assert (a - b).abs().max().item() <= 3e-2 * b.abs().max().item() + 1e-2
