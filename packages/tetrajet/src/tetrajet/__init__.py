"""MXFP4 / NVFP4 training: TetraJet, Q-EMA, Q-Ramping, TetraJet-v2.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.0.1"

__all__ = ["__version__"]
