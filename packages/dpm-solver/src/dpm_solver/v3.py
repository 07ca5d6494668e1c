# ruff: noqa: E741  (l and I are the paper's names of the statistics / integrals)
"""DPM-Solver-v3 (Zheng, Lu, Bao, Zhu; arXiv 2310.13268): multistep predictor with empirical model
statistics (EMS), pseudo-order, the corrector and the half-corrector. Upstream class name and call
shape (``thu-ml/DPM-Solver-v3``, ``dpm_solver_v3.py``); runs on any device.

With ``l, s, b`` the EMS on a lambda grid (see :mod:`dpm_solver.statistics`) and
``L = int l``, ``S = int s``, ``B = int e^{-S} b``, ``I = int e^{L+S}``, ``C = int e^{L+S} B`` (lambda-integrals
from the grid start), ``f = (sigma eps - l x) / alpha`` and, relative to the step start s,
``g = e^{S_s - S} f - e^{S_s} (B - B_s)``, one step s -> t of order n + 1 is::

    x_t = (alpha_t/alpha_s) e^{L_s - L_t} x_s - alpha_t e^{-L_t - S_s} (I_t - I_s) g_s
          - alpha_t e^{-L_t} (C_t - C_s - B_s (I_t - I_s))
          - alpha_t e^{L_s - L_t} sum_{k=1..n} [int_s^t e^{(L+S) - (L+S)_s} (lambda - lambda_s)^k / k!] g_s^(k)

``g^(k)`` from an exact local polynomial fit (Vandermonde) or, with pseudo-order, from Newton divided
differences (``k!`` times the k-th divided difference). Integrals: ``l, s, b`` are taken piecewise linear in
lambda between grid points (so ``L`` and ``S`` are exact piecewise quadratics) and the exponential
integrals use Gauss-Legendre quadrature on every grid interval (``quad_nodes`` nodes; upstream uses the
trapezoid rule on the grid values, which differs at O(grid spacing^2)). With ``degenerated=True``
(``l = 1, s = b = 0``) the update is DPM-Solver++ multistep with the ``taylor`` second-order term and the
exact third-order coefficient (``DPM_Solver.sample(..., solver_type="taylor", exact_3m=True)``), to
float64 rounding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch

from .schedules import NoiseScheduleVP
from .statistics import EMSStatistics, load_statistics

__all__ = ["DPM_Solver_v3"]

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic", "edm")


def _load_upstream_dir(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upstream's released layout: ``path/l.npz`` (key ``l``) and ``path/sb.npz`` (keys ``s``, ``b``)."""
    with np.load(os.path.join(path, "l.npz"), allow_pickle=False) as z:
        l = torch.from_numpy(z["l"].astype(np.float64))
    with np.load(os.path.join(path, "sb.npz"), allow_pickle=False) as z:
        s, b = torch.from_numpy(z["s"].astype(np.float64)), torch.from_numpy(z["b"].astype(np.float64))
    return l, s, b


def _gauss_legendre(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes ``tau`` and weights ``w`` on [0, 1], and ``Q[j, k] = int_0^{tau_j} ell_k`` (Lagrange basis on
    the nodes): the cumulative integral of the node interpolant."""
    x, w = np.polynomial.legendre.leggauss(m)
    tau = (x + 1.0) / 2.0
    w = w / 2.0
    q = np.zeros((m, m))
    for k in range(m):
        others = np.delete(tau, k)
        poly = np.poly1d(others, r=True) / np.prod(tau[k] - others)
        ip = np.polyint(poly)
        q[:, k] = ip(tau) - ip(0.0)
    return (torch.from_numpy(tau), torch.from_numpy(w), torch.from_numpy(q))


def _segment_nodes(lam, v, V, tau):
    """Values at the quadrature nodes of every interval of a piecewise-linear ``v`` and its integral ``V``."""
    d = (lam[1:] - lam[:-1]).reshape(-1, 1, *([1] * (v.dim() - 1)))
    t = tau.reshape(1, -1, *([1] * (v.dim() - 1)))
    v0, dv = v[:-1].unsqueeze(1), (v[1:] - v[:-1]).unsqueeze(1)
    return v0 + dv * t, V[:-1].unsqueeze(1) + d * (v0 * t + dv * t * t / 2.0)


def _ems_integrals(lam, l, s, b, m, chunk=1 << 14):
    """``L, S, B, I, C`` at the grid points (float64), chunked over the data elements."""
    n1 = lam.numel()
    shape = l.shape
    l2, s2, b2 = (v.reshape(n1, -1) for v in (l, s, b))
    tau, w, q = _gauss_legendre(m)
    d = (lam[1:] - lam[:-1]).reshape(-1, 1)
    outs = {k: torch.empty_like(l2) for k in "LSBIC"}

    def cum(seg):
        return torch.cat([torch.zeros_like(seg[:1]), seg.cumsum(0)])

    for p0 in range(0, l2.shape[1], chunk):
        lc, sc, bc = (v[:, p0 : p0 + chunk] for v in (l2, s2, b2))
        L = cum(d * (lc[:-1] + lc[1:]) / 2.0)
        S = cum(d * (sc[:-1] + sc[1:]) / 2.0)
        _, L_n = _segment_nodes(lam, lc, L, tau)
        _, S_n = _segment_nodes(lam, sc, S, tau)
        b_n, _ = _segment_nodes(lam, bc, torch.zeros_like(bc), tau)
        e_n = torch.exp(L_n + S_n)
        wb = w.reshape(1, -1, 1)
        I = cum(d * (wb * e_n).sum(1))
        fb = torch.exp(-S_n) * b_n
        B = cum(d * (wb * fb).sum(1))
        B_n = B[:-1].unsqueeze(1) + d.unsqueeze(1) * torch.einsum("jk,nkp->njp", q, fb)
        C = cum(d * (wb * e_n * B_n).sum(1))
        for k, v in zip("LSBIC", (L, S, B, I, C), strict=True):
            outs[k][:, p0 : p0 + chunk] = v
    return {k: v.reshape(shape) for k, v in outs.items()}


class DPM_Solver_v3:
    """DPM-Solver-v3 (upstream ``DPM_Solver_v3`` call shape).

    Args:
        statistics: an :class:`~dpm_solver.statistics.EMSStatistics`, a file written by
            :func:`~dpm_solver.statistics.save_statistics` (checked against ``noise_schedule``), an
            upstream directory with ``l.npz`` / ``sb.npz`` (grid = ``l.shape[0] - 1`` intervals uniform in
            lambda over ``[t_end, t_start]``, as upstream), or ``None`` with ``degenerated=True``.
        noise_schedule: the model's :class:`NoiseScheduleVP`.
        steps: number of steps = NFE of :meth:`sample`.
        t_start / t_end: default: the statistics' range (upstream dir / ``None``: ``T`` and ``1/N``);
            must lie inside the statistics' lambda range.
        skip_type: ``"time_uniform"``, ``"logSNR"``, ``"time_quadratic"`` or ``"edm"`` (Karras rho = 7);
            as upstream, the step times are then snapped to the nearest EMS grid point.
        degenerated: use ``l = 1, s = 0, b = 0`` (DPM-Solver++ multistep).
        device: where the coefficient tables live (default: CPU; moved to the sample's device on use).
        quad_nodes: Gauss-Legendre nodes per grid interval for the exponential integrals (new).
        statistics_steps: grid intervals when ``statistics is None`` (new; upstream's sets use 1200).
    """

    def __init__(
        self,
        statistics: EMSStatistics | str | os.PathLike | None,
        noise_schedule: NoiseScheduleVP,
        steps: int = 10,
        t_start: float | None = None,
        t_end: float | None = None,
        skip_type: str = "time_uniform",
        degenerated: bool = False,
        device: torch.device | str | None = None,
        quad_nodes: int = 4,
        statistics_steps: int = 1200,
    ) -> None:
        if not isinstance(noise_schedule, NoiseScheduleVP):
            raise TypeError(f"noise_schedule must be a NoiseScheduleVP, got {type(noise_schedule).__name__}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
        if not (isinstance(quad_nodes, int) and 1 <= quad_nodes <= 16):
            raise ValueError("quad_nodes must be an int in [1, 16]")
        ns = self.noise_schedule = noise_schedule
        self.steps = steps
        self.device = torch.device("cpu") if device is None else torch.device(device)

        if isinstance(statistics, (str, os.PathLike)) and os.path.isdir(statistics):
            l, s, b = _load_upstream_dir(os.fspath(statistics))
            stats = None
        elif isinstance(statistics, (str, os.PathLike)):
            stats = load_statistics(statistics, noise_schedule)
        elif isinstance(statistics, EMSStatistics):
            stats = statistics
            stats.check_compatible(noise_schedule)
        elif statistics is None:
            if not degenerated:
                raise ValueError("statistics=None needs degenerated=True")
            stats = None
            l = s = b = None
        else:
            raise TypeError("statistics must be EMSStatistics, a file or directory path, or None")

        if stats is not None:
            meta = stats.metadata
            t_T = float(meta.get("t_start", ns.T)) if t_start is None else float(t_start)
            t_0 = float(meta.get("t_end", 1.0 / ns.total_N)) if t_end is None else float(t_end)
            lambdas = stats.lambdas
            l, s, b = stats.l, stats.s, stats.b
        else:
            t_T = ns.T if t_start is None else float(t_start)
            t_0 = 1.0 / ns.total_N if t_end is None else float(t_end)
            if not (0 < t_0 < t_T):
                raise ValueError(f"need 0 < t_end < t_start, got t_start={t_T}, t_end={t_0}")
            n_stat = statistics_steps if l is None else l.shape[0] - 1
            lam_ends = ns.marginal_lambda(torch.tensor([t_T, t_0], dtype=torch.float64))
            lambdas = (
                lam_ends[0]
                + (lam_ends[1] - lam_ends[0]) * torch.arange(n_stat + 1, dtype=torch.float64) / n_stat
            )
            if l is None:
                l = torch.ones(n_stat + 1, 1, dtype=torch.float64)
                s = torch.zeros_like(l)
                b = torch.zeros_like(l)
        if not (0 < t_0 < t_T):
            raise ValueError(f"need 0 < t_end < t_start, got t_start={t_T}, t_end={t_0}")
        if degenerated:
            l, s, b = torch.ones_like(l), torch.zeros_like(s), torch.zeros_like(b)
        self.statistics_steps = lambdas.numel() - 1
        self.lambdas = lambdas.to(torch.float64)
        lam_T, lam_0 = (float(v) for v in ns.marginal_lambda(torch.tensor([t_T, t_0], dtype=torch.float64)))
        # The statistics file matches schedules to rtol 1e-5 (a float32 betas table passes), so the
        # lambda range is compared with the same relative tolerance and then clamped onto the grid.
        tol = 1e-5 * max(1.0, abs(float(self.lambdas[0])), abs(float(self.lambdas[-1])))
        if lam_T < float(self.lambdas[0]) - tol or lam_0 > float(self.lambdas[-1]) + tol:
            raise ValueError(
                f"t range [{t_0}, {t_T}] (lambda [{lam_T:.6g}, {lam_0:.6g}]) is outside the statistics' lambda "
                f"range [{float(self.lambdas[0]):.6g}, {float(self.lambdas[-1]):.6g}]"
            )
        lam_T, lam_0 = max(lam_T, float(self.lambdas[0])), min(lam_0, float(self.lambdas[-1]))
        self.lambda_T, self.lambda_0 = lam_T, lam_0
        if stats is not None and not degenerated:
            # The EMS integral tables depend on the statistics only, not on the step grid: computed once per
            # statistics object (a scheduler's set_timesteps rebuilds the solver on every pipeline call).
            key = (quad_nodes, *(int(t._version) for t in (stats.lambdas, stats.l, stats.s, stats.b)))
            cache = stats.__dict__.setdefault("_ems_tables_cache", {})
            if key not in cache:
                cache.clear()
                cache[key] = _ems_integrals(self.lambdas, l, s, b, quad_nodes)
            tables = cache[key]
        else:
            tables = _ems_integrals(self.lambdas, l, s, b, quad_nodes)
        self.l, self.s, self.b = l, s, b
        self.L, self.S, self.B, self.I, self.C = (tables[k] for k in "LSBIC")
        for name in ("L", "S", "B", "I", "C"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"EMS integral {name} overflows; the statistics are not usable")
        self.quad_nodes = quad_nodes
        self._tau, self._w, _ = _gauss_legendre(quad_nodes)
        self.exp_coeffs: dict[tuple[int, int, int], torch.Tensor] = {}
        self._dev_cache: dict[tuple, torch.Tensor] = {}

        times = self.get_time_steps(skip_type, t_T, t_0, steps)
        self.indexes = self.convert_to_indexes(times)
        if any(b_ <= a_ for a_, b_ in zip(self.indexes[:-1], self.indexes[1:], strict=False)):
            raise ValueError(
                f"steps={steps} with skip_type={skip_type!r} puts two steps on the same EMS grid point "
                f"(grid of {self.statistics_steps} intervals); use fewer steps or finer statistics"
            )
        self.timesteps = self.convert_to_timesteps(self.indexes)
        self.model: Callable | None = None

    # -- grids -------------------------------------------------------------------------------------
    def get_time_steps(self, skip_type: str, t_T: float, t_0: float, N: int) -> torch.Tensor:
        """``N + 1`` float64 times from ``t_T`` to ``t_0`` before snapping."""
        ns = self.noise_schedule
        w = torch.arange(N + 1, dtype=torch.float64) / N
        if skip_type == "logSNR":
            return ns.inverse_lambda(self.lambda_T + w * (self.lambda_0 - self.lambda_T))
        if skip_type == "time_uniform":
            return t_T + w * (t_0 - t_T)
        if skip_type == "time_quadratic":
            return (math.sqrt(t_T) + w * (math.sqrt(t_0) - math.sqrt(t_T))) ** 2
        rho = 7.0  # edm / Karras
        smin, smax = math.exp(-self.lambda_0), math.exp(-self.lambda_T)
        sig = (smax ** (1 / rho) + w * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        return ns.inverse_lambda(-torch.log(sig))

    def convert_to_indexes(self, timesteps: torch.Tensor) -> list[int]:
        """Nearest EMS grid index of each time."""
        lam = self.noise_schedule.marginal_lambda(timesteps.to(torch.float64))
        grid = self.lambdas
        idx = torch.searchsorted(grid, lam).clamp(1, grid.numel() - 1)
        left_closer = (lam - grid[idx - 1]) <= (grid[idx] - lam)
        return [int(v) for v in torch.where(left_closer, idx - 1, idx)]

    def convert_to_timesteps(self, indexes: list[int]) -> torch.Tensor:
        return self.noise_schedule.inverse_lambda(self.lambdas[indexes])

    # -- coefficients --------------------------------------------------------------------------------
    def _on(self, name: str, i, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device)
        if key not in self._dev_cache:
            self._dev_cache[key] = getattr(self, name).to(like.device)
        return self._dev_cache[key][i]

    def compute_exponential_coefficients_high_order(self, i_s: int, i_t: int, order: int = 2) -> torch.Tensor:
        """``int_{lambda_s}^{lambda_t} e^{(L+S) - (L+S)_s} (lambda - lambda_s)^n / n! dlambda``, n = order - 1."""
        key = (i_s, i_t, order)
        if key not in self.exp_coeffs:
            n = order - 1
            sl = slice(i_s, i_t + 1)
            lam = self.lambdas[sl]
            _, L_n = _segment_nodes(lam, self.l[sl], self.L[sl], self._tau)
            _, S_n = _segment_nodes(lam, self.s[sl], self.S[sl], self._tau)
            e = torch.exp(L_n + S_n - self.L[i_s] - self.S[i_s])
            d = lam[1:] - lam[:-1]
            u = (lam[:-1, None] + d[:, None] * self._tau[None] - lam[0]) ** n / math.factorial(n)
            u = u.reshape(*u.shape, *([1] * (e.dim() - 2)))
            wd = (d[:, None] * self._w[None]).reshape(*u.shape[:2], *([1] * (e.dim() - 2)))
            self.exp_coeffs[key] = (wd * u * e).sum((0, 1))
        return self.exp_coeffs[key]

    @staticmethod
    def compute_high_order_derivatives(n: int, lambda_0n, g_0n: list, pseudo: bool = False) -> list:
        """``g^(1..n)`` at ``lambda_0n[0]`` from ``n + 1`` values: exact polynomial fit, or Newton divided
        differences times ``k!`` (pseudo-order)."""
        if pseudo:
            D = [list(g_0n)]
            for i in range(1, n + 1):
                D.append(
                    [
                        (D[i - 1][j] - D[i - 1][j + 1]) / float(lambda_0n[j] - lambda_0n[i + j])
                        for j in range(n - i + 1)
                    ]
                )
            return [D[i][0] * math.factorial(i) for i in range(1, n + 1)]
        lam = torch.as_tensor([float(v) for v in lambda_0n], dtype=torch.float64)
        R = torch.stack([(lam[1:] - lam[0]) ** k for k in range(1, n + 1)], dim=1)  # (n, n)
        Rinv = torch.linalg.inv(R)
        diffs = [g - g_0n[0] for g in g_0n[1:]]
        out = []
        for k in range(n):
            acc = sum(float(Rinv[k, j]) * diffs[j] for j in range(n))
            out.append(acc * math.factorial(k + 1))
        return out

    def _update(self, xs: list, epss: list, idxs: list, i_t: int, order: int, pseudo: bool) -> torch.Tensor:
        """One step from grid point ``idxs[0]`` (state ``xs[0]``) to ``i_t`` of the given order, fitting
        ``g`` through the points ``idxs[0..order-1]``."""
        x_s = xs[0]
        dt = x_s.dtype
        i_s = idxs[0]
        lam = self.lambdas
        alpha = torch.sqrt(torch.sigmoid(2.0 * lam))
        sigma = torch.sqrt(torch.sigmoid(-2.0 * lam))
        n = order - 1
        g_0n = []
        S_s, B_s = self._on("S", i_s, x_s), self._on("B", i_s, x_s)
        for j in range(n + 1):
            i = idxs[j]
            f = (float(sigma[i]) * epss[j] - self._on("l", i, x_s).to(dt) * xs[j]) / float(alpha[i])
            g = torch.exp(S_s - self._on("S", i, x_s)).to(dt) * f - (
                torch.exp(S_s) * (self._on("B", i, x_s) - B_s)
            ).to(dt)
            g_0n.append(g)
        L_s, L_t = self._on("L", i_s, x_s), self._on("L", i_t, x_s)
        dI = self._on("I", i_t, x_s) - self._on("I", i_s, x_s)
        a_t, a_s = float(alpha[i_t]), float(alpha[i_s])
        A = (a_t / a_s) * torch.exp(L_s - L_t)
        Bc = a_t * torch.exp(-L_t - S_s) * dI
        Cc = a_t * torch.exp(-L_t) * (self._on("C", i_t, x_s) - self._on("C", i_s, x_s) - B_s * dI)
        x_t = A.to(dt) * x_s - Bc.to(dt) * g_0n[0] - Cc.to(dt)
        if n > 0:
            g_d = self.compute_high_order_derivatives(n, [lam[i] for i in idxs[: n + 1]], g_0n, pseudo)
            for k in range(n):
                coef = self.compute_exponential_coefficients_high_order(i_s, i_t, order=k + 2).to(x_s.device)
                x_t = x_t - (a_t * torch.exp(L_s - L_t) * coef).to(dt) * g_d[k]
        return x_t

    def multistep_predictor_update(self, x_lst, eps_lst, index_lst, i_t: int, order: int = 1, pseudo=False):
        """Predictor from the last cached point to grid point ``i_t`` using the last ``order`` points."""
        sel = [-k - 1 for k in range(order)]
        return self._update(
            [x_lst[k] for k in sel],
            [eps_lst[k] for k in sel],
            [index_lst[k] for k in sel],
            i_t,
            order,
            pseudo,
        )

    def multistep_corrector_update(self, x_lst, eps_lst, index_lst, order: int = 1, pseudo=False):
        """Corrector of the last cached point from the one before, using also the model output there."""
        sel = [-2, -1] + [-k - 1 for k in range(2, order)]
        return self._update(
            [x_lst[k] for k in sel],
            [eps_lst[k] for k in sel],
            [index_lst[k] for k in sel],
            index_lst[-1],
            order,
            pseudo,
        )

    def corrected_model_output(self, eps_old: torch.Tensor, x_old: torch.Tensor, x_new: torch.Tensor, i: int):
        """Model output at the corrected state without a new NFE: keep ``sigma eps - l x`` fixed."""
        sigma = math.sqrt(float(torch.sigmoid(-2.0 * self.lambdas[i])))
        l_i = self._on("l", i, x_old).to(x_old.dtype)
        return (sigma * eps_old - l_i * x_old + l_i * x_new) / sigma

    def corrector_active(self, t_prev: float, use_corrector: bool, half: bool | str) -> bool:
        """Whether the corrector runs at a step whose current time is ``t_prev``.

        ``half=False``: always (full corrector). ``half="paper"``: the half-corrector of the paper
        (section 3.3: "using the corrector only in the time region t <= 0.5"). ``half=True``: upstream's
        code, which does the opposite (corrector only while t > 0.5) and is kept so that upstream
        scripts reproduce upstream's results.
        """
        if not use_corrector:
            return False
        if half == "paper":
            return float(t_prev) <= 0.5
        return float(t_prev) > 0.5 or not half

    @staticmethod
    def predictor_order(step: int, steps: int, order: int, lower_order_final: bool) -> int:
        p = min(step, order)
        return min(p, steps + 1 - step) if lower_order_final else p

    # -- driver ----------------------------------------------------------------------------------
    def sample(
        self,
        x: torch.Tensor,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        order: int = 3,
        p_pseudo: bool = False,
        use_corrector: bool = True,
        c_pseudo: bool = True,
        lower_order_final: bool = True,
        half: bool | str = False,
        return_intermediate: bool = False,
    ):
        """Sample with ``self.steps`` model evaluations (the corrector reuses the next evaluation).

        Per step (upstream order of operations): evaluate the model at the current point; if the corrector
        is active (``use_corrector``; with ``half=True`` only while the current time is > 0.5, upstream's
        code; with ``half="paper"`` only while it is <= 0.5, the paper's half-corrector) and its order
        ``p_prev + c_pseudo`` exceeds 1, recompute the current point from the previous one including the
        new evaluation and adjust the cached output without a new NFE; then predict the next point with
        order ``min(step, order)``, lowered to ``steps + 1 - step`` at the end if ``lower_order_final``
        (upstream applies this for every step count). Returns ``x`` at ``t_end`` (and the list of
        corrected states with ``return_intermediate``).
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError("x must be a floating-point tensor of shape (batch, ...)")
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if self.steps < order:
            raise ValueError(f"steps={self.steps} is below the solver order {order}")
        if half not in (False, True, "paper"):
            raise ValueError(f"half must be False, True (upstream's code: corrector while t > 0.5) or 'paper' "
                             f"(the paper's half-corrector: corrector while t <= 0.5), got {half!r}")  # fmt: skip
        if self.l.dim() > 1 and self.l.shape[1:] != x.shape[1:] and self.l.shape[1:] != (1,):
            raise ValueError(
                f"statistics are for data of shape {tuple(self.l.shape[1:])}, got {tuple(x.shape[1:])}"
            )
        self.model = lambda x_, t_: model_fn(x_, t_.expand(x_.shape[0]))
        cached_x, cached_eps, cached_index, intermediates = [], [], [], []
        timesteps = self.timesteps.to(device=x.device, dtype=x.dtype)
        steps = self.steps
        p_order = 0
        for step in range(1, steps + 1):
            t_prev = timesteps[step - 1]
            eps = self.model(x, t_prev)
            if not bool(torch.isfinite(eps).all()):
                raise FloatingPointError(
                    f"model output has NaN/inf at step {step - 1} (t={float(t_prev):.6g})"
                )
            cached_x.append(x)
            cached_eps.append(eps)
            cached_index.append(self.indexes[step - 1])
            if self.corrector_active(float(self.timesteps[step - 1]), use_corrector, half):
                c_order = p_order + int(bool(c_pseudo))
                if c_order > 1:
                    x_new = self.multistep_corrector_update(
                        cached_x, cached_eps, cached_index, order=c_order, pseudo=bool(c_pseudo)
                    )
                    cached_eps[-1] = self.corrected_model_output(
                        cached_eps[-1], cached_x[-1], x_new, cached_index[-1]
                    )
                    cached_x[-1] = x_new
            if return_intermediate:
                intermediates.append(cached_x[-1])
            p_order = self.predictor_order(step, steps, order, lower_order_final)
            x = self.multistep_predictor_update(
                cached_x, cached_eps, cached_index, self.indexes[step], order=p_order, pseudo=bool(p_pseudo)
            )
            keep = order + 1
            cached_x, cached_eps, cached_index = cached_x[-keep:], cached_eps[-keep:], cached_index[-keep:]
        if return_intermediate:
            return x, intermediates
        return x
