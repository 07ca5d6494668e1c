"""DPM-Solver, DPM-Solver++ and DPM-Solver-v3 diffusion samplers.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.0.1"

__all__ = ["__version__"]
