"""diffusers-compatible schedulers (``SchedulerMixin`` + ``ConfigMixin``) built on :mod:`dpm_solver.updates`.

Importing this module registers nothing globally; a pipeline saved with one of these schedulers reloads
once ``dpm_solver.schedulers`` has been imported (diffusers resolves ``["dpm_solver.schedulers...", cls]``).
"""

from .multistep import MultistepDPMSolverScheduler
from .singlestep import SinglestepDPMSolverScheduler

__all__ = ["MultistepDPMSolverScheduler", "SinglestepDPMSolverScheduler"]
