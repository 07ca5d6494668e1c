r"""``NFTTrainer``: TRL's ``GRPOTrainer`` with the NFT loss (and RFT with ``neg_weight=0``).

Everything else is TRL's: generation (transformers or vLLM), reward functions, PEFT, accelerate /
DeepSpeed / FSDP, logging, checkpoints. A ``GRPOTrainer`` script switches by replacing
``GRPOTrainer``/``GRPOConfig`` with ``NFTTrainer``/``NFTConfig``.

What changes (overrides of TRL 1.16 hooks):

- ``_calculate_rewards`` keeps the gathered per-function rewards of the generation batch.
- ``_generate_and_score_completions`` adds, per completion, the combined reward ``nft_reward``
  (NaN if unscorable), the label ``nft_correct = reward >= correct_threshold``, its group's
  correctness rate ``nft_correct_rate`` r̂_q (over the scorable completions of the group),
  ``nft_group_id`` and ``nft_keep`` (False for unscorable completions and, with
  ``filter_zero_variance_groups``, for groups that are all right or all wrong). TRL shuffles and
  splits these with the rest of the batch.
- ``_compute_loss`` evaluates :func:`nft_trainer.losses.nft_loss` on the current log-probs, the
  ``old_per_token_logps`` TRL stored at generation time (log π_θ detached when TRL skips them because
  the batch is on-policy) and the completion mask times ``nft_keep``.

Loss scale across micro-batches and processes: with ``loss_reduction="sum"`` the gradient of one
optimizer step is that of ``Σ_{step batch} ℓ / loss_normalizer`` whatever the number of processes
(the local sum is multiplied by the world size to undo DDP's gradient averaging; the released verl
code instead divides by the number of GPUs implicitly). ``"token_mean"`` divides by the number of
kept tokens of the step batch (TRL's DAPO normalizer), ``"sequence_mean"`` by the number of sequences.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import nn
from trl import GRPOTrainer

from .config import NFTConfig
from .input_checks import check_chat_template, check_dataset, check_reward_signature, dataset_columns
from .losses.groups import group_correct_rate, zero_variance_groups
from .losses.nft import nft_loss
from .reward_guard import guard_reward

__all__ = ["NFTConfig", "NFTTrainer"]

_NFT_KEYS = ("nft_reward", "nft_correct", "nft_correct_rate", "nft_group_id", "nft_keep")


class NFTTrainer(GRPOTrainer):
    """GRPOTrainer whose policy loss is NFT (see the module docstring). Same constructor as ``GRPOTrainer``.

    Raises at construction (before loading anything heavy where possible):
        TypeError: ``args`` is not an :class:`NFTConfig`; a reward function cannot take TRL's keyword
            arguments; a ``DatasetDict`` was passed instead of a split.
        ValueError: a dataset without a ``prompt`` column; conversational prompts with a tokenizer
            that has no chat template (``num_generations < 2`` and a generation batch not divisible
            by ``num_generations`` are refused by :class:`NFTConfig`).
    """

    _tag_names: ClassVar[list[str]] = ["trl", "nft"]
    _name = "NFT"
    _paper: ClassVar[dict[str, str]] = {
        "title": "Bridging Supervised Learning and Reinforcement Learning in Math Reasoning",
        "id": "2505.18116",
        "citation": (
            "@article{chen2025nft,\n"
            "    title   = {{Bridging Supervised Learning and Reinforcement Learning in Math Reasoning}},\n"
            "    author  = {Huayu Chen and Kaiwen Zheng and Qinsheng Zhang and Ganqu Cui and Yin Cui and Haotian Ye and "
            "Tsung-Yi Lin and Ming-Yu Liu and Jun Zhu and Haoxiang Wang},\n"
            "    journal = {arXiv preprint arXiv:2505.18116},\n"
            "    year    = 2025\n"
            "}"
        ),
    }

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: NFTConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        tools: Any = None,
        rollout_func: Any = None,
        environment_factory: Any = None,
    ):
        if args is None:
            name = (
                model
                if isinstance(model, str)
                else getattr(getattr(model, "config", None), "_name_or_path", "")
            )
            args = NFTConfig(f"{(name or 'model').split('/')[-1]}-NFT")
        if not isinstance(args, NFTConfig):
            raise TypeError(
                f"args must be an NFTConfig, got {type(args).__name__}. Fix: replace GRPOConfig(...) by "
                "NFTConfig(...) (same fields, plus the NFT options) when switching from GRPOTrainer to NFTTrainer."
            )
        has_env = environment_factory is not None
        check_dataset("train_dataset", train_dataset, prompt_optional=has_env)
        if isinstance(eval_dataset, dict):
            for key, split in eval_dataset.items():
                check_dataset(f"eval_dataset[{key!r}]", split, prompt_optional=has_env)
        else:
            check_dataset("eval_dataset", eval_dataset, prompt_optional=has_env)
        funcs = (
            reward_funcs
            if isinstance(reward_funcs, list)
            else ([] if reward_funcs is None else [reward_funcs])
        )
        columns = dataset_columns(train_dataset)
        for i, func in enumerate(funcs):
            if callable(func) and not isinstance(func, (str, nn.Module)):
                check_reward_signature(i, func, columns, environments=has_env)
        if processing_class is not None and not has_env:
            check_chat_template(processing_class, train_dataset)

        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
            tools=tools,
            rollout_func=rollout_func,
            environment_factory=environment_factory,
        )
        if processing_class is None and not has_env:
            check_chat_template(self.processing_class, train_dataset)

        self._reward_errors = 0
        self.reward_funcs = [
            func if isinstance(func, nn.Module) else guard_reward(func, name, self._count_reward_errors)
            for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True)
        ]
        self._nft_rewards_per_func: torch.Tensor | None = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            warnings.warn(
                "NFTTrainer does not apply TRL's vLLM importance-sampling correction (the NFT paper's code does not): "
                "the NFT ratio uses old_per_token_logps recomputed by the trained model at generation time.",
                UserWarning,
                stacklevel=2,
            )

    def _count_reward_errors(self, count: int) -> None:
        self._reward_errors += count

    # --- batch construction -------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._nft_rewards_per_func = rewards_per_func  # gathered over processes: (global batch, num funcs)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._reward_errors = 0
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        rewards_per_func = self._nft_rewards_per_func
        self._nft_rewards_per_func = None
        if rewards_per_func is None:  # pragma: no cover - TRL changed its hooks
            raise RuntimeError(
                "NFTTrainer: _calculate_rewards was not called; this TRL version is not supported"
            )
        device = output["completion_ids"].device
        weights = self.reward_weights.to(rewards_per_func.device)
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards = rewards.masked_fill(unscorable, float("nan"))
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        total = rewards.shape[0]
        correct = torch.nan_to_num(rewards, nan=-torch.inf) >= self.args.correct_threshold
        valid = ~unscorable
        rate = group_correct_rate(correct.float(), group_size, valid=valid)
        # all right or all wrong among the scorable rows: an unscorable row takes its group's majority label,
        # which cannot change whether the scorable rows agree
        labels = torch.where(valid, correct.float(), rate.round())
        zero_var = zero_variance_groups(labels, group_size)
        keep = valid & ~zero_var if self.args.filter_zero_variance_groups else valid
        group_id = torch.arange(total, device=rewards.device) // group_size

        local = output["completion_ids"].shape[0]
        start = self.accelerator.process_index * local
        part = slice(start, start + local)
        output["nft_reward"] = rewards[part].to(device)
        output["nft_correct"] = correct[part].to(device=device, dtype=torch.float32)
        output["nft_correct_rate"] = rate[part].to(device=device, dtype=torch.float32)
        output["nft_group_id"] = group_id[part].to(device)
        output["nft_keep"] = keep[part].to(device)
        mask = (
            output["completion_mask"]
            if "tool_mask" not in output
            else output["completion_mask"] * output["tool_mask"]
        )
        kept_tokens = (mask * output["nft_keep"][:, None]).sum()
        output["nft_num_tokens"] = self.accelerator.gather(kept_tokens.reshape(1).float()).sum()

        num_groups = max(total // group_size, 1)
        metrics = self._metrics[mode]
        metrics["nft/correct_rate"].append(correct[valid].float().mean().item() if valid.any() else 0.0)
        metrics["nft/frac_groups_zero_variance"].append(
            zero_var.float().sum().item() / group_size / num_groups
        )
        metrics["nft/frac_kept"].append(keep.float().mean().item())
        metrics["nft/frac_unscorable"].append(unscorable.float().mean().item())
        errors = torch.tensor([float(self._reward_errors)], device=device)
        metrics["nft/reward_errors"].append(self.accelerator.gather(errors).sum().item())
        return output

    # --- loss ---------------------------------------------------------------------------------------------

    def _accumulation_steps(self) -> int:
        # set by Trainer's loop (the last window of an epoch may be shorter); the config value outside train()
        return getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)

    def _nft_normalizer(self, inputs: dict[str, Any], local_rows: int, mode: str) -> float | torch.Tensor:
        """Denominator handed to nft_loss so that the step's gradient is the documented reduction."""
        args = self.args
        world = self.accelerator.num_processes
        accum = self._accumulation_steps() if mode == "train" else 1
        if args.loss_reduction == "sum":
            constant = args.loss_normalizer
            if constant is None:
                constant = 1000.0 if args.ratio_type == "token" else 1.0
            return constant / world  # × world: undo DDP's average; micro-batches of one step add up
        if args.loss_reduction == "token_mean":
            tokens = inputs["nft_num_tokens"].clamp(min=1.0) / world
            if mode == "train":
                tokens = tokens * accum / args.steps_per_generation
            return tokens
        return float(max(local_rows, 1) * accum)

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, _, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=False,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )
        loss, metrics = self.nft_loss_from_logps(per_token_logps, inputs, mask)
        mode = "train" if self.model.training else "eval"
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / (
                self._accumulation_steps() if mode == "train" else 1.0
            )
        for key in (
            "pos_loss",
            "neg_loss",
            "ratio_mean",
            "neg_clamp_frac",
            "pos_clamp_frac",
            "log_ratio_clamp_frac",
        ):
            value = metrics[key].detach().float().reshape(1)
            self._metrics[mode][f"nft/{key}"].append(self.accelerator.gather(value).mean().item())
        return loss

    def nft_loss_from_logps(
        self, per_token_logps: torch.Tensor, inputs: dict[str, Any], mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The NFT loss of this trainer for a prepared batch, given the current per-token log-probs.

        Same call as ``_compute_loss`` makes (old log-probs, labels, rates, kept rows, normalizer), exposed so
        the trainer's loss can be checked against :func:`nft_trainer.losses.nft_loss` on the same tensors.
        """
        missing = [k for k in _NFT_KEYS if k not in inputs]
        if missing:
            raise KeyError(
                f"inputs lacks {missing}: pass a batch built by NFTTrainer._generate_and_score_completions"
            )
        if mask is None:
            mask = inputs["completion_mask"]
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        keep = inputs["nft_keep"]
        mode = "train" if self.model.training else "eval"
        args = self.args
        return nft_loss(
            per_token_logps,
            old,
            inputs["nft_correct"],
            inputs["nft_correct_rate"],
            mask * keep[:, None].to(mask.dtype),
            neg_weight=args.neg_weight,
            ratio_type=args.ratio_type,
            log_ratio_clamp=args.log_ratio_clamp,
            rate_clip=(args.correct_rate_min, args.correct_rate_max),
            clamp_negative=args.clamp_negative,
            clamp_positive=args.clamp_positive,
            prompt_weighting=args.prompt_weighting,
            reduction=args.loss_reduction,
            normalizer=self._nft_normalizer(inputs, per_token_logps.shape[0], mode),
        )
