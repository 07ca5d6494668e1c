"""Negative-aware Fine-Tuning (NFT) for LLMs with verifiable rewards.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.

``from nft_trainer import NFTTrainer, NFTConfig`` (TRL ``GRPOTrainer``/``GRPOConfig`` subclasses),
``nft_trainer.losses`` (framework-agnostic NFT/RFT/GRPO/Dr. GRPO/DAPO losses), the verifiers
(``numeric_match_reward``, ``math_verify_reward``) and the CPU toy task (``nft_trainer.toy``).
Names are imported lazily: ``import nft_trainer`` does not import TRL.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_LAZY = {
    "NFTConfig": "nft_trainer.config",
    "NFTTrainer": "nft_trainer.trainer",
    "RewardFunctionWarning": "nft_trainer.reward_guard",
    "nft_loss": "nft_trainer.losses",
    "rft_loss": "nft_trainer.losses",
    "grpo_loss": "nft_trainer.losses",
    "dr_grpo_loss": "nft_trainer.losses",
    "dapo_loss": "nft_trainer.losses",
    "group_advantages": "nft_trainer.losses",
    "group_correct_rate": "nft_trainer.losses",
    "numeric_match_reward": "nft_trainer.verifiers",
    "math_verify_reward": "nft_trainer.verifiers",
    "extract_final_answer": "nft_trainer.verifiers",
    "char_tokenizer": "nft_trainer.toy",
    "tiny_llama": "nft_trainer.toy",
    "arithmetic_dataset": "nft_trainer.toy",
    "arithmetic_splits": "nft_trainer.toy",
    "cli_main": "nft_trainer.cli",
}
_RENAMED = {"cli_main": "main"}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nft_trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
