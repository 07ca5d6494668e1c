"""convert_to_tetrajet on a small MLP and a ViT block: which modules are swapped, that parameters
and state_dict keys survive, that the converted model computes the recipe's maths, bad input."""

import pytest
import torch
from tetrajet import (
    TetraJetLinear,
    TetraJetRecipe,
    convert_to_tetrajet,
    load_sr_state,
    sr_state,
    tetrajet_layers,
    tetrajet_linear,
)
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim=24, heads=2, hidden=50):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, dim=24, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, kernel_size=4, stride=4)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


def _vit_filter(module, fqn):
    return isinstance(module, nn.Linear) and (".attn." in fqn or ".mlp." in fqn)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 33), nn.ReLU(), nn.Linear(33, 7))


def test_convert_vit_block_with_filter():
    torch.manual_seed(0)
    model = TinyViT()
    before = dict(model.named_parameters())
    keys = list(model.state_dict())
    out = convert_to_tetrajet(model, TetraJetRecipe.tetrajet(), module_filter_fn=_vit_filter)
    assert out is model
    converted = tetrajet_layers(model)
    assert list(converted) == [
        f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ]
    assert [m.layer_id for m in converted.values()] == list(range(8))
    assert type(model.head) is nn.Linear and type(model.patch) is nn.Conv2d
    after = dict(model.named_parameters())
    assert all(after[k] is before[k] for k in before) and list(model.state_dict()) == keys
    img = torch.randn(3, 1, 8, 8)
    model(img).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_converted_model_computes_the_recipe():
    model = _mlp()
    ref = _mlp()
    r = TetraJetRecipe.mxfp4_baseline()
    convert_to_tetrajet(model, r)
    x = torch.randn(6, 20)
    h = torch.relu(tetrajet_linear(x, ref[0].weight, ref[0].bias, r, layer_id=0))
    y = tetrajet_linear(h, ref[2].weight, ref[2].bias, r, layer_id=1)
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)
    assert not torch.allclose(ref(x), y, atol=1e-3)  # it really quantizes


def test_recipe_none_matches_original_model():
    model, ref = _mlp(), _mlp()
    convert_to_tetrajet(model, TetraJetRecipe.none())
    x = torch.randn(4, 20)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip_both_ways():
    plain = _mlp()
    conv = convert_to_tetrajet(_mlp(), TetraJetRecipe.tetrajet())
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(1.0)
    conv.load_state_dict(plain.state_dict())
    plain2 = _mlp()
    plain2.load_state_dict(conv.state_dict())
    for a, b in zip(plain.parameters(), plain2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_convert_twice_keeps_layers_and_numbers_new_ones_after():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    convert_to_tetrajet(model, TetraJetRecipe.tetrajet(), module_filter_fn=lambda m, n: n == "0")
    first = model[0]
    convert_to_tetrajet(model, TetraJetRecipe.tetrajet())
    assert model[0] is first and isinstance(model[1], TetraJetLinear)
    assert (model[0].layer_id, model[1].layer_id) == (0, 1)


def test_fp4_on_conv_raises():
    model = TinyViT()
    with pytest.raises(TypeError, match=r"'patch' for FP4 training, but it is a Conv2d"):
        convert_to_tetrajet(
            model, TetraJetRecipe.tetrajet(), module_filter_fn=lambda m, n: n in ("patch", "head")
        )
    assert type(model.head) is nn.Linear  # nothing swapped when the call fails
    emb = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))
    with pytest.raises(TypeError, match="Embedding"):
        convert_to_tetrajet(emb, TetraJetRecipe.mxfp4_baseline(), module_filter_fn=lambda m, n: True)


def test_multihead_attention_projection():
    model = nn.Sequential(nn.MultiheadAttention(16, 2), nn.Linear(16, 16))
    with pytest.warns(UserWarning, match="MultiheadAttention"):
        convert_to_tetrajet(model, TetraJetRecipe.tetrajet())
    assert isinstance(model[1], TetraJetLinear) and not isinstance(model[0].out_proj, TetraJetLinear)
    with pytest.raises(TypeError, match="never calls this module's forward"):
        convert_to_tetrajet(model, TetraJetRecipe.tetrajet(), module_filter_fn=lambda m, n: n == "0.out_proj")


def test_linear_subclass_with_own_forward():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Scaled(8, 8))
    with pytest.warns(UserWarning, match="overrides"):
        convert_to_tetrajet(model, TetraJetRecipe.tetrajet())
    with pytest.raises(TypeError, match="overrides"):
        convert_to_tetrajet(model, TetraJetRecipe.tetrajet(), module_filter_fn=lambda m, n: n == "0")


def test_sr_state_round_trip_resumes_identically():
    r = TetraJetRecipe.tetrajet(seed=4)
    a = convert_to_tetrajet(_mlp(), r)
    b = convert_to_tetrajet(_mlp(), r)
    x = torch.randn(5, 20)
    a(x).sum().backward()
    b.load_state_dict(a.state_dict())
    load_sr_state(b, sr_state(a))
    for m in (a, b):
        m.zero_grad()
        m(x).sum().backward()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert sr_state(a) == {"0": 2, "2": 2}


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda m: convert_to_tetrajet("model", TetraJetRecipe()), TypeError, "model must be an nn.Module"),
        (lambda m: convert_to_tetrajet(m, {"x_fwd": "mxfp4"}), TypeError, "config must be a TetraJetRecipe"),
        (lambda m: convert_to_tetrajet(m, TetraJetRecipe(), module_filter_fn=3), TypeError, "callable"),
        (lambda m: convert_to_tetrajet(m, TetraJetRecipe(), lambda mod, n: 1), TypeError, "return a bool"),
        (lambda m: convert_to_tetrajet(m[0], TetraJetRecipe()), TypeError, "from_linear"),
        (lambda m: load_sr_state(convert_to_tetrajet(m, TetraJetRecipe()), {"0": 1}), ValueError, "missing"),
        (
            lambda m: load_sr_state(convert_to_tetrajet(m, TetraJetRecipe()), {"0": -1, "2": 0}),
            ValueError,
            "0",
        ),
        (lambda m: load_sr_state(m, [1]), TypeError, "state must be a dict"),
        (lambda m: sr_state(None), TypeError, "model must be an nn.Module"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_mlp())
