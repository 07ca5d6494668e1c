"""nft-train: dry run, a 2-step toy run through the console script, local model/dataset files,
reward specs, and bad run files (each error names the key and the fix)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from nft_trainer.cli import main
from nft_trainer.run_config import ConfigError, resolve_reward_func, resolve_run

TOY_RUN = {
    "model": "toy:tiny_llama",
    "model_kwargs": {"hidden_size": 32, "num_layers": 1},
    "dataset": "toy:arithmetic",
    "dataset_kwargs": {"n": 32, "digits": 1},
    "reward_funcs": ["numeric_match"],
    "max_steps": 2,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 3,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 1,
    "report_to": "none",
    "gradient_checkpointing": False,
    "use_cpu": True,
}


def _write(tmp_path: Path, run: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(run))
    return path


def _toy(tmp_path: Path, **changes) -> dict:
    run = dict(TOY_RUN, output_dir=str(tmp_path / "out"))
    run.update(changes)
    return {k: v for k, v in run.items() if v is not None}


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nft-train: error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    path = _write(tmp_path, _toy(tmp_path, neg_weight=0.5))
    # "1e-2" is a string to PyYAML (YAML 1.1); float fields take it as the number YAML 1.2 and TRL read.
    assert (
        main(
            ["--config", str(path), "--dry-run", "--set", "learning_rate=1e-2", "--set", "max_grad_norm=5e-1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dry run: configuration is valid; nothing was trained" in out
    doc = yaml.safe_load(out.split("\ndry run:")[0])
    assert doc["run"]["trainer"].startswith("nft (NFTTrainer, NFTConfig)")
    assert doc["run"]["reward_funcs"] == ["numeric_match"]
    assert "32 rows" in doc["run"]["dataset"]
    assert doc["config"]["neg_weight"] == 0.5
    assert doc["config"]["learning_rate"] == 0.01  # --set override
    assert doc["config"]["max_grad_norm"] == 0.5
    assert doc["config"]["max_steps"] == 2
    assert doc["config"]["bf16"] is False
    assert not (tmp_path / "out").exists()  # nothing trained or written


@pytest.mark.slow  # a fresh Python process: ~10 s of imports on an idle machine
def test_two_step_toy_run_console_script(tmp_path):
    path = _write(tmp_path, _toy(tmp_path))
    script = Path(sys.executable).with_name("nft-train")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "nft_trainer.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [*cmd, "--config", str(path)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "nft-train summary" in out
    assert "trainer          NFTTrainer" in out
    assert "steps            2 / 2" in out
    assert f"last checkpoint  {tmp_path / 'out' / 'checkpoint-2'}" in out
    assert "final reward     " in out and "n/a" not in out.split("final reward")[1].splitlines()[0]
    assert "it/s" in proc.stderr or "s/it" in proc.stderr  # TRL's tqdm progress bar
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "checkpoint-2" / "optimizer.pt").is_file()


def test_local_model_jsonl_dataset_module_reward_and_resume(tmp_path, capsys):
    from nft_trainer.toy import char_tokenizer, tiny_llama

    tokenizer = char_tokenizer()
    model_dir = tmp_path / "model"
    tiny_llama(tokenizer, hidden_size=32, num_layers=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(8))
    )
    run = _toy(
        tmp_path,
        model=str(model_dir),
        model_kwargs=None,
        dataset=str(data),
        dataset_kwargs=None,
        trainer="grpo",
        reward_funcs=["nft_trainer.verifiers:numeric_match_reward", {"name": "math_verify"}],
        max_steps=1,
        eval_dataset=str(data),
        per_device_eval_batch_size=8,
    )
    path = _write(tmp_path, run)
    assert main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "trainer          GRPOTrainer" in out and "steps            1 / 1" in out
    assert "eval reward      n/a" not in out  # eval set given: evaluated at the end
    # --resume continues the finished run from its last checkpoint (nothing left to do, max_steps reached).
    assert main(["--config", str(path), "--resume", "--set", "max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from     {tmp_path / 'out' / 'checkpoint-1'}" in out


def test_saved_toy_model_with_toy_tokenizer(tmp_path, capsys):
    from nft_trainer.toy import char_tokenizer, tiny_llama

    model_dir = tmp_path / "weights_only"
    tiny_llama(char_tokenizer(), hidden_size=32, num_layers=1).save_pretrained(model_dir)
    run = _toy(tmp_path, model=str(model_dir), model_kwargs=None)
    assert "tokenizer: cannot load a tokenizer from" in _error(
        capsys, ["--config", str(_write(tmp_path, run)), "--dry-run"]
    )
    run["tokenizer"] = "toy:char"
    assert main(["--config", str(_write(tmp_path, run)), "--dry-run"]) == 0
    assert f"model: {model_dir}" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_dataset_file_formats(tmp_path, capsys, suffix):
    import datasets

    ds = datasets.Dataset.from_dict({"prompt": ["1+1=", "2+2=", "3+3="], "answer": ["2", "4", "6"]})
    path = tmp_path / f"data{suffix}"
    ds.to_json(path) if suffix == ".json" else ds.to_parquet(path)
    assert (
        main(
            [
                "--config",
                str(_write(tmp_path, _toy(tmp_path, dataset=str(path), dataset_kwargs=None))),
                "--dry-run",
            ]
        )
        == 0
    )
    assert "3 rows" in capsys.readouterr().out
    saved = tmp_path / "saved"
    ds.save_to_disk(saved)
    assert (
        main(
            [
                "--config",
                str(_write(tmp_path, _toy(tmp_path, dataset=str(saved), dataset_kwargs=None))),
                "--dry-run",
            ]
        )
        == 0
    )


def test_reward_specs(tmp_path):
    fn, name = resolve_reward_func("math_verify_reward")
    assert name == "math_verify" and fn.__name__ == "math_verify_reward"
    fn, name = resolve_reward_func({"name": "numeric_match", "kwargs": {"strategy": "first"}})
    assert name == "numeric_match[strategy=first]" and fn.__name__ == name
    assert fn(["46 7+8=15"], ["46"]) == [1.0]
    file = tmp_path / "my_rewards.py"
    file.write_text("def always_one(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    fn, name = resolve_reward_func(f"{file}:always_one")
    assert name == "always_one" and fn(["a", "b"]) == [1.0, 1.0]
    with pytest.raises(ConfigError, match="bad kwargs for 'numeric_match'"):
        resolve_reward_func({"name": "numeric_match", "kwargs": {"strategyy": "first"}})
    with pytest.raises(ConfigError, match=r"unknown verifier 'numeric_mach'.*did you mean 'numeric_match'"):
        resolve_reward_func("numeric_mach")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        resolve_reward_func("nft_trainer.verifiers:nope")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        resolve_reward_func("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="is not callable"):
        resolve_reward_func("nft_trainer.verifiers:STRATEGIES")
    with pytest.raises(ConfigError, match="unknown keys"):
        resolve_reward_func({"name": "numeric_match", "weight": 2})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_step": 2}, r"unknown key 'max_step'.*did you mean 'max_steps'"),
        ({"output_dir": None}, "output_dir: required"),
        ({"trainer": "ppo"}, r"trainer: must be one of \('nft', 'grpo'\)"),
        ({"neg_weight": -1.0}, "NFTConfig rejected the config: .*neg_weight must be >= 0"),
        (
            {"trainer": "grpo", "neg_weight": 1.0},
            "unknown key 'neg_weight': not a run key .* nor a field of GRPOConfig",
        ),
        ({"reward_funcs": []}, "reward_funcs: required"),
        ({"reward_funcs": ["numeric_match", "numeric_match"]}, r"\['numeric_match'\] listed more than once"),
        ({"model": None}, "model: required"),
        ({"model": "toy:gpt9"}, "unknown toy model 'gpt9'"),
        (
            {"model": "/no/such/dir", "model_kwargs": None},
            "neither a local model directory nor a 'toy:' spec",
        ),
        ({"model_kwargs": {"hidden_sise": 8}}, "model_kwargs: bad arguments for nft_trainer.toy.tiny_llama"),
        ({"model": "/no/such/dir"}, "model_kwargs: only for 'toy:' models"),
        ({"model_kwargs": [1]}, "model_kwargs: must be a mapping"),
        ({"tokenizer": "/x"}, "tokenizer: toy models use 'toy:char'"),
        ({"dataset": None}, "dataset: required"),
        ({"dataset": "toy:chess"}, "unknown toy dataset 'chess'"),
        ({"dataset_kwargs": {}}, r"dataset_kwargs: 'n' \(number of examples\) is required"),
        ({"dataset": "/no/such/file.jsonl", "dataset_kwargs": None}, "dataset: no such file"),
        ({"eval_dataset_kwargs": {"n": 3}}, "eval_dataset_kwargs: given without eval_dataset"),
        ({"peft": "lora"}, "peft: must be a mapping"),
        ({"peft": {"rank": 8}}, "peft: LoraConfig rejected"),
    ],
)
def test_bad_run_files(tmp_path, capsys, change, message):
    path = _write(tmp_path, _toy(tmp_path, **change))
    err = _error(capsys, ["--config", str(path), "--dry-run"])
    assert re.search(message, err), err


def test_bad_yaml_and_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: toy:tiny_llama\n  dataset: [unclosed\n")
    assert "is not valid YAML" in _error(capsys, ["--config", str(bad)])
    bad.write_text("- a\n- b\n")
    assert "must hold a YAML mapping" in _error(capsys, ["--config", str(bad)])
    assert "no such file" in _error(capsys, ["--config", str(tmp_path / "missing.yaml")])
    assert "expected KEY=VALUE" in _error(
        capsys, ["--config", str(_write(tmp_path, _toy(tmp_path))), "--set", "x"]
    )


def test_dataset_without_prompt_column(tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    path = _write(tmp_path, _toy(tmp_path, dataset=str(data), dataset_kwargs=None))
    err = _error(capsys, ["--config", str(path), "--dry-run"])
    assert "dataset: no 'prompt' column (columns: ['question', 'answer']); rename" in err
    data.with_suffix(".csv").write_text("prompt,answer\n1+1=,2\n")
    path = _write(tmp_path, _toy(tmp_path, dataset=str(data.with_suffix(".csv")), dataset_kwargs=None))
    assert "unsupported file type '.csv'" in _error(capsys, ["--config", str(path), "--dry-run"])


def test_resume_without_checkpoint(tmp_path, capsys):
    path = _write(tmp_path, _toy(tmp_path))
    (tmp_path / "out").mkdir()
    assert "--resume: no checkpoint-* directory in output_dir" in _error(
        capsys, ["--config", str(path), "--dry-run", "--resume"]
    )
    assert "checkpoint directory '/nope' does not exist" in _error(
        capsys, ["--config", str(path), "--dry-run", "--resume", "/nope"]
    )
    shutil.rmtree(tmp_path / "out")


def test_resolve_run_does_not_mutate_input(tmp_path):
    raw = _toy(tmp_path)
    frozen = json.loads(json.dumps(raw))
    resolve_run(raw, load=False)
    assert raw == frozen


CONFIGS = Path(__file__).with_name("configs")


def test_example_toy_config_is_valid(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(CONFIGS / "toy_nft.yaml"), "--dry-run"]) == 0
    assert "512 rows" in capsys.readouterr().out


def test_example_paper_config_fields_are_valid(tmp_path):
    # The GPU recipe cannot run here: swap model/dataset for toy ones and bf16 off, keep every other field.
    raw = yaml.safe_load((CONFIGS / "qwen_7b_paper.yaml").read_text())
    raw.update(
        model="toy:tiny_llama",
        dataset="toy:arithmetic",
        dataset_kwargs={"n": 4},
        bf16=False,
        output_dir=str(tmp_path / "out"),
    )
    spec = resolve_run(raw, load=False)
    config = spec.config
    world = 8  # the recipe's processes
    completions_per_update = config.per_device_train_batch_size * config.gradient_accumulation_steps * world
    assert completions_per_update == 512
    assert config.steps_per_generation // config.gradient_accumulation_steps == 16  # updates per rollout
    assert config.per_device_train_batch_size * config.steps_per_generation * world == 512 * 16
    assert (config.neg_weight, config.ratio_type, config.prompt_weighting) == (1.0, "token", "1-r")


def test_checkpoints_inside_a_generation_batch_are_flagged(tmp_path, capsys):
    from nft_trainer.cli import _warn_if_mid_generation

    run = _toy(tmp_path, steps_per_generation=2, per_device_train_batch_size=4, save_steps=1)
    assert main(["--config", str(_write(tmp_path, run)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# note: save_steps=1 is not a multiple of the optimizer steps of one generation batch" in out
    spec = resolve_run(run, load=False)
    with pytest.warns(UserWarning, match="in the middle of a generation batch"):
        _warn_if_mid_generation(spec, str(tmp_path / "out" / "checkpoint-3"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_mid_generation(spec, str(tmp_path / "out" / "checkpoint-4"))
    run["save_steps"] = 2
    assert main(["--config", str(_write(tmp_path, run)), "--dry-run"]) == 0
    assert "save_steps=" not in capsys.readouterr().out.split("run:")[0]


def test_trainer_input_errors_are_reported(tmp_path, capsys):
    file = tmp_path / "bad_reward.py"
    file.write_text("def one_arg(x):\n    return [1.0]\n")
    path = _write(tmp_path, _toy(tmp_path, reward_funcs=[f"{file}:one_arg"]))
    err = _error(capsys, ["--config", str(path)])
    assert "NFTTrainer refused the run: " in err and "one_arg" in err
    assert not (tmp_path / "out" / "checkpoint-1").exists()


def test_conversational_prompts_run(tmp_path, capsys):
    # Chat-style prompts: TRL renders them with the tokenizer's chat template and hands the verifier
    # conversational completions ([{"role": "assistant", "content": ...}]).
    data = tmp_path / "chat.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"{a}+1="}], "answer": str(a + 1)} for a in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = _toy(
        tmp_path,
        dataset=str(data),
        dataset_kwargs=None,
        max_steps=1,
        reward_funcs=["numeric_match", "math_verify"],
    )
    assert main(["--config", str(_write(tmp_path, run))]) == 0
    out = capsys.readouterr().out
    assert "steps            1 / 1" in out
    assert "numeric_match_reward: 0.0000" in out  # untrained model: wrong, but scored (not n/a)


def test_grpo_baseline_with_kl_on_toy_model(tmp_path, capsys):
    # beta > 0 makes TRL load a reference model from a path: the CLI saves the in-memory toy model first.
    run = _toy(tmp_path, trainer="grpo", beta=0.04, max_steps=1)
    assert main(["--config", str(_write(tmp_path, run))]) == 0
    assert "trainer          GRPOTrainer" in capsys.readouterr().out
    assert (tmp_path / "out" / "toy-init" / "config.json").is_file()


def test_train_bad_arguments(tmp_path):
    from nft_trainer.cli import train

    with pytest.raises(TypeError, match="spec must be a RunSpec"):
        train({"model": "toy:tiny_llama"})
    spec = resolve_run(_toy(tmp_path), load=False)
    with pytest.raises(TypeError, match="resume must be None, a bool or a checkpoint path"):
        train(spec, resume=3)
