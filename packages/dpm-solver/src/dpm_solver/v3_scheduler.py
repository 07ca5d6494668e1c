"""DPM-Solver-v3 as a diffusers scheduler (``SchedulerMixin`` + ``ConfigMixin``).

Every update is :class:`dpm_solver.v3.DPM_Solver_v3`'s (predictor, corrector, corrected model output,
order rules): the scheduler only keeps the multistep cache between ``step`` calls. Statistics come from
a file (``statistics_path`` in the config, written by :func:`dpm_solver.statistics.save_statistics` for
this schedule and sample shape), so ``save_pretrained`` / ``from_pretrained`` restore the scheduler.
Model time labels follow :func:`dpm_solver.model_wrapper`: ``label = N t - 1`` (floats, in [0, N - 1]).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .schedules import NoiseScheduleVP
from .statistics import load_statistics
from .v3 import DPM_Solver_v3

__all__ = ["DPMSolverV3Scheduler", "betas_for_schedule"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def betas_for_schedule(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, trained_betas=None
) -> torch.Tensor:
    """diffusers' beta schedules in float64: ``linear``, ``scaled_linear``, ``squaredcos_cap_v2``."""
    if trained_betas is not None:
        return torch.as_tensor(trained_betas, dtype=torch.float64)
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":

        def abar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64
        )
    raise ValueError(
        f"beta_schedule must be linear, scaled_linear or squaredcos_cap_v2, got {beta_schedule!r}"
    )


class DPMSolverV3Scheduler(SchedulerMixin, ConfigMixin):
    """DPM-Solver-v3 multistep scheduler; NFE = ``num_inference_steps``.

    Config: ``num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas`` (the VP schedule,
    as diffusers), ``prediction_type`` (``epsilon``, ``sample``, ``v_prediction``), ``statistics_path``
    (EMS file; ``None`` needs ``degenerated=True``), ``solver_order`` (1-3), ``predictor_pseudo``,
    ``use_corrector``, ``corrector_pseudo``, ``lower_order_final``, ``half_corrector`` (``"paper"``: corrector only while t <= 0.5; ``True``: upstream's code, t > 0.5) (upstream
    ``sample`` arguments), ``skip_type`` (``time_uniform``, ``logSNR``, ``time_quadratic``, ``edm``),
    ``degenerated`` (``l = 1, s = b = 0``: DPM-Solver++), ``t_start`` / ``t_end`` (default: the
    statistics' range).
    """

    _compatibles: ClassVar[list] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        statistics_path: str | None = None,
        solver_order: int = 2,
        predictor_pseudo: bool = False,
        use_corrector: bool = True,
        corrector_pseudo: bool = True,
        lower_order_final: bool = True,
        half_corrector: bool | str = False,
        skip_type: str = "time_uniform",
        degenerated: bool = False,
        t_start: float | None = None,
        t_end: float | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        if statistics_path is None and not degenerated:
            raise ValueError("statistics_path is required (or degenerated=True)")
        if half_corrector not in (False, True, "paper"):
            raise ValueError(
                f"half_corrector must be False, True (upstream's code) or 'paper', got {half_corrector!r}"
            )
        betas = betas_for_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.noise_schedule = NoiseScheduleVP("discrete", betas=betas)
        self.betas = betas.float()
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0).float()
        self.init_noise_sigma = 1.0
        self._statistics = None
        self.solver: DPM_Solver_v3 | None = None
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # -- statistics / grid ----------------------------------------------------------------------------
    @property
    def statistics(self):
        """The loaded EMS (checked against this scheduler's noise schedule), or ``None``."""
        if self._statistics is None and self.config.statistics_path is not None:
            self._statistics = load_statistics(self.config.statistics_path, self.noise_schedule)
        return self._statistics

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the v3 step grid (snapped to the EMS grid); ``timesteps`` are the model's time labels of the
        ``num_inference_steps`` evaluation points."""
        if num_inference_steps < self.config.solver_order:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is below solver_order={self.config.solver_order}"
            )
        self.solver = DPM_Solver_v3(
            self.statistics,
            self.noise_schedule,
            steps=num_inference_steps,
            t_start=self.config.t_start,
            t_end=self.config.t_end,
            skip_type=self.config.skip_type,
            degenerated=self.config.degenerated,
        )
        self.num_inference_steps = num_inference_steps
        self.t_continuous = self.solver.timesteps  # float64, length steps + 1
        labels = self.t_continuous[:-1] * self.noise_schedule.total_N - 1.0
        self.timesteps = labels.to(device=device, dtype=torch.float32)
        self._step_index = None
        self._begin_index = None
        self._cache: tuple[list, list, list] = ([], [], [])
        self._p_order = 0

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity (VP samples go to the model unscaled)."""
        return sample

    def _to_eps(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        lam = self.solver.lambdas[self.solver.indexes[i]]
        alpha, sigma = math.sqrt(float(torch.sigmoid(2 * lam))), math.sqrt(float(torch.sigmoid(-2 * lam)))
        if self.config.prediction_type == "epsilon":
            return model_output
        if self.config.prediction_type == "sample":
            return (sample - alpha * model_output) / sigma
        return alpha * model_output + sigma * sample  # v_prediction

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One v3 step from ``timesteps[k]`` to the next time, given the model output at (sample, timestep).
        Same order of operations as :meth:`DPM_Solver_v3.sample`: cache, corrector, predictor."""
        if self.solver is None:
            raise RuntimeError("call set_timesteps before step")
        k = self._step_index if self._step_index is not None else (self._begin_index or 0)
        if k >= self.num_inference_steps:
            raise IndexError(f"step called {k + 1} times for {self.num_inference_steps} inference steps")
        sv = self.solver
        if sv.l.dim() > 1 and tuple(sv.l.shape[1:]) not in (tuple(sample.shape[1:]), (1,)):
            raise ValueError(
                f"statistics are for samples of shape {tuple(sv.l.shape[1:])}, got {tuple(sample.shape[1:])}"
            )
        eps = self._to_eps(model_output, sample, k).to(sample.dtype)
        if not bool(torch.isfinite(eps).all()):
            raise FloatingPointError(f"model output has NaN/inf at step {k}")
        xs, es, idx = self._cache
        xs.append(sample)
        es.append(eps)
        idx.append(sv.indexes[k])
        cfg = self.config
        if sv.corrector_active(float(self.t_continuous[k]), cfg.use_corrector, cfg.half_corrector):
            c_order = self._p_order + int(bool(cfg.corrector_pseudo))
            if c_order > 1:
                x_new = sv.multistep_corrector_update(
                    xs, es, idx, order=c_order, pseudo=bool(cfg.corrector_pseudo)
                )
                es[-1] = sv.corrected_model_output(es[-1], xs[-1], x_new, idx[-1])
                xs[-1] = x_new
        step = k + 1
        self._p_order = sv.predictor_order(
            step, self.num_inference_steps, cfg.solver_order, cfg.lower_order_final
        )
        prev = sv.multistep_predictor_update(
            xs, es, idx, sv.indexes[step], order=self._p_order, pseudo=bool(cfg.predictor_pseudo)
        )
        keep = cfg.solver_order + 1
        self._cache = (xs[-keep:], es[-keep:], idx[-keep:])
        self._step_index = step
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """``alpha_t x0 + sigma_t noise`` at the model time labels ``timesteps`` (``t = (label + 1)/N``)."""
        t = (torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1) + 1.0) / self.noise_schedule.total_N
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        a = self.noise_schedule.marginal_alpha(t).reshape(shape).to(original_samples)
        s = self.noise_schedule.marginal_std(t).reshape(shape).to(original_samples)
        return a * original_samples + s * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
