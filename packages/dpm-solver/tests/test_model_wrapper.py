"""model_wrapper: prediction types agree on the analytic model, time labels, guidance, bad input."""

import pytest
import torch
from dpm_solver import NoiseScheduleVP, model_wrapper
from dpm_solver.analytic import GaussianMixture


def _labelled(ns, gmm, kind, seen):
    def model(x, t_input, *cond):
        seen.append(t_input)
        t = (t_input + 1.0) / ns.total_N if ns.schedule == "discrete" else t_input
        return gmm.prediction(kind, x, t, ns)

    return model


@pytest.mark.parametrize("schedule", ["linear", "cosine", "discrete"])
def test_prediction_types_agree(schedule):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ns = NoiseScheduleVP(schedule, betas=betas if schedule == "discrete" else None)
    gmm = GaussianMixture.random(5, 4, 0.3, seed=2)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 0.99], dtype=torch.float64)
    seen = []
    outs = {
        kind: model_wrapper(_labelled(ns, gmm, kind, seen), ns, model_type=kind)(x, t)
        for kind in ("noise", "x_start", "v", "score")
    }
    for kind in ("x_start", "v", "score"):
        torch.testing.assert_close(outs[kind], outs["noise"], rtol=1e-9, atol=1e-9)
    if schedule == "discrete":
        torch.testing.assert_close(seen[0], 1000 * t - 1)  # labels t in [1/N, 1] -> [0, N - 1]
    else:
        torch.testing.assert_close(seen[0], t)
    # scalar t is broadcast over the batch
    one = model_wrapper(_labelled(ns, gmm, "noise", []), ns)(x, torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(
        one, gmm.prediction("noise", x, torch.full((6,), 0.3, dtype=torch.float64), ns)
    )


def test_guidance():
    ns = NoiseScheduleVP("linear")
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    calls = []

    def model(x, t_in, c):
        calls.append(x.shape[0])
        return x * c.reshape(-1, 1)

    cond, uncond = torch.full((4,), 2.0, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for batched in (True, False):
        calls.clear()
        fn = model_wrapper(
            model,
            ns,
            guidance_type="classifier-free",
            condition=cond,
            unconditional_condition=uncond,
            guidance_scale=3.0,
            cfg_batched=batched,
        )
        torch.testing.assert_close(fn(x, t), 3.0 * 2.0 * x)  # eps_u + 3 (eps_c - eps_u), eps_u = 0
        assert calls == ([8] if batched else [4, 4])
    calls.clear()
    fn = model_wrapper(
        model, ns, guidance_type="classifier-free", condition=cond, unconditional_condition=uncond
    )
    torch.testing.assert_close(fn(x, t), 2.0 * x)  # scale 1: conditional call only
    assert calls == [4]

    # classifier guidance with log p(c|x) = -|x|^2/2: eps - s sigma grad = eps + s sigma x
    fn = model_wrapper(
        lambda x, t_in: torch.zeros_like(x),
        ns,
        guidance_type="classifier",
        guidance_scale=2.0,
        classifier_fn=lambda x, t_in, c: -0.5 * (x**2).sum(1),
    )
    torch.testing.assert_close(fn(x, t), 2.0 * ns.marginal_std(t).reshape(-1, 1) * x)


def test_bad_input():
    ns = NoiseScheduleVP("linear")
    m = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="model_type"):
        model_wrapper(m, ns, model_type="epsilon")
    with pytest.raises(ValueError, match="guidance_type"):
        model_wrapper(m, ns, guidance_type="cfg")
    with pytest.raises(ValueError, match="classifier_fn"):
        model_wrapper(m, ns, guidance_type="classifier")
    with pytest.raises(ValueError, match="condition"):
        model_wrapper(m, ns, guidance_type="classifier-free")
    with pytest.raises(TypeError, match="noise_schedule"):
        model_wrapper(m, "linear")
    with pytest.raises(ValueError, match="t_continuous"):
        model_wrapper(m, ns)(torch.ones(3, 2), torch.ones(2))


def test_sigma_space_inputs_and_classifier_guidance():
    """EDM schedule: the network and the classifier see x~ = x / alpha and t = sigma~."""
    from dpm_solver import NoiseScheduleEDM

    ns = NoiseScheduleEDM()
    seen = {}

    def net(x_tilde, t_in):
        seen["x"], seen["t"] = x_tilde, t_in
        return torch.zeros_like(x_tilde)

    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.full((3,), 2.5, dtype=torch.float64)
    alpha = 1 / (1 + 2.5**2) ** 0.5
    fn = model_wrapper(
        net, ns, guidance_type="classifier", guidance_scale=2.0,
        classifier_fn=lambda xt, t_in, c: -0.5 * (xt**2).sum(1),
    )  # fmt: skip
    out = fn(x, t)
    torch.testing.assert_close(seen["x"], x / alpha)
    torch.testing.assert_close(seen["t"], t)
    # eps - s sigma~ grad_x~ log p = 0 + 2 * 2.5 * x~
    torch.testing.assert_close(out, 2.0 * 2.5 * x / alpha)
