"""SageBwd under torch.compile: the custom ops ``sageattention::sagebwd_fwd``/``sagebwd_bwd`` pass
``torch.library.opcheck`` (reference impl, and the Triton impl in the interpreter); a small training
module that calls ``sageattn`` with q/k/v requiring grad compiles to one graph without breaks, the
backward graph calls ``sagebwd_bwd``, and with ``aot_eager`` the outputs and every gradient are
bit-identical to eager (causal, GQA, bool and additive masks, NHD, the lse). Inductor rewrites the
linear layers and casts around the op (float32 summation order): close, not bit-identical."""

from __future__ import annotations

import pytest
import sageattention
import torch
import torch._dynamo.testing
from functorch.compile import make_boxed_func
from sageattention import sageattn, sageattn_train
from sageattention.sagebwd import SageBwdFunction
from sageattention.sagebwd.ops import sagebwd_attention
from torch._dynamo.backends.common import aot_autograd


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _qkv(b, hq, hkv, nq, nk, d, dv, dtype=torch.float32, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    shapes = ((b, hq, nq, d), (b, hkv, nk, d), (b, hkv, nk, dv))
    return [(torch.randn(*s, generator=g) + 0.3).to(dtype).requires_grad_(grad) for s in shapes]


# --------------------------------------------------------------------------------------------------
# opcheck of both ops (schema, autograd registration, fake tensor, AOT dispatch with dynamic shapes)

OPCHECK_CASES = {
    "torch_causal_gqa": ("torch", True, True, None, torch.float32),
    "torch_bf16_mask_nosmooth": ("torch", True, False, "mask", torch.bfloat16),
    "torch_exact_float64_mask": ("torch", False, True, "mask", torch.float64),
    "triton_causal_gqa": ("triton", True, True, None, torch.float32),
    "triton_fp16_mask_nosmooth": ("triton", True, False, "mask", torch.float16),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_forward_and_backward_ops(case):
    impl, quantize, smooth_k, masked, dtype = OPCHECK_CASES[case]
    q, k, v = _qkv(1, 2, 1, 9, 13, 8, 4, dtype)
    mask = None
    if masked:
        mask = torch.randn(1, 1, 9, 13, generator=torch.Generator().manual_seed(1))
        mask[..., 2, :] = float("-inf")  # a fully masked row
        mask = mask.to(torch.float64 if dtype == torch.float64 else torch.float32)
    causal = mask is None
    args = (q, k, v, mask, 0.3, causal, smooth_k, quantize, impl)
    torch.library.opcheck(torch.ops.sageattention.sagebwd_fwd.default, args)
    with torch.no_grad():
        o, lse, lse2, q8, k8, scales = torch.ops.sageattention.sagebwd_fwd(*args)
    assert o.dtype == lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if quantize:
        assert q8.dtype == k8.dtype == torch.int8 and q8.shape == q.shape and k8.shape == k.shape
        # qs [1, 2, 1] ⧺ ks [1, 1, 1] ⧺ km [1, 1, 1, 8]
        assert scales.shape == (2 + 1 + (8 if smooth_k else 0),)
    else:
        assert all(x.shape == (0,) for x in (q8, k8, scales))
    g = torch.Generator().manual_seed(2)
    do = torch.randn(o.shape, generator=g, dtype=o.dtype)
    dlse = torch.randn(lse.shape, generator=g, dtype=lse.dtype)
    qkv = (None, None) if quantize else (q.detach(), k.detach())
    qsaved = (q8, k8, scales) if quantize else (None,) * 3
    bargs = (do, dlse, v.detach(), o, lse2, *qkv, *qsaved, mask, 0.3, causal, smooth_k, quantize, impl)
    torch.library.opcheck(torch.ops.sageattention.sagebwd_bwd.default, bargs)
    dq, dk, dv = torch.ops.sageattention.sagebwd_bwd(*bargs)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_op_matches_the_autograd_api_and_the_alias():
    """``sagebwd_attention`` (the op) = ``sageattn_train`` = ``SageBwdFunction.apply``: outputs and
    gradients bit for bit."""
    q, k, v = _qkv(1, 4, 2, 37, 50, 16, 8, seed=3)
    do = torch.randn(1, 4, 37, 8, generator=torch.Generator().manual_seed(4))
    res = []
    for fn in (
        lambda q, k, v: sageattn_train(q, k, v, is_causal=True, return_lse=True, sm_scale=0.4),
        lambda q, k, v: sagebwd_attention(q, k, v, None, 0.4, True, True, True, "torch"),
        lambda q, k, v: SageBwdFunction.apply(q, k, v, None, 0.4, True, True, True, "torch"),
    ):
        qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
        o, lse = fn(qg, kg, vg)
        ((o * do).sum() + lse.sum()).backward()
        res.append((o, lse, qg.grad, kg.grad, vg.grad))
    for other in res[1:]:
        assert all(torch.equal(a, b) for a, b in zip(res[0], other, strict=True))


# --------------------------------------------------------------------------------------------------
# torch.compile of a training module


class TinyAttention(torch.nn.Module):
    """Linear q/k/v projections (so q, k, v require grad), ``sageattn`` (-> SageBwd), output layer."""

    def __init__(self, dim: int = 64, heads: int = 4, kv_heads: int = 2, layout: str = "HND"):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.layout = heads, kv_heads, dim // heads, layout
        self.q = torch.nn.Linear(dim, dim)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * self.d)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x, mask=None, is_causal=False, return_lse=True):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.d)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.d).unbind(2)
        if self.layout == "HND":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        res = sageattn(
            q, k, v, tensor_layout=self.layout, is_causal=is_causal, attn_mask=mask, return_lse=return_lse
        )
        o, lse = res if return_lse else (res, None)
        if self.layout == "HND":
            o = o.transpose(1, 2)
        return self.out(o.reshape(b, n, -1)), lse


CASES = {
    "causal_gqa_hnd_lse": ("HND", None, True, True),
    "bool_mask_nhd_lse": ("NHD", "bool", False, True),
    "additive_mask_hnd": ("HND", "additive", False, False),
}


def _setup(case, n=70, seed=0):
    layout, mask_kind, causal, return_lse = CASES[case]
    torch.manual_seed(0)
    model = TinyAttention(layout=layout)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, 64, generator=g)
    masks = {
        None: None,
        "bool": torch.rand(2, 1, n, n, generator=g) > 0.3,
        "additive": torch.randn(1, 4, n, n, generator=g),
    }
    if masks["bool"] is not None:
        masks["bool"][:, :, 3, :] = False  # a fully masked row: zero output and gradient
    return model, (x, masks[mask_kind], causal, return_lse)


def _train_step(model, fn, x, *args):
    """Forward and backward of ``fn`` (the model or its compiled version): outputs, dx, param grads."""
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_()
    out, lse = fn(xg, *args)
    loss = out.square().sum()
    if lse is not None:
        loss = loss + torch.where(lse.isinf(), 0.0, lse).sum()
    loss.backward()
    return [out.detach(), lse, xg.grad] + [p.grad.clone() for p in model.parameters()]


def test_one_graph_no_breaks_and_both_ops_in_the_graphs():
    model, args = _setup("causal_gqa_hnd_lse")
    explained = torch._dynamo.explain(model)(*args)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    targets = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert "sageattention.sagebwd_fwd" in targets
    seen = {"fw": set(), "bw": set()}

    def grab(kind):
        def compiler(gm, _inputs):
            seen[kind] |= {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=grab("fw"), bw_compiler=grab("bw"))
    want = _train_step(model, model, *args)
    got = _train_step(model, torch.compile(model, fullgraph=True, backend=backend), *args)
    assert (
        "sageattention.sagebwd_fwd.default" in seen["fw"]
        and "sageattention.sagebwd_bwd.default" in seen["bw"]
    )
    assert "sageattention.sagebwd_bwd.default" not in seen["fw"]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_fullgraph_aot_eager_forward_and_grads_bit_identical(case):
    model, args = _setup(case)
    want = _train_step(model, model, *args)
    got = _train_step(model, torch.compile(model, fullgraph=True, backend="aot_eager"), *args)
    assert want[2].abs().sum() > 0  # the gradient reaches x through SageBwd
    for a, b in zip(got, want, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.slow  # cold compile of the C++ kernels: ~25 s on 2 busy cores, ~10 s warm
def test_fullgraph_inductor_backward_close_to_eager():
    """Inductor compiles the linear layers, the dtype casts and the loss around the opaque SageBwd ops
    (which run the same reference code): close to eager, not bit-identical (float32 summation order
    of the generated matmul/reduction code). The graph-level caches are off: their key does not
    cover a custom op's schema, so an entry written by an older version of the op would be reused."""
    model, args = _setup("causal_gqa_hnd_lse")
    want = _train_step(model, model, *args)
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        got = _train_step(model, torch.compile(model, fullgraph=True), *args)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.detach().abs().max()))


def test_dynamic_shapes_no_recompile_for_new_lengths():
    """``dynamic=True``: lengths below one K block, within one Q block and beyond it share the graph
    (the Q/K scales travel as one flat vector, see ``ops._pack_scales``); every step equals eager."""
    model, _ = _setup("causal_gqa_hnd_lse")
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=True)
    frames = None
    for n in (70, 131, 40):
        _, args = _setup("causal_gqa_hnd_lse", n=n, seed=n)
        got = _train_step(model, compiled, *args)
        want = _train_step(model, model, *args)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        # the first call may compile twice (dynamo restarts its analysis once to specialise a float)
        frames = frames or counter.frame_count
    assert counter.frame_count == frames
    assert "sagebwd_fwd" in counter.graphs[-1].code


def test_triton_impl_compiles_bit_identical():
    """``backend="triton"`` (the kernels, here in the interpreter) behind the same op under compile."""
    q, k, v = _qkv(1, 2, 1, 40, 40, 16, 16, seed=5)
    do = torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(6))

    def fn(q, k, v):
        o, lse = sageattn_train(q, k, v, is_causal=True, return_lse=True, backend="triton")
        return (o * do).sum() + lse.sum()

    res = []
    for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
        loss = f(qg, kg, vg)
        loss.backward()
        res.append((loss, qg.grad, kg.grad, vg.grad))
    assert all(torch.equal(a, b) for a, b in zip(*res, strict=True))


# --------------------------------------------------------------------------------------------------
# inference-only variants and bad inputs


@pytest.mark.parametrize("lse", [False, True])
def test_inference_variant_backward_still_a_clear_error_compiled(lse):
    """``no_backward`` wrappers: the forward is usable, eager and compiled (one graph), and the backward
    raises the error naming the variant when it runs (not at compile time)."""
    q, k, v = _qkv(1, 2, 2, 20, 20, 32, 32, grad=False)

    def fn(q, k, v):
        res = sageattention.sageattn_qk_int8_pv_fp16_triton(q, k, v, return_lse=lse)
        return res[0] * res[1][..., None] if lse else res

    with torch.no_grad():
        want = fn(q, k, v)
    explained = torch._dynamo.explain(fn)(q.clone().requires_grad_(), k, v)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        qg = q.clone().requires_grad_()
        o = f(qg, k, v)
        assert torch.equal(o, want) and o.requires_grad
        with pytest.raises(
            RuntimeError,
            match=r"sageattn_qk_int8_pv_fp16_triton is an inference kernel without a backward.*sageattn",
        ):
            o.sum().backward()


def test_bad_inputs_to_the_op_api():
    q, k, v = _qkv(1, 2, 1, 8, 8, 16, 16)
    good = (None, 0.25, False, True, True, "torch")
    with pytest.raises(ValueError, match=r"impl must be one of \('torch', 'triton'\)"):
        sagebwd_attention(q, k, v, None, 0.25, False, True, True, "cuda")
    with pytest.raises(TypeError, match="quantize must be a bool"):
        sagebwd_attention(q, k, v, None, 0.25, False, True, 1, "torch")
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        sagebwd_attention(q, k, v, None, 0.25, None, True, True, "torch")
    with pytest.raises(TypeError, match="q must have dtype in"):
        sagebwd_attention(q.double(), k.double(), v.double(), *good)  # float64 needs quantize=False
    with pytest.raises(TypeError, match=r"k must be a torch\.Tensor"):
        sagebwd_attention(q, k.detach().numpy(), v, *good)
    with pytest.raises(ValueError, match="v must be 4-D"):
        sagebwd_attention(q, k, v[0], *good)
    with pytest.raises(ValueError, match="k must share q's dtype"):
        sagebwd_attention(q, k.half(), v, *good)
    with pytest.raises(ValueError, match="Hq % Hkv == 0"):
        sagebwd_attention(q[:, :1], k.expand(1, 2, 8, 16), v.expand(1, 2, 8, 16), *good)
    with pytest.raises(ValueError, match="Hq % Hkv == 0"):
        sagebwd_attention(q, k, v[:, :, :5], *good)
    with pytest.raises(ValueError, match="sm_scale must be finite"):
        sagebwd_attention(q, k, v, None, float("nan"), False, True, True, "torch")
    with pytest.raises(TypeError, match="sm_scale must be a float"):
        sagebwd_attention(q, k, v, None, torch.tensor(0.25), False, True, True, "torch")
    with pytest.raises(TypeError, match="mask must be None or a floating"):
        sagebwd_attention(q, k, v, torch.ones(8, 8, dtype=torch.bool), *good[1:])
    with pytest.raises(ValueError, match="broadcastable to"):
        sagebwd_attention(q, k, v, torch.zeros(3, 8), *good[1:])
    with pytest.raises(ValueError, match="mask requires grad"):
        sagebwd_attention(q, k, v, torch.zeros(8, 8, requires_grad=True), *good[1:])
    with pytest.raises(ValueError, match="quantize=False runs in PyTorch only"):
        sagebwd_attention(q, k, v, None, 0.25, False, True, False, "triton")
    before = [x.detach().clone() for x in (q, k, v)]
    o, _lse = sagebwd_attention(q, k, v, *good)
    o.sum().backward()
    assert all(torch.equal(x.detach(), y) for x, y in zip((q, k, v), before, strict=True))


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("nq,nk", [(0, 9), (5, 0)])
def test_empty_sequences_zero_output_and_gradients(impl, nq, nk):
    """No key or no query: o = 0, lse = -inf, exact zero gradients, and no NaN from inf inputs."""
    q, k, v = _qkv(1, 2, 1, nq, nk, 16, 8)
    with torch.no_grad():
        q[..., 0] = float("inf")  # 0·inf would be NaN: the empty result must not multiply values
    o, lse = sagebwd_attention(q, k, v, None, 0.25, False, True, True, impl)
    assert o.shape == (1, 2, nq, 8) and o.dtype == torch.float32 and torch.all(o == 0)
    assert lse.shape == (1, 2, nq) and torch.all(lse == float("-inf"))
    o.sum().backward()
    for x in (q, k, v):
        assert x.grad is not None and torch.all(x.grad == 0)


def test_double_backward_is_a_clear_error():
    q, k, v = _qkv(1, 2, 1, 20, 20, 16, 16)
    o = sageattn(q, k, v)
    (g,) = torch.autograd.grad(o.square().sum(), q, create_graph=True)  # first order works
    assert torch.isfinite(g).all()
    with pytest.raises(RuntimeError, match="SageBwd has no second-order gradient"):
        g.sum().backward()
