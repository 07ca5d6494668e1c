"""CPU-scale proof: NFT vs GRPO, Dr. GRPO, DAPO and RFT on a tiny Llama learning arithmetic.

Pipeline (everything built in code, no downloads):

1. SFT a randomly initialised tiny Llama (``nft_trainer.toy``) on ``a<op>b=answer`` until the greedy
   exact-match accuracy on a held-out test split first reaches ``--target-acc`` (cached checkpoint:
   ``model.safetensors`` + ``meta.json``; the meta is compared with the requested settings on load and
   a mismatch retrains).
2. From that checkpoint, RL with a binary verifier reward (``numeric_match_reward``, whole completion
   must be the number) for every method x seed, all with the same generation and update budget
   (same prompts per step, group size, completions, optimizer steps, learning rate, sampling):
   NFT (``NFTTrainer``), RFT (``NFTTrainer`` with ``neg_weight=0``), and plain TRL ``GRPOTrainer``
   with TRL's own settings for GRPO (``loss_type="grpo"``), Dr. GRPO (``loss_type="dr_grpo"``,
   ``scale_rewards="none"``) and DAPO (``loss_type="dapo"``, ``epsilon_high=0.28``,
   ``mask_truncated_completions=True``). Each finished run is cached as JSON under
   ``results/cache/runs/``; a rerun skips it.
3. Throughput of ``NFTTrainer`` vs plain ``GRPOTrainer`` (same model, same settings, same process,
   interleaved repeats): completions/s and completion tokens/s over CPU time and wall time.

Outputs under ``benchmarks/results/``: ``cpu_proof_curves.csv`` (accuracy vs step, wall and CPU time),
``cpu_proof_summary.csv``, ``cpu_proof_throughput.csv``, ``cpu_proof.md`` (tables) and
``cpu_proof.png`` (learning curves). Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_cpu_proof.py``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 6-10x faster for tiny models; inherited by the workers

import torch
from tqdm.auto import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("NFT", "RFT", "GRPO", "Dr. GRPO", "DAPO")


# --------------------------------------------------------------------------------------------------
# Settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that determines the results (hashed into the cache keys)."""

    # task: a<op>b= with operands in [0, 10**digits)
    digits: int = 2
    ops: str = "+-"
    n_train: int = 5000
    n_test: int = 1000
    data_seed: int = 0
    # model
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    init_seed: int = 0
    # SFT
    sft_lr: float = 3e-3
    sft_batch: int = 64
    sft_eval_every: int = 20
    sft_max_steps: int = 6000
    target_acc: float = 0.30
    # RL (identical for every method)
    rl_steps: int = 300
    rl_lr: float = 2e-4
    num_generations: int = 8
    batch_completions: int = 128  # completions per optimizer step (16 prompts x 8)
    steps_per_generation: int = 2  # each generation round feeds 2 optimizer steps (off-policy 2nd step)
    temperature: float = 1.0
    eval_every: int = 20
    # throughput
    tp_steps: int = 30
    tp_repeats: int = 4

    @property
    def max_completion_length(self) -> int:
        return 2 * self.digits + 2 if "*" in self.ops else self.digits + 2

    def key(self, *fields: str) -> str:
        d = dataclasses.asdict(self)
        blob = json.dumps({f: d[f] for f in fields} if fields else d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SFT_FIELDS = (
    "digits",
    "ops",
    "n_train",
    "n_test",
    "data_seed",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "init_seed",
    "sft_lr",
    "sft_batch",
    "sft_eval_every",
    "sft_max_steps",
    "target_acc",
)

SMOKE = Settings(
    n_train=64,
    n_test=16,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    sft_eval_every=2,
    sft_max_steps=2,
    sft_batch=8,
    target_acc=1.0,
    rl_steps=2,
    num_generations=2,
    batch_completions=4,
    eval_every=1,
    tp_steps=2,
    tp_repeats=1,
)


# --------------------------------------------------------------------------------------------------
# Data, reward, evaluation
def splits(s: Settings):
    from nft_trainer.toy import arithmetic_splits

    return arithmetic_splits(s.n_train, s.n_test, digits=s.digits, ops=s.ops, seed=s.data_seed)


def exact_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the whole completion is the reference number (``numeric_match_reward``, ``strategy="full"``)."""
    from nft_trainer.verifiers import numeric_match_reward

    return numeric_match_reward(completions, answer, strategy="full")


@torch.no_grad()
def evaluate(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], max_new_tokens: int) -> float:
    """Greedy exact-match accuracy on the given problems (batched, left-padded)."""
    was_training = model.training
    model.eval()
    correct = 0.0
    for i in range(0, len(prompts), 256):
        batch = tokenizer(list(prompts[i : i + 256]), return_tensors="pt", padding=True)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(exact_reward(texts, list(answers[i : i + 256])))
    model.train(was_training)
    return correct / len(prompts)


# --------------------------------------------------------------------------------------------------
# Stage 1: SFT checkpoint (cached)
def _sft_batch(tokenizer, prompts: list[str], answers: list[str]):
    seqs, starts = [], []
    for p, a in zip(prompts, answers, strict=True):
        p_ids = tokenizer(p)["input_ids"]
        seqs.append(p_ids + tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        starts.append(len(p_ids))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, start : len(seq)] = ids[i, start : len(seq)]  # loss on the answer and EOS only
    return ids, mask, labels


def sft_checkpoint(s: Settings, cache: Path, *, progress: bool = True) -> Path:
    """Train (or load from ``cache``) the SFT model that every RL run starts from."""
    from nft_trainer.toy import char_tokenizer, tiny_llama

    ckpt = cache / "sft"
    meta_path = ckpt / "meta.json"
    want = {"key": s.key(*SFT_FIELDS), "settings": {f: getattr(s, f) for f in SFT_FIELDS}}
    if meta_path.exists() and (ckpt / "model.safetensors").exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == want["key"]:
            return ckpt
        print(f"[sft] cached checkpoint {ckpt} was made with other settings: retraining", file=sys.stderr)
    torch.manual_seed(s.init_seed)
    tok = char_tokenizer()
    data = splits(s)
    train, test = data["train"], data["test"]
    tr_p, tr_a = list(train["prompt"]), list(train["answer"])
    te_p, te_a = list(test["prompt"]), list(test["answer"])
    model = tiny_llama(
        tok,
        hidden_size=s.hidden_size,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        num_kv_heads=s.num_kv_heads,
        seed=s.init_seed,
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=s.sft_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(s.init_seed)
    t0, c0 = time.perf_counter(), time.process_time()
    history = []
    acc, step = 0.0, 0
    bar = tqdm(total=s.sft_max_steps, desc="SFT", disable=not progress)
    for step in range(1, s.sft_max_steps + 1):
        idx = torch.randint(len(tr_p), (s.sft_batch,), generator=gen).tolist()
        ids, mask, labels = _sft_batch(tok, [tr_p[i] for i in idx], [tr_a[i] for i in idx])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if step % s.sft_eval_every == 0 or step == s.sft_max_steps:
            acc = evaluate(model, tok, te_p, te_a, s.max_completion_length)
            history.append({"step": step, "loss": loss.item(), "test_acc": acc})
            bar.set_postfix(loss=f"{loss.item():.3f}", test_acc=f"{acc:.3f}")
            if acc >= s.target_acc:
                break
    bar.close()
    ckpt.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(ckpt, safe_serialization=True)
    meta = {
        **want,
        "steps": step,
        "test_acc": acc,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "history": history,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return ckpt


def load_sft(ckpt: Path, s: Settings):
    """The cached SFT model (float32) after checking its meta against ``s``."""
    from transformers import LlamaForCausalLM

    meta = json.loads((ckpt / "meta.json").read_text())
    if meta.get("key") != s.key(*SFT_FIELDS):
        raise ValueError(
            f"checkpoint {ckpt} was trained with other settings than requested: delete it and rerun"
        )
    return LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Stage 2: RL runs
def method_spec(method: str) -> tuple[str, dict[str, Any]]:
    """``(trainer, config kwargs)``: TRL's own settings for the baselines, NFTConfig for NFT/RFT."""
    if method == "GRPO":
        return "grpo", {"loss_type": "grpo", "scale_rewards": "group"}
    if method == "Dr. GRPO":
        return "grpo", {"loss_type": "dr_grpo", "scale_rewards": "none"}
    if method == "DAPO":
        return "grpo", {
            "loss_type": "dapo",
            "epsilon": 0.2,
            "epsilon_high": 0.28,
            "mask_truncated_completions": True,
        }
    if method == "NFT":
        return "nft", {}
    if method == "RFT":
        return "nft", {"neg_weight": 0.0}
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


class _TokenCounter:
    """Reward wrapper that also counts completions and completion tokens (for throughput)."""

    __name__ = "exact_reward"

    def __init__(self) -> None:
        self.completions = 0
        self.tokens = 0

    def __call__(self, completions, answer, completion_ids=None, **kwargs):
        self.completions += len(completions)
        if completion_ids is not None:
            self.tokens += sum(len(c) for c in completion_ids)
        return exact_reward(completions, answer)


def build_trainer(method: str, seed: int, s: Settings, ckpt: Path, out_dir: str, *, steps: int, callbacks=()):
    from nft_trainer.toy import char_tokenizer

    kind, extra = method_spec(method)
    if kind == "nft":
        from nft_trainer.trainer import NFTConfig as Config
        from nft_trainer.trainer import NFTTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    args = Config(
        output_dir=out_dir,
        per_device_train_batch_size=s.batch_completions,
        num_generations=s.num_generations,
        steps_per_generation=s.steps_per_generation,
        max_completion_length=s.max_completion_length,
        temperature=s.temperature,
        learning_rate=s.rl_lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        max_steps=steps,
        seed=seed,
        data_seed=seed,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=s.eval_every,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )
    reward = _TokenCounter()
    trainer = Trainer(
        model=load_sft(ckpt, s),
        reward_funcs=reward,
        args=args,
        train_dataset=splits(s)["train"],
        processing_class=char_tokenizer(),
        callbacks=list(callbacks),
    )
    return trainer, reward


def _eval_callback(s: Settings, tokenizer, test_p: list[str], test_a: list[str], rows: list[dict], bar):
    from transformers import TrainerCallback

    class EvalCallback(TrainerCallback):
        """Greedy test accuracy every ``eval_every`` steps; training time excludes evaluation time."""

        def __init__(self) -> None:
            self.eval_wall = self.eval_cpu = 0.0
            self.t0 = self.c0 = 0.0

        def _eval(self, step: int, model) -> None:
            w, c = time.perf_counter(), time.process_time()
            acc = evaluate(model, tokenizer, test_p, test_a, s.max_completion_length)
            rows.append(
                {
                    "step": step,
                    "test_acc": acc,
                    "train_wall_s": w - self.t0 - self.eval_wall,
                    "train_cpu_s": c - self.c0 - self.eval_cpu,
                }
            )
            self.eval_wall += time.perf_counter() - w
            self.eval_cpu += time.process_time() - c
            if bar is not None:
                bar.set_postfix(step=step, test_acc=f"{acc:.3f}")

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self._eval(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % s.eval_every == 0 or state.global_step == state.max_steps:
                self._eval(state.global_step, model)

    return EvalCallback()


def run_one(method: str, seed: int, s: Settings, ckpt: Path, cache: Path) -> dict[str, Any]:
    """One RL run (cached as JSON): test accuracy vs step with training wall and CPU time."""
    torch.set_num_threads(1)
    path = cache / "runs" / f"{method.replace('. ', '').replace(' ', '_')}_s{seed}.json"
    key = s.key()
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    from nft_trainer.toy import char_tokenizer

    test = splits(s)["test"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cb = _eval_callback(s, char_tokenizer(), list(test["prompt"]), list(test["answer"]), rows, None)
        trainer, counter = build_trainer(method, seed, s, ckpt, tmp, steps=s.rl_steps, callbacks=[cb])
        w0, c0 = time.perf_counter(), time.process_time()
        trainer.train()
        total_wall, total_cpu = time.perf_counter() - w0, time.process_time() - c0
    rewards = {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}
    for r in rows:
        r["train_reward"] = rewards.get(r["step"], float("nan"))
    result = {
        "key": key,
        "method": method,
        "seed": seed,
        "curve": rows,
        "completions": counter.completions,
        "completion_tokens": counter.tokens,
        "total_wall_s": total_wall,
        "total_cpu_s": total_cpu,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_all(
    methods: Sequence[str], seeds: Sequence[int], s: Settings, ckpt: Path, cache: Path, workers: int
) -> list[dict[str, Any]]:
    jobs = [(m, sd) for sd in seeds for m in methods]
    results = []
    bar = tqdm(total=len(jobs), desc="RL runs")
    if workers <= 1:
        for m, sd in jobs:
            results.append(run_one(m, sd, s, ckpt, cache))
            bar.update(1)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
            futures = {pool.submit(run_one, m, sd, s, ckpt, cache): (m, sd) for m, sd in jobs}
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update(1)
                bar.set_postfix_str(f"{futures[fut][0]} s{futures[fut][1]} done")
    bar.close()
    order = {m: i for i, m in enumerate(methods)}
    return sorted(results, key=lambda r: (order[r["method"]], r["seed"]))


# --------------------------------------------------------------------------------------------------
# Stage 3: throughput NFTTrainer vs GRPOTrainer
def _time_method(obj: Any, name: str, spent: dict[str, float], key: str) -> None:
    """Wrap ``obj.name`` (instance attribute) so that its CPU time accumulates in ``spent[key]``."""
    inner: Callable[..., Any] = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        c = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[key] += time.process_time() - c

    setattr(obj, name, timed)


def throughput(s: Settings, ckpt: Path, *, pair: tuple[str, str] = ("GRPO", "NFT")) -> list[dict[str, Any]]:
    """Interleaved runs of both trainers in this process; time only between train begin and end."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.w, self.c = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c

    rows = []
    for rep in tqdm(range(s.tp_repeats), desc="throughput"):
        for method in pair if rep % 2 == 0 else pair[::-1]:
            clock = Clock()
            with tempfile.TemporaryDirectory() as tmp:
                trainer, counter = build_trainer(method, 0, s, ckpt, tmp, steps=s.tp_steps, callbacks=[clock])
                spent = {"generate_and_score": 0.0, "training_step": 0.0}
                _time_method(trainer, "_generate_and_score_completions", spent, "generate_and_score")
                _time_method(trainer, "training_step", spent, "training_step")
                trainer.train()
            rows.append(
                {
                    "trainer": "NFTTrainer" if method_spec(method)[0] == "nft" else "GRPOTrainer",
                    "method": method,
                    "repeat": rep,
                    "steps": s.tp_steps,
                    "completions": counter.completions,
                    "completion_tokens": counter.tokens,
                    "wall_s": clock.wall,
                    "cpu_s": clock.cpu,
                    "generate_and_score_cpu_s": spent["generate_and_score"],
                    "training_step_cpu_s": spent["training_step"],
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------
# Report
def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(results: list[dict], methods: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        if not runs:
            continue
        final = [r["curve"][-1]["test_acc"] for r in runs]
        start = [r["curve"][0]["test_acc"] for r in runs]
        best = [max(c["test_acc"] for c in r["curve"]) for r in runs]
        # area under the accuracy-vs-step curve / steps: rewards learning early as well as the end point
        auc = [
            statistics.fmean(c["test_acc"] for c in r["curve"][1:])
            if len(r["curve"]) > 1
            else r["curve"][0]["test_acc"]
            for r in runs
        ]
        fm, fs = _mean_std(final)
        am, as_ = _mean_std(auc)
        out.append(
            {
                "method": m,
                "seeds": len(runs),
                "start_acc": statistics.fmean(start),
                "final_acc_mean": fm,
                "final_acc_std": fs,
                "final_acc_per_seed": " ".join(f"{x:.3f}" for x in final),
                "best_acc_mean": statistics.fmean(best),
                "mean_acc_over_curve": am,
                "mean_acc_over_curve_std": as_,
                "steps": runs[0]["curve"][-1]["step"],
                "completions": runs[0]["completions"],
                "train_wall_s_mean": statistics.fmean(r["curve"][-1]["train_wall_s"] for r in runs),
                "train_cpu_s_mean": statistics.fmean(r["curve"][-1]["train_cpu_s"] for r in runs),
            }
        )
    return out


def summarize_throughput(rows: list[dict]) -> list[dict[str, Any]]:
    out = []
    for trainer in dict.fromkeys(r["trainer"] for r in rows):
        rs = [r for r in rows if r["trainer"] == trainer]
        comp, tok = sum(r["completions"] for r in rs), sum(r["completion_tokens"] for r in rs)
        cpu, wall = sum(r["cpu_s"] for r in rs), sum(r["wall_s"] for r in rs)
        out.append(
            {
                "trainer": trainer,
                "runs": len(rs),
                "completions": comp,
                "completion_tokens": tok,
                "completions_per_cpu_s": comp / cpu,
                "tokens_per_cpu_s": tok / cpu,
                "completions_per_wall_s": comp / wall,
                "tokens_per_wall_s": tok / wall,
                "cpu_s_per_step": cpu / sum(r["steps"] for r in rs),
                "generate_and_score_cpu_s_per_step": sum(r["generate_and_score_cpu_s"] for r in rs)
                / sum(r["steps"] for r in rs),
                # TRL generates inside training_step (via _prepare_inputs): the rest is the loss forward+backward
                "loss_fwd_bwd_cpu_s_per_step": sum(
                    r["training_step_cpu_s"] - r["generate_and_score_cpu_s"] for r in rs
                )
                / sum(r["steps"] for r in rs),
            }
        )
    if len(out) == 2:
        base = next(o for o in out if o["trainer"] == "GRPOTrainer")
        for o in out:
            o["cpu_overhead_vs_grpo_pct"] = 100.0 * (
                base["completions_per_cpu_s"] / o["completions_per_cpu_s"] - 1
            )
            o["wall_overhead_vs_grpo_pct"] = 100.0 * (
                base["completions_per_wall_s"] / o["completions_per_wall_s"] - 1
            )
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def markdown_table(rows: list[dict], cols: Sequence[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(results: list[dict], methods: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        if not runs:
            continue
        steps = [c["step"] for c in runs[0]["curve"]]
        accs = [[c["test_acc"] for c in r["curve"]] for r in runs]
        mean = [statistics.fmean(col) for col in zip(*accs, strict=True)]
        lo = [min(col) for col in zip(*accs, strict=True)]
        hi = [max(col) for col in zip(*accs, strict=True)]
        (line,) = axes[0].plot(steps, mean, label=m)
        axes[0].fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
        for r in runs:
            axes[1].plot(
                [c["train_cpu_s"] for c in r["curve"]],
                [c["test_acc"] for c in r["curve"]],
                color=line.get_color(),
                alpha=0.6,
                label=m if r is runs[0] else None,
            )
    axes[0].set(
        xlabel="optimizer step", ylabel="greedy test accuracy", title="mean over seeds (band: min-max)"
    )
    axes[1].set(
        xlabel="training CPU seconds (evaluation excluded)", ylabel="greedy test accuracy", title="per seed"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(
    s: Settings,
    ckpt: Path,
    results: list[dict],
    tp_rows: list[dict],
    methods: Sequence[str],
    out: Path,
    wall_total: float,
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    curves = [{"method": r["method"], "seed": r["seed"], **c} for r in results for c in r["curve"]]
    summary = summarize(results, methods)
    tp = summarize_throughput(tp_rows) if tp_rows else []
    _write_csv(out / "cpu_proof_curves.csv", curves)
    _write_csv(out / "cpu_proof_summary.csv", summary)
    _write_csv(out / "cpu_proof_throughput.csv", tp_rows + tp)
    if results:
        plot(results, methods, out / "cpu_proof.png")
    meta = json.loads((ckpt / "meta.json").read_text())
    rl_cpu = sum(r["total_cpu_s"] for r in results)
    text = [
        "# CPU-scale proof (bench_cpu_proof.py)",
        "",
        f"Task: {s.digits}-digit `a{'|'.join(s.ops)}b=`, {s.n_train} train / {s.n_test} held-out test problems. "
        f"Model: tiny Llama hidden {s.hidden_size}, {s.num_layers} layers, {s.num_heads} heads / "
        f"{s.num_kv_heads} KV heads, char tokenizer.",
        f"SFT: {meta['steps']} steps to test accuracy {meta['test_acc']:.3f} "
        f"({meta['cpu_s']:.0f} CPU s, {meta['wall_s']:.0f} wall s).",
        f"RL (every method): {s.rl_steps} optimizer steps x {s.batch_completions} completions "
        f"({s.batch_completions // s.num_generations} prompts x G={s.num_generations}), generation every "
        f"{s.steps_per_generation} steps, lr {s.rl_lr} (Adam, constant), temperature {s.temperature}, "
        f"max {s.max_completion_length} new tokens, beta 0. Greedy exact-match on the test split every "
        f"{s.eval_every} steps.",
        f"Total RL CPU time {rl_cpu:.0f} s over {len(results)} runs; benchmark wall time {wall_total:.0f} s "
        "(machine shared with other jobs: wall times are inflated, CPU times are the better measure).",
        "",
        "## Test accuracy",
        "",
        markdown_table(
            summary,
            [
                "method",
                "seeds",
                "start_acc",
                "final_acc_mean",
                "final_acc_std",
                "final_acc_per_seed",
                "mean_acc_over_curve",
                "best_acc_mean",
                "train_cpu_s_mean",
                "train_wall_s_mean",
            ],
        ),
        "",
    ]
    if tp:
        text += [
            "## Throughput: NFTTrainer vs TRL GRPOTrainer (same model and settings, interleaved)",
            "",
            markdown_table(
                tp,
                [
                    "trainer",
                    "runs",
                    "completions",
                    "completions_per_cpu_s",
                    "tokens_per_cpu_s",
                    "completions_per_wall_s",
                    "tokens_per_wall_s",
                    "cpu_s_per_step",
                    "generate_and_score_cpu_s_per_step",
                    "loss_fwd_bwd_cpu_s_per_step",
                    "cpu_overhead_vs_grpo_pct",
                    "wall_overhead_vs_grpo_pct",
                ],
            ),
            "",
        ]
    md = "\n".join(text)
    (out / "cpu_proof.md").write_text(md)
    return md


# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2, help="parallel RL processes (each single-threaded)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (cache in <out>/cache)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override Settings fields, e.g. --set rl_steps=100 steps_per_generation=8",
    )
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--smoke", action="store_true", help="trivially small budget (pipeline check only)")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    if any(sd < 0 for sd in a.seeds):
        p.error(f"--seeds must be non-negative integers, got {a.seeds}")
    s = settings or (SMOKE if a.smoke else Settings())
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    for item in a.set:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            p.error(f"--set takes FIELD=VALUE with FIELD one of {sorted(types)}, got {item!r}")
        kind = {"int": int, "float": float, "str": str}[types[name]]
        try:
            s = dataclasses.replace(s, **{name: kind(value)})
        except ValueError:
            p.error(f"--set {name} needs a {types[name]}, got {value!r}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cache = a.out / "cache"
    ckpt = sft_checkpoint(s, cache)
    results = run_all(a.methods, a.seeds, s, ckpt, cache, a.workers)
    tp_rows = [] if a.no_throughput else throughput(s, ckpt)
    md = report(s, ckpt, results, tp_rows, a.methods, a.out, time.perf_counter() - t0)
    print(md)
    return md


if __name__ == "__main__":
    main()
