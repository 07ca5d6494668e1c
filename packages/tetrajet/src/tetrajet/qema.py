"""Q-EMA (TetraJet, arXiv 2502.20853, Alg. 1): the EMA of the weights decides the rounding
direction of the forward weight quantizer Q2.

After every optimizer step   W_EMA ← β·W_EMA + (1 − β)·W
and, once ``num_updates ≥ start_step``, Q2 quantizes W with the scales S of the current W but, of
the two grid values bracketing W_i/S, picks the one nearer to W_EMA,i/S (the layer hook
``TetraJetLinear.set_weight_rounding_reference``; the rounding is ``fake_quant.quantize_toward``).
Only Q2 is affected; the backward quantizers are unchanged.

Usage::

    qema = QEMA(model, beta=0.998)       # after convert_to_tetrajet
    qema.attach(optimizer)               # or call qema.update() after each optimizer.step()

Distributed: under DDP every rank holds the same weights, hence the same EMA. Under FSDP2 the EMA
is kept as a full (replicated) float32 copy per rank, updated from the all-gathered weight, so
``update`` is a collective there. Checkpoint with ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._dist import full_tensor
from .convert import tetrajet_layers
from .linear import TetraJetLinear

__all__ = ["QEMA", "QEMAConfig"]


@dataclass(frozen=True)
class QEMAConfig:
    """Q-EMA options. beta: EMA decay in (0, 1) (paper default 0.998; DeiT-S 0.9972; robust in
    [0.993, 0.9995]). start_step: optimizer steps before the EMA steers rounding (paper: 10)."""

    beta: float = 0.998
    start_step: int = 10

    def __post_init__(self) -> None:
        if (
            isinstance(self.beta, bool)
            or not isinstance(self.beta, (int, float))
            or not 0.0 < self.beta < 1.0
        ):
            raise ValueError(f"beta must be a float in (0, 1), got {self.beta!r}")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ValueError(f"start_step must be an int >= 0, got {self.start_step!r}")


class QEMA:
    """EMA buffers for the forward weights of a model's TetraJetLinear layers.

    model: module holding TetraJetLinear layers whose ``w_fwd`` quantizer is enabled and rne
        (layers without one are skipped; none at all is an error). A DDP wrapper is fine.
    config: a QEMAConfig, or pass ``beta`` / ``start_step`` directly (not both).
    """

    def __init__(
        self,
        model: nn.Module,
        config: QEMAConfig | None = None,
        *,
        beta: float | None = None,
        start_step: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if config is not None:
            if not isinstance(config, QEMAConfig):
                raise TypeError(f"config must be a QEMAConfig, got {type(config).__name__}")
            if beta is not None or start_step is not None:
                raise ValueError("pass either config or beta/start_step, not both")
        else:
            kw: dict[str, Any] = {}
            if beta is not None:
                kw["beta"] = beta
            if start_step is not None:
                kw["start_step"] = start_step
            config = QEMAConfig(**kw)
        self.config = config
        self.layers: dict[str, TetraJetLinear] = {
            n: m
            for n, m in tetrajet_layers(model).items()
            if m.recipe.w_fwd.enabled and m.recipe.w_fwd.rounding == "rne"
        }
        if not self.layers:
            raise ValueError(
                "model has no TetraJetLinear layer with an enabled rne w_fwd quantizer for Q-EMA"
            )
        self.num_updates = 0
        self.ema: dict[str, torch.Tensor] = {
            n: full_tensor(m.weight).float().clone() for n, m in self.layers.items()
        }
        self._handle: Any = None
        self._sync_references()

    @property
    def active(self) -> bool:
        """True once the EMA steers Q2's rounding (``num_updates >= start_step``)."""
        return self.num_updates >= self.config.start_step

    @torch.no_grad()
    def update(self) -> None:
        """W_EMA ← β W_EMA + (1 − β) W for every layer; then (re)attach the references if active.
        Call once after every optimizer step (``attach`` does it for you)."""
        b = self.config.beta
        for n, m in self.layers.items():
            w = full_tensor(m.weight)
            ema = self.ema[n]
            if w.shape != ema.shape:
                raise RuntimeError(f"weight of {n!r} has shape {tuple(w.shape)}, EMA {tuple(ema.shape)}")
            ema.mul_(b).add_(w.to(ema.device, torch.float32), alpha=1.0 - b)
        self.num_updates += 1
        self._sync_references()

    def _sync_references(self) -> None:
        for n, m in self.layers.items():
            m.set_weight_rounding_reference(self.ema[n] if self.active else None)

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Call ``update()`` after every ``optimizer.step()`` (a step post-hook); returns its handle
        (``handle.remove()`` detaches). At most one optimizer at a time."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self._handle is not None:
            raise RuntimeError("QEMA is already attached to an optimizer; call detach() first")
        self._handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.update())
        return self._handle

    def detach(self) -> None:
        """Remove the optimizer hook and the rounding references (layers go back to RNE)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for m in self.layers.values():
            m.set_weight_rounding_reference(None)

    def state_dict(self) -> dict[str, Any]:
        """{"beta", "start_step", "num_updates", "ema": {layer: tensor}} (tensors cloned)."""
        return {
            "beta": self.config.beta,
            "start_step": self.config.start_step,
            "num_updates": self.num_updates,
            "ema": {n: t.clone() for n, t in self.ema.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` (layer names and shapes must match; the config is taken from the
        state) and re-attach the references."""
        if not isinstance(state, dict) or set(state) != {"beta", "start_step", "num_updates", "ema"}:
            raise ValueError("state must be a dict from QEMA.state_dict()")
        config = QEMAConfig(beta=state["beta"], start_step=state["start_step"])
        ema = state["ema"]
        if not isinstance(ema, dict) or set(ema) != set(self.ema):
            raise ValueError(
                f"state ema layers {sorted(ema) if isinstance(ema, dict) else ema!r} do not match {sorted(self.ema)}"
            )
        for n, t in ema.items():
            if not isinstance(t, torch.Tensor) or t.shape != self.ema[n].shape:
                raise ValueError(f"ema of {n!r} must be a tensor of shape {tuple(self.ema[n].shape)}")
        n_up = state["num_updates"]
        if isinstance(n_up, bool) or not isinstance(n_up, int) or n_up < 0:
            raise ValueError(f"num_updates must be an int >= 0, got {n_up!r}")
        self.config = config
        self.num_updates = n_up
        for n, t in ema.items():
            self.ema[n].copy_(t.to(self.ema[n].device, torch.float32))
        self._sync_references()
