"""Command line for the EMS statistics of DPM-Solver-v3: ``python -m dpm_solver.statistics_cli ...``.

Model: ``--model gmm`` (the analytic Gaussian mixture of the benchmark, for trying the tool),
``--model module:factory`` (``factory()`` returns ``model(x, t_input) -> output`` of type
``--model-type``) or ``--unet DIR`` (a diffusers ``UNet2DModel`` folder; its attention switches to the
classic processor, which supports forward-mode AD). Data ``x0``: ``--data file.pt|file.npy`` (a tensor
``(n, *shape)``) or ``--data module:sampler`` (``sampler(n, generator) -> x0``). The schedule follows
upstream/diffusers: ``--schedule linear`` (VPSDE) or ``discrete`` with ``--beta-schedule`` and
``--beta-start/--beta-end``. With ``--checkpoint`` an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch

from .model_wrapper import model_wrapper
from .schedules import NoiseScheduleVP
from .statistics import compute_statistics, save_statistics

__all__ = ["main"]


def _import(spec: str):
    mod, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"expected module:attribute, got {spec!r}")
    return getattr(importlib.import_module(mod), attr)


def _schedule(args) -> NoiseScheduleVP:
    if args.schedule == "linear":
        return NoiseScheduleVP("linear", continuous_beta_0=args.beta_0, continuous_beta_1=args.beta_1)
    if args.schedule == "cosine":
        return NoiseScheduleVP("cosine")
    from .v3_scheduler import betas_for_schedule

    betas = betas_for_schedule(args.num_train_timesteps, args.beta_start, args.beta_end, args.beta_schedule)
    return NoiseScheduleVP("discrete", betas=betas)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dpm_solver.statistics_cli", description=__doc__.split("\n")[0]
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="'gmm' or module:factory")
    src.add_argument("--unet", help="diffusers UNet2DModel folder")
    p.add_argument("--model-type", default="noise", choices=["noise", "x_start", "v", "score"])
    p.add_argument("--data", help="x0 tensor file (.pt/.npy) or module:sampler (not needed for --model gmm)")
    p.add_argument("--schedule", default="discrete", choices=["discrete", "linear", "cosine"])
    p.add_argument(
        "--beta-schedule", default="linear", choices=["linear", "scaled_linear", "squaredcos_cap_v2"]
    )
    p.add_argument("--beta-start", type=float, default=1e-4)
    p.add_argument("--beta-end", type=float, default=0.02)
    p.add_argument("--num-train-timesteps", type=int, default=1000)
    p.add_argument("--beta-0", type=float, default=0.1)
    p.add_argument("--beta-1", type=float, default=20.0)
    p.add_argument("--t-start", type=float, default=None)
    p.add_argument("--t-end", type=float, default=None)
    p.add_argument("--n-lambda", type=int, default=1200)
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-probes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--jvp", default="forward", choices=["forward", "finite_difference"])
    p.add_argument(
        "--common-noise",
        action="store_true",
        help="reuse the same noise and probes at every lambda point (smooth statistics; see compute_statistics)",
    )
    p.add_argument("--checkpoint", default=None, help="partial file (.safetensors/.npz) for resume")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output .safetensors or .npz")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dtype = getattr(torch, args.dtype)
    ns = _schedule(args)
    extra = {}
    if args.model == "gmm":
        from .analytic import GaussianMixture

        gmm = GaussianMixture.random(8, 6, 0.3, seed=0)

        def model_fn(x, t):
            return gmm.prediction("noise", x.double(), t.double(), ns).to(x.dtype)

        data = args.data or (lambda n, g: gmm.sample_ve(n, 0.0, g))
        extra["model"] = "analytic gmm d=8 K=6 std=0.3 seed=0"
    else:
        if args.unet is not None:
            from diffusers import UNet2DModel
            from diffusers.models.attention_processor import Attention, AttnProcessor

            unet = UNet2DModel.from_pretrained(args.unet).eval().to(args.device, dtype)
            for m in unet.modules():
                if isinstance(m, Attention):
                    m.set_processor(AttnProcessor())

            def net(x, t):
                return unet(x, t).sample

            extra["model"] = f"diffusers UNet2DModel {args.unet}"
        else:
            net = _import(args.model)()
            extra["model"] = args.model
        model_fn = model_wrapper(net, ns, model_type=args.model_type)
        data = args.data
        if data is None:
            raise SystemExit("--data is required for this model")
    if isinstance(data, str):
        if ":" in data and not data.endswith((".pt", ".npy")):
            data = _import(data)
        elif data.endswith(".npy"):
            import numpy as np

            data = torch.from_numpy(np.load(data, allow_pickle=False))
        else:
            data = torch.load(data, weights_only=True)
    if isinstance(data, torch.Tensor):
        data = data.to(args.device, dtype)
    n_samples = args.n_samples if args.n_samples is not None or isinstance(data, torch.Tensor) else 1024
    t0 = time.perf_counter()
    stats = compute_statistics(
        model_fn,
        ns,
        data,
        n_lambda=args.n_lambda,
        n_samples=n_samples,
        t_start=args.t_start,
        t_end=args.t_end,
        batch_size=args.batch_size,
        n_probes=args.n_probes,
        seed=args.seed,
        dtype=dtype,
        device=args.device,
        checkpoint_path=args.checkpoint,
        progress=not args.no_progress,
        extra_metadata=extra,
        jvp=args.jvp,
        common_noise=args.common_noise,
    )
    save_statistics(stats, args.out)
    print(
        f"wrote {args.out}: l/s/b {tuple(stats.l.shape)}, lambda [{float(stats.lambdas[0]):.4g}, "
        f"{float(stats.lambdas[-1]):.4g}], {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
