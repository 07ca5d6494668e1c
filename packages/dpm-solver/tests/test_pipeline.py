"""Our schedulers inside a real diffusers DDPMPipeline with a tiny random UNet (no downloads)."""

from __future__ import annotations

import json

import dpm_solver.schedulers  # noqa: F401 - a saved pipeline reloads only if the module is imported
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DPMSolverMultistepScheduler, UNet2DModel
from dpm_solver.schedulers import MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def generate(pipe: DDPMPipeline, steps: int, seed: int = 0) -> np.ndarray:
    return pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="np",
    ).images


@pytest.mark.parametrize(
    "sched",
    [
        MultistepDPMSolverScheduler(solver_order=2),
        MultistepDPMSolverScheduler(solver_order=3, use_karras_sigmas=True, final_sigmas_type="sigma_min"),
        MultistepDPMSolverScheduler(algorithm_type="sde-dpmsolver++"),
        SinglestepDPMSolverScheduler(solver_order=3, timestep_spacing="logSNR"),
    ],
    ids=["2M", "3M-karras-sigma_min", "sde-2M", "3S-logSNR"],
)
def test_ddpm_pipeline_runs_and_reloads(sched, tmp_path):
    unet = tiny_unet()
    calls = []
    unet.register_forward_hook(lambda *a: calls.append(1))
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        img = generate(pipe, 7)
    assert img.shape == (2, 8, 8, 1) and np.isfinite(img).all()
    assert len(calls) == 7  # NFE = num_inference_steps
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"][1] == type(sched).__name__
    assert index["scheduler"][0].startswith("dpm_solver")
    reloaded = DDPMPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.scheduler) is type(sched)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(reloaded.scheduler.config) == public(pipe.scheduler.config)
    with torch.no_grad():
        np.testing.assert_allclose(generate(reloaded, 7), img, atol=1e-6)


def test_pipeline_matches_diffusers_scheduler():
    """Same UNet, seed and grid: our 2M and diffusers' DPMSolverMultistepScheduler give the same images."""
    unet = tiny_unet()
    out = []
    for sched in (MultistepDPMSolverScheduler(), DPMSolverMultistepScheduler()):
        pipe = DDPMPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            out.append(generate(pipe, 10))
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)


def test_swap_in_from_diffusers_config():
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=DPMSolverMultistepScheduler(solver_order=3))
    pipe.scheduler = MultistepDPMSolverScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.solver_order == 3
    with torch.no_grad():
        assert np.isfinite(generate(pipe, 5)).all()
