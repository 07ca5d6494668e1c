"""replace_attention on tiny randomly initialised diffusers models and on nn.MultiheadAttention."""

import copy

import pytest
import torch
from sparse_linear_attention.swap import SLAAttnProcessor, SLAMultiheadAttention, replace_attention
from torch import nn

diffusers = pytest.importorskip("diffusers")
DiT = diffusers.DiTTransformer2DModel


def _dit(seed=0):
    torch.manual_seed(seed)
    return DiT(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=1,
        out_channels=1,
        num_layers=2,
        sample_size=8,
        patch_size=1,  # L = 64 tokens
        num_embeds_ada_norm=10,
    ).eval()


def _dit_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 8, 8, generator=g), torch.tensor([1, 40, 900]), torch.tensor([0, 3, 9])


def _run(model, x, t, y):
    return model(x, timestep=t, class_labels=y).sample


SLA_KW = {"BLKQ": 16, "BLKK": 16, "backend": "torch", "use_bf16": False}


@pytest.mark.parametrize("variant,kw", [("sla", SLA_KW), ("sla2", {"BLKQ": 16, "BLKK": 16})])
def test_dit_topk1_equals_dense_and_trains(variant, kw):
    model = _dit()
    x, t, y = _dit_inputs()
    with torch.no_grad():
        dense = _run(model, x, t, y)
    report = replace_attention(model, topk=1.0, variant=variant, **kw)
    assert sorted(report) == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert report.skipped == {}
    for name in report:
        assert isinstance(model.get_submodule(name).processor, SLAAttnProcessor)
    # the SLA parameters belong to the model now
    names = [n for n, _ in model.named_parameters()]
    assert any(".processor.attention." in n for n in names)
    out = _run(model, x, t, y)
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-5)
    model.train()
    _run(model, x, t, y).square().mean().backward()
    for n, p in model.named_parameters():
        if "attn1.to_q" in n or "attn1.to_k" in n or "attn1.to_v" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    report.undo()
    assert not any(isinstance(m, SLAAttnProcessor) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(_run(model.eval(), x, t, y), dense)


@pytest.mark.parametrize(
    "variant,kw", [("sla", SLA_KW), ("sla2", {"BLKQ": 16, "BLKK": 16, "quant": "int8-fp8"})]
)
def test_dit_sparse_forward_backward(variant, kw):
    model = _dit(seed=2).train()
    x, t, y = _dit_inputs(seed=3)
    with torch.no_grad():
        dense = _run(model, x, t, y)
    report = replace_attention(model, topk=0.25, variant=variant, **kw)
    out = _run(model, x, t, y)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert (out - dense).abs().max() > 1e-4  # 75% of the key blocks really are dropped
    out.square().mean().backward()
    for name, attn in report.items():
        grads = [p.grad for p in attn.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_cross_attention_is_skipped_and_filter_fn():
    torch.manual_seed(0)
    model = diffusers.Transformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=2,
        cross_attention_dim=12,
        norm_num_groups=2,
    )
    report = replace_attention(model, topk=0.5, variant="sla2", BLKQ=8, BLKK=8)
    assert sorted(report) == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert set(report.skipped) == {"transformer_blocks.0.attn2", "transformer_blocks.1.attn2"}
    assert all("cross-attention" in r for r in report.skipped.values())
    out = model(torch.randn(1, 4, 6, 6), encoder_hidden_states=torch.randn(1, 5, 12)).sample
    assert out.shape == (1, 4, 6, 6) and torch.isfinite(out).all()
    report.undo()
    only_first = replace_attention(
        model, topk=0.5, variant="sla2", BLKQ=8, BLKK=8, filter_fn=lambda n, m: ".0." in n
    )
    assert list(only_first) == ["transformer_blocks.0.attn1"]
    assert only_first.skipped["transformer_blocks.1.attn1"] == "excluded by filter_fn"


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("variant,kw", [("sla", SLA_KW), ("sla2", {"BLKQ": 16, "BLKK": 16})])
def test_transformer_encoder_layer(batch_first, variant, kw):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d_model=32, nhead=2, dim_feedforward=64, dropout=0.0, batch_first=batch_first
    )
    model = nn.Sequential(layer)
    x = torch.randn(2, 50, 32) if batch_first else torch.randn(50, 2, 32)
    model.eval()
    with torch.no_grad():
        dense = model(x)
    ref_model = copy.deepcopy(model)
    report = replace_attention(model, topk=1.0, variant=variant, **kw)
    assert list(report) == ["0.self_attn"] and isinstance(layer.self_attn, SLAMultiheadAttention)
    assert layer.self_attn.in_proj_weight is ref_model[0].self_attn.in_proj_weight or torch.equal(
        layer.self_attn.in_proj_weight, ref_model[0].self_attn.in_proj_weight
    )
    with torch.no_grad():  # eval + no_grad: PyTorch's fused fast path must not bypass SLA
        torch.testing.assert_close(model(x), dense, rtol=1e-4, atol=1e-5)
    report.undo()
    report = replace_attention(model, topk=0.25, variant=variant, **kw)
    with torch.no_grad():
        assert (model(x) - dense).abs().max() > 1e-4
    model.train()
    model(x).square().mean().backward()
    assert layer.self_attn.in_proj_weight.grad.abs().sum() > 0
    report.undo()
    assert isinstance(layer.self_attn, nn.MultiheadAttention)


def test_factory_variant():
    class Dense(nn.Module):
        def forward(self, q, k, v):
            return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v

    model = _dit()
    x, t, y = _dit_inputs()
    with torch.no_grad():
        dense = _run(model, x, t, y)
        seen = []
        replace_attention(model, variant=lambda d, h: seen.append((d, h)) or Dense())
        torch.testing.assert_close(_run(model, x, t, y), dense, rtol=1e-4, atol=1e-5)
    assert seen == [(16, 2), (16, 2)]


def test_bad_input():
    model = _dit()
    with pytest.raises(ValueError, match="variant"):
        replace_attention(model, topk=0.5, variant="flash")
    with pytest.raises(TypeError, match="needs topk"):
        replace_attention(model, variant="sla2")
    with pytest.raises(ValueError, match="topk"):
        replace_attention(model, topk=0.0, variant="sla2")
    with pytest.raises(ValueError, match="topk"):
        replace_attention(model, topk=1.5, variant="sla")
    with pytest.raises(TypeError, match="unexpected keyword"):
        replace_attention(model, topk=0.5, variant="sla2", BLK=16)
    with pytest.raises(TypeError, match="factory"):
        replace_attention(model, topk=0.5, variant=lambda d, h: nn.Identity())
    with pytest.raises(TypeError, match="model"):
        replace_attention("dit", topk=0.5)
    with pytest.raises(TypeError, match="filter_fn"):
        replace_attention(model, topk=0.5, variant="sla2", filter_fn=3)
    with pytest.raises(ValueError, match="no attention layer"):
        replace_attention(nn.Sequential(nn.Linear(3, 3)), topk=0.5, variant="sla2")
    with pytest.raises(ValueError, match="dropout"):
        replace_attention(nn.Sequential(nn.MultiheadAttention(8, 2, dropout=0.1)), topk=0.5, variant="sla2")
    with pytest.raises(ValueError, match="itself an attention layer"):
        replace_attention(nn.MultiheadAttention(8, 2), topk=0.5, variant="sla2")
    # nothing was swapped by the failed calls
    assert not any(isinstance(m, SLAAttnProcessor) for m in model.modules())
    # run-time misuse of a swapped layer
    replace_attention(model, topk=0.5, variant="sla2", BLKQ=16, BLKK=16)
    attn = model.transformer_blocks[0].attn1
    h = torch.randn(1, 64, 32)
    with pytest.raises(ValueError, match="attention_mask"):
        attn(h, attention_mask=torch.ones(1, 64))
    with pytest.raises(ValueError, match="cross-attention"):
        attn(h, encoder_hidden_states=torch.randn(1, 5, 32))
    seq = nn.Sequential(nn.MultiheadAttention(32, 2, batch_first=True))
    replace_attention(seq, topk=0.5, variant="sla2", BLKQ=16, BLKK=16)
    mha = seq[0]
    with pytest.raises(ValueError, match="need_weights"):
        mha(h, h, h)
    with pytest.raises(ValueError, match="mask"):
        mha(h, h, h, need_weights=False, attn_mask=torch.zeros(64, 64))
    with pytest.raises(ValueError, match="is_causal"):
        mha(h, h, h, need_weights=False, is_causal=True)
    with pytest.raises(ValueError, match="one shape"):
        mha(h, h[:, :30], h[:, :30], need_weights=False)
    out, w = mha(h, h, h, need_weights=False)
    assert out.shape == h.shape and w is None
