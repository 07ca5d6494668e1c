"""torch.compile(fullgraph=True) of a small attention module that calls ``sageattn`` (CPU backend).

Static shapes: one graph, no graph breaks (the shared-kernels quantizer and fused INT8 attention
kernel are custom ops with fake implementations and appear as such in the graph); with the ``aot_eager`` backend the output
is bit-identical to eager. Inductor regenerates the softmax arithmetic (exp2, sums) with its own
vectorised code, so P differs by float32 ulps before its fp16 rounding: close, not bit-identical.
A tiny diffusers DiT with ``SageAttnProcessor`` compiles the same way (the transformers route is
tested in test_integrations_transformers.py). With ``dynamic=True`` one graph serves every sequence length.
"""

import pytest
import torch
import torch._dynamo.testing
from sageattention import sageattn


class TinyAttention(torch.nn.Module):
    def __init__(self, dim: int = 128, heads: int = 4, kv_heads: int = 2, layout: str = "HND"):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.layout = heads, kv_heads, dim // heads, layout
        self.q = torch.nn.Linear(dim, dim)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * self.d)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x, mask=None, is_causal=False):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.d)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.d).unbind(2)
        if self.layout == "HND":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        o, lse = sageattn(
            q, k, v, tensor_layout=self.layout, is_causal=is_causal, attn_mask=mask, return_lse=True
        )
        if self.layout == "HND":
            o = o.transpose(1, 2)
        return self.out(o.reshape(b, n, -1)), lse


def _inputs(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, 128, generator=g)
    bool_mask = torch.rand(2, 1, n, n, generator=g) > 0.3
    additive = torch.randn(1, 4, n, n, generator=g)
    return x, bool_mask, additive


CASES = {
    "bool_mask_hnd": ("HND", "bool", False),
    "additive_mask_nhd": ("NHD", "additive", False),
    "causal_nhd": ("NHD", None, True),
}


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model_and_args(case):
    layout, mask_kind, causal = CASES[case]
    torch.manual_seed(0)
    model = TinyAttention(layout=layout).eval()
    x, bool_mask, additive = _inputs()
    mask = {"bool": bool_mask, "additive": additive, None: None}[mask_kind]
    return model, (x, mask, causal)


@torch.no_grad()
def test_one_graph_no_breaks_and_custom_ops_in_graph():
    model, args = _model_and_args("bool_mask_hnd")
    explained = torch._dynamo.explain(model)(*args)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    targets = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {"shared_kernels.quantize_int8_per_block", "shared_kernels.int8_attention"} <= targets


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_fullgraph_aot_eager_is_bit_identical(case):
    model, args = _model_and_args(case)
    ref_o, ref_lse = model(*args)
    o, lse = torch.compile(model, fullgraph=True, backend="aot_eager")(*args)
    assert torch.equal(o, ref_o) and torch.equal(lse, ref_lse)


@torch.no_grad()
def test_fullgraph_inductor_close_to_eager():
    model, args = _model_and_args("additive_mask_nhd")
    ref_o, ref_lse = model(*args)
    o, lse = torch.compile(model, fullgraph=True)(*args)
    rel = ((o - ref_o).abs().sum() / ref_o.abs().sum()).item()
    assert rel < 1e-3, rel  # measured 1.7e-4: fp16 rounding of P flips by one ulp in places
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_new_length_recompiles_without_graph_breaks():
    torch.manual_seed(0)
    model = TinyAttention().eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for n in (100, 130):
        x, mask, _ = _inputs(n, seed=n)
        assert torch.equal(compiled(x, mask)[0], model(x, mask)[0])


@torch.no_grad()
def test_dit_with_processor_compiles_fullgraph():
    from diffusers import DiTTransformer2DModel
    from sageattention.integrations.diffusers import apply_sageattn

    torch.manual_seed(8)
    model = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=32,
    ).eval()  # fmt: skip
    apply_sageattn(model)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), torch.tensor([1, 2])
    ref = model(x, timestep=t, class_labels=y).sample
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x, timestep=t, class_labels=y).sample
    assert torch.equal(out, ref)


@torch.no_grad()
def test_dynamic_shapes_fullgraph():
    """dynamic=True: one graph for every sequence length (sm_scale = D**-0.5 is then a symbol), and the
    outputs equal eager at each length."""
    torch.manual_seed(0)
    model = TinyAttention().eval()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=True)
    for n in (100, 131, 64):
        x, mask, _ = _inputs(n)
        out, lse = compiled(x, mask)
        ref, ref_lse = model(x, mask)
        assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    assert counter.frame_count == 1
