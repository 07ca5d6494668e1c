"""A run killed after the checkpoint of step 2 and resumed from it ends like the uninterrupted run.

Through the CLI's own path (run file mapping → resolve_run → cli.train with resume=True), for
NFTTrainer and TRL's GRPOTrainer: 4 optimizer steps, 2 per generation batch (steps_per_generation=2,
so steps 2 and 4 are off-policy), AdamW with a linear learning-rate decay over the fixed max_steps.
The "kill" is an exception raised from a callback right after checkpoint-2 is written, so nothing
after step 2 runs; the resumed trainer is a new object with a freshly built model.

Asserted: the prompts of steps 3-4 (data order), the final weights and the final optimizer state
(AdamW moments, step counts) are bit-identical to the uninterrupted run.

Resume points must be generation boundaries (global_step a multiple of steps_per_generation ×
num_iterations): TRL does not checkpoint its buffer of generated completions, so a run resumed in
the middle of a generation batch generates a new one and diverges from the uninterrupted run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from nft_trainer.cli import train
from nft_trainer.run_config import resolve_run
from safetensors.torch import load_file
from transformers import TrainerCallback

HAS_NFT = importlib.util.find_spec("nft_trainer.trainer") is not None
TRAINERS = [
    pytest.param("nft", marks=pytest.mark.skipif(not HAS_NFT, reason="nft_trainer.trainer not present")),
    "grpo",
]
MAX_STEPS = 4
KILL_AT = 2


class Killed(RuntimeError):
    pass


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == KILL_AT:
            raise Killed(f"killed after saving step {state.global_step}")


def _spec(trainer: str, output_dir: Path, seen: list):
    raw = {
        "trainer": trainer,
        "model": "toy:tiny_llama",
        "model_kwargs": {"hidden_size": 32, "num_layers": 1, "seed": 0},
        "dataset": "toy:arithmetic",
        "dataset_kwargs": {"n": 64, "digits": 2, "seed": 1},
        "reward_funcs": ["numeric_match"],
        "output_dir": str(output_dir),
        "max_steps": MAX_STEPS,
        "per_device_train_batch_size": 4,
        "steps_per_generation": 2,
        "num_generations": 4,
        "max_completion_length": 4,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "linear",
        "save_strategy": "steps",
        "save_steps": KILL_AT,
        "logging_steps": 1,
        "report_to": "none",
        "gradient_checkpointing": False,
        "use_cpu": True,
        "seed": 3,
        "disable_tqdm": True,
    }
    spec = resolve_run(raw)

    def digit_reward(completions, trainer_state, prompts, **kwargs):
        # Mixed 0/1 outcomes on an untrained model (a correctness verifier gives all 0 and no gradient);
        # records which prompts each generation step used.
        seen.append((trainer_state.global_step, list(prompts)))
        return [1.0 if any(ch.isdigit() for ch in text) else 0.0 for text in completions]

    spec.reward_funcs = [digit_reward]
    return spec


@pytest.mark.parametrize("trainer", TRAINERS)
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, trainer):
    seen_full: list = []
    full = train(_spec(trainer, tmp_path / "full", seen_full))
    assert full.global_step == MAX_STEPS

    seen_killed: list = []
    with pytest.raises(Killed):
        train(_spec(trainer, tmp_path / "killed", seen_killed), callbacks=[KillAfterSave()])
    killed_dir = tmp_path / "killed"
    assert sorted(p.name for p in killed_dir.glob("checkpoint-*")) == [f"checkpoint-{KILL_AT}"]

    seen_resumed: list = []
    resumed = train(_spec(trainer, killed_dir, seen_resumed), resume=True)
    assert resumed.resumed_from == str(killed_dir / f"checkpoint-{KILL_AT}")
    assert resumed.global_step == MAX_STEPS

    # Generation happens at steps 0 and 2 (trainer_state.global_step when the batch is built).
    assert [s for s, _ in seen_full] == [0, 2]
    assert seen_killed == seen_full[:1]
    assert seen_resumed == seen_full[1:]

    w_full = load_file(tmp_path / "full" / "model.safetensors")
    w_resumed = load_file(killed_dir / "model.safetensors")
    w_init = load_file(killed_dir / f"checkpoint-{KILL_AT}" / "model.safetensors")
    assert w_full.keys() == w_resumed.keys()
    assert any(not torch.equal(w_full[k], w_init[k]) for k in w_full), "steps 3-4 did not change the weights"
    for k in w_full:
        assert torch.equal(w_full[k], w_resumed[k]), k

    opt_full = torch.load(tmp_path / "full" / f"checkpoint-{MAX_STEPS}" / "optimizer.pt", weights_only=False)
    opt_resumed = torch.load(killed_dir / f"checkpoint-{MAX_STEPS}" / "optimizer.pt", weights_only=False)
    assert opt_full["state"].keys() == opt_resumed["state"].keys()
    for idx, state in opt_full["state"].items():
        for name, value in state.items():
            other = opt_resumed["state"][idx][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (idx, name)
