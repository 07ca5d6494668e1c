"""Checks NFTTrainer runs before training, so a wrong setup fails at once with the field and the fix.

TRL itself reports these cases late (at the first generation step) or with an unrelated message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "TRL_REWARD_KWARGS",
    "check_chat_template",
    "check_dataset",
    "check_reward_signature",
    "dataset_columns",
]

#: Keyword arguments TRL 1.16's GRPOTrainer passes to every reward function, besides each dataset column
#: other than ``prompt`` (and ``environments`` when an ``environment_factory`` is used).
TRL_REWARD_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


def dataset_columns(dataset: Any) -> list[str] | None:
    """Column names of a ``datasets`` Dataset/IterableDataset, or None when unknown (streamed, no features)."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        return None
    return list(names) if names is not None else None


def check_dataset(name: str, dataset: Any, *, prompt_optional: bool = False) -> None:
    """The dataset is a single split with a ``prompt`` column."""
    if dataset is None:
        return
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):
        raise TypeError(
            f"{name} is a DatasetDict with splits {sorted(names)}; pass one split, e.g. {name}=dataset['train']"
        )
    if names is None or prompt_optional:
        return
    if "prompt" not in names:
        raise ValueError(
            f"{name} has no 'prompt' column (columns: {list(names)}). NFTTrainer, like GRPOTrainer, reads the prompts "
            "from a column named 'prompt' (a string, or a list of chat messages). Fix: rename your prompt column, "
            "e.g. dataset = dataset.rename_column('question', 'prompt')"
        )


def _callable_name(func: Any) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def check_reward_signature(
    index: int, func: Callable[..., Any], columns: Iterable[str] | None, *, environments: bool = False
) -> None:
    """``func`` can be called the way TRL calls reward functions: keywords only, see TRL_REWARD_KWARGS.

    ``columns``: the dataset's columns (each but ``prompt`` is passed by name); None if unknown.
    """
    name = _callable_name(func)
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    passed = set(TRL_REWARD_KWARGS)
    if columns is not None:
        passed |= {c for c in columns if c not in ("prompt", "completion", "completion_ids")}
    if environments:
        passed.add("environments")
    params = sig.parameters.values()
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    example = f"def {name}(completions, **kwargs) -> list[float]"
    where = f"reward_funcs[{index}] ({name}{sig})"
    positional_only = [
        p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty
    ]
    if positional_only:
        raise TypeError(
            f"{where} has positional-only parameters {positional_only}, but the trainer calls reward functions with "
            f"keyword arguments only ({', '.join(sorted(passed))}). Fix: {example}"
        )
    required = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.default is p.empty
    ]
    missing = [p for p in required if p not in passed]
    if missing and columns is not None:
        raise TypeError(
            f"{where} requires {missing}, which the trainer does not pass: it passes {', '.join(sorted(passed))} "
            f"(every dataset column except 'prompt' is passed under its own name). Fix: add a dataset column named "
            f"{missing[0]!r} or give the parameter a default; e.g. {example}"
        )
    if not has_var_kw:
        accepted = {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}
        extra = sorted(passed - accepted)
        if extra:
            raise TypeError(
                f"{where} does not accept the keyword arguments {extra} that the trainer passes to every reward "
                f"function. Fix: add **kwargs, e.g. {example}"
            )


def check_chat_template(processing_class: Any, dataset: Any, name: str = "train_dataset") -> None:
    """Conversational prompts need a tokenizer with a chat template."""
    if dataset is None or processing_class is None:
        return
    try:
        first = next(iter(dataset))
    except (StopIteration, TypeError):
        return
    prompt = first.get("prompt") if isinstance(first, dict) else None
    conversational = isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)
    if not conversational:
        return
    template = getattr(processing_class, "chat_template", None)
    tokenizer = getattr(processing_class, "tokenizer", None)
    if template is None and tokenizer is not None:
        template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(
            f"{name} has conversational prompts (lists of {{'role', 'content'}} messages), but the tokenizer "
            f"({type(processing_class).__name__}) has no chat template. Fix: set processing_class.chat_template to a "
            "Jinja template (or load the model's instruct tokenizer), or turn the prompts into plain strings."
        )
