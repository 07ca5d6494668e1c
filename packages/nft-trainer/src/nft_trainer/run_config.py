"""YAML run configuration for ``nft-train``: parsing, validation and resolution into trainer arguments.

A run file is one flat YAML mapping. The run keys below say what to train; every other key must be a
field of the trainer's config class (``NFTConfig`` for ``trainer: nft``, TRL's ``GRPOConfig`` for
``trainer: grpo``). An unknown key is an error that names the key (and the closest valid one).

=====================  ==========================================================================
run key                meaning
=====================  ==========================================================================
``model``              local model directory (``from_pretrained``) or ``toy:tiny_llama``
``model_kwargs``       keyword arguments of ``nft_trainer.toy.tiny_llama`` (toy models only; for a
                       local model use the config field ``model_init_kwargs``)
``tokenizer``          local tokenizer directory (default: the model directory), or ``toy:char``
                       (``nft_trainer.toy.char_tokenizer()``, always used by ``toy:`` models; give it
                       for a saved toy model whose directory holds no tokenizer files)
``dataset``            local ``.json``/``.jsonl``/``.parquet`` file, a ``save_to_disk`` directory, or
                       ``toy:arithmetic``; it needs a ``prompt`` column
``dataset_kwargs``     keyword arguments of ``nft_trainer.toy.arithmetic_dataset`` (toy datasets)
``eval_dataset``       optional, same forms as ``dataset``
``eval_dataset_kwargs`` as ``dataset_kwargs``
``reward_funcs``       list of: a verifier name (``numeric_match``, ``math_verify``), ``module:function``,
                       ``path/to/file.py:function``, or ``{name: ..., kwargs: {...}}`` to bind arguments
``trainer``            ``nft`` (default) or ``grpo`` (plain TRL ``GRPOTrainer``, for baselines)
``peft``               optional mapping of ``peft.LoraConfig`` arguments (needs the ``[peft]`` extra)
=====================  ==========================================================================

Relative paths are relative to the current working directory (as in TRL's scripts).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RUN_KEYS",
    "ConfigError",
    "RunSpec",
    "is_generation_boundary",
    "load_yaml",
    "resolve_reward_func",
    "resolve_run",
]

RUN_KEYS: tuple[str, ...] = (
    "model",
    "model_kwargs",
    "tokenizer",
    "dataset",
    "dataset_kwargs",
    "eval_dataset",
    "eval_dataset_kwargs",
    "reward_funcs",
    "trainer",
    "peft",
)
TRAINERS: tuple[str, ...] = ("nft", "grpo")
TOY_MODELS: tuple[str, ...] = ("tiny_llama",)
TOY_DATASETS: tuple[str, ...] = ("arithmetic",)
TOY_TOKENIZER = "toy:char"
DATASET_SUFFIXES: dict[str, str] = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}

# Verifier names accepted in ``reward_funcs`` (also with the ``_reward`` suffix).
VERIFIER_NAMES: dict[str, str] = {
    "numeric_match": "numeric_match_reward",
    "math_verify": "math_verify_reward",
}


class ConfigError(ValueError):
    """A run file that cannot be turned into a training run; the message names the key and the fix."""


@dataclass
class RunSpec:
    """Everything a run needs, resolved from a run file (model and datasets are loaded)."""

    trainer_name: str
    trainer_cls: type
    config: Any
    model: Any
    model_source: str
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any | None
    reward_funcs: list[Callable[..., Any]]
    reward_names: list[str]
    peft_config: Any | None
    run: dict[str, Any]
    config_overrides: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run file: a YAML mapping with string keys.

    Raises:
        ConfigError: missing file, YAML syntax error (with line), or not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: no such file {str(p)!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {p} is not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config: {p} must hold a YAML mapping of keys to values, got {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"--config: keys must be strings, got {key!r}")
    return data


def _config_class(trainer_name: str) -> tuple[type, type]:
    if trainer_name == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOConfig, GRPOTrainer
    try:
        from nft_trainer.trainer import NFTConfig, NFTTrainer
    except ImportError as e:  # pragma: no cover - only while the trainer module is missing
        raise ConfigError(f"trainer: 'nft' needs nft_trainer.trainer, which failed to import: {e}") from e
    return NFTConfig, NFTTrainer


_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)", re.IGNORECASE)


def _coerce_number(value: Any, annotation: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-6`` as a string; YAML 1.2 and TRL's own argument parser read a
    number. Convert such strings for fields typed float (or int), leave everything else as written."""
    if not isinstance(value, str):
        return value
    tokens = set(re.findall(r"\w+", annotation if isinstance(annotation, str) else str(annotation)))
    if "str" in tokens or "Any" in tokens:
        return value
    text = value.strip()
    if "float" in tokens and _FLOAT_RE.fullmatch(text):
        return float(text)
    if "int" in tokens and re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return value


def _config_fields(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls) if f.init]


def _bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def build_config(trainer_name: str, overrides: Mapping[str, Any], notes: list[str]) -> Any:
    """Instantiate the trainer's config class from the non-run keys.

    Raises:
        ConfigError: unknown field (named, with the closest valid field) or a value the class rejects.
    """
    config_cls, _ = _config_class(trainer_name)
    valid = _config_fields(config_cls)
    for key in overrides:
        if key not in valid:
            raise ConfigError(
                f"unknown key {key!r}: not a run key {RUN_KEYS} nor a field of {config_cls.__name__}"
                f"{_suggest(key, valid + list(RUN_KEYS))}"
            )
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    kwargs = {k: _coerce_number(v, fields[k].type) for k, v in overrides.items()}
    if "output_dir" not in kwargs:
        raise ConfigError("output_dir: required (where checkpoints and the final model are written)")
    if "bf16" not in kwargs and not kwargs.get("fp16", False) and not _bf16_available():
        # TRL defaults bf16 to True, which fails on machines without bf16 support.
        kwargs["bf16"] = False
        notes.append("bf16 not set and no bf16-capable GPU found: using bf16=False (float32)")
    try:
        config = config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{config_cls.__name__} rejected the config: {e}") from e
    save_steps = config.save_steps
    if (
        str(getattr(config.save_strategy, "value", config.save_strategy)) == "steps"
        and isinstance(save_steps, int)
        and not is_generation_boundary(config, save_steps)
    ):
        notes.append(
            f"save_steps={save_steps} is not a multiple of the optimizer steps of one generation batch "
            f"(steps_per_generation x num_iterations / gradient_accumulation_steps = "
            f"{config.steps_per_generation * config.num_iterations / config.gradient_accumulation_steps:g}): "
            "TRL does not checkpoint its generated batch, so a run resumed from such a checkpoint generates a new "
            "one and does not continue exactly like the uninterrupted run"
        )
    return config


def is_generation_boundary(config: Any, global_step: int) -> bool:
    """True if optimizer step ``global_step`` ends a generation batch (TRL regenerates every
    ``steps_per_generation x num_iterations`` micro-steps); only there does a resume continue exactly."""
    cycle = config.steps_per_generation * config.num_iterations
    return (global_step * config.gradient_accumulation_steps) % cycle == 0


def _toy_module() -> Any:
    try:
        return importlib.import_module("nft_trainer.toy")
    except ImportError as e:  # pragma: no cover - only while toy.py is missing
        raise ConfigError(f"'toy:' specs need nft_trainer.toy, which failed to import: {e}") from e


def _check_kwargs(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}: must be a mapping of argument names to values, got {value!r}")
    return dict(value)


def _call_toy(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{key}: bad arguments for nft_trainer.toy.{fn.__name__}: {e}") from e


def resolve_model(run: Mapping[str, Any], *, load: bool = True) -> tuple[Any, Any, str]:
    """(model or local path, tokenizer, description) from the ``model``/``model_kwargs``/``tokenizer`` keys."""
    spec = run.get("model")
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"model: required, a local model directory or 'toy:tiny_llama', got {spec!r}")
    model_kwargs = _check_kwargs("model_kwargs", run.get("model_kwargs"))
    tokenizer_spec = run.get("tokenizer")
    if tokenizer_spec is not None and (not isinstance(tokenizer_spec, str) or not tokenizer_spec):
        raise ConfigError(f"tokenizer: must be a local directory, got {tokenizer_spec!r}")
    if spec.startswith("toy:"):
        name = spec.removeprefix("toy:")
        if name not in TOY_MODELS:
            raise ConfigError(
                f"model: unknown toy model {name!r}; available: {['toy:' + m for m in TOY_MODELS]}"
            )
        if tokenizer_spec not in (None, TOY_TOKENIZER):
            raise ConfigError(
                f"tokenizer: toy models use {TOY_TOKENIZER!r} (nft_trainer.toy.char_tokenizer()), got {tokenizer_spec!r}"
            )
        toy = _toy_module()
        tokenizer = toy.char_tokenizer()
        if not load:
            import inspect

            try:
                inspect.signature(toy.tiny_llama).bind(tokenizer, **model_kwargs)
            except TypeError as e:
                raise ConfigError(f"model_kwargs: bad arguments for nft_trainer.toy.tiny_llama: {e}") from e
            return None, tokenizer, spec
        model = _call_toy("model_kwargs", toy.tiny_llama, tokenizer, **model_kwargs)
        return model, tokenizer, spec
    if model_kwargs:
        raise ConfigError(
            "model_kwargs: only for 'toy:' models; for a local model put from_pretrained arguments in "
            "model_init_kwargs"
        )
    path = Path(spec)
    if not path.is_dir():
        raise ConfigError(
            f"model: {spec!r} is neither a local model directory nor a 'toy:' spec (download hub models first, "
            "e.g. `hf download <id> --local-dir <dir>`, and give the directory)"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"model: {spec!r} has no config.json; give a directory written by save_pretrained")
    if tokenizer_spec == TOY_TOKENIZER:
        return str(path), _toy_module().char_tokenizer(), spec
    tok_path = Path(tokenizer_spec) if tokenizer_spec is not None else path
    if not tok_path.is_dir():
        raise ConfigError(f"tokenizer: {str(tok_path)!r} is not a local directory")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer: cannot load a tokenizer from {str(tok_path)!r}: {e}") from e
    return str(path), tokenizer, spec


def resolve_dataset(key: str, spec: Any, kwargs_value: Any) -> Any:
    """A ``datasets.Dataset`` from a local file/directory or a ``toy:`` spec."""
    kwargs = _check_kwargs(f"{key}_kwargs", kwargs_value)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(
            f"{key}: must be a local .json/.jsonl/.parquet file, a directory or 'toy:arithmetic'"
        )
    if spec.startswith("toy:"):
        name = spec.removeprefix("toy:")
        if name not in TOY_DATASETS:
            raise ConfigError(
                f"{key}: unknown toy dataset {name!r}; available: {['toy:' + d for d in TOY_DATASETS]}"
            )
        toy = _toy_module()
        if "n" not in kwargs:
            raise ConfigError(f"{key}_kwargs: 'n' (number of examples) is required for {spec}")
        return _call_toy(f"{key}_kwargs", toy.arithmetic_dataset, **kwargs)
    if kwargs:
        raise ConfigError(f"{key}_kwargs: only for 'toy:' datasets")
    import datasets

    path = Path(spec)
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{key}: {spec!r} is not a datasets.save_to_disk directory: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ConfigError(f"{key}: {spec!r} holds splits {list(ds)}; expected a 'train' split")
            ds = ds["train"]
        return ds
    if not path.is_file():
        raise ConfigError(f"{key}: no such file {spec!r}")
    fmt = DATASET_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{key}: unsupported file type {path.suffix!r}; use one of {sorted(DATASET_SUFFIXES)}"
        )
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many kinds of errors for malformed files
        raise ConfigError(f"{key}: cannot read {spec!r} as {fmt}: {e}") from e


def _import_object(key: str, spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"{key}: {spec!r} must be a verifier name {sorted(VERIFIER_NAMES)} or 'module:function'"
        )
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ConfigError(f"{key}: no such file {module_name!r}")
            mod_spec = importlib.util.spec_from_file_location(f"_nft_reward_{file.stem}", file)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{key}: cannot import {module_name!r}: {e}") from e
    if not hasattr(module, attr):
        raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def resolve_reward_func(spec: Any, *, key: str = "reward_funcs") -> tuple[Callable[..., Any], str]:
    """(callable, name) for one ``reward_funcs`` entry. Bound ``kwargs`` are validated against the
    function's signature and the returned wrapper carries a ``__name__`` (TRL logs rewards by name)."""
    kwargs: dict[str, Any] = {}
    if isinstance(spec, dict):
        unknown = set(spec) - {"name", "kwargs"}
        if unknown:
            raise ConfigError(f"{key}: unknown keys {sorted(unknown)} in {spec!r}; allowed: name, kwargs")
        kwargs = _check_kwargs(f"{key}.kwargs", spec.get("kwargs"))
        spec = spec.get("name")
    if not isinstance(spec, str) or not spec:
        raise ConfigError(
            f"{key}: each entry must be a name, 'module:function' or {{name, kwargs}}, got {spec!r}"
        )
    base = spec.removesuffix("_reward")
    if ":" not in spec:
        if base not in VERIFIER_NAMES:
            raise ConfigError(
                f"{key}: unknown verifier {spec!r}; available: {sorted(VERIFIER_NAMES)}, or 'module:function'"
                f"{_suggest(base, list(VERIFIER_NAMES))}"
            )
        from nft_trainer import verifiers

        fn = getattr(verifiers, VERIFIER_NAMES[base])
        name = base
    else:
        fn = _import_object(key, spec)
        name = spec.rpartition(":")[2]
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    if kwargs:
        import inspect

        try:
            params = inspect.signature(fn).parameters
            inspect.signature(fn).bind_partial(**kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: bad kwargs for {spec!r}: {e}") from e
        named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown_kw = [k for k in kwargs if k not in named]
        if unknown_kw:
            # Would otherwise vanish into the function's **kwargs (TRL's extra arguments) unnoticed.
            raise ConfigError(
                f"{key}: bad kwargs for {spec!r}: {unknown_kw} are not parameters of it {named}"
            )
        bound = functools.partial(fn, **kwargs)

        @functools.wraps(fn)
        def reward(*args: Any, **kw: Any) -> Any:
            return bound(*args, **kw)

        name = f"{name}[{','.join(f'{k}={v}' for k, v in kwargs.items())}]"
        reward.__name__ = name
        return reward, name
    return fn, name


def resolve_run(raw: Mapping[str, Any], *, load: bool = True) -> RunSpec:
    """Validate a run mapping and build config, model, tokenizer, datasets and reward functions.

    With ``load=False`` (dry run) the toy model is not instantiated; everything else is checked.

    Raises:
        ConfigError: with the offending key and the fix.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"run config must be a mapping, got {type(raw).__name__}")
    run = {k: v for k, v in raw.items() if k in RUN_KEYS}
    overrides = {k: v for k, v in raw.items() if k not in RUN_KEYS}
    trainer_name = run.get("trainer", "nft")
    if trainer_name not in TRAINERS:
        raise ConfigError(f"trainer: must be one of {TRAINERS}, got {trainer_name!r}")
    notes: list[str] = []
    config = build_config(trainer_name, overrides, notes)
    _, trainer_cls = _config_class(trainer_name)

    reward_specs = run.get("reward_funcs")
    if isinstance(reward_specs, (str, dict)):
        reward_specs = [reward_specs]
    if not isinstance(reward_specs, list) or not reward_specs:
        raise ConfigError("reward_funcs: required, a non-empty list (e.g. [numeric_match])")
    rewards = [resolve_reward_func(s, key=f"reward_funcs[{i}]") for i, s in enumerate(reward_specs)]
    names = [n for _, n in rewards]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"reward_funcs: {duplicates} listed more than once (use reward_weights to weight one)"
        )

    model, tokenizer, model_source = resolve_model(run, load=load)
    if "dataset" not in run:
        raise ConfigError(
            "dataset: required (local .json/.jsonl/.parquet file, directory, or toy:arithmetic)"
        )
    train_dataset = resolve_dataset("dataset", run["dataset"], run.get("dataset_kwargs"))
    eval_dataset = None
    if run.get("eval_dataset") is not None:
        eval_dataset = resolve_dataset("eval_dataset", run["eval_dataset"], run.get("eval_dataset_kwargs"))
    elif run.get("eval_dataset_kwargs") is not None:
        raise ConfigError("eval_dataset_kwargs: given without eval_dataset")
    for key, ds in (("dataset", train_dataset), ("eval_dataset", eval_dataset)):
        if ds is not None and "prompt" not in ds.column_names:
            raise ConfigError(
                f"{key}: no 'prompt' column (columns: {ds.column_names}); rename the question column to 'prompt'"
            )

    peft_config = None
    if run.get("peft") is not None:
        peft_kwargs = _check_kwargs("peft", run["peft"])
        try:
            from peft import LoraConfig
        except ImportError as e:
            raise ConfigError("peft: needs the peft package (pip install 'nft-trainer[peft]')") from e
        try:
            peft_config = LoraConfig(task_type="CAUSAL_LM", **peft_kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"peft: LoraConfig rejected {peft_kwargs!r}: {e}") from e

    return RunSpec(
        trainer_name=trainer_name,
        trainer_cls=trainer_cls,
        config=config,
        model=model,
        model_source=model_source,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        reward_funcs=[r for r, _ in rewards],
        reward_names=[n for _, n in rewards],
        peft_config=peft_config,
        run=run,
        config_overrides=overrides,
        notes=notes,
    )
