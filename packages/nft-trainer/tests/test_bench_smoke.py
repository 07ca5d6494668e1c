"""The CPU-proof benchmark's whole pipeline (SFT cache, RL runs, throughput, report) on a trivial budget."""

import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_proof.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cpu_proof", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cpu_proof"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_cpu_proof", None)


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_pipeline_end_to_end_and_resume(bench, tmp_path):
    args = ["--smoke", "--workers", "1", "--methods", "NFT", "GRPO", "--seeds", "0", "--out", str(tmp_path)]
    md = bench.main(args)
    assert "| NFT |" in md and "| GRPO |" in md and "NFTTrainer" in md and "GRPOTrainer" in md
    for name in ("cpu_proof_curves.csv", "cpu_proof_summary.csv", "cpu_proof_throughput.csv", "cpu_proof.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "cpu_proof.png").read_bytes()[:4] == b"\x89PNG"

    steps = bench.SMOKE.rl_steps
    curves = _rows(tmp_path / "cpu_proof_curves.csv")
    for method in ("NFT", "GRPO"):
        got = [int(r["step"]) for r in curves if r["method"] == method]
        assert got == list(range(steps + 1)), (method, got)
    for r in curves:
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and float(r["train_cpu_s"]) >= 0.0
    summary = _rows(tmp_path / "cpu_proof_summary.csv")
    assert [r["method"] for r in summary] == ["NFT", "GRPO"]
    assert {int(r["completions"]) for r in summary} == {steps * bench.SMOKE.batch_completions}
    tp = _rows(tmp_path / "cpu_proof_throughput.csv")
    assert {r["trainer"] for r in tp} == {"NFTTrainer", "GRPOTrainer"}

    # rerun: the SFT checkpoint and both runs come from the cache (files untouched)
    cache = tmp_path / "cache"
    cached = [
        cache / "sft" / "model.safetensors",
        cache / "runs" / "NFT_s0.json",
        cache / "runs" / "GRPO_s0.json",
    ]
    before = [p.stat().st_mtime_ns for p in cached]
    bench.main([*args, "--no-throughput"])
    assert [p.stat().st_mtime_ns for p in cached] == before


def test_checkpoint_meta_is_checked(bench, tmp_path):
    s = dataclasses.replace(bench.SMOKE, sft_max_steps=1)
    ckpt = bench.sft_checkpoint(s, tmp_path, progress=False)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["steps"] == 1 and meta["key"] == s.key(*bench.SFT_FIELDS)
    bench.load_sft(ckpt, s)
    with pytest.raises(ValueError, match="other settings"):
        bench.load_sft(ckpt, dataclasses.replace(s, hidden_size=32))
    # a changed setting retrains instead of silently reusing the checkpoint
    s2 = dataclasses.replace(s, sft_lr=1e-3)
    bench.sft_checkpoint(s2, tmp_path, progress=False)
    assert json.loads((ckpt / "meta.json").read_text())["key"] == s2.key(*bench.SFT_FIELDS)


def test_method_specs(bench):
    assert bench.method_spec("Dr. GRPO") == ("grpo", {"loss_type": "dr_grpo", "scale_rewards": "none"})
    assert bench.method_spec("RFT") == ("nft", {"neg_weight": 0.0})
    assert bench.method_spec("DAPO")[1]["epsilon_high"] == 0.28
    with pytest.raises(ValueError, match="method must be one of"):
        bench.method_spec("PPO")


@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "nope=1"],
        ["--set", "rl_steps"],
        ["--set", "rl_steps=1.5"],
        ["--workers", "0"],
        ["--seeds", "-1"],
    ],
)
def test_bad_command_line(bench, argv, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert "error" in capsys.readouterr().err


def test_diagnostic_probe(bench):
    spec = importlib.util.spec_from_file_location(
        "bench_cpu_proof_diag", BENCH.with_name("bench_cpu_proof_diag.py")
    )
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    from nft_trainer.toy import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    model = tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    model.train()
    got = diag.probe(model, tok, ["1+2=", "10-30="], ["3", "-20"], 4, seed=0)
    assert set(got) == {"greedy_acc", "sampled_acc", "greedy_answer_entropy"}
    assert got["greedy_acc"] in (0.0, 0.5, 1.0) and got["sampled_acc"] in (0.0, 0.5, 1.0)
    # a random model over 104 tokens is close to uniform: entropy near log(104) = 4.64 nats
    assert 3.0 < got["greedy_answer_entropy"] <= 4.65
    assert model.training
