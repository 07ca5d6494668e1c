"""Q-Ramping (TetraJet, arXiv 2502.20853, Alg. 2): per-element gradient accumulation and learning
rate ramping for oscillating weights, as a wrapper around ``torch.optim.AdamW``.

Calibration (``calibrate``): save the model and optimizer state, run T0 steps of plain AdamW while
accumulating dist_W and dist_Q per element (Q = the layer's RTN forward weight quantizer; see
``tetrajet.oscillation``), restore the saved state, and set for every element

    R_w = dist_Q / dist_W,    k = min(k2 · ⌊R_w / k1⌋ + 1, N_max)      (defaults k1 = 16, k2 = 5)

Step (AdamW_BS_Ramping): weight decay p ← p·(1 − lr·λ) on the whole tensor every step; each element
adds its gradient to an accumulator; an element whose accumulator holds k gradients updates its
Adam moments with their mean ḡ (m ← β1 m + (1−β1) ḡ, v ← β2 v + (1−β2) ḡ², per-element step count t
for the bias corrections) and moves by  k · lr · m̂ / (√v̂ + ε)  — the element trains with a k times
larger batch and a k times larger learning rate. k = 1 is exactly AdamW. Parameters that are not
TetraJetLinear weights (biases, norms, embeddings) are stepped by the wrapped AdamW itself.

Learning-rate schedulers: attach them to the wrapped AdamW (``QRamping.param_groups`` *is* its
``param_groups``). Not combined with Q-EMA (the paper uses one or the other).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .convert import load_sr_state, sr_state, tetrajet_layers
from .oscillation import OscillationTracker, oscillation_ratio

__all__ = ["QRamping", "ramping_periods"]


def _check_int(name: str, v: object, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def ramping_periods(
    dist_w: torch.Tensor, dist_q: torch.Tensor, *, k1: float = 16.0, k2: int = 5, n_max: int = 64
) -> torch.Tensor:
    """k = min(k2·⌊R_w/k1⌋ + 1, n_max) per element with R_w = dist_Q/dist_W (0 where dist_W = 0),
    as int32 (inputs not modified)."""
    if isinstance(k1, bool) or not isinstance(k1, (int, float)) or not k1 > 0:
        raise ValueError(f"k1 must be a number > 0, got {k1!r}")
    _check_int("k2", k2, 0)
    _check_int("n_max", n_max, 1)
    r = oscillation_ratio(dist_w, dist_q)
    k = torch.floor(r / float(k1)) * k2 + 1
    return k.clamp(max=n_max).to(torch.int32)


class QRamping:
    """AdamW with Q-Ramping for the TetraJetLinear weights of ``model``.

    optimizer: a ``torch.optim.AdamW`` over the model's parameters (amsgrad and maximize off).
    model: the (possibly DDP-wrapped) model holding TetraJetLinear layers.
    k1, k2, n_max: ramping hyperparameters (paper k1 = 16, k2 = 5; the reference code clamps k to
        the steps per epoch, pass that as n_max). t0: calibration steps (paper 30).

    Until the first ``calibrate`` every k is 1 and ``step`` equals AdamW's step.
    """

    def __init__(
        self,
        optimizer: torch.optim.AdamW,
        model: nn.Module,
        *,
        k1: float = 16.0,
        k2: int = 5,
        n_max: int = 64,
        t0: int = 30,
    ) -> None:
        if not isinstance(optimizer, torch.optim.AdamW):
            raise TypeError(f"optimizer must be a torch.optim.AdamW, got {type(optimizer).__name__}")
        for i, g in enumerate(optimizer.param_groups):
            for key in ("amsgrad", "maximize"):
                if g.get(key, False):
                    raise ValueError(f"param_groups[{i}] has {key}=True; Q-Ramping supports plain AdamW only")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        ramping_periods(torch.zeros(1), torch.zeros(1), k1=k1, k2=k2, n_max=n_max)  # validates
        self.k1, self.k2, self.n_max = float(k1), k2, n_max
        self.t0 = _check_int("t0", t0, 1)
        self.optimizer = optimizer
        self.model = model
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.layer_names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        for name, layer in tetrajet_layers(model).items():
            if id(layer.weight) in owned:
                self.layer_names.append(name)
                self.params.append(layer.weight)
        if not self.params:
            raise ValueError("none of the optimizer's parameters is a TetraJetLinear weight of model")
        self.state: dict[int, dict[str, torch.Tensor]] = {}
        for i, p in enumerate(self.params):
            self.state[i] = self._fresh_state(p)

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _fresh_state(p: torch.Tensor) -> dict[str, torch.Tensor]:
        d = p.detach()
        return {
            "exp_avg": torch.zeros_like(d, dtype=torch.float32),
            "exp_avg_sq": torch.zeros_like(d, dtype=torch.float32),
            "step": torch.zeros_like(d, dtype=torch.float32),
            "grad_acc": torch.zeros_like(d, dtype=torch.float32),
            "step_acc": torch.zeros_like(d, dtype=torch.int32),
            "period": torch.ones_like(d, dtype=torch.int32),
        }

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped AdamW's param_groups (shared; schedulers may change their lr)."""
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``optimizer.zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def periods(self) -> dict[str, torch.Tensor]:
        """Current per-element k by layer name (copies)."""
        return {n: self.state[i]["period"].clone() for i, n in enumerate(self.layer_names)}

    def set_periods(self, periods: dict[str, torch.Tensor]) -> None:
        """Set k per element (int tensors >= 1 shaped like each weight); pending accumulations are
        applied at the next step for elements whose new k they already reach."""
        if not isinstance(periods, dict) or set(periods) != set(self.layer_names):
            raise ValueError(f"periods must be a dict over layers {self.layer_names}")
        for i, n in enumerate(self.layer_names):
            k = periods[n]
            ref = self.state[i]["period"]
            if not isinstance(k, torch.Tensor) or k.shape != ref.shape or k.is_floating_point():
                raise ValueError(f"periods[{n!r}] must be an integer tensor of shape {tuple(ref.shape)}")
            if bool((k < 1).any()):
                raise ValueError(f"periods[{n!r}] must be >= 1 everywhere")
        for i, n in enumerate(self.layer_names):
            self.state[i]["period"].copy_(periods[n].to(torch.int32))

    def _group_of(self) -> dict[int, dict[str, Any]]:
        return {id(p): g for g in self.optimizer.param_groups for p in g["params"]}

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AdamW_BS_Ramping step (see the module docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        try:
            self.optimizer.step()  # everything that is not ramped
        finally:
            for p, g in zip(self.params, saved, strict=True):
                p.grad = g
        groups = self._group_of()
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._ramped_update(p, self.state[i], groups[id(p)])
        return loss

    def _ramped_update(self, p: torch.Tensor, st: dict[str, torch.Tensor], group: dict[str, Any]) -> None:
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        eps, wd = float(group["eps"]), float(group["weight_decay"])
        g = p.grad.detach()
        if g.is_sparse:
            raise RuntimeError("Q-Ramping does not support sparse gradients")
        p.mul_(1.0 - lr * wd)
        st["grad_acc"].add_(g.float())
        st["step_acc"].add_(1)
        ready = st["step_acc"] >= st["period"]
        if not bool(ready.any()):
            return
        cnt = st["step_acc"].float()
        gm = st["grad_acc"] / cnt.clamp(min=1.0)
        m = torch.where(ready, st["exp_avg"].lerp(gm, 1.0 - beta1), st["exp_avg"])
        v = torch.where(ready, st["exp_avg_sq"] * beta2 + (1.0 - beta2) * gm * gm, st["exp_avg_sq"])
        t = st["step"] + ready.float()
        bc1 = 1.0 - torch.pow(beta1, t)
        bc2 = 1.0 - torch.pow(beta2, t)
        safe = ready & (t > 0)
        upd = (
            lr
            * cnt
            * (m / torch.where(safe, bc1, 1.0))
            / (v.sqrt() / torch.where(safe, bc2, 1.0).sqrt() + eps)
        )
        p.sub_(torch.where(safe, upd, 0.0).to(p.dtype))
        st["exp_avg"].copy_(m)
        st["exp_avg_sq"].copy_(v)
        st["step"].copy_(t)
        st["grad_acc"].masked_fill_(ready, 0.0)
        st["step_acc"].masked_fill_(ready, 0)

    # ------------------------------------------------------------------ calibration
    def calibrate(self, train_step: Callable[[], Any], steps: int | None = None) -> dict[str, float]:
        """Alg. 2 calibration: snapshot model + optimizer, run ``steps`` (default t0) plain AdamW
        steps, each after ``train_step()`` (which must zero nothing and compute the gradients:
        forward + backward on the next batch), track dist_W / dist_Q, restore the snapshot and
        set k per element. Returns {"mean_k", "ramped_fraction", "max_k"}."""
        if not callable(train_step):
            raise TypeError(f"train_step must be callable, got {type(train_step).__name__}")
        steps = self.t0 if steps is None else _check_int("steps", steps, 1)
        all_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        snap_params = [p.detach().clone() for p in all_params]
        snap_opt = copy.deepcopy(self.optimizer.state_dict())
        snap_self = copy.deepcopy(self.state)
        snap_sr = sr_state(self.model)
        tracker = OscillationTracker(self.model, layers=self.layer_names, follow_reference=False)
        for st in self.state.values():
            st["period"].fill_(1)
        try:
            for _ in range(steps):
                self.optimizer.zero_grad(set_to_none=True)
                train_step()
                self.step()
                tracker.update()
        finally:
            with torch.no_grad():
                for p, s in zip(all_params, snap_params, strict=True):
                    p.copy_(s)
            self.optimizer.load_state_dict(snap_opt)
            self.state = snap_self
            load_sr_state(self.model, snap_sr)
            self.optimizer.zero_grad(set_to_none=True)
        dw, dq = tracker.dist_w(), tracker.dist_q()
        new = {
            n: ramping_periods(dw[n], dq[n], k1=self.k1, k2=self.k2, n_max=self.n_max)
            for n in self.layer_names
        }
        self.set_periods(new)
        ks = torch.cat([k.flatten().float() for k in new.values()])
        return {
            "mean_k": float(ks.mean()),
            "ramped_fraction": float((ks > 1).float().mean()),
            "max_k": float(ks.max()),
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """{"optimizer": AdamW state_dict, "ramping": per-layer state, "layers": names}."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "layers": list(self.layer_names),
            "ramping": {
                n: {k: v.clone() for k, v in self.state[i].items()} for i, n in enumerate(self.layer_names)
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the layer list must match."""
        if not isinstance(state, dict) or set(state) != {"optimizer", "layers", "ramping"}:
            raise ValueError("state must be a dict from QRamping.state_dict()")
        if list(state["layers"]) != self.layer_names:
            raise ValueError(f"state layers {state['layers']} do not match {self.layer_names}")
        for i, n in enumerate(self.layer_names):
            d = state["ramping"][n]
            if set(d) != set(self.state[i]):
                raise ValueError(f"ramping state of {n!r} must have keys {sorted(self.state[i])}")
            for k, v in d.items():
                if v.shape != self.state[i][k].shape:
                    raise ValueError(
                        f"ramping state {n!r}.{k} has shape {tuple(v.shape)}, expected {tuple(self.state[i][k].shape)}"
                    )
        self.optimizer.load_state_dict(state["optimizer"])
        for i, n in enumerate(self.layer_names):
            for k, v in state["ramping"][n].items():
                self.state[i][k].copy_(v)
