"""NFTTrainer on a tiny CPU Llama: trains, logs NFT metrics, computes exactly nft_loss, RFT drops negatives,
bad inputs fail at construction with the field and the fix, failing rewards do not crash the run."""

import os
import warnings

import pytest
import torch
from datasets import Dataset
from nft_trainer import NFTConfig, NFTTrainer, RewardFunctionWarning
from nft_trainer.losses import nft_loss
from nft_trainer.reward_guard import guard_reward
from nft_trainer.toy import arithmetic_dataset, char_tokenizer, tiny_llama
from trl import GRPOConfig

os.environ.setdefault("OMP_NUM_THREADS", "1")


def parity_reward(completions, **kwargs):
    """Deterministic 0/1 reward: 1 when the sum of the completion's character codes is even."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def _config(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"),
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=5,
        max_steps=3,
        learning_rate=5e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
    )
    base.update(overrides)
    return NFTConfig(**base)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def dataset():
    return arithmetic_dataset(32, digits=1, seed=0)


def _trainer(tmp_path, tok, dataset, reward=parity_reward, **overrides):
    torch.manual_seed(0)
    model = tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, seed=0)
    return NFTTrainer(
        model=model,
        reward_funcs=reward,
        args=_config(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=tok,
    )


def _batch(trainer):
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    return trainer._generate_and_score_completions(raw)


def _logps(trainer, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    return trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, att, inputs["completion_ids"].size(1)
    )[0]


def test_short_run_updates_weights_and_logs_nft_metrics(tmp_path, tok, dataset):
    # steps_per_generation > gradient_accumulation_steps: TRL stores old log-probs, the 2nd step is off-policy
    trainer = _trainer(
        tmp_path, tok, dataset, steps_per_generation=2, per_device_train_batch_size=4, max_steps=4
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    changed = sum(
        (p.detach() - b).abs().sum().item() for p, b in zip(trainer.model.parameters(), before, strict=True)
    )
    assert changed > 0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for key in ("nft/ratio_mean", "nft/neg_clamp_frac", "nft/pos_loss", "nft/neg_loss"):
        assert all(key in h for h in logs), key
    for key in ("nft/correct_rate", "nft/frac_kept", "nft/frac_groups_zero_variance", "nft/reward_errors"):
        assert all(key in h for h in logs[::2]), key  # logged at each generation
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    ratios = [h["nft/ratio_mean"] for h in logs]
    assert ratios[0] == pytest.approx(1.0) and any(
        abs(r - 1.0) > 1e-6 for r in ratios[1::2]
    )  # real off-policy ratio


@pytest.mark.parametrize(
    ("reduction", "ratio_type", "weighting"),
    [
        ("sum", "token", "1-r"),
        ("token_mean", "sequence", "sqrt((1-r)/r)"),
        ("sequence_mean", "token", "none"),
    ],
)
def test_trainer_loss_equals_losses_function(tmp_path, tok, dataset, reduction, ratio_type, weighting):
    trainer = _trainer(
        tmp_path,
        tok,
        dataset,
        loss_reduction=reduction,
        ratio_type=ratio_type,
        prompt_weighting=weighting,
        neg_weight=0.8,
        clamp_negative=0.5,
    )
    inputs = _batch(trainer)
    b = inputs["completion_ids"].shape[0]
    # labels, rates and kept rows, recomputed by hand from the completions
    texts = tok.batch_decode(inputs["completion_ids"] * inputs["completion_mask"], skip_special_tokens=True)
    rewards = torch.tensor(parity_reward(texts))
    torch.testing.assert_close(inputs["nft_reward"], rewards)
    g = trainer.num_generations
    rate = rewards.view(-1, g).mean(1).repeat_interleave(g)
    keep = (rate > 0) & (rate < 1)
    assert torch.equal(inputs["nft_correct"], rewards)
    torch.testing.assert_close(inputs["nft_correct_rate"], rate)
    assert torch.equal(inputs["nft_keep"], keep)
    assert torch.equal(inputs["nft_group_id"], torch.arange(b) // g)
    # an off-policy batch: old log-probs differ from the current ones
    with torch.no_grad():
        current = _logps(trainer, inputs)
    inputs["old_per_token_logps"] = current + 0.3 * torch.randn(
        current.shape, generator=torch.Generator().manual_seed(0)
    )
    loss = trainer._compute_loss(trainer.model, inputs)
    mask = inputs["completion_mask"] * keep[:, None]
    normalizer = {"sum": 1000.0, "token_mean": mask.sum().item(), "sequence_mean": float(b)}[reduction]
    expected, _ = nft_loss(
        _logps(trainer, inputs),
        inputs["old_per_token_logps"],
        rewards,
        rate,
        mask,
        neg_weight=0.8,
        ratio_type=ratio_type,
        clamp_negative=0.5,
        prompt_weighting=weighting,
        reduction=reduction,
        normalizer=normalizer,
    )
    assert keep.any() and loss.item() != 0.0
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-9)


def _grads(trainer, inputs):
    trainer.model.zero_grad()
    trainer._compute_loss(trainer.model, inputs).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


@pytest.mark.parametrize("neg_weight", [0.0, 1.0])
def test_rft_ignores_negatives(tmp_path, tok, dataset, neg_weight):
    trainer = _trainer(tmp_path, tok, dataset, neg_weight=neg_weight)
    inputs = _batch(trainer)
    negatives = (inputs["nft_correct"] == 0) & inputs["nft_keep"]
    assert negatives.any()
    g1 = _grads(trainer, inputs)
    altered = dict(inputs)
    ids = inputs["completion_ids"].clone()
    ids[negatives] = (ids[negatives] + 7) % len(tok)  # different negative completions
    altered["completion_ids"] = ids
    g2 = _grads(trainer, altered)
    assert g1.abs().sum() > 0
    if neg_weight == 0.0:
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    else:
        assert (g1 - g2).abs().max() > 1e-8


def test_raising_and_nan_rewards_do_not_crash(tmp_path, tok, dataset):
    calls = {"single": 0}

    def flaky_reward(completions, answer, **kwargs):
        if len(completions) > 1:  # the batch call fails: the guard retries sample by sample
            raise RuntimeError("verifier crashed")
        i = calls["single"] % 8  # index of this sample in the batch of 8
        calls["single"] += 1
        if i == 3:
            raise RuntimeError("verifier crashed")
        return [float("nan") if i == 5 else float(sum(map(ord, completions[0])) % 2 == 0)]

    trainer = _trainer(tmp_path, tok, dataset, reward=flaky_reward, max_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    messages = [str(w.message) for w in caught if issubclass(w.category, RewardFunctionWarning)]
    assert any("sample 3" in m and "RuntimeError: verifier crashed" in m for m in messages)
    assert any("sample 5" in m and "returned nan" in m for m in messages)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(h["nft/reward_errors"] == 2 for h in logs)
    assert all(h["nft/frac_unscorable"] == pytest.approx(2 / 8) for h in logs)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_guarded_reward_unit():
    def reward(prompts, completions, answer, **kwargs):
        if "boom" in completions:
            raise ValueError("cannot parse")
        return [
            None if c == "skip" else (float("inf") if c == "inf" else "x" if c == "str" else 1.0)
            for c in completions
        ]

    guarded = guard_reward(reward, "reward")
    comps = ["a", "boom", "skip", "inf", "str"]
    with pytest.warns(RewardFunctionWarning) as rec:
        out = guarded(prompts=["p"] * 5, completions=comps, answer=["1"] * 5)
    assert out == [1.0, None, None, None, None]
    text = " | ".join(str(w.message) for w in rec)
    assert (
        "sample 1" in text
        and "ValueError: cannot parse" in text
        and "sample 3" in text
        and "sample 4" in text
    )
    assert "sample 2" not in text  # None is a legitimate 'no reward'

    def short(prompts, completions, **kwargs):
        return [1.0]

    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        guard_reward(short, "short")(prompts=["p", "q"], completions=["a", "b"])


def test_async_guarded_reward():
    import asyncio

    async def reward(prompts, completions, **kwargs):
        if len(completions) > 1:
            raise RuntimeError("batch failed")
        return [1.0 if completions[0] == "ok" else float("nan")]

    guarded = guard_reward(reward, "areward")
    assert asyncio.iscoroutinefunction(type(guarded).__call__)
    with pytest.warns(RewardFunctionWarning, match="sample 1"):
        out = asyncio.run(guarded(prompts=["p", "p"], completions=["ok", "bad"]))
    assert out == [1.0, None]


# --- bad input ---------------------------------------------------------------------------------------------


def test_dataset_without_prompt_column(tmp_path, tok, dataset):
    with pytest.raises(ValueError, match=r"train_dataset has no 'prompt' column.*rename_column"):
        _trainer(tmp_path, tok, dataset.rename_column("prompt", "question"))


def test_dataset_dict_instead_of_split(tmp_path, tok, dataset):
    from datasets import DatasetDict

    with pytest.raises(TypeError, match=r"DatasetDict.*dataset\['train'\]"):
        _trainer(tmp_path, tok, DatasetDict({"train": dataset}))


def test_reward_function_wrong_signature(tmp_path, tok, dataset):
    def no_kwargs(completions):
        return [0.0] * len(completions)

    def needs_column(completions, solution, **kwargs):
        return [0.0] * len(completions)

    def positional_only(completions, /, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(TypeError, match=r"reward_funcs\[0\] \(no_kwargs.*does not accept.*add \*\*kwargs"):
        _trainer(tmp_path, tok, dataset, reward=no_kwargs)
    with pytest.raises(TypeError, match=r"requires \['solution'\].*dataset column named 'solution'"):
        _trainer(tmp_path, tok, dataset, reward=[parity_reward, needs_column])
    with pytest.raises(TypeError, match="positional-only"):
        _trainer(tmp_path, tok, dataset, reward=positional_only)


def test_group_size_one_and_indivisible_batch(tmp_path):
    with pytest.raises(ValueError, match=r"num_generations=1.*at least 2"):
        _config(tmp_path, num_generations=1)
    with pytest.raises(
        ValueError,
        match=r"= 6 completions is not divisible by num_generations \(4\).*per_device_train_batch_size=8",
    ):
        _config(tmp_path, per_device_train_batch_size=6)
    with pytest.raises(ValueError, match="not divisible by num_generations"):
        _config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=3, num_generations=4)


def test_conversational_prompts_need_a_chat_template(tmp_path, dataset):
    tok = char_tokenizer()
    tok.chat_template = None
    chat = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": p}] for p in dataset["prompt"]], "answer": dataset["answer"]}
    )
    with pytest.raises(ValueError, match=r"conversational prompts.*no chat template.*chat_template"):
        _trainer(tmp_path, tok, chat)
    _trainer(tmp_path, char_tokenizer(), chat)  # with the toy tokenizer's one-line template it is accepted


def test_grpo_config_is_refused_with_the_fix(tmp_path, tok, dataset):
    args = GRPOConfig(
        output_dir=str(tmp_path),
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        report_to=[],
    )
    with pytest.raises(TypeError, match=r"args must be an NFTConfig.*NFTConfig\(\.\.\.\)"):
        NFTTrainer(
            model=tiny_llama(tok),
            reward_funcs=parity_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
        )


@pytest.mark.parametrize(
    ("overrides", "exc", "match"),
    [
        ({"neg_weight": -1.0}, ValueError, r"neg_weight must be >= 0.*loss_type='dapo'"),
        ({"neg_weight": "1"}, TypeError, "neg_weight must be a real number"),
        ({"ratio_type": "tok"}, ValueError, "ratio_type must be one of"),
        ({"correct_rate_min": 0.0}, ValueError, "0 < correct_rate_min <= correct_rate_max < 1"),
        ({"correct_rate_max": 1.0}, ValueError, "0 < correct_rate_min <= correct_rate_max < 1"),
        ({"clamp_negative": 0.0}, ValueError, "clamp_negative must be non-zero"),
        ({"clamp_positive": -1.0}, ValueError, "clamp_positive must be >= 0"),
        ({"prompt_weighting": "sqrt"}, ValueError, "prompt_weighting must be one of"),
        ({"loss_reduction": "mean"}, ValueError, "loss_reduction must be one of"),
        ({"loss_normalizer": 0.0}, ValueError, "loss_normalizer must be > 0"),
        (
            {"loss_reduction": "token_mean", "loss_normalizer": 5.0},
            ValueError,
            "only applies to loss_reduction='sum'",
        ),
        ({"log_ratio_clamp": float("inf")}, ValueError, "log_ratio_clamp must be finite"),
        ({"filter_zero_variance_groups": 1}, TypeError, "must be a bool"),
        ({"beta": 0.04}, ValueError, r"beta=0.04 is not supported.*set beta=0.0"),
        ({"entropy_coef": 0.1}, ValueError, "entropy_coef"),
        ({"neg_weigth": 1.0}, TypeError, "unexpected keyword"),
    ],
)
def test_config_bad_fields(tmp_path, overrides, exc, match):
    with pytest.raises(exc, match=match):
        _config(tmp_path, **overrides)


def test_config_defaults_are_the_papers():
    cfg = NFTConfig(output_dir="unused", bf16=False, use_cpu=True, report_to=[])
    assert (cfg.neg_weight, cfg.ratio_type, cfg.log_ratio_clamp) == (1.0, "token", 10.0)
    assert (cfg.correct_rate_min, cfg.correct_rate_max, cfg.clamp_negative, cfg.clamp_positive) == (
        0.02,
        0.98,
        1.0,
        0.0,
    )
    assert (cfg.prompt_weighting, cfg.loss_reduction, cfg.loss_normalizer) == ("1-r", "sum", None)
    assert cfg.filter_zero_variance_groups is True and cfg.num_generations == 8


@pytest.mark.parametrize("filter_groups", [True, False])
def test_zero_variance_groups_filter_and_unclipped_rates(tmp_path, tok, dataset, filter_groups):
    def first_group_all_right(completions, **kwargs):  # group 0 all right, group 1 all wrong, others mixed
        return [1.0 if i < 4 else 0.0 if i < 8 else float(i % 2) for i in range(len(completions))]

    trainer = _trainer(
        tmp_path,
        tok,
        dataset,
        reward=first_group_all_right,
        per_device_train_batch_size=16,
        filter_zero_variance_groups=filter_groups,
    )
    inputs = _batch(trainer)
    expected_rate = torch.tensor([1.0] * 4 + [0.0] * 4 + [0.5] * 8)
    torch.testing.assert_close(
        inputs["nft_correct_rate"], expected_rate
    )  # unclipped here, clipped in the loss
    expected_keep = torch.tensor([not filter_groups] * 8 + [True] * 8)
    assert torch.equal(inputs["nft_keep"], expected_keep)
    logs = trainer._metrics["train"]
    assert logs["nft/frac_groups_zero_variance"][-1] == pytest.approx(0.5)
    assert torch.isfinite(trainer._compute_loss(trainer.model, inputs))


def test_peft_lora_with_num_iterations(tmp_path, tok, dataset):
    """A LoRA adapter trains; num_iterations=2 reuses each batch, so the 2nd update sees a ratio ≠ 1."""
    peft = pytest.importorskip("peft")
    model = tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, seed=0)
    trainer = NFTTrainer(
        model=model,
        reward_funcs=parity_reward,
        args=_config(tmp_path, num_iterations=2, max_steps=2, learning_rate=1e-2),
        train_dataset=dataset,
        processing_class=tok,
        peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert lora and any(not torch.equal(p, lora[n]) for n, p in trainer.model.named_parameters() if n in lora)
    ratios = [h["nft/ratio_mean"] for h in trainer.state.log_history if "loss" in h]
    assert ratios[0] == pytest.approx(1.0) and abs(ratios[1] - 1.0) > 1e-6


def test_reward_signature_check_units():
    import functools

    from nft_trainer.input_checks import check_reward_signature

    class Verifier:
        def __call__(self, completions, answer, **kwargs):
            return [0.0] * len(completions)

    def two_columns(completions, answer, scale, **kwargs):
        return [0.0] * len(completions)

    check_reward_signature(0, Verifier(), ["prompt", "answer"])  # a callable instance
    check_reward_signature(
        0, functools.partial(two_columns, scale=2.0), ["prompt", "answer"]
    )  # bound by partial
    check_reward_signature(
        0, two_columns, None
    )  # columns unknown (streamed dataset): only **kwargs is checked
    with pytest.raises(TypeError, match=r"requires \['scale'\]"):
        check_reward_signature(1, two_columns, ["prompt", "answer"])

    def explicit(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, answer):
        return [0.0] * len(completions)

    check_reward_signature(0, explicit, ["prompt", "answer"])  # every passed keyword named: accepted
    with pytest.raises(TypeError, match=r"does not accept the keyword arguments \['level'\]"):
        check_reward_signature(0, explicit, ["prompt", "answer", "level"])


@pytest.mark.parametrize("reduction", ["sum", "token_mean", "sequence_mean"])
def test_micro_batch_losses_add_up_to_the_step_loss(tmp_path, tok, dataset, reduction):
    """gradient_accumulation_steps=2: the two micro-batch losses sum to the reduction over the whole step batch."""
    from trl.trainer.utils import split_tensor_dict

    trainer = _trainer(
        tmp_path,
        tok,
        dataset,
        loss_reduction=reduction,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=8,
    )
    inputs = _batch(trainer)  # the generation batch: 2 micro-batches of 8
    assert inputs["completion_ids"].shape[0] == 16
    with torch.no_grad():
        current = _logps(trainer, inputs)
    inputs["old_per_token_logps"] = current + 0.2 * torch.randn(
        current.shape, generator=torch.Generator().manual_seed(1)
    )
    halves = split_tensor_dict(inputs, 2)
    total = sum(trainer._compute_loss(trainer.model, half) for half in halves)
    mask = inputs["completion_mask"] * inputs["nft_keep"][:, None]
    expected, _ = nft_loss(
        _logps(trainer, inputs),
        inputs["old_per_token_logps"],
        inputs["nft_correct"],
        inputs["nft_correct_rate"],
        mask,
        reduction=reduction,
    )
    assert expected.item() != 0.0
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-8)
