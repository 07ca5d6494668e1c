"""Negative-aware Fine-Tuning (NFT) for LLMs with verifiable rewards.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.0.1"

__all__ = ["__version__"]
