"""Diagnostic for the CPU-scale proof: why does RFT lead on greedy accuracy while sampled rewards tie?

Reruns methods of ``bench_cpu_proof.py`` (same settings, same cached SFT checkpoint) and records on the
held-out test split, every ``--every`` steps: greedy accuracy, sampled accuracy (temperature 1, one
sample per problem) and the mean entropy (nats) of the model's next-token distribution along its greedy
answer (answer tokens and EOS). Writes ``results/diag/cpu_proof_diag.csv`` and ``.md``.
Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_cpu_proof_diag.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_cpu_proof import (
    METHODS,
    RESULTS,
    Settings,
    _write_csv,
    build_trainer,
    exact_reward,
    markdown_table,
    sft_checkpoint,
    splits,
)


@torch.no_grad()
def probe(
    model, tokenizer, prompts: list[str], answers: list[str], max_new: int, seed: int
) -> dict[str, float]:
    """Greedy accuracy, sampled (T=1) accuracy and mean entropy along the greedy answer."""
    was_training = model.training
    model.eval()
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    greedy = model.generate(
        **batch, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    g_text = tokenizer.batch_decode(greedy[:, width:], skip_special_tokens=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sampled = model.generate(
            **batch,
            max_new_tokens=max_new,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            pad_token_id=tokenizer.pad_token_id,
        )
    s_text = tokenizer.batch_decode(sampled[:, width:], skip_special_tokens=True)
    # entropy of p(. | prefix) at every greedy answer position (stop after the first EOS)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(greedy[:, width:])], dim=1)
    answer = greedy[:, width:]
    is_eos = answer == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    is_pad = answer == tokenizer.pad_token_id
    valid = ~after_eos & ~is_pad
    mask[:, width:] = valid.long()
    logits = model(input_ids=greedy, attention_mask=mask).logits[:, width - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    model.train(was_training)
    return {
        "greedy_acc": sum(exact_reward(g_text, answers)) / len(answers),
        "sampled_acc": sum(exact_reward(s_text, answers)) / len(answers),
        "greedy_answer_entropy": (ent * valid).sum().item() / valid.sum().clamp(min=1).item(),
    }


def run(method: str, seed: int, s: Settings, ckpt: Path, every: int) -> list[dict]:
    from nft_trainer.toy import char_tokenizer
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    test = splits(s)["test"]
    tok = char_tokenizer()
    prompts, answers = list(test["prompt"]), list(test["answer"])
    rows: list[dict] = []

    class Probe(TrainerCallback):
        def _probe(self, step: int, model) -> None:
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "step": step,
                    **probe(model, tok, prompts, answers, s.max_completion_length, seed),
                }
            )

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._probe(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                self._probe(state.global_step, model)

    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build_trainer(method, seed, s, ckpt, tmp, steps=s.rl_steps, callbacks=[Probe()])
        trainer.train()
    return rows


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=["NFT", "RFT", "GRPO", "Dr. GRPO"], choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "diag")
    p.add_argument("--cache", type=Path, default=RESULTS / "cache", help="where the SFT checkpoint is cached")
    a = p.parse_args(argv)
    if a.every < 1 or a.workers < 1:
        p.error("--every and --workers must be >= 1")
    s = Settings()
    ckpt = sft_checkpoint(s, a.cache)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as pool:
        parts = list(
            pool.map(
                run,
                a.methods,
                [a.seed] * len(a.methods),
                [s] * len(a.methods),
                [ckpt] * len(a.methods),
                [a.every] * len(a.methods),
            )
        )
    rows = [r for part in parts for r in part]
    a.out.mkdir(parents=True, exist_ok=True)
    _write_csv(a.out / "cpu_proof_diag.csv", rows)
    md = "\n".join(
        [
            "# CPU-scale proof diagnostic (bench_cpu_proof_diag.py)",
            "",
            f"Seed {a.seed}, settings of bench_cpu_proof.py; {time.perf_counter() - t0:.0f} s wall. Greedy and "
            "sampled (T=1, one sample per problem) exact-match accuracy on the 1000 held-out problems, and the "
            "mean entropy (nats) of the next-token distribution along the greedy answer.",
            "",
            markdown_table(rows, ["method", "step", "greedy_acc", "sampled_acc", "greedy_answer_entropy"]),
            "",
        ]
    )
    (a.out / "cpu_proof_diag.md").write_text(md)
    print(md)
    return md


if __name__ == "__main__":
    main()
