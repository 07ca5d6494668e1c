"""Worker of test_distributed.py: one optimizer step of NFTTrainer and GRPOTrainer on a toy model.

Run as ``python distributed_worker.py OUT_DIR`` (1 process) or
``torchrun --nproc_per_node 2 distributed_worker.py OUT_DIR`` (2 processes, gloo). Both runs use the same
global batch (GLOBAL_BATCH completions = GLOBAL_BATCH / NUM_GENERATIONS prompts); each process writes
``<trainer>_rank<r>.pt`` with the completions it generated (global row index, prompt, tokens), the
loss it computed, and (rank 0) the weights before and after the step.

Generation is made batch-layout invariant: TRL's built-in sampler draws every row of a process's
batch from that process's torch RNG stream, so the same global row gets different random numbers
with 1 or 2 processes (each process is seeded identically and samples only its half). Here a
``rollout_func`` samples each row token by token, unbatched, with a generator seeded from the
optimizer step and the row's global index: the completions are then a function of the weights, the
prompt and the row, whatever the number of processes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

GLOBAL_BATCH = 8
NUM_GENERATIONS = 4
MAX_NEW_TOKENS = 6
TRAINERS = ("nft", "grpo")


def contains_digit_reward(completions, **kwargs):
    """Binary reward with a mixed outcome on a random toy model (a correctness verifier would give all 0)."""
    return [1.0 if any(ch.isdigit() for ch in text) else 0.0 for text in completions]


def make_rollout(records: list):
    def rollout(prompts, trainer):
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        eos = tokenizer.eos_token_id
        rank = trainer.accelerator.process_index
        step = trainer.state.global_step
        prompt_ids, completion_ids = [], []
        with torch.no_grad():
            for i, prompt in enumerate(prompts):
                row = rank * len(prompts) + i
                generator = torch.Generator().manual_seed(1_000_003 * step + row)
                ids = tokenizer(text=prompt)["input_ids"]
                out: list[int] = []
                # Rows of different lengths, as real completions (equal lengths make GRPO's loss exactly 0).
                for _ in range(2 + row % (MAX_NEW_TOKENS - 1)):
                    logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
                    token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
                    out.append(token)
                    if token == eos:
                        break
                prompt_ids.append(ids)
                completion_ids.append(out)
                records.append((row, prompt, out))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def recording(cls):
    class Recording(cls):
        recorded_losses: list

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.recorded_losses.append(float(loss.detach()))
            return loss

    Recording.__name__ = f"Recording{cls.__name__}"
    return Recording


class SnapshotWeights(TrainerCallback):
    """Copies the weights at the end of every optimizer step."""

    def __init__(self, snapshots: list):
        self.snapshots = snapshots

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def run(trainer_name: str, out_dir: Path) -> None:
    from nft_trainer.toy import arithmetic_dataset, char_tokenizer, tiny_llama
    from trl import GRPOConfig, GRPOTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if trainer_name == "nft":
        from nft_trainer.trainer import NFTConfig as config_cls
        from nft_trainer.trainer import NFTTrainer as trainer_cls
    else:
        config_cls, trainer_cls = GRPOConfig, GRPOTrainer
    tokenizer = char_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, seed=0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = config_cls(
        output_dir=str(out_dir / f"run-{trainer_name}-{world}"),
        per_device_train_batch_size=GLOBAL_BATCH // world,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_NEW_TOKENS,
        # Two optimizer steps on one generation batch (num_iterations=2): the second step is off-policy
        # (ratio ≠ 1, so NFT's loss value is not 0) and uses the same rows in every process layout.
        max_steps=2,
        num_iterations=2,
        # SGD: the update is lr × (clipped) gradient, so comparing weights compares gradients. Adam's first
        # step is lr·g/(|g|+eps) ≈ lr·sign(g), which turns float round-off on gradients near zero into
        # visible weight differences that say nothing about the distributed maths.
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        ddp_backend="gloo" if world > 1 else None,
        dataloader_num_workers=0,
    )
    records: list = []
    trainer = recording(trainer_cls)(
        model=model,
        reward_funcs=[contains_digit_reward],
        args=config,
        train_dataset=arithmetic_dataset(32, digits=2, ops="+", seed=0),
        processing_class=tokenizer,
        rollout_func=make_rollout(records),
    )
    trainer.recorded_losses = []
    snapshots: list = []
    trainer.add_callback(SnapshotWeights(snapshots))
    trainer.train()
    dist = torch.distributed
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    result = {"records": records, "losses": trainer.recorded_losses, "world": world, "backend": backend}
    if rank == 0:
        result["before"] = before
        result["after_steps"] = snapshots
    torch.save(result, out_dir / f"{trainer_name}_rank{rank}.pt")


def main() -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    out_dir = Path(sys.argv[1])
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(TRAINERS)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        run(name, out_dir)


if __name__ == "__main__":
    main()
