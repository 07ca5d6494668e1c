"""Shared machinery of the diffusers-compatible schedulers: schedule, step grid, model-output conversion.

The update rules themselves live in :mod:`dpm_solver.updates` (the one implementation shared with the
functional :class:`dpm_solver.DPM_Solver`); this module only prepares their inputs.

Coordinates are diffusers' VP convention: ``x_t = alpha_t x0 + sigma_t eps`` with
``sigma~ = sigma_t / alpha_t = sqrt((1 - abar) / abar)``, ``alpha_t = 1 / sqrt(1 + sigma~^2)``,
``lambda_t = -log sigma~``; ``init_noise_sigma = 1`` and ``scale_model_input`` is the identity.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing", "logSNR")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
SOLVER_TYPES = ("midpoint", "heun", "dpmsolver", "taylor")


def make_betas(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, trained_betas
) -> torch.Tensor:
    """The training betas in float64 (diffusers' definitions of the three named schedules)."""
    if trained_betas is not None:
        betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64))
        if betas.dim() != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("trained_betas must be a 1-d sequence of at least 2 values in (0, 1)")
        return betas
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":

        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64
        )
    raise ValueError(
        f"beta_schedule must be one of {BETA_SCHEDULES} (or pass trained_betas), got {beta_schedule!r}"
    )


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """``n`` Karras et al. (2022) noise levels from ``sigma_max`` down to ``sigma_min`` (both included)."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """diffusers' (Imagen) dynamic thresholding: per sample ``s = clamp(quantile(|x0|, ratio), 1, max)``,
    ``x0 <- clamp(x0, -s, s) / s``."""
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(work.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(work, -s, s) / s).to(x0.dtype).reshape(x0.shape)


class DPMSchedulerBase(SchedulerMixin, ConfigMixin):
    """Common part of :class:`MultistepDPMSolverScheduler` and :class:`SinglestepDPMSolverScheduler`.

    Subclasses call :meth:`_setup` from their ``@register_to_config`` ``__init__`` and implement ``step``.
    """

    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers]
    order = 1  # one model call per `step` (diffusers' convention for DPM-Solver schedulers)
    init_noise_sigma = 1.0

    # -- construction ---------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {c.prediction_type!r}")
        if c.algorithm_type not in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"):
            raise ValueError(
                f"algorithm_type must be 'dpmsolver++', 'dpmsolver' or 'sde-dpmsolver++', got {c.algorithm_type!r}"
            )
        if c.solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {c.solver_type!r}")
        if isinstance(c.solver_order, bool) or c.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {c.solver_order!r}")
        if c.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {c.timestep_spacing!r}"
            )
        if c.final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(
                f"final_sigmas_type must be one of {FINAL_SIGMAS_TYPES}, got {c.final_sigmas_type!r}"
            )
        if c.get("use_lu_lambdas", False) and c.timestep_spacing not in ("linspace", "logSNR"):
            raise ValueError(
                "use_lu_lambdas=True is the logSNR grid; it does not combine with another spacing"
            )
        if c.use_karras_sigmas and self._logsnr_grid():
            raise ValueError(
                "use_karras_sigmas and timestep_spacing='logSNR' are two different grids; pick one"
            )
        self.betas = make_betas(
            c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.trained_betas
        )
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)
        self.train_sigmas = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # float64, increasing
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(c.num_train_timesteps)[::-1].copy())
        self.sigmas = torch.cat([self.train_sigmas.flip(0), self.train_sigmas.new_zeros(1)]).float()
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self.model_outputs: list[torch.Tensor] = []

    def _logsnr_grid(self) -> bool:
        return self.config.timestep_spacing == "logSNR" or bool(self.config.get("use_lu_lambdas", False))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """First step index to use (img2img / inpainting pipelines call this)."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Identity: the samples are VP-scaled (``init_noise_sigma = 1``)."""
        return sample

    # -- step grid --------------------------------------------------------------------------------
    def _sigma_to_t(self, sigma: np.ndarray) -> np.ndarray:
        """Continuous timestep label for a noise level: linear interpolation of ``log sigma~`` over the
        training table (exact at the integer timesteps)."""
        log_table = np.log(self.train_sigmas.numpy())
        return np.interp(
            np.log(np.maximum(sigma, 1e-300)), log_table, np.arange(len(log_table), dtype=np.float64)
        )

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the grid: ``num_inference_steps`` model timesteps and ``num_inference_steps + 1`` noise levels.

        ``sigmas[i]`` (i < N) is the level the model sees at ``timesteps[i]``; ``sigmas[N]`` is the end
        point: 0 (``final_sigmas_type="zero"``, the last step returns the data prediction) or the
        level of training timestep 0 (``"sigma_min"``). Karras and logSNR grids are built with
        N + 1 points ending at ``sigma_min`` in the ``"sigma_min"`` case (no zero-length step: NFE is
        exactly ``num_inference_steps``); their model timesteps are the exact (fractional) labels of
        their noise levels, so the network and the solver see the same noise level.
        """
        c = self.config
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {n!r}")
        if n < c.solver_order:
            raise ValueError(f"num_inference_steps={n} is below solver_order={c.solver_order}")
        T = c.num_train_timesteps
        if n > T:
            raise ValueError(f"num_inference_steps={n} exceeds num_train_timesteps={T}")
        train = self.train_sigmas.numpy()
        s_min, s_max = float(train[0]), float(train[-1])
        to_zero = c.final_sigmas_type == "zero"
        if c.use_karras_sigmas or self._logsnr_grid():
            m = n if to_zero else n + 1
            if c.use_karras_sigmas:
                sig = karras_sigmas(s_min, s_max, m)
            else:
                sig = np.exp(np.linspace(math.log(s_max), math.log(s_min), m))
            sig[0], sig[-1] = s_max, (sig[-1] if to_zero else s_min)
            model_sig = sig[:n]
            timesteps = torch.from_numpy(self._sigma_to_t(model_sig))
            end = 0.0 if to_zero else s_min
            sigmas = np.append(model_sig, end)
        else:
            if c.timestep_spacing == "linspace":
                ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
            elif c.timestep_spacing == "leading":
                ratio = T // (n + 1)
                ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + c.steps_offset
            else:  # trailing
                ts = (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)[:n]
            ts = np.clip(ts, 0, T - 1)
            if len(np.unique(ts)) != n:
                raise ValueError(
                    f"timestep_spacing={c.timestep_spacing!r} gives duplicate timesteps for {n} steps"
                )
            end = 0.0 if to_zero else s_min
            sigmas = np.append(train[ts], end)
            timesteps = torch.from_numpy(ts)
        if not to_zero and sigmas[-2] <= sigmas[-1]:
            raise ValueError(
                "the last grid point already is sigma_min: use fewer steps or final_sigmas_type='zero'"
            )
        self.sigmas = torch.from_numpy(sigmas)  # float64; the update runs in the sample's precision
        self.timesteps = timesteps.to(device)
        self.num_inference_steps = n
        self.model_outputs = []
        self._step_index = None
        self._begin_index = None
        self._on_set_timesteps()

    def _on_set_timesteps(self) -> None:  # subclasses reset their own state
        pass

    # -- per-step quantities ---------------------------------------------------------------------
    @staticmethod
    def _alpha_sigma_lambda(sigma_tilde: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``alpha, sigma, lambda`` of a VE level ``sigma~`` (``sigma~ = 0``: 1, 0, +inf)."""
        alpha = torch.rsqrt(1.0 + sigma_tilde**2)
        return alpha, sigma_tilde * alpha, -torch.log(sigma_tilde)

    def _coeffs(self, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._alpha_sigma_lambda(self.sigmas[i].to(device=like.device, dtype=like.dtype))

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        t = torch.as_tensor(timestep).to(schedule_timesteps.device)
        hits = (schedule_timesteps == t).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps")
        return int(hits[0].item())

    def _init_step_index(self, timestep) -> None:
        self._step_index = (
            self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index
        )

    def _work_dtype(self, sample: torch.Tensor) -> torch.dtype:
        """The update runs in float32 at least (float64 samples stay float64)."""
        return torch.float64 if sample.dtype == torch.float64 else torch.float32

    def _begin_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor):
        """Common start of ``step``: checks, the grid index ``i``, the sample ``x`` in the working dtype
        and the converted model output ``m`` at ``i``."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._check_step_inputs(model_output, sample)
        dt = self._work_dtype(sample)
        x = sample.to(dt)
        return i, x, self.convert_model_output(model_output.to(dt), x, i)

    def _end_step(self, prev: torch.Tensor, sample: torch.Tensor, return_dict: bool):
        """Common end of ``step``: advance the index, return ``prev`` in the sample's dtype."""
        self._step_index += 1
        prev = prev.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _check_step_inputs(self, model_output: torch.Tensor, sample: torch.Tensor) -> int:
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}"
            )
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError(f"step() called {i + 1} times after set_timesteps({self.num_inference_steps})")
        if not bool(torch.isfinite(model_output).all()):
            raise ValueError(
                f"model output contains NaN or inf at step index {i} (timestep {self.timesteps[i]})"
            )
        return i

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """Data prediction (``dpmsolver++`` / ``sde-dpmsolver++``) or noise prediction (``dpmsolver``) at
        grid point ``i``, with thresholding of the data prediction if configured."""
        c = self.config
        alpha, sigma, _ = self._coeffs(i, sample)
        if c.prediction_type == "epsilon":
            x0 = (sample - sigma * model_output) / alpha
        elif c.prediction_type == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = alpha * sample - sigma * model_output
        if c.algorithm_type != "dpmsolver":
            return (
                dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
                if c.thresholding
                else x0
            )
        if c.thresholding:
            x0 = dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        elif c.prediction_type == "epsilon":
            return model_output
        return (sample - alpha * x0) / sigma

    def _data_prediction(self, converted: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """x0 from a converted output (identity except for ``dpmsolver``)."""
        if self.config.algorithm_type != "dpmsolver":
            return converted
        alpha, sigma, _ = self._coeffs(i, sample)
        return (sample - sigma * converted) / alpha

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """``alpha_t x0 + sigma_t noise``. Timesteps of the current grid use the grid's noise levels (also
        fractional Karras/logSNR labels); other integer timesteps use the training table."""
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        sig = []
        for t in timesteps.tolist():
            hits = (self.timesteps.cpu().to(torch.float64) == float(t)).nonzero()
            if len(hits):
                sig.append(float(self.sigmas[int(hits[0])]))
            elif float(t) == int(t) and 0 <= int(t) < len(self.train_sigmas):
                sig.append(float(self.train_sigmas[int(t)]))
            else:
                raise ValueError(
                    f"timestep {t} is neither on the current grid nor an integer training timestep"
                )
        st = torch.tensor(sig, dtype=torch.float64)
        alpha, sigma, _ = self._alpha_sigma_lambda(st)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        alpha = alpha.to(original_samples).reshape(shape)
        sigma = sigma.to(original_samples).reshape(shape)
        return alpha * original_samples + sigma * noise
