"""DPM-Solver, DPM-Solver++ and DPM-Solver-v3 diffusion samplers.

Part of the ML-efficiency kernels monorepo. Update rules: :mod:`dpm_solver.updates` (one implementation
shared by ``DPM_Solver`` and the diffusers schedulers); step grids: :func:`get_time_steps`.
"""

from . import updates
from .grids import get_time_steps
from .model_wrapper import model_wrapper
from .schedules import NoiseSchedule, NoiseScheduleEDM, NoiseScheduleVE, NoiseScheduleVP, SigmaSchedule
from .solver import DPM_Solver

__version__ = "0.1.0.dev0"

__all__ = [
    "DPM_Solver",
    "NoiseSchedule",
    "NoiseScheduleEDM",
    "NoiseScheduleVE",
    "NoiseScheduleVP",
    "SigmaSchedule",
    "__version__",
    "get_time_steps",
    "model_wrapper",
    "updates",
]
