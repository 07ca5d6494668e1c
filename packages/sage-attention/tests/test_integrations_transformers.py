"""transformers integration: ``attn_implementation="sageattention"`` on tiny randomly initialised
Llama (MHA and GQA, with and without left/right padding) and BERT models against ``"sdpa"``.

Tolerance: sageattn's per-block INT8 Q/K and fp16 P/V give up to ~1e-2 relative L1 per attention
call (see test_integrations_diffusers.py); through 2 layers, a final norm and the LM head the logits
(measured relative L1 3e-4, BERT hidden states 4e-6) are held to relative L1 <= 0.01 and cosine
>= 0.999, and the argmax tokens must mostly agree.
Padded query rows are excluded: their values are not used by the model and differ by design
(sageattn gives 0 for fully masked rows where SDPA gives a uniform average or NaN).
"""

import pytest
import torch
from sageattention.integrations.transformers import register_sageattention, sageattention_forward
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface


def _rel_l1(a, b):
    return ((a.double() - b.double()).abs().sum() / b.double().abs().sum()).item()


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _assert_close(out, ref, rel_l1=0.01, cos=0.999):
    assert torch.isfinite(out).all()
    assert _rel_l1(out, ref) <= rel_l1, _rel_l1(out, ref)
    assert _cos(out, ref) >= cos, _cos(out, ref)


def _llama(num_kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=200, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=256,
        attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _logits_both(model, **inputs):
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model(**inputs).logits
    model.set_attn_implementation(register_sageattention())
    calls = []
    hook = model.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(**inputs).logits
    hook.remove()
    assert calls and model.config._attn_implementation == "sageattention"
    return out, ref


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_llama_no_padding(num_kv_heads):
    model = _llama(num_kv_heads)
    ids = torch.randint(0, 200, (2, 77), generator=torch.Generator().manual_seed(1))
    out, ref = _logits_both(model, input_ids=ids)
    _assert_close(out, ref)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("side", ["left", "right"])
def test_llama_padding_mask_reaches_sageattn(side):
    model = _llama(2)
    ids = torch.randint(0, 200, (2, 50), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 50, dtype=torch.long)
    if side == "left":
        mask[1, :17] = 0
    else:
        mask[1, 33:] = 0
    out, ref = _logits_both(model, input_ids=ids, attention_mask=mask)
    keep = mask.bool()
    _assert_close(out[keep], ref[keep])
    if side == "right":
        return  # causal: right padding cannot change the kept rows
    # without the mask interface entry transformers would pass attention_mask=None: padding ignored,
    # which for left padding changes the kept rows far more than sageattn's quantization does
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        unpadded = model(input_ids=ids).logits
    assert _rel_l1(unpadded[1][keep[1]], ref[1][keep[1]]) > 5 * _rel_l1(out[1][keep[1]], ref[1][keep[1]])


def test_llama_config_attn_implementation_and_generate():
    register_sageattention()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, attn_implementation="sageattention",
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    assert model.config._attn_implementation == "sageattention"
    ids = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # prefill (Sq > 1, causal) then decode steps (Sq = 1) through the KV cache
        gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 13)


def test_bert_with_padding():
    register_sageattention()
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=300, hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192,
        max_position_embeddings=128, attn_implementation="sdpa",
    )  # fmt: skip
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 300, (3, 41), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, 41, dtype=torch.long)
    mask[1, 20:] = 0
    mask[2, 7:] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.set_attn_implementation("sageattention")
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    _assert_close(out[keep], ref[keep])


def test_registration_and_errors():
    name = register_sageattention()
    assert name == "sageattention" and name in AttentionMaskInterface._global_mapping
    model = _llama(2)
    module = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 32)
    kv = torch.randn(1, 2, 5, 32)
    out, weights = sageattention_forward(module, q, kv, kv, None)
    assert out.shape == (1, 5, 4, 32) and weights is None
    with pytest.raises(ValueError, match="dropout"):
        sageattention_forward(module, q, kv, kv, None, dropout=0.1)
    with pytest.raises(ValueError, match="softcap"):
        sageattention_forward(module, q, kv, kv, None, softcap=30.0)
    with pytest.raises(TypeError, match="name"):
        register_sageattention("")
    with pytest.raises(TypeError, match="attn_mask"):
        register_sageattention("sage_bad", attn_mask=None)


def test_bound_sageattn_keywords_reach_sageattn():
    model = _llama(2)
    ids = torch.randint(0, 200, (1, 30), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model.set_attn_implementation(register_sageattention())
        default = model(input_ids=ids).logits
        model.set_attn_implementation(register_sageattention("sageattention_torch", backend="torch"))
        reference_backend = model(input_ids=ids).logits
        model.set_attn_implementation(register_sageattention("sageattention_nosmooth", smooth_k=False))
        unsmoothed = model(input_ids=ids).logits
    _assert_close(reference_backend, default)
    assert not torch.equal(unsmoothed, default)
    _assert_close(unsmoothed, default)
    with pytest.raises(ValueError, match="backend"):
        model.set_attn_implementation(register_sageattention("sageattention_bad", backend="nope"))
        with torch.no_grad():
            model(input_ids=ids)


def test_llama_with_padding_compiles_fullgraph():
    model = _llama(2)
    model.set_attn_implementation(register_sageattention())
    ids = torch.randint(0, 200, (2, 40), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :5] = 0
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).logits
            out = torch.compile(model, fullgraph=True, backend="aot_eager")(
                input_ids=ids, attention_mask=mask
            ).logits
    finally:
        torch._dynamo.reset()
    assert torch.equal(out, ref)
