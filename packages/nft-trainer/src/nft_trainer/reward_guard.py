"""Reward functions that raise or return NaN/inf: warn with the sample index, score None, keep training.

TRL stops the run when a reward function raises. :class:`GuardedReward` wraps a TRL reward function:

- if the call for the batch raises, the function is called again one sample at a time, so the
  failing samples are found; each failing sample gets ``None``;
- a returned value that is not a finite real number (NaN, inf, a string, ...) becomes ``None``;
- every such sample is reported by a :class:`RewardFunctionWarning` naming the function, the sample
  index in this process's batch, the exception and the start of the completion.

``None`` is TRL's "no reward" value: a completion for which every reward function gave ``None`` is
unscorable. NFTTrainer leaves it out of its group's correctness rate and out of the loss (TRL's GRPO
gives it advantage 0). A wrong number of returned rewards is a programming error and still raises.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["AsyncGuardedReward", "GuardedReward", "RewardFunctionWarning", "guard_reward"]


class RewardFunctionWarning(RuntimeWarning):
    """A reward function failed on a sample; that sample's reward is None (unscorable)."""


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _slice_kwargs(kwargs: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    return {k: (v[i : i + 1] if isinstance(v, list) and len(v) == n else v) for k, v in kwargs.items()}


class GuardedReward:
    """Wrap a synchronous TRL reward function so a failing sample cannot crash training.

    ``on_error(count)`` is called after each batch with the number of samples that failed.
    Use :func:`guard_reward` to wrap sync and async functions alike.
    """

    def __init__(self, func: Callable[..., Any], name: str, on_error: Callable[[int], None] | None = None):
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        self.func = func
        self.name = name
        self.__name__ = name
        self._on_error = on_error

    def _warn(self, i: int, completions: list, why: str) -> None:
        completion = completions[i] if i < len(completions) else None
        warnings.warn(
            f"reward function {self.name!r} {why} on sample {i} of this batch (completion {_preview(completion)}); "
            "its reward is None (unscorable) and training continues",
            RewardFunctionWarning,
            stacklevel=4,
        )

    def _clean(self, rewards: Any, completions: list, failed: set[int]) -> list[float | None]:
        n = len(completions)
        rewards = list(rewards)
        if len(rewards) != n:
            raise ValueError(
                f"reward function {self.name!r} returned {len(rewards)} rewards for {n} completions: it must return "
                "one reward (a float, or None) per completion"
            )
        out: list[float | None] = []
        for i, value in enumerate(rewards):
            if value is None or i in failed:
                out.append(None)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number, why = math.nan, f"returned {_preview(value, 40)} (not a number)"
            else:
                why = f"returned {number}"
            if not math.isfinite(number):
                self._warn(i, completions, why)
                failed.add(i)
                out.append(None)
            else:
                out.append(number)
        if self._on_error is not None:
            self._on_error(len(failed))
        return out

    def _one_failed(self, i: int, completions: list, error: Exception, failed: set[int]) -> None:
        self._warn(i, completions, f"raised {type(error).__name__}: {error}")
        failed.add(i)

    def __call__(self, *, prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        try:
            rewards = self.func(prompts=prompts, completions=completions, **kwargs)
        except Exception:  # a user error must not stop training: find the sample
            rewards = None
        if rewards is not None:
            return self._clean(rewards, completions, set())
        n, failed, rewards = len(completions), set(), []
        for i in range(n):
            try:
                one = self.func(
                    prompts=prompts[i : i + 1],
                    completions=completions[i : i + 1],
                    **_slice_kwargs(kwargs, i, n),
                )
                (value,) = one
                rewards.append(value)
            except Exception as error:
                self._one_failed(i, completions, error, failed)
                rewards.append(None)
        return self._clean(rewards, completions, failed)


class AsyncGuardedReward(GuardedReward):
    """:class:`GuardedReward` for ``async def`` reward functions (TRL awaits them concurrently)."""

    async def __call__(self, *, prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        try:
            rewards = await self.func(prompts=prompts, completions=completions, **kwargs)
        except Exception:
            rewards = None
        if rewards is not None:
            return self._clean(rewards, completions, set())
        n, failed, rewards = len(completions), set(), []
        for i in range(n):
            try:
                one = await self.func(
                    prompts=prompts[i : i + 1],
                    completions=completions[i : i + 1],
                    **_slice_kwargs(kwargs, i, n),
                )
                (value,) = one
                rewards.append(value)
            except Exception as error:
                self._one_failed(i, completions, error, failed)
                rewards.append(None)
        return self._clean(rewards, completions, failed)


def guard_reward(
    func: Callable[..., Any], name: str, on_error: Callable[[int], None] | None = None
) -> GuardedReward:
    """Wrap ``func`` in :class:`GuardedReward` or :class:`AsyncGuardedReward` (see the module docstring)."""
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__)
    return (AsyncGuardedReward if is_async else GuardedReward)(func, name, on_error)
