"""Toy tokenizer, model and arithmetic task: round trips, determinism, held-out splits, bad input."""

import pytest
import torch
from nft_trainer.toy import arithmetic_dataset, arithmetic_splits, char_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_tokenizer_round_trip_one_token_per_char(tok):
    text = "137-42=95 \n x*y"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id not in ids


def test_tokenizer_specials_are_distinct_and_set(tok):
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    assert None not in ids and len(ids) == 4
    assert tok.decode([tok.eos_token_id]) == tok.eos_token


def test_tokenizer_pads_left_for_generation(tok):
    batch = tok(["1+2=", "11+22="], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 7)
    assert batch["input_ids"][0, 0].item() == tok.pad_token_id
    assert batch["attention_mask"][0].tolist() == [0, 0, 1, 1, 1, 1, 1]


def test_chat_template_matches_plain_prompt(tok):
    conv = [{"role": "user", "content": "12+34="}]
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text == "<bos>12+34="
    ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    assert list(ids) == tok("12+34=")["input_ids"]
    full = tok.apply_chat_template([*conv, {"role": "assistant", "content": "46"}], tokenize=False)
    assert full == "<bos>12+34=46<eos>"


def test_tiny_llama_shapes_seed_and_rng_untouched(tok):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    m0 = tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    m1 = tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, seed=7)
    m2 = tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, seed=8)
    p0, p1, p2 = (next(m.parameters()) for m in (m0, m1, m2))
    assert torch.equal(p0, p1) and not torch.equal(p0, p2)
    assert m0.config.vocab_size == len(tok)
    assert m0.config.num_key_value_heads == 2 and m0.config.num_hidden_layers == 1
    ids = tok(["1+2=", "11+22="], padding=True, return_tensors="pt")
    logits = m0(**ids).logits
    assert logits.shape == (2, 7, len(tok)) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    out = m0.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= 10


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"hidden_size": 30}, ValueError, "divisible by num_heads"),
        ({"num_heads": 4, "num_kv_heads": 3}, ValueError, "divisible by num_kv_heads"),
        ({"num_layers": 0}, ValueError, "num_layers must be positive"),
        ({"hidden_size": 64.0}, TypeError, "hidden_size must be an int"),
        ({"hidden_size": 12, "num_heads": 4}, ValueError, "must be even"),
        ({"seed": "0"}, TypeError, "seed must be an int"),
    ],
)
def test_tiny_llama_bad_input(tok, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tiny_llama(tok, **kwargs)


def test_tiny_llama_rejects_non_tokenizer_and_unknown_kwargs(tok):
    with pytest.raises(TypeError, match="tokenizer must be"):
        tiny_llama("gpt2")
    with pytest.raises(TypeError):
        tiny_llama(tok, hidden=64)


@pytest.mark.parametrize(("digits", "ops"), [(1, "+"), (2, "+-"), (3, "-*"), (2, "*+-")])
def test_arithmetic_answers_are_exact(digits, ops):
    ds = arithmetic_dataset(37, digits=digits, ops=ops, seed=3)
    assert ds.column_names == ["prompt", "answer"] and len(ds) == 37
    assert len(set(ds["prompt"])) == 37
    for prompt, answer in zip(ds["prompt"], ds["answer"], strict=True):
        assert prompt.endswith("=")
        body = prompt[:-1]
        op = next(c for c in body[1:] if c in "+-*")
        a, b = body.split(op, 1)
        assert len(a) <= digits and len(b) <= digits and op in ops
        assert int(answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_arithmetic_is_deterministic_per_seed():
    assert arithmetic_dataset(20, seed=1)["prompt"] == arithmetic_dataset(20, seed=1)["prompt"]
    assert arithmetic_dataset(20, seed=1)["prompt"] != arithmetic_dataset(20, seed=2)["prompt"]


@pytest.mark.parametrize(("n_train", "n_test", "digits"), [(50, 13, 2), (150, 40, 1)])
def test_splits_are_disjoint(n_train, n_test, digits):
    # digits=1, ops="+-": 200 problems in all, so (150, 40) uses the dense sampling path
    splits = arithmetic_splits(n_train, n_test, digits=digits, seed=5)
    assert len(splits["train"]) == n_train and len(splits["test"]) == n_test
    assert not set(splits["train"]["prompt"]) & set(splits["test"]["prompt"])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": 0}, ValueError, "n must be positive"),
        ({"n": 5, "ops": "/"}, ValueError, "ops must be"),
        ({"n": 5, "ops": ""}, ValueError, "ops must be"),
        ({"n": 5, "ops": ["+"]}, TypeError, "ops must be a str"),
        ({"n": 5, "digits": 0}, ValueError, "digits must be positive"),
        ({"n": 5, "digits": 10}, ValueError, "at most 9"),
        ({"n": 201, "digits": 1, "ops": "+-"}, ValueError, "only has 200"),
        ({"n": 5, "seed": 1.5}, TypeError, "seed must be an int"),
    ],
)
def test_arithmetic_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        arithmetic_dataset(**kwargs)


def test_splits_bad_input():
    with pytest.raises(ValueError, match="n_test must be positive"):
        arithmetic_splits(10, 0)
    with pytest.raises(ValueError, match="only has 100"):
        arithmetic_splits(90, 20, digits=1, ops="+")
