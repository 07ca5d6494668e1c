"""DPM-Solver, DPM-Solver++ and DPM-Solver-v3 diffusion samplers.

Part of the ML-efficiency kernels monorepo. Status: slice 1 of issue 5 (VP noise schedules, the model
wrapper, multistep DPM-Solver / DPM-Solver++ of orders 1-3); see README.md for what is not there yet.
"""

from .model_wrapper import model_wrapper
from .schedules import NoiseScheduleVP
from .solver import DPM_Solver

__version__ = "0.1.0.dev0"

__all__ = ["DPM_Solver", "NoiseScheduleVP", "__version__", "model_wrapper"]
