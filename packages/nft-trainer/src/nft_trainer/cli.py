"""``nft-train``: train with NFT (or TRL's GRPO) from a YAML run file.

Usage::

    nft-train --config run.yaml [--dry-run] [--resume [CHECKPOINT]] [--set key=value ...]
    python -m nft_trainer.cli --config run.yaml

Multi-process: ``accelerate launch [--config_file zero3.yaml] -m nft_trainer.cli --config run.yaml`` or
``torchrun --nproc_per_node N -m nft_trainer.cli --config run.yaml``.

The run file format is documented in :mod:`nft_trainer.run_config`. ``--dry-run`` validates the file
(config fields, model/tokenizer, datasets and their ``prompt`` column, reward functions) and prints the
resolved run without training. ``--resume`` continues from the last ``checkpoint-*`` in ``output_dir``
(or from the given checkpoint directory) with its optimizer, scheduler, RNG and data-order state.
Training shows TRL's progress bar; at the end the main process prints a summary (steps, wall time,
final mean reward, eval reward when an eval set is given, checkpoint and model paths).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nft_trainer.run_config import ConfigError, RunSpec, is_generation_boundary, load_yaml, resolve_run

__all__ = ["RunSummary", "build_parser", "dry_run_report", "main", "run", "train"]

# Config fields always shown by --dry-run, besides the ones the run file sets.
_KEY_FIELDS: tuple[str, ...] = (
    "output_dir",
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "lr_scheduler_type",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "generation_batch_size",
    "steps_per_generation",
    "num_iterations",
    "max_completion_length",
    "temperature",
    "beta",
    "loss_type",
    "scale_rewards",
    "seed",
    "bf16",
    "save_strategy",
    "save_steps",
    "use_vllm",
    "vllm_mode",
)


@dataclass
class RunSummary:
    """What a finished run reports (also printed by the CLI)."""

    trainer: str
    global_step: int
    max_steps: int
    wall_time_s: float
    train_runtime_s: float | None
    final_reward: float | None
    final_reward_step: int | None
    final_reward_per_func: dict[str, float]
    eval_reward: float | None
    last_checkpoint: str | None
    output_dir: str
    resumed_from: str | None

    def format(self) -> str:
        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        lines = [
            "=" * 60,
            "nft-train summary",
            f"  trainer          {self.trainer}",
            f"  steps            {self.global_step} / {self.max_steps}",
            f"  wall time        {self.wall_time_s:.1f} s"
            + (f" (train loop {self.train_runtime_s:.1f} s)" if self.train_runtime_s is not None else ""),
            f"  final reward     {f(self.final_reward)}"
            + (
                f" (mean over the completions of step {self.final_reward_step})"
                if self.final_reward_step
                else ""
            )
            + (
                "; one 0/1 verifier: this is the training accuracy"
                if len(self.final_reward_per_func) == 1
                else ""
            ),
            *(f"    {name}: {f(value)}" for name, value in self.final_reward_per_func.items()),
            f"  eval reward      {f(self.eval_reward)}",
            f"  last checkpoint  {self.last_checkpoint or 'none (save_strategy=no?)'}",
            f"  final model      {self.output_dir}",
        ]
        if self.resumed_from:
            lines.insert(3, f"  resumed from     {self.resumed_from}")
        lines.append("=" * 60)
        return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nft-train",
        description="Negative-aware Fine-Tuning (NFT) on TRL from a YAML run file.",
    )
    parser.add_argument("--config", required=True, help="YAML run file (see nft_trainer.run_config)")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the resolved run; no training"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from the last checkpoint in output_dir, or from CHECKPOINT",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the run file (VALUE is parsed as YAML); repeatable",
    )
    return parser


def _apply_overrides(raw: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out = dict(raw)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: value is not valid YAML: {e}") from e
    return out


def _plain(value: Any) -> Any:
    """A YAML-safe copy of a config value (enums by value, unknown objects by str)."""
    import enum

    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def dry_run_report(spec: RunSpec) -> str:
    """The resolved run as YAML text: run keys, config fields set by the file, and key defaults."""
    import yaml

    config = spec.config
    fields = {}
    for name in list(spec.config_overrides) + [k for k in _KEY_FIELDS if k not in spec.config_overrides]:
        if hasattr(config, name):
            fields[name] = _plain(getattr(config, name))
    run = {
        "trainer": f"{spec.trainer_name} ({spec.trainer_cls.__name__}, {type(config).__name__})",
        "model": spec.model_source,
        "tokenizer": f"{type(spec.tokenizer).__name__} (vocabulary {len(spec.tokenizer)})",
        "dataset": f"{spec.run.get('dataset')} ({spec.train_dataset.num_rows} rows, columns "
        f"{spec.train_dataset.column_names})",
        "eval_dataset": None
        if spec.eval_dataset is None
        else f"{spec.run.get('eval_dataset')} ({spec.eval_dataset.num_rows} rows)",
        "reward_funcs": spec.reward_names,
        "peft": None if spec.peft_config is None else dict(spec.run.get("peft") or {}),
    }
    text = yaml.safe_dump({"run": run, "config": fields}, sort_keys=False, default_flow_style=False)
    notes = "".join(f"# note: {n}\n" for n in spec.notes)
    per_process = config.per_device_train_batch_size * config.gradient_accumulation_steps
    notes += (
        f"# per-process batch {per_process} completions per optimizer step "
        f"(x number of processes); num_generations={config.num_generations}\n"
    )
    return notes + text


def _resume_target(spec: RunSpec, resume: str | bool | None) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if resume is None:
        resume = spec.config.resume_from_checkpoint
    if resume is None or resume is False:
        return None
    if resume is True or resume == "True":
        out = Path(spec.config.output_dir)
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            raise ConfigError(f"--resume: no checkpoint-* directory in output_dir {str(out)!r}")
        return last
    if not Path(str(resume)).is_dir():
        raise ConfigError(f"--resume: checkpoint directory {str(resume)!r} does not exist")
    return str(resume)


def _warn_if_mid_generation(spec: RunSpec, checkpoint: str | None) -> None:
    if checkpoint is None:
        return
    match = re.search(r"checkpoint-(\d+)$", str(checkpoint).rstrip("/"))
    if match and not is_generation_boundary(spec.config, int(match.group(1))):
        warnings.warn(
            f"resuming from {checkpoint}, in the middle of a generation batch: TRL does not checkpoint the "
            "generated batch, so a new one is generated and the run will not match an uninterrupted one",
            UserWarning,
            stacklevel=2,
        )


def _last_logged(history: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    for entry in reversed(history):
        if key in entry:
            return float(entry[key]), int(entry.get("step", 0))
    return None, None


def train(
    spec: RunSpec, *, resume: str | bool | None = None, callbacks: list[Any] | None = None
) -> RunSummary:
    """Build the trainer from a resolved run, train (optionally resuming), save, and summarize."""
    from transformers.trainer_utils import get_last_checkpoint

    if not isinstance(spec, RunSpec):
        raise TypeError(f"train: spec must be a RunSpec (from resolve_run), got {type(spec).__name__}")
    if resume is not None and not isinstance(resume, (bool, str, Path)):
        raise TypeError(
            f"train: resume must be None, a bool or a checkpoint path, got {type(resume).__name__}"
        )
    resume_from = _resume_target(spec, resume)
    _warn_if_mid_generation(spec, resume_from)
    model = spec.model
    if spec.config.beta != 0.0 and not isinstance(model, str):
        # A reference model is loaded from a path (TRL); save the in-memory toy model so it has one.
        init_dir = Path(spec.config.output_dir) / "toy-init"
        model.save_pretrained(init_dir)
        spec.tokenizer.save_pretrained(init_dir)
        model = str(init_dir)
    try:
        trainer = spec.trainer_cls(
            model=model,
            reward_funcs=spec.reward_funcs,
            args=spec.config,
            train_dataset=spec.train_dataset,
            eval_dataset=spec.eval_dataset,
            processing_class=spec.tokenizer,
            peft_config=spec.peft_config,
            callbacks=callbacks,
        )
    except (TypeError, ValueError) as e:
        # The trainer's input checks (reward signature, chat template, batch/group sizes) name the fix.
        raise ConfigError(f"{spec.trainer_cls.__name__} refused the run: {e}") from e
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    eval_reward = None
    if spec.eval_dataset is not None:
        metrics = trainer.evaluate()
        eval_reward = metrics.get("eval_reward")
    trainer.save_model(spec.config.output_dir)
    wall = time.perf_counter() - start
    reward, reward_step = _last_logged(trainer.state.log_history, "reward")
    per_func = {}
    for name in trainer.reward_func_names:
        value, _ = _last_logged(trainer.state.log_history, f"rewards/{name}/mean")
        if value is not None:
            per_func[name] = value
    out_dir = Path(spec.config.output_dir)
    return RunSummary(
        trainer=type(trainer).__name__,
        global_step=trainer.state.global_step,
        max_steps=trainer.state.max_steps,
        wall_time_s=wall,
        train_runtime_s=output.metrics.get("train_runtime"),
        final_reward=reward,
        final_reward_step=reward_step,
        final_reward_per_func=per_func,
        eval_reward=None if eval_reward is None else float(eval_reward),
        last_checkpoint=get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None,
        output_dir=str(out_dir),
        resumed_from=resume_from,
    )


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def run(argv: Sequence[str] | None = None) -> RunSummary | None:
    """Parse ``argv`` and execute; returns the summary (None for a dry run). Raises ConfigError."""
    args = build_parser().parse_args(argv)
    raw = _apply_overrides(load_yaml(args.config), args.set)
    spec = resolve_run(raw, load=not args.dry_run)
    if args.dry_run:
        _resume_target(spec, args.resume)  # validate --resume too
        if _is_main_process():
            print(dry_run_report(spec))
            print("dry run: configuration is valid; nothing was trained")
        return None
    for note in spec.notes:
        if _is_main_process():
            print(f"nft-train: note: {note}", file=sys.stderr)
    summary = train(spec, resume=args.resume)
    if _is_main_process():
        print(summary.format())
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; exit code 0 on success, 2 on a configuration error."""
    try:
        run(argv)
    except ConfigError as e:
        print(f"nft-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
