"""``convert_to_tetrajet``: torchao-style in-place swap of nn.Linear modules for TetraJetLinear,
plus the stochastic-rounding counters of a converted model (for checkpoints)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import nn

from .linear import TetraJetLinear
from .recipe import TetraJetRecipe

__all__ = ["convert_to_tetrajet", "load_sr_state", "sr_state", "tetrajet_layers"]

FilterFn = Callable[[nn.Module, str], bool]


def _why_not_convertible(module: nn.Module, fqn: str, parents: dict[str, nn.Module]) -> str | None:
    if isinstance(module, TetraJetLinear):
        return "it is already a TetraJetLinear"
    if not isinstance(module, nn.Linear):
        return f"it is a {type(module).__name__}; TetraJet quantizes the GEMMs of nn.Linear modules only"
    if type(module).forward is not nn.Linear.forward:
        return f"{type(module).__name__} overrides nn.Linear.forward, which the swap would drop"
    parent = parents.get(fqn.rpartition(".")[0])
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads its projection weights directly and never calls this module's forward"
    return None


def convert_to_tetrajet(
    model: nn.Module,
    config: TetraJetRecipe,
    module_filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Replace, in place, every selected nn.Linear of ``model`` by a TetraJetLinear running
    ``config``; returns ``model``. Parameters are kept (same objects, same state_dict keys), so an
    optimizer built before or after the call stays valid. Converted layers get layer ids 0, 1, ...
    in ``named_modules()`` order (the stochastic-rounding streams depend on them).

    module_filter_fn(module, fqn) -> bool (torchao convention) selects modules; default: every
    plain nn.Linear (Linear subclasses with their own forward and the projections inside
    nn.MultiheadAttention are skipped with a warning). A module that the filter selects but that
    cannot be converted (e.g. an nn.Conv2d or nn.Embedding that holds parameters, an
    nn.MultiheadAttention projection) raises TypeError naming it. in_features need not be a multiple
    of the block size: the reduction dim is zero padded (exact).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, TetraJetRecipe):
        raise TypeError(f"config must be a TetraJetRecipe, got {type(config).__name__}")
    if module_filter_fn is not None and not callable(module_filter_fn):
        raise TypeError(f"module_filter_fn must be callable or None, got {type(module_filter_fn).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("model is itself an nn.Linear; use TetraJetLinear.from_linear(model, config)")
    parents = dict(model.named_modules())
    todo: list[tuple[str, nn.Module]] = []
    skipped: list[str] = []
    for fqn, module in model.named_modules():
        if not fqn:
            continue
        if module_filter_fn is None:
            if isinstance(module, nn.Linear) and not isinstance(module, TetraJetLinear):
                why = _why_not_convertible(module, fqn, parents)
                if why is None:
                    todo.append((fqn, module))
                else:
                    skipped.append(f"{fqn} ({why})")
            continue
        selected = module_filter_fn(module, fqn)
        if not isinstance(selected, bool):
            raise TypeError(f"module_filter_fn must return a bool, got {type(selected).__name__} for {fqn!r}")
        if not selected:
            continue
        why = _why_not_convertible(module, fqn, parents)
        if why is None:
            todo.append((fqn, module))
        elif isinstance(module, TetraJetLinear):
            continue
        elif isinstance(module, nn.Linear) or any(True for _ in module.parameters(recurse=False)):
            fmt = "FP4" if config.uses_fp4 else "quantized"
            raise TypeError(f"module_filter_fn selected {fqn!r} for {fmt} training, but {why}")
    if skipped:
        warnings.warn(f"convert_to_tetrajet skipped: {'; '.join(skipped)}", stacklevel=2)
    start = 1 + max((m.layer_id for m in model.modules() if isinstance(m, TetraJetLinear)), default=-1)
    for i, (fqn, module) in enumerate(todo):
        parent_name, _, child = fqn.rpartition(".")
        parent = parents[parent_name]
        setattr(parent, child, TetraJetLinear.from_linear(module, config, layer_id=start + i))
    return model


def tetrajet_layers(model: nn.Module) -> dict[str, TetraJetLinear]:
    """The TetraJetLinear modules of ``model`` by qualified name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {n: m for n, m in model.named_modules() if isinstance(m, TetraJetLinear)}


def sr_state(model: nn.Module) -> dict[str, int]:
    """Stochastic-rounding call counters of every TetraJetLinear (save them with a checkpoint)."""
    return {n: m.sr_calls for n, m in tetrajet_layers(model).items()}


def load_sr_state(model: nn.Module, state: dict[str, int]) -> None:
    """Restore counters saved by ``sr_state``; the layer names must match exactly."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    layers = tetrajet_layers(model)
    if set(state) != set(layers):
        missing, extra = sorted(set(layers) - set(state)), sorted(set(state) - set(layers))
        raise ValueError(f"sr state does not match the model: missing {missing}, unexpected {extra}")
    for name, v in state.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"sr state of {name!r} must be a non-negative int, got {v!r}")
    for name, v in state.items():
        layers[name].sr_calls = v
