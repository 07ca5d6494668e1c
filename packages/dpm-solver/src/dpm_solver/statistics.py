# ruff: noqa: E741  (l and I are the paper's names of the statistics / integrals)
"""Empirical model statistics (EMS) of DPM-Solver-v3 (Zheng et al., arXiv 2310.13268).

On a grid uniform in the half-logSNR ``lambda`` the statistics are, per data element:

* ``l_lambda = E[sigma v * (d eps/dx v)]`` with Rademacher ``v``: a Hutchinson estimate of the
  diagonal of the Jacobian of ``sigma eps_theta`` (forward-mode JVPs, ``torch.func.jvp``), averaged
  over noisy data ``x = alpha x0 + sigma z``;
* with ``f = (sigma eps - l x) / alpha`` and its total derivative along the probability-flow ODE
  ``f' = e^{-lambda} ((l - 1) eps + eps'_lambda) - l'_lambda x / alpha`` (``eps'_lambda`` is a JVP
  with tangent ``(dx/dlambda, dt/dlambda) = (sigma^2 x - sigma eps, 1 / (dlambda/dt))``), the
  least-squares fit ``(s, b) = argmin E|f' - s f - b|^2``:
  ``s = Cov(f, f') / Var(f)``, ``b = E f' - s E f``. ``l'_lambda`` is the central finite difference of
  ``l`` on the grid smoothed over +-5 points (as upstream).

``f`` and ``f'`` are affine in ``(l, l')``, so one pass over the grid accumulates the moments of
``A = sigma eps / alpha``, ``X = x / alpha``, ``P = e^{-lambda} (eps'_lambda - eps)``,
``Q = e^{-lambda} eps`` (with ``f = A - l X``, ``f' = P + l Q - l' X``) and ``s, b`` are assembled at the
end. Each grid point uses its own seeded generator, so a resumed run gives the same bits.

Files: ``.safetensors`` (tensors ``l, s, b, lambdas``; string metadata) or ``.npz`` (the same plus a
``__metadata__`` JSON string; loaded with ``allow_pickle=False``). Metadata: ``format_version``, the
noise schedule (name, parameters, 17 knots of a discrete ``log alpha`` table, compared with rtol 1e-5), ``data_shape``, ``t_start``,
``t_end``, ``n_lambda``, ``n_samples`` and free-form ``extra``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .schedules import NoiseScheduleVP

__all__ = [
    "FORMAT_VERSION",
    "EMSStatistics",
    "compute_statistics",
    "hutchinson_jacobian_diag",
    "load_statistics",
    "save_statistics",
    "schedule_signature",
    "smooth_statistics",
]

FORMAT_VERSION = 1
_MOMENTS = ("A", "X", "P", "Q", "AA", "AX", "XX", "AP", "AQ", "XP", "XQ")


def schedule_signature(ns: NoiseScheduleVP) -> dict[str, Any]:
    """JSON-able identity of a VP schedule: name, parameters and (discrete) a hash of its table."""
    if not isinstance(ns, NoiseScheduleVP):
        raise TypeError(f"noise_schedule must be a NoiseScheduleVP, got {type(ns).__name__}")
    sig: dict[str, Any] = {"schedule": ns.schedule, "T": float(ns.T), "total_N": int(ns.total_N)}
    if ns.schedule == "linear":
        sig.update(beta_0=ns.beta_0, beta_1=ns.beta_1)
    elif ns.schedule == "cosine":
        sig.update(cosine_s=ns.cosine_s)
    else:
        la = ns.log_alpha_array.to(torch.float64)
        idx = torch.linspace(0, la.numel() - 1, 17).round().long()
        sig["log_alpha_knots"] = [float(v) for v in la[idx]]  # compared with rtol 1e-5 (float32 tables pass)
    return sig


def _same_schedule(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, str) or isinstance(vb, str):
            if va != vb:
                return False
        elif not torch.allclose(
            torch.as_tensor(va, dtype=torch.float64),
            torch.as_tensor(vb, dtype=torch.float64),
            rtol=1e-5,
            atol=1e-8,
        ):
            return False
    return True


@dataclass
class EMSStatistics:
    """EMS ``l, s, b`` of shape ``(n_lambda + 1, *data_shape)`` on the increasing grid ``lambdas``."""

    l: torch.Tensor
    s: torch.Tensor
    b: torch.Tensor
    lambdas: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lambdas = torch.as_tensor(self.lambdas, dtype=torch.float64).reshape(-1)
        n = self.lambdas.numel()
        if n < 2:
            raise ValueError("the lambda grid needs at least 2 points")
        if not bool((self.lambdas[1:] > self.lambdas[:-1]).all()):
            raise ValueError("lambdas must be strictly increasing (from t_start to t_end)")
        for name in ("l", "s", "b"):
            v = torch.as_tensor(getattr(self, name), dtype=torch.float64)
            if v.dim() < 1 or v.shape[0] != n:
                raise ValueError(
                    f"statistic {name!r} must have shape ({n}, *data_shape), got {tuple(v.shape)}"
                )
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"statistic {name!r} has non-finite entries")
            setattr(self, name, v)
        if not (self.l.shape == self.s.shape == self.b.shape):
            raise ValueError("l, s and b must have the same shape")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.l.shape[1:])

    @property
    def n_lambda(self) -> int:
        return self.lambdas.numel() - 1

    @classmethod
    def degenerate(
        cls,
        noise_schedule: NoiseScheduleVP,
        t_start: float,
        t_end: float,
        n_lambda: int = 1200,
        data_shape=(1,),
    ) -> EMSStatistics:
        """``l = 1, s = 0, b = 0`` (DPM-Solver-v3 then equals DPM-Solver++ multistep)."""
        lambdas = _lambda_grid(noise_schedule, t_start, t_end, n_lambda)
        shape = (n_lambda + 1, *data_shape)
        z = torch.zeros(shape, dtype=torch.float64)
        meta = _metadata(noise_schedule, data_shape, t_start, t_end, n_lambda, 0, {"degenerate": True})
        return cls(torch.ones(shape, dtype=torch.float64), z, z.clone(), lambdas, meta)

    def check_compatible(self, noise_schedule: NoiseScheduleVP | None = None, data_shape=None) -> None:
        """Raise ``ValueError`` if made for another schedule or data shape (skipped where unknown)."""
        if noise_schedule is not None and "schedule" in self.metadata:
            want, have = schedule_signature(noise_schedule), self.metadata["schedule"]
            if not _same_schedule(want, have):
                raise ValueError(
                    f"these statistics were computed for the noise schedule {have}, not for {want}; "
                    "recompute them for this model/schedule"
                )
        if data_shape is not None and tuple(data_shape) != self.data_shape:
            raise ValueError(
                f"these statistics are for data of shape {self.data_shape} (per sample), got {tuple(data_shape)}"
            )


def _lambda_grid(ns: NoiseScheduleVP, t_start: float, t_end: float, n_lambda: int) -> torch.Tensor:
    if not (isinstance(n_lambda, int) and n_lambda >= 1):
        raise ValueError(f"n_lambda must be an int >= 1, got {n_lambda!r}")
    if not (0 < t_end < t_start <= ns.T * (1 + 1e-12)):
        raise ValueError(f"need 0 < t_end < t_start <= T={ns.T}, got t_start={t_start}, t_end={t_end}")
    lam = ns.marginal_lambda(torch.tensor([t_start, t_end], dtype=torch.float64))
    w = torch.arange(n_lambda + 1, dtype=torch.float64) / n_lambda
    return lam[0] + w * (lam[1] - lam[0])


def _metadata(ns, data_shape, t_start, t_end, n_lambda, n_samples, extra) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "schedule": schedule_signature(ns),
        "data_shape": list(data_shape),
        "t_start": float(t_start),
        "t_end": float(t_end),
        "n_lambda": int(n_lambda),
        "n_samples": int(n_samples),
        "extra": dict(extra or {}),
    }


# -- files ----------------------------------------------------------------------------------------
def save_statistics(stats: EMSStatistics, path: str | os.PathLike) -> None:
    """Write ``stats`` to ``path`` (``.safetensors`` or ``.npz``), atomically."""
    path = os.fspath(path)
    tensors = {k: getattr(stats, k).contiguous() for k in ("l", "s", "b", "lambdas")}
    _write(path, tensors, stats.metadata)


def _write(path: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, tmp, metadata={"ems": json.dumps(meta)})
    elif path.endswith(".npz"):
        import numpy as np

        arrays = {k: v.numpy() for k, v in tensors.items()}
        with open(tmp, "wb") as fh:
            np.savez(fh, __metadata__=np.array(json.dumps(meta)), **arrays)
    else:
        raise ValueError(f"statistics files end in .safetensors or .npz, got {path!r}")
    os.replace(tmp, path)


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("ems", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        return tensors, meta
    if path.endswith(".npz"):
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__metadata__"])) if "__metadata__" in z.files else {}
            tensors = {k: torch.from_numpy(z[k].copy()) for k in z.files if k != "__metadata__"}
        return tensors, meta
    raise ValueError(f"statistics files end in .safetensors or .npz, got {path!r}")


def load_statistics(
    path: str | os.PathLike, noise_schedule: NoiseScheduleVP | None = None, data_shape=None
) -> EMSStatistics:
    """Read a file written by :func:`save_statistics`; with ``noise_schedule`` / ``data_shape`` given,
    a file made for another schedule or shape raises ``ValueError``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no statistics file at {path!r}")
    tensors, meta = _read(path)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path!r}: statistics format_version {version!r}, this library reads {FORMAT_VERSION}"
        )
    missing = {"l", "s", "b", "lambdas"} - set(tensors)
    if missing:
        raise ValueError(f"{path!r} lacks the tensors {sorted(missing)}")
    stats = EMSStatistics(tensors["l"], tensors["s"], tensors["b"], tensors["lambdas"], meta)
    stats.check_compatible(noise_schedule, data_shape)
    return stats


# -- estimation -----------------------------------------------------------------------------------
def hutchinson_jacobian_diag(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_probes: int = 1, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(x), mean_k v_k * (J v_k))`` with Rademacher ``v_k``: unbiased per-sample estimate of the
    diagonal of the Jacobian of ``fn`` (an elementwise-batched map) by forward-mode JVPs."""
    acc = torch.zeros_like(x)
    out = None
    for _ in range(n_probes):
        v = torch.randint(0, 2, x.shape, generator=generator, dtype=torch.int64).to(x) * 2 - 1
        out, jv = torch.func.jvp(fn, (x,), (v,))
        acc += v * jv
    return out, acc / n_probes


def _smoothed_derivative(l: torch.Tensor, lambdas: torch.Tensor, half_window: int = 5) -> torch.Tensor:
    """Central finite differences of ``l`` along dim 0 (one-sided at the ends), then a moving average
    over +-``half_window`` points (truncated at the ends)."""
    n = l.shape[0]
    lam = lambdas.reshape((-1,) + (1,) * (l.dim() - 1))
    d = torch.empty_like(l)
    if n == 1:
        return torch.zeros_like(l)
    d[1:-1] = (l[2:] - l[:-2]) / (lam[2:] - lam[:-2])
    d[0] = (l[1] - l[0]) / (lam[1] - lam[0])
    d[-1] = (l[-1] - l[-2]) / (lam[-1] - lam[-2])
    c = torch.cat([torch.zeros_like(d[:1]), d.cumsum(0)])
    idx = torch.arange(n)
    lo, hi = (idx - half_window).clamp(min=0), (idx + half_window + 1).clamp(max=n)
    cnt = (hi - lo).to(l.dtype).reshape((-1,) + (1,) * (l.dim() - 1))
    return (c[hi] - c[lo]) / cnt


def smooth_statistics(stats: EMSStatistics, half_window: int = 5) -> EMSStatistics:
    """Moving average of ``l, s, b`` over +-``half_window`` grid points (truncated at the ends).

    Not part of the paper's definition (opt-in): the EMS are Monte-Carlo estimates with independent
    samples per grid point, so they are noisy along lambda; smoothing trades that noise for an
    O((half_window * dlambda)^2) bias. ``metadata["extra"]["smoothed_half_window"]`` records it."""
    if not (isinstance(half_window, int) and half_window >= 0):
        raise ValueError(f"half_window must be an int >= 0, got {half_window!r}")

    def ma(v: torch.Tensor) -> torch.Tensor:
        if half_window == 0:
            return v.clone()
        n = v.shape[0]
        c = torch.cat([torch.zeros_like(v[:1]), v.cumsum(0)])
        idx = torch.arange(n)
        lo, hi = (idx - half_window).clamp(min=0), (idx + half_window + 1).clamp(max=n)
        return (c[hi] - c[lo]) / (hi - lo).to(v.dtype).reshape((-1,) + (1,) * (v.dim() - 1))

    meta = json.loads(json.dumps(stats.metadata))
    meta.setdefault("extra", {})["smoothed_half_window"] = half_window
    return EMSStatistics(ma(stats.l), ma(stats.s), ma(stats.b), stats.lambdas.clone(), meta)


def _finish(acc: dict[str, torch.Tensor], lsum: torch.Tensor, count: int, lambdas: torch.Tensor):
    m = {k: v / count for k, v in acc.items()}
    l = lsum / count
    ld = _smoothed_derivative(l, lambdas)
    ef = m["A"] - l * m["X"]
    efp = m["P"] + l * m["Q"] - ld * m["X"]
    eff = m["AA"] - 2 * l * m["AX"] + l * l * m["XX"]
    effp = m["AP"] + l * m["AQ"] - ld * m["AX"] - l * m["XP"] - l * l * m["XQ"] + l * ld * m["XX"]
    var = eff - ef * ef
    cov = effp - ef * efp
    # Var(f) is a difference of terms of size ~E[A^2] + l^2 E[X^2]: below 1e-10 of that it is rounding
    tiny = 1e-10 * (m["AA"] + l * l * m["XX"]).clamp(min=1e-300)
    s = torch.where(
        var > tiny, cov / torch.where(var > tiny, var, torch.ones_like(var)), torch.zeros_like(var)
    )
    b = efp - s * ef
    return l, s, b


def _make_fd_jvp(step: float):
    def fd_jvp(fn, primals, tangents):
        with torch.no_grad():
            out = fn(*primals)
            plus = fn(*(p + step * t for p, t in zip(primals, tangents, strict=True)))
            minus = fn(*(p - step * t for p, t in zip(primals, tangents, strict=True)))
        return out, (plus - minus) / (2.0 * step)

    return fd_jvp


def compute_statistics(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise_schedule: NoiseScheduleVP,
    data: torch.Tensor | Callable[[int, torch.Generator], torch.Tensor],
    n_lambda: int = 1200,
    n_samples: int | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    batch_size: int = 256,
    n_probes: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
    progress: bool = True,
    extra_metadata: dict[str, Any] | None = None,
    jvp: str = "forward",
    fd_step: float = 1e-3,
    common_noise: bool = False,
) -> EMSStatistics:
    """Estimate the EMS of ``model_fn(x, t_continuous) -> eps`` (e.g. from :func:`model_wrapper`).

    Args:
        data: training data ``x0`` as a tensor ``(n, *data_shape)`` (all rows are used at every grid
            point unless ``n_samples`` is smaller) or a sampler ``data(n, generator) -> x0``.
        n_lambda: number of lambda intervals; the grid is uniform in lambda from ``lambda(t_start)``
            (default ``T``) to ``lambda(t_end)`` (default ``1/N``), ``n_lambda + 1`` points.
        n_samples: noisy samples ``x = alpha x0 + sigma z`` per grid point.
        n_probes: Rademacher probes per sample for ``l``.
        checkpoint_path: partial file (``.safetensors``/``.npz``) written about every
            ``checkpoint_every`` seconds and at the end; if it exists and matches this run's settings the
            computation resumes from it (same bits as an uninterrupted run). Removed on success.

        jvp: ``"forward"`` (``torch.func.jvp``; the model's ops need forward-mode AD, e.g. diffusers'
            classic ``AttnProcessor`` instead of SDPA on the CPU) or ``"finite_difference"`` (central
            differences with step ``fd_step`` along the tangent: 2 extra evaluations per JVP, works for any
            model, O(fd_step^2) bias).
        common_noise: reuse the same noise ``z``, probes ``v`` (and sampler draws) at every grid point
            (common random numbers; new, not in the paper). Each point's estimate is unchanged in law, but
            the Monte-Carlo error becomes a smooth function of lambda instead of independent noise from
            point to point, which the solver's polynomial fit of ``g`` along lambda would otherwise see
            as roughness (an NFE-independent error floor). Default ``False``: the paper's independent draws.

    Cost: ``(n_lambda + 1) * n_samples * (1 + n_probes)`` JVPs (each about 2-3 model evaluations).
    """
    if jvp not in ("forward", "finite_difference"):
        raise ValueError(f"jvp must be 'forward' or 'finite_difference', got {jvp!r}")
    jvp_fn = torch.func.jvp if jvp == "forward" else _make_fd_jvp(fd_step)
    ns = noise_schedule
    t_start = ns.T if t_start is None else float(t_start)
    t_end = 1.0 / ns.total_N if t_end is None else float(t_end)
    lambdas = _lambda_grid(ns, t_start, t_end, n_lambda)
    if isinstance(data, torch.Tensor):
        if data.dim() < 2 or not data.is_floating_point():
            raise ValueError("data must be a floating tensor of shape (n, *data_shape)")
        n_samples = data.shape[0] if n_samples is None else int(n_samples)
        if not 1 <= n_samples <= data.shape[0]:
            raise ValueError(f"n_samples must lie in [1, {data.shape[0]}] for a data tensor, got {n_samples}")
        device = data.device if device is None else torch.device(device)
        data_shape = tuple(data.shape[1:])
    elif callable(data):
        if n_samples is None or int(n_samples) < 1:
            raise ValueError("a data sampler needs n_samples >= 1")
        n_samples = int(n_samples)
        probe = data(1, torch.Generator().manual_seed(seed))
        data_shape = tuple(probe.shape[1:])
        device = probe.device if device is None else torch.device(device)
    else:
        raise TypeError("data must be a tensor of x0 samples or a callable data(n, generator) -> x0")
    if batch_size < 1 or n_probes < 1:
        raise ValueError("batch_size and n_probes must be >= 1")

    settings = {
        "n_lambda": n_lambda,
        "n_samples": n_samples,
        "t_start": t_start,
        "t_end": t_end,
        "n_probes": n_probes,
        "seed": seed,
        "batch_size": batch_size,
        "dtype": str(dtype),
        "jvp": jvp if jvp == "forward" else f"{jvp}:{fd_step}",
        "schedule": schedule_signature(ns),
        "data_shape": list(data_shape),
    }
    if common_noise:
        settings["common_noise"] = True
    shape = (n_lambda + 1, *data_shape)
    acc = {k: torch.zeros(shape, dtype=torch.float64) for k in _MOMENTS}
    lsum = torch.zeros(shape, dtype=torch.float64)
    start = 0
    ckpt = os.fspath(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and os.path.isfile(ckpt):
        tensors, meta = _read(ckpt)
        if meta.get("settings") != json.loads(json.dumps(settings)):
            raise ValueError(f"checkpoint {ckpt!r} was made with other settings: {meta.get('settings')}")
        start = int(meta["next_index"])
        lsum = tensors["lsum"]
        acc = {k: tensors[k] for k in _MOMENTS}

    # work items (grid point, first sample, count), packed into model batches of <= batch_size rows
    items = [(i, j0, min(batch_size, n_samples - j0)) for i in range(start, n_lambda + 1)
             for j0 in range(0, n_samples, batch_size)]  # fmt: skip
    batches, cur, rows = [], [], 0
    for it in items:
        if cur and rows + it[2] > batch_size:
            batches.append(cur)
            cur, rows = [], 0
        cur.append(it)
        rows += it[2]
    if cur:
        batches.append(cur)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(initial=start, total=n_lambda + 1, desc="EMS", unit="lambda")
    last_save = time.monotonic()
    lam_dev = lambdas.to(device=device, dtype=dtype)
    gens: dict[int, torch.Generator] = {}
    done = start
    for batch in batches:
        xs, vs, rows_lam = [], [], []
        for i, j0, nb in batch:
            gseed = seed * 1_000_003 + (0 if common_noise else i)
            gen = gens.setdefault(i, torch.Generator().manual_seed(gseed))
            x0 = data[j0 : j0 + nb] if isinstance(data, torch.Tensor) else data(nb, gen)
            x0 = x0.to(device="cpu", dtype=dtype)
            z = torch.randn(x0.shape, generator=gen, dtype=dtype)
            vs.append(torch.stack([torch.randint(0, 2, x0.shape, generator=gen).to(dtype) * 2 - 1
                                   for _ in range(n_probes)]))  # fmt: skip
            xs.append((x0, z))
            rows_lam.append(lam_dev[i].expand(nb))
        lam = torch.cat(rows_lam)
        bshape = (-1,) + (1,) * len(data_shape)
        t = ns.inverse_lambda(lam)
        dt_dlam = torch.func.jvp(ns.inverse_lambda, (lam,), (torch.ones_like(lam),))[1]
        alpha, sigma = ns.marginal_alpha(t).reshape(bshape), ns.marginal_std(t).reshape(bshape)
        e_neg = torch.exp(-lam).reshape(bshape)
        x0 = torch.cat([a for a, _ in xs]).to(device)
        z = torch.cat([b_ for _, b_ in xs]).to(device)
        v_all = torch.cat(vs, dim=1).to(device)
        with torch.no_grad():  # forward-mode AD only; no autograd graph through the model
            x = alpha * x0 + sigma * z
            diag = torch.zeros_like(x)
            for k in range(n_probes):
                eps, jv = jvp_fn(lambda y, t=t: model_fn(y, t), (x,), (v_all[k],))
                diag += v_all[k] * jv
            diag = diag / n_probes
            dx = sigma**2 * x - sigma * eps
            _, deps = jvp_fn(model_fn, (x, t), (dx, dt_dlam))
        a_, x_ = sigma * eps / alpha, x / alpha
        p_, q_ = e_neg * (deps - eps), e_neg * eps
        terms = {
            "A": a_,
            "X": x_,
            "P": p_,
            "Q": q_,
            "AA": a_ * a_,
            "AX": a_ * x_,
            "XX": x_ * x_,
            "AP": a_ * p_,
            "AQ": a_ * q_,
            "XP": x_ * p_,
            "XQ": x_ * q_,
        }
        terms = {k: v.detach().to("cpu", torch.float64) for k, v in terms.items()}
        ld = (sigma * diag).detach().to("cpu", torch.float64)
        r0 = 0
        for i, _, nb in batch:
            for k, v in terms.items():
                acc[k][i] += v[r0 : r0 + nb].sum(0)
            lsum[i] += ld[r0 : r0 + nb].sum(0)
            r0 += nb
        last_i, last_j0, last_nb = batch[-1]
        new_done = last_i + 1 if last_j0 + last_nb >= n_samples else last_i
        if bar is not None and new_done > done:
            bar.update(new_done - done)
        done = new_done
        for i in [g for g in gens if g < done]:
            del gens[i]
        if ckpt is not None and time.monotonic() - last_save > checkpoint_every and done <= n_lambda:
            part = {"lsum": lsum.clone(), **{k: v.clone() for k, v in acc.items()}}
            for v in part.values():
                v[done:] = 0  # points not finished are redone on resume
            _write(ckpt, part, {"settings": settings, "next_index": done})
            last_save = time.monotonic()
    if bar is not None:
        bar.close()
    l, s, b = _finish(acc, lsum, n_samples, lambdas)
    meta = _metadata(ns, data_shape, t_start, t_end, n_lambda, n_samples, extra_metadata)
    meta["extra"].update(n_probes=n_probes, seed=seed)
    if common_noise:
        meta["extra"]["common_noise"] = True
    stats = EMSStatistics(l, s, b, lambdas, meta)
    if ckpt is not None and os.path.isfile(ckpt):
        os.remove(ckpt)
    return stats
