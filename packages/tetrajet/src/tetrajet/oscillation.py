"""Weight-oscillation diagnostics (TetraJet, arXiv 2502.20853, §4.1-4.2).

Per element of every tracked weight, over the steps since the last ``reset``:

    dist_W = Σ_t |w_t − w_{t−1}|,   dist_Q = Σ_t |Q(w)_t − Q(w)_{t−1}|,   R_w = dist_Q / dist_W

(R_w = 0 where dist_W = 0; an element is "oscillating" when R_w > 16), the per-layer rate of change
of the quantized weight r = (1/T) Σ_t ‖Q_t − Q_{t−1}‖_F / ‖Q_{t−1}‖_F, and the last step at which
each element's quantized value flipped (so "fraction flipped in the last N steps" needs no ring
buffer). Q is the layer's forward weight quantizer (Q2, blocks along in_features); when Q-EMA has
set a rounding reference on the layer, Q(w) is the value the forward really uses.

``OscillationCallback`` wraps a tracker for a training loop (call it after ``optimizer.step()``)
or, via ``as_trainer_callback()``, for a transformers ``Trainer``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._dist import full_tensor
from .convert import tetrajet_layers
from .fake_quant import fake_quantize, quantize_toward
from .linear import TetraJetLinear
from .recipe import QuantizerSpec

__all__ = [
    "DEFAULT_HIST_EDGES",
    "OSCILLATION_THRESHOLD",
    "OscillationCallback",
    "OscillationTracker",
    "oscillation_ratio",
]

OSCILLATION_THRESHOLD = 16.0
DEFAULT_HIST_EDGES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, math.inf)
DEFAULT_SPEC = QuantizerSpec("mxfp4", "rne", "truncation_free")
_NEVER = -(1 << 62)


def oscillation_ratio(dist_w: torch.Tensor, dist_q: torch.Tensor) -> torch.Tensor:
    """R_w = dist_Q / dist_W elementwise, 0 where dist_W = 0 (a weight that never moved cannot
    oscillate; its quantized value cannot have moved either). Inputs are not modified."""
    for name, t in (("dist_w", dist_w), ("dist_q", dist_q)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if dist_w.shape != dist_q.shape:
        raise ValueError(f"dist_w.shape {tuple(dist_w.shape)} must equal dist_q.shape {tuple(dist_q.shape)}")
    moved = dist_w > 0
    return torch.where(moved, dist_q / torch.where(moved, dist_w, torch.ones_like(dist_w)), 0.0)


def _check_positive_int(name: str, v: object, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


class _LayerStats:
    __slots__ = ("dist_q", "dist_w", "last_flip", "prev_q", "prev_w", "roc_sum")

    def __init__(self, w: torch.Tensor, q: torch.Tensor) -> None:
        self.prev_w = w
        self.prev_q = q
        self.dist_w = torch.zeros_like(w)
        self.dist_q = torch.zeros_like(w)
        self.last_flip = torch.full(w.shape, _NEVER, dtype=torch.int64, device=w.device)
        self.roc_sum = 0.0


class OscillationTracker:
    """Tracks dist_W, dist_Q, R_w and quantized-value flips of the TetraJetLinear weights of a model.

    model: module holding TetraJetLinear layers (also a DDP- or FSDP2-wrapped one; sharded weights
        are gathered, so ``update`` is a collective under FSDP2 and every rank must call it).
    spec: the quantizer Q (an rne QuantizerSpec); default: each layer's forward weight quantizer
        ``recipe.w_fwd`` (MXFP4 truncation-free RNE for a layer whose w_fwd is off).
    layers: names (as in ``tetrajet_layers(model)``) to track; default all.
    follow_reference: use the layer's Q-EMA rounding reference when set (the forward's real Q(w)).

    Call ``update()`` after every optimizer step. Memory: 4 float32 + 1 int64 tensors per weight.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        spec: QuantizerSpec | None = None,
        layers: Sequence[str] | None = None,
        follow_reference: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if spec is not None:
            if not isinstance(spec, QuantizerSpec):
                raise TypeError(f"spec must be a QuantizerSpec or None, got {type(spec).__name__}")
            if not spec.enabled or spec.rounding != "rne":
                raise ValueError(
                    f"spec must be an enabled rne quantizer, got fmt={spec.fmt!r} rounding={spec.rounding!r}"
                )
        if not isinstance(follow_reference, bool):
            raise TypeError(f"follow_reference must be a bool, got {type(follow_reference).__name__}")
        found = tetrajet_layers(model)
        if layers is None:
            chosen = found
        else:
            if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
                raise TypeError("layers must be a sequence of layer names (str)")
            missing = sorted(set(layers) - set(found))
            if missing:
                raise ValueError(
                    f"layers {missing} are not TetraJetLinear modules of model; known: {sorted(found)}"
                )
            chosen = {n: found[n] for n in layers}
        if not chosen:
            raise ValueError(
                "model has no TetraJetLinear layers to track (convert it with convert_to_tetrajet first)"
            )
        self.layers: dict[str, TetraJetLinear] = dict(chosen)
        self.spec = spec
        self.follow_reference = follow_reference
        self.steps = 0
        self.total_updates = 0
        self._stats: dict[str, _LayerStats] = {}
        for name, layer in self.layers.items():
            w = self._weight(layer)
            self._stats[name] = _LayerStats(w, self._quantized(layer, w))

    # ------------------------------------------------------------------ quantizer
    def spec_of(self, layer: TetraJetLinear) -> QuantizerSpec:
        """The quantizer Q used for ``layer``."""
        if self.spec is not None:
            return self.spec
        s = layer.recipe.w_fwd
        return s if s.enabled and s.rounding == "rne" else DEFAULT_SPEC

    @staticmethod
    def _weight(layer: TetraJetLinear) -> torch.Tensor:
        return full_tensor(layer.weight).float().clone()

    def _quantized(self, layer: TetraJetLinear, w: torch.Tensor) -> torch.Tensor:
        spec = self.spec_of(layer)
        axis = -1 if spec.blocks == "reduction" else -2
        ref = layer.weight_reference if self.follow_reference else None
        if ref is not None:
            return quantize_toward(w, ref.float(), spec, axis).dequantize(torch.float32)
        return fake_quantize(w, spec, axis)

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self) -> None:
        """Record one step: call right after ``optimizer.step()`` (and after Q-EMA's update)."""
        self.steps += 1
        self.total_updates += 1
        for name, layer in self.layers.items():
            st = self._stats[name]
            w = self._weight(layer)
            if w.shape != st.prev_w.shape:
                raise RuntimeError(
                    f"weight of {name!r} changed shape from {tuple(st.prev_w.shape)} to {tuple(w.shape)}"
                )
            q = self._quantized(layer, w)
            dq = (q - st.prev_q).abs()
            st.dist_w += (w - st.prev_w).abs()
            st.dist_q += dq
            st.last_flip[dq > 0] = self.total_updates
            prev_norm = float(torch.linalg.vector_norm(st.prev_q))
            if prev_norm > 0:
                st.roc_sum += float(torch.linalg.vector_norm(dq)) / prev_norm
            st.prev_w, st.prev_q = w, q

    def reset(self) -> None:
        """Zero dist_W, dist_Q and the rate-of-change sum (start a new window); flips are kept."""
        self.steps = 0
        for st in self._stats.values():
            st.dist_w.zero_()
            st.dist_q.zero_()
            st.roc_sum = 0.0

    # ------------------------------------------------------------------ queries
    def dist_w(self) -> dict[str, torch.Tensor]:
        """Σ|w_t − w_{t−1}| per element since the last reset, by layer (copies)."""
        return {n: st.dist_w.clone() for n, st in self._stats.items()}

    def dist_q(self) -> dict[str, torch.Tensor]:
        """Σ|Q(w)_t − Q(w)_{t−1}| per element since the last reset, by layer (copies)."""
        return {n: st.dist_q.clone() for n, st in self._stats.items()}

    def ratios(self) -> dict[str, torch.Tensor]:
        """R_w per element by layer (0 where the weight did not move)."""
        return {n: oscillation_ratio(st.dist_w, st.dist_q) for n, st in self._stats.items()}

    def oscillating_fraction(self, threshold: float = OSCILLATION_THRESHOLD) -> float:
        """Fraction of tracked elements with R_w > threshold."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        hits = sum(int((r > threshold).sum()) for r in self.ratios().values())
        return hits / self.numel

    def flip_fraction(self, last_n: int) -> float:
        """Fraction of tracked elements whose quantized value changed in the last ``last_n`` updates."""
        _check_positive_int("last_n", last_n)
        cut = self.total_updates - last_n
        hits = sum(int((st.last_flip > cut).sum()) for st in self._stats.values())
        return hits / self.numel

    def rate_of_change(self) -> dict[str, float]:
        """r(Q(W)) = (1/T) Σ_t ‖Q_t − Q_{t−1}‖_F / ‖Q_{t−1}‖_F per layer over the current window
        (0.0 before the first update)."""
        return {n: (st.roc_sum / self.steps if self.steps else 0.0) for n, st in self._stats.items()}

    def histogram(self, edges: Sequence[float] = DEFAULT_HIST_EDGES) -> tuple[list[float], list[int]]:
        """Counts of R_w over elements that moved (dist_W > 0), bins [edges[i], edges[i+1]).
        ``edges``: ascending, >= 2 values (the last may be inf). Returns (edges, counts)."""
        e = [float(v) for v in edges] if isinstance(edges, (list, tuple)) else None
        if e is None or len(e) < 2 or any(not a < b for a, b in itertools.pairwise(e)) or math.isnan(e[0]):
            raise ValueError(f"edges must be an ascending list/tuple of >= 2 numbers, got {edges!r}")
        counts = [0] * (len(e) - 1)
        inner = torch.tensor(e[1:-1], dtype=torch.float32)
        for st in self._stats.values():
            moved = st.dist_w > 0
            r = oscillation_ratio(st.dist_w, st.dist_q)[moved].cpu()
            r = r[(r >= e[0]) & (r < e[-1])]
            idx = torch.bucketize(r, inner, right=True)
            for i, c in enumerate(torch.bincount(idx, minlength=len(counts)).tolist()):
                counts[i] += c
        return e, counts

    @property
    def numel(self) -> int:
        """Number of tracked weight elements."""
        return sum(st.dist_w.numel() for st in self._stats.values())

    def summary(self, last_n: int = 1, threshold: float = OSCILLATION_THRESHOLD) -> dict[str, Any]:
        """Flip fraction over the last ``last_n`` updates, oscillating fraction, mean rate of change
        and the R_w histogram, as one dict (for logging)."""
        edges, counts = self.histogram()
        roc = self.rate_of_change()
        return {
            "step": self.total_updates,
            "window_steps": self.steps,
            f"flip_fraction_last_{last_n}": self.flip_fraction(last_n),
            "oscillating_fraction": self.oscillating_fraction(threshold),
            "rate_of_change": sum(roc.values()) / len(roc),
            "ratio_hist_edges": edges,
            "ratio_hist_counts": counts,
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """All statistics (tensors cloned) for a checkpoint."""
        return {
            "steps": self.steps,
            "total_updates": self.total_updates,
            "layers": {
                n: {
                    "prev_w": st.prev_w.clone(),
                    "prev_q": st.prev_q.clone(),
                    "dist_w": st.dist_w.clone(),
                    "dist_q": st.dist_q.clone(),
                    "last_flip": st.last_flip.clone(),
                    "roc_sum": st.roc_sum,
                }
                for n, st in self._stats.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; layer names and shapes must match."""
        if not isinstance(state, dict) or set(state) != {"steps", "total_updates", "layers"}:
            raise ValueError("state must be a dict from OscillationTracker.state_dict()")
        layers = state["layers"]
        if set(layers) != set(self._stats):
            raise ValueError(
                f"state layers {sorted(layers)} do not match tracked layers {sorted(self._stats)}"
            )
        for n, d in layers.items():
            st = self._stats[n]
            for key in ("prev_w", "prev_q", "dist_w", "dist_q", "last_flip"):
                if tuple(d[key].shape) != tuple(st.dist_w.shape):
                    raise ValueError(
                        f"state of {n!r}: {key} has shape {tuple(d[key].shape)}, expected {tuple(st.dist_w.shape)}"
                    )
        for n, d in layers.items():
            st = self._stats[n]
            dev = st.dist_w.device
            st.prev_w = d["prev_w"].to(dev, torch.float32).clone()
            st.prev_q = d["prev_q"].to(dev, torch.float32).clone()
            st.dist_w = d["dist_w"].to(dev, torch.float32).clone()
            st.dist_q = d["dist_q"].to(dev, torch.float32).clone()
            st.last_flip = d["last_flip"].to(dev, torch.int64).clone()
            st.roc_sum = float(d["roc_sum"])
        self.steps = int(state["steps"])
        self.total_updates = int(state["total_updates"])


class OscillationCallback:
    """Plain callable for a training loop: ``cb()`` after each optimizer step updates the tracker;
    every ``log_every`` steps it logs ``tracker.summary(last_n=window)`` through ``log_fn`` (default:
    print) and appends it to ``history``. Returns the summary on logging steps, else None.

    ``as_trainer_callback()`` gives a transformers ``TrainerCallback`` doing the same in
    ``on_step_end`` (transformers must be installed).
    """

    def __init__(
        self,
        tracker: OscillationTracker,
        *,
        window: int = 100,
        log_every: int = 100,
        threshold: float = OSCILLATION_THRESHOLD,
        log_fn: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not isinstance(tracker, OscillationTracker):
            raise TypeError(f"tracker must be an OscillationTracker, got {type(tracker).__name__}")
        self.window = _check_positive_int("window", window)
        self.log_every = _check_positive_int("log_every", log_every)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        if log_fn is not None and not callable(log_fn):
            raise TypeError(f"log_fn must be callable or None, got {type(log_fn).__name__}")
        self.tracker = tracker
        self.threshold = float(threshold)
        self.log_fn = log_fn if log_fn is not None else _print_summary
        self.history: list[dict[str, Any]] = []

    def __call__(self) -> dict[str, Any] | None:
        self.tracker.update()
        if self.tracker.total_updates % self.log_every:
            return None
        s = self.tracker.summary(last_n=self.window, threshold=self.threshold)
        self.history.append(s)
        self.log_fn(s)
        return s

    def as_trainer_callback(self) -> Any:
        """A ``transformers.TrainerCallback`` calling this object at every ``on_step_end``."""
        from transformers import TrainerCallback

        outer = self

        class _TrainerOscillationCallback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                outer()
                return control

        return _TrainerOscillationCallback()


def _print_summary(s: dict[str, Any]) -> None:
    flips = next(v for k, v in s.items() if k.startswith("flip_fraction"))
    print(
        f"[oscillation] step {s['step']}: flipped {flips:.4%}, R_w>16 {s['oscillating_fraction']:.4%}, "
        f"r(Q)={s['rate_of_change']:.5f}, R_w hist {s['ratio_hist_counts']}"
    )
