"""SLA and SLA2: fine-tunable sparse + linear attention for diffusion transformers.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.0.1"

__all__ = ["__version__"]
