"""DPMSolverV3Scheduler inside a real diffusers DDPMPipeline with a tiny random UNet and statistics made by
our tool for that UNet (few samples), against the functional DPM_Solver_v3 on the same noise."""

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, UNet2DModel  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor  # noqa: E402
from dpm_solver import model_wrapper  # noqa: E402
from dpm_solver.statistics import compute_statistics, save_statistics  # noqa: E402
from dpm_solver.v3 import DPM_Solver_v3  # noqa: E402
from dpm_solver.v3_scheduler import DPMSolverV3Scheduler  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    for (
        m
    ) in unet.modules():  # the classic attention processor supports forward-mode AD (SDPA on CPU does not)
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor())
    sched = DPMSolverV3Scheduler(beta_schedule="linear", degenerated=True)
    ns = sched.noise_schedule
    model_fn = model_wrapper(lambda x, t: unet(x, t).sample, ns, model_type="noise")
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    stats = compute_statistics(
        model_fn,
        ns,
        x0,
        n_lambda=24,
        dtype=torch.float32,
        batch_size=64,
        progress=False,
        extra_metadata={"model": "tiny"},
    )
    path = tmp_path_factory.mktemp("ems") / "tiny_unet.safetensors"
    save_statistics(stats, path)
    return unet, ns, model_fn, stats, str(path)


def _counting(unet):
    calls = []
    fwd = unet.forward

    def wrapped(*a, **k):
        calls.append(1)
        return fwd(*a, **k)

    unet.forward = wrapped
    return calls, lambda: setattr(unet, "forward", fwd)


@pytest.mark.parametrize("skip_type", ["time_uniform", "logSNR"])
def test_pipeline_matches_functional_solver(setup, skip_type):
    unet, ns, model_fn, stats, path = setup
    kw = dict(solver_order=2, use_corrector=True, corrector_pseudo=True, lower_order_final=True)
    sched = DPMSolverV3Scheduler(beta_schedule="linear", statistics_path=path, skip_type=skip_type, **kw)
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    calls, restore = _counting(unet)
    try:
        out = pipe(
            batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(3), output_type="np"
        )
    finally:
        restore()
    assert len(calls) == 6  # NFE = num_inference_steps (the corrector reuses the next evaluation)
    img = out.images
    assert img.shape == (2, 8, 8, 1) and np.isfinite(img).all()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    v3 = DPM_Solver_v3(stats, ns, steps=6, skip_type=skip_type)
    with torch.no_grad():
        ref = v3.sample(
            x_T, model_fn, order=2, p_pseudo=False, use_corrector=True, c_pseudo=True, lower_order_final=True
        )
    ref_img = (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(img, ref_img, atol=2e-5)


def test_save_load_round_trip_and_pipeline_reload(setup, tmp_path):
    unet, _, _, _, path = setup
    sched = DPMSolverV3Scheduler(
        beta_schedule="linear", statistics_path=path, solver_order=3, half_corrector=True
    )
    sched.save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == "DPMSolverV3Scheduler" and cfg["statistics_path"] == path
    back = DPMSolverV3Scheduler.from_pretrained(tmp_path / "s")
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(sched.config)
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["scheduler"] == ["dpm_solver.v3_scheduler", "DPMSolverV3Scheduler"]
    # a pipeline's own scheduler config converts, with the statistics added
    from diffusers import DDPMScheduler

    conv = DPMSolverV3Scheduler.from_config(DDPMScheduler().config, statistics_path=path)
    assert conv.config.statistics_path == path and conv.config.beta_schedule == "linear"
    reloaded = DDPMPipeline.from_pretrained(tmp_path / "p")
    assert isinstance(reloaded.scheduler, DPMSolverV3Scheduler)
    reloaded.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    a = pipe(
        batch_size=1, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    b = reloaded(
        batch_size=1, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_prediction_types_and_add_noise(setup):
    _, ns, _, _, path = setup
    # float64: at t = T, alpha = 6e-3 and the x0 <-> eps conversions amplify float32 rounding
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs = {}
    for pt in ("epsilon", "sample", "v_prediction"):
        s = DPMSolverV3Scheduler(beta_schedule="linear", statistics_path=path, prediction_type=pt)
        s.set_timesteps(4)
        t = s.t_continuous[0]
        a, sg = ns.marginal_alpha(t), ns.marginal_std(t)
        x0 = (x - sg * eps) / a
        model_out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sg * x0}[pt]
        outs[pt] = s.step(model_out, s.timesteps[0], x).prev_sample
    assert torch.allclose(outs["sample"], outs["epsilon"], rtol=1e-9, atol=1e-9)
    assert torch.allclose(outs["v_prediction"], outs["epsilon"], rtol=1e-9, atol=1e-9)
    s = DPMSolverV3Scheduler(beta_schedule="linear", statistics_path=path)
    label = torch.tensor([499.0])
    t = (label.double() + 1) / 1000
    want = ns.marginal_alpha(t) * x + ns.marginal_std(t) * eps
    assert torch.allclose(s.add_noise(x, eps, label.expand(3)), want, atol=1e-12)
    assert s.scale_model_input(x, 0) is x and s.init_noise_sigma == 1.0 and len(s) == 1000


def test_bad_input(setup):
    _, _, _, _, path = setup
    with pytest.raises(ValueError, match="statistics_path"):
        DPMSolverV3Scheduler()
    with pytest.raises(ValueError, match="prediction_type"):
        DPMSolverV3Scheduler(statistics_path=path, prediction_type="flow")
    s = DPMSolverV3Scheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, statistics_path=path
    )
    with pytest.raises(ValueError, match="noise schedule"):
        s.set_timesteps(5)
    s = DPMSolverV3Scheduler(beta_schedule="linear", statistics_path=path)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(torch.zeros(1, 1, 8, 8), 0, torch.zeros(1, 1, 8, 8))
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="shape"):
        s.step(torch.zeros(1, 3, 8, 8), s.timesteps[0], torch.zeros(1, 3, 8, 8))
    with pytest.raises(FloatingPointError, match="step 0"):
        s.step(torch.full((1, 1, 8, 8), float("nan")), s.timesteps[0], torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="half_corrector"):
        DPMSolverV3Scheduler(statistics_path=path, half_corrector="yes")
    with pytest.raises(ValueError, match="below solver_order"):
        DPMSolverV3Scheduler(statistics_path=path, solver_order=3).set_timesteps(2)


def test_statistics_of_a_float32_betas_schedule_are_accepted(setup, tmp_path):
    """A schedule built from float32 betas matches the scheduler's float64 one to ~1e-7 in lambda:
    its statistics are accepted (the file's schedule check allows rtol 1e-5; the lambda range check
    used 1e-9 and refused them) and sample like the float64 schedule's statistics."""
    from dpm_solver import NoiseScheduleVP

    unet, _, _, _, path64 = setup
    ns32 = NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32))
    model_fn = model_wrapper(lambda x, t: unet(x, t).sample, ns32, model_type="noise")
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    stats = compute_statistics(
        model_fn, ns32, x0, n_lambda=24, dtype=torch.float32, batch_size=64, progress=False
    )
    path32 = tmp_path / "f32.safetensors"
    save_statistics(stats, path32)
    outs = []
    for path in (str(path32), path64):
        s = DPMSolverV3Scheduler(beta_schedule="linear", statistics_path=path)
        s.set_timesteps(5)
        x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            for t in s.timesteps:
                x = s.step(unet(x, t).sample, t, x).prev_sample
        outs.append(x)
    assert torch.isfinite(outs[0]).all()
    assert float((outs[0] - outs[1]).abs().max()) <= 1e-2 * float(outs[1].abs().max())
