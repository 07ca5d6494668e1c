"""SageAttention 1/2/2++/3 quantized attention and SageBwd trainable 8-bit attention.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.1.0.dev0"

from .core import sageattn

__all__ = ["__version__", "sageattn"]
