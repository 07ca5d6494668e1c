"""The EMS command line: analytic model end to end, resume from a checkpoint, a tensor data file."""

import numpy as np
import pytest
import torch
from dpm_solver import NoiseScheduleVP
from dpm_solver.statistics import load_statistics
from dpm_solver.statistics_cli import main


def test_cli_gmm_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "gmm.npz"
    argv = ["--model", "gmm", "--schedule", "linear", "--t-start", "1", "--t-end", "1e-3", "--n-lambda", "12",
            "--n-samples", "32", "--dtype", "float64", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    st = load_statistics(out, NoiseScheduleVP("linear"), data_shape=(8,))
    assert st.n_lambda == 12 and st.metadata["extra"]["model"].startswith("analytic gmm")
    out2 = tmp_path / "gmm2.npz"
    ckpt = tmp_path / "part.safetensors"
    assert main([*argv[:-1], str(out2), "--checkpoint", str(ckpt)]) == 0
    assert not ckpt.exists()
    assert torch.equal(load_statistics(out2).l, st.l)


def test_cli_tensor_file_and_factory(tmp_path, monkeypatch):
    (tmp_path / "ems_cli_model.py").write_text(
        "import torch\n\ndef factory():\n    return lambda x, t: 0.5 * torch.tanh(x) + 1e-3 * t.reshape(-1, 1, 1, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    x0 = np.random.default_rng(0).standard_normal((16, 2, 2, 2)).astype(np.float32)
    np.save(tmp_path / "x0.npy", x0)
    out = tmp_path / "lin.safetensors"
    argv = ["--model", "tests_helpers_absent:factory", "--data", str(tmp_path / "x0.npy"), "--out", str(out)]
    with pytest.raises(ModuleNotFoundError):
        main(argv)
    argv = ["--model", "ems_cli_model:factory", "--model-type", "x_start", "--data", str(tmp_path / "x0.npy"),
            "--n-lambda", "6", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    st = load_statistics(out, NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000)), (2, 2, 2))
    assert torch.isfinite(st.l).all() and torch.isfinite(st.s).all()


def test_cli_common_noise_flag_reaches_compute_statistics(tmp_path):
    base = ["--model", "gmm", "--schedule", "linear", "--t-start", "1", "--t-end", "1e-3", "--n-lambda", "8",
            "--n-samples", "16", "--dtype", "float64", "--no-progress"]  # fmt: skip
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main([*base, "--out", str(a)]) == 0
    assert main([*base, "--common-noise", "--out", str(b)]) == 0
    la, lb = load_statistics(a).l, load_statistics(b).l
    assert la.shape == lb.shape and not torch.equal(la, lb)  # the flag reaches compute_statistics
