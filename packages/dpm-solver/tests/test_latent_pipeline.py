"""Our schedulers (multistep, singlestep, v3) inside a latent text-to-image pipeline: diffusers'
``StableDiffusionPipeline`` assembled from tiny randomly initialised parts (``AutoencoderKL``,
``UNet2DConditionModel``, a CLIP text encoder from a config and a CLIP tokenizer written from a 54-token
vocabulary): no downloads.

Checked: NFE (UNet calls) = ``num_inference_steps`` with classifier-free guidance batched into one call;
finite images of the right shape; the pipeline's latents equal the functional ``DPM_Solver`` with
``model_wrapper(guidance_type="classifier-free")`` on the same latents, grid and prompt embeddings; the pipeline
saved with ``save_pretrained`` reloads with our scheduler class and gives the same images.
"""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from dpm_solver import DPM_Solver, NoiseScheduleVP, model_wrapper
from dpm_solver.schedulers import MultistepDPMSolverScheduler, SinglestepDPMSolverScheduler
from dpm_solver.v3_scheduler import DPMSolverV3Scheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
PROMPT = "a cat"


def tiny_tokenizer(tmp_path) -> CLIPTokenizer:
    """Byte-level BPE with single letters only (no merges): enough for lower-case prompts."""
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase]
    tmp_path.mkdir(parents=True, exist_ok=True)
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=16)


def tiny_pipeline(tmp_path, scheduler) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).eval()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=54,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(tmp_path),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def start_latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def generate(pipe, steps: int, output_type: str = "np", guidance_scale: float = 3.0):
    with torch.no_grad():
        return pipe(
            [PROMPT, "a dog"],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            latents=start_latents(),
            output_type=output_type,
        ).images


@pytest.mark.parametrize(
    "scheduler",
    [
        MultistepDPMSolverScheduler(**SD, solver_order=2),
        MultistepDPMSolverScheduler(
            **SD, solver_order=3, use_karras_sigmas=True, final_sigmas_type="sigma_min"
        ),
        SinglestepDPMSolverScheduler(**SD, solver_order=3, timestep_spacing="logSNR"),
        DPMSolverV3Scheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            degenerated=True,
            skip_type="logSNR",
        ),
    ],
    ids=["2M", "3M-karras-sigma_min", "3S-logSNR", "v3-degenerated"],
)
def test_stable_diffusion_pipeline_nfe_finite_and_reload(scheduler, tmp_path):
    # a saved pipeline reloads a third-party scheduler only if its module is imported (it is, above)
    pipe = tiny_pipeline(tmp_path / "tok", scheduler)
    batches = []
    pipe.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    img = generate(pipe, 7)
    assert img.shape == (2, 16, 16, 3) and np.isfinite(img).all()
    assert batches == [4] * 7  # NFE = steps; guidance: [uncond, cond] x 2 prompts in one call
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["scheduler"] == [type(scheduler).__module__, type(scheduler).__name__]
    back = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    back.set_progress_bar_config(disable=True)
    assert type(back.scheduler) is type(scheduler)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(back.scheduler.config) == public(pipe.scheduler.config)
    np.testing.assert_allclose(generate(back, 7), img, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver"])
def test_pipeline_latents_equal_functional_solver(order, algorithm_type, tmp_path):
    """Same latents, grid, prompt embeddings and guidance: pipeline + our scheduler == ``DPM_Solver.sample``
    around ``model_wrapper(unet, guidance_type="classifier-free")``."""
    steps = 8
    sched = MultistepDPMSolverScheduler(
        **SD,
        solver_order=order,
        algorithm_type=algorithm_type,
        final_sigmas_type="sigma_min",  # the functional solver ends at t = 1/N, not at sigma = 0
        lower_order_final_threshold=10,  # upstream's rule, as DPM_Solver
    )
    pipe = tiny_pipeline(tmp_path, sched)
    got = generate(pipe, steps, output_type="latent")

    with torch.no_grad():
        cond, uncond = pipe.encode_prompt([PROMPT, "a dog"], "cpu", 1, True)
    ns = NoiseScheduleVP("discrete", betas=sched.betas, clipped_lambda=None)
    sched.set_timesteps(steps)
    grid = torch.cat([sched.timesteps.to(torch.float64) + 1.0, torch.tensor([1.0])]) / 1000.0

    def unet(x, t_input, c):
        return pipe.unet(x, t_input, encoder_hidden_states=c).sample

    fn = model_wrapper(
        unet, ns, model_type="noise", guidance_type="classifier-free", condition=cond,
        unconditional_condition=uncond, guidance_scale=3.0,
    )  # fmt: skip
    solver = DPM_Solver(fn, ns, algorithm_type=algorithm_type)
    solver.get_time_steps = lambda *a, **k: grid.to(torch.float32)
    with torch.no_grad():
        want = solver.sample(start_latents(), steps=steps, order=order, t_start=1.0, t_end=1e-3)
    assert solver.nfe == steps
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
