"""Toy pieces for CPU-scale experiments: a character tokenizer, a tiny Llama and an arithmetic task.

Everything is built in code (no downloads, no network): the tokenizer is a ``tokenizers`` WordLevel
model over single characters wrapped as :class:`transformers.PreTrainedTokenizerFast`, the model is a
randomly initialised :class:`transformers.LlamaForCausalLM` from a config written here, and the task
is ``a<op>b=`` with the exact integer result as the answer (a verifiable, single-number reward).
"""

from __future__ import annotations

import random
import string

import torch
from datasets import Dataset, DatasetDict
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["arithmetic_dataset", "arithmetic_splits", "char_tokenizer", "tiny_llama"]

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Printable ASCII plus newline and tab: enough for the arithmetic task and for chat-style prompts.
CHARACTERS = tuple(dict.fromkeys(string.digits + "+-*=" + string.printable))

# One-line template: BOS, then the messages' contents concatenated; an assistant turn ends with EOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

SUPPORTED_OPS = "+-*"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: one token per character of printable ASCII, plus specials.

    ``<bos>`` is prepended to every encoded text; ``<pad>``, ``<eos>`` and ``<unk>`` are set, and a
    one-line chat template (``<bos>`` + message contents concatenated, assistant turns closed by ``<eos>``) makes
    conversational prompts work. Decoding concatenates characters (no spaces are inserted).
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    max_position_embeddings: int = 128,
) -> LlamaForCausalLM:
    """Randomly initialised Llama-style causal LM sized for CPU experiments (float32).

    The vocabulary and the pad/bos/eos ids come from ``tokenizer``; the MLP width is ``4*hidden_size``
    and the input and output embeddings are tied. Initialisation uses ``seed`` without touching the
    caller's global torch RNG state.
    """
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(
            f"tokenizer must be a transformers.PreTrainedTokenizerFast (e.g. char_tokenizer()), "
            f"got {type(tokenizer).__name__}"
        )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(
                f"tokenizer.{name} is None: set the tokenizer's {name[:-3]} before building the model"
            )
    hidden_size = _check_positive_int("hidden_size", hidden_size)
    num_layers = _check_positive_int("num_layers", num_layers)
    num_heads = _check_positive_int("num_heads", num_heads)
    num_kv_heads = _check_positive_int("num_kv_heads", num_kv_heads)
    max_position_embeddings = _check_positive_int("max_position_embeddings", max_position_embeddings)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if (hidden_size // num_heads) % 2:
        raise ValueError(
            f"head dim hidden_size/num_heads = {hidden_size // num_heads} must be even (rotary embedding)"
        )
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _check_task_args(digits: object, ops: object) -> tuple[int, str]:
    digits = _check_positive_int("digits", digits)
    if digits > 9:
        raise ValueError(f"digits must be at most 9, got {digits}")
    if not isinstance(ops, str):
        raise TypeError(f"ops must be a str of operator characters, got {type(ops).__name__}")
    if not ops or any(op not in SUPPORTED_OPS for op in ops):
        raise ValueError(f"ops must be a non-empty string of characters from {SUPPORTED_OPS!r}, got {ops!r}")
    return digits, "".join(dict.fromkeys(ops))


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def _sample_problems(total: int, digits: int, ops: str, seed: int) -> list[tuple[int, str, int]]:
    """``total`` distinct problems ``(a, op, b)`` with operands uniform in ``[0, 10**digits)``."""
    space = len(ops) * 10 ** (2 * digits)
    if total > space:
        raise ValueError(
            f"asked for {total} distinct problems but digits={digits}, ops={ops!r} only has {space}: "
            "raise digits, add ops or ask for fewer"
        )
    rng = random.Random(seed)
    hi = 10**digits
    if total * 4 > space:  # dense: sample indices of the enumerated space without replacement
        picks = rng.sample(range(space), total)
        return [(i // (hi * len(ops)), ops[(i // hi) % len(ops)], i % hi) for i in picks]
    seen: set[tuple[int, str, int]] = set()
    out: list[tuple[int, str, int]] = []
    while len(out) < total:
        problem = (rng.randrange(hi), rng.choice(ops), rng.randrange(hi))
        if problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out


def _to_dataset(problems: list[tuple[int, str, int]]) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [f"{a}{op}{b}=" for a, op, b in problems],
            "answer": [str(_apply(a, op, b)) for a, op, b in problems],
        }
    )


def arithmetic_dataset(n: int, *, digits: int = 2, ops: str = "+-", seed: int = 0) -> Dataset:
    """``n`` distinct problems ``"a<op>b="`` with columns ``prompt`` and ``answer`` (exact integer result).

    Operands are uniform in ``[0, 10**digits)`` (so ``"-"`` can give negative answers), the operator is
    uniform over ``ops`` (a string of ``"+"``, ``"-"``, ``"*"``). Deterministic for a given ``seed``.
    """
    n = _check_positive_int("n", n)
    digits, ops = _check_task_args(digits, ops)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return _to_dataset(_sample_problems(n, digits, ops, seed))


def arithmetic_splits(
    n_train: int, n_test: int, *, digits: int = 2, ops: str = "+-", seed: int = 0
) -> DatasetDict:
    """Disjoint ``train`` / ``test`` splits of the arithmetic task (no problem appears in both).

    Draws ``n_train + n_test`` distinct problems as :func:`arithmetic_dataset` does and cuts them in two,
    so the test split is a held-out set of questions the model never trained on.
    """
    n_train = _check_positive_int("n_train", n_train)
    n_test = _check_positive_int("n_test", n_test)
    digits, ops = _check_task_args(digits, ops)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    problems = _sample_problems(n_train + n_test, digits, ops, seed)
    return DatasetDict({"train": _to_dataset(problems[:n_train]), "test": _to_dataset(problems[n_train:])})
