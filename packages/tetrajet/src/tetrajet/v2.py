"""TetraJet-v2 (arXiv 2510.27527): NVFP4 training for LLMs with a random Hadamard transform on the
gradient GEMMs, OsciReset and OutControl.

* Recipe: ``nvfp4_v2_recipe()`` = ``TetraJetRecipe.nvfp4_v2``: NVFP4 (E2M1, E4M3 scale per 1x16,
  FP32 outer scale per 1x128) for all six quantizers, RNE forward, stochastic rounding backward,
  double quantization, gradient transform "rht" (registered by importing this module).
* "rht": 16-point random Hadamard transform along the reduction dim of both operands of the dX and
  dW GEMMs with the same seeded signs s on both sides: every length-16 group g of a reduction
  vector becomes H·(s ⊙ g)/4 (H Sylvester, symmetric, H·H = 16·I), so for matching groups
  (H D a)·(H D b)/16 = aᵀ D H H D b/16 = a·b. The transform cancels in the product and only
  spreads outliers before the FP4 quantizers Q3..Q6. Uses ``shared_kernels.hadamard_transform``.
* OsciReset: ``OsciReset`` tracks dist_W / dist_Q over a window on a schedule and resets the master
  weights with R_w ≥ threshold (paper 8) to their quantized value (the bin centre).
* OutControl: ``OutControlLinear`` records per-input-channel activation amax for ``record_steps``
  training forwards after ``record_start`` ones, then routes the top ``ratio`` (paper 10 %) input
  channels through an MXFP8 (E4M3) TetraJet GEMM and the rest through the NVFP4 recipe:
  Y = Q(X_out)·Q8(W_out)ᵀ + Q(X_main)·Q(W_main)ᵀ (the split is along K, so the sum is exact maths).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from shared_kernels import hadamard_transform, random_hadamard_signs
from torch import nn

from ._dist import assign_full, full_tensor
from .backends import available_grad_transforms, register_grad_transform
from .convert import tetrajet_layers
from .fake_quant import fake_quantize
from .linear import TetraJetLinear, tetrajet_linear
from .oscillation import OscillationTracker
from .recipe import QUANTIZER_NAMES, QuantizerSpec, TetraJetRecipe

__all__ = [
    "OsciReset",
    "OutControlLinear",
    "enable_outcontrol",
    "nvfp4_v2_recipe",
    "outcontrol_recipe",
    "random_hadamard",
]

RHT_SIZES = (16, 32, 64, 128)
_OUTLIER_SEED_SALT = 0x5EED_0F_0C7


def random_hadamard(
    t: torch.Tensor, *, dim: int, seed: int, size: int = 16, side: str = "left"
) -> torch.Tensor:
    """Random Hadamard transform of every length-``size`` group along ``dim``: g ↦ H·(s ⊙ g)/√size,
    signs s = ``random_hadamard_signs(size, seed)``. The same map for ``side`` "left" and "right"
    (orthonormal and symmetric, so T(A)·T(B) = A·B for matching seeds); a new tensor in t's dtype.
    t: float32/float16/bfloat16, ``t.shape[dim]`` divisible by ``size`` ∈ {16, 32, 64, 128}.
    Cost: size·log2(size) adds per group; moves 2·|t| bytes (plus a transpose copy for dim ≠ -1).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"t.dtype must be float32, float16 or bfloat16, got {t.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -t.dim() <= dim < t.dim():
        raise ValueError(f"dim={dim!r} is out of range for a {t.dim()}-D tensor")
    if size not in RHT_SIZES or isinstance(size, bool):
        raise ValueError(f"size={size!r} is not supported; supported: {RHT_SIZES}")
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r} is not supported; supported: 'left', 'right'")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if t.shape[dim] % size:
        raise ValueError(f"t.shape[{dim}]={t.shape[dim]} must be divisible by size={size} (pad it)")
    signs = random_hadamard_signs(size, seed % (1 << 63), device=t.device)
    moved = t.movedim(dim, -1).contiguous()
    out = hadamard_transform(moved, size, signs=signs, normalize=True)
    return out.movedim(-1, dim)


if "rht" not in available_grad_transforms():
    register_grad_transform("rht", random_hadamard)


def nvfp4_v2_recipe(**overrides: Any) -> TetraJetRecipe:
    """TetraJet-v2 base recipe (NVFP4 everywhere, block128 outer scales, SR backward, double
    quantization, "rht" on the gradient GEMMs); ``overrides`` are TetraJetRecipe fields."""
    return TetraJetRecipe.nvfp4_v2(**overrides)


def outcontrol_recipe(recipe: TetraJetRecipe, fmt: str | None = None) -> TetraJetRecipe:
    """The recipe of OutControl's outlier channels: ``recipe`` with every enabled quantizer switched
    to ``fmt`` (default ``recipe.outlier_fmt``, MXFP8 E4M3), same rounding, OCP floor scales, a
    different SR seed, and no OutControl of its own."""
    if not isinstance(recipe, TetraJetRecipe):
        raise TypeError(f"recipe must be a TetraJetRecipe, got {type(recipe).__name__}")
    fmt = recipe.outlier_fmt if fmt is None else fmt
    specs = {}
    for name in QUANTIZER_NAMES:
        s = getattr(recipe, name)
        specs[name] = QuantizerSpec(fmt, s.rounding if fmt != "none" else "rne") if s.enabled else s
    return recipe.replace(
        **specs, outlier_channel_ratio=0.0, seed=(recipe.seed ^ _OUTLIER_SEED_SALT) % (1 << 64)
    )


class OutControlLinear(TetraJetLinear):
    """TetraJetLinear with OutControl (TetraJet-v2): after a recording phase, the top ``ratio`` input
    channels by activation amax run through ``outlier recipe`` (MXFP8), the others through
    ``recipe``. Before the channels are chosen it computes exactly what TetraJetLinear does.

    The chosen channels live in the ``outlier_idx`` buffer (saved in state_dict; -1 padding until
    chosen). Under torch.distributed the recorded amax is all-reduced (MAX) before choosing, so
    every rank picks the same channels.
    """

    def _setup_outcontrol(self, ratio: float, record_start: int, record_steps: int) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
        for name, v, lo in (("record_start", record_start, 0), ("record_steps", record_steps, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.outlier_ratio = float(ratio)
        self.record_start, self.record_steps = record_start, record_steps
        self.outlier_recipe = outcontrol_recipe(self.recipe)
        n_out = max(1, math.ceil(ratio * self.in_features))
        dev = self.weight.device
        self.register_buffer("outlier_idx", torch.full((n_out,), -1, dtype=torch.int64, device=dev))
        self.register_buffer("channel_amax", torch.zeros(self.in_features, dtype=torch.float32, device=dev))
        self.register_buffer("record_calls", torch.zeros((), dtype=torch.int64, device=dev))

    @classmethod
    def from_tetrajet(
        cls,
        layer: TetraJetLinear,
        *,
        ratio: float = 0.1,
        record_start: int = 500,
        record_steps: int = 50,
    ) -> OutControlLinear:
        """An OutControlLinear sharing ``layer``'s parameters, recipe, layer id and SR counter."""
        if not isinstance(layer, TetraJetLinear):
            raise TypeError(f"layer must be a TetraJetLinear, got {type(layer).__name__}")
        if isinstance(layer, OutControlLinear):
            raise TypeError("layer already is an OutControlLinear")
        new = cls.from_linear(layer, layer.recipe, layer_id=layer.layer_id)
        new.sr_calls = layer.sr_calls
        new.weight_reference = layer.weight_reference
        new._setup_outcontrol(ratio, record_start, record_steps)
        return new

    @property
    def channels_chosen(self) -> bool:
        """True once the outlier channels are fixed."""
        return bool(self.outlier_idx[0] >= 0)

    def _record(self, x: torch.Tensor) -> None:
        calls = int(self.record_calls)
        self.record_calls.add_(1)
        if calls < self.record_start:
            return
        with torch.no_grad():
            amax = x.detach().reshape(-1, self.in_features).abs().amax(0).float()
            torch.maximum(self.channel_amax, amax, out=self.channel_amax)
        if calls + 1 == self.record_start + self.record_steps:
            self.choose_channels()

    @torch.no_grad()
    def choose_channels(self) -> None:
        """Fix the outlier channels: the top ``len(outlier_idx)`` by recorded amax (ties to the lower
        index), all-reduced across ranks first when torch.distributed is initialized."""
        amax = self.channel_amax.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(amax, op=torch.distributed.ReduceOp.MAX)
        order = torch.sort(amax, descending=True, stable=True).indices
        self.outlier_idx.copy_(torch.sort(order[: self.outlier_idx.numel()]).values)

    def main_idx(self) -> torch.Tensor:
        """Input channels that stay in the FP4 recipe (ascending)."""
        keep = torch.ones(self.in_features, dtype=torch.bool, device=self.outlier_idx.device)
        keep[self.outlier_idx] = False
        return keep.nonzero().flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = self.training and torch.is_grad_enabled()
        if training and not self.channels_chosen:
            self._record(x)
        if not self.channels_chosen:
            return super().forward(x)
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x.shape[-1] must equal in_features={self.in_features}, got x.shape={tuple(x.shape)}"
            )
        call = self.sr_calls
        if training:
            self.sr_calls += 1
        oi, mi = self.outlier_idx, self.main_idx()
        ref = self.weight_reference
        y_main = tetrajet_linear(
            x.index_select(-1, mi), self.weight.index_select(1, mi), self.bias, self.recipe,
            layer_id=self.layer_id, call=call,
            weight_reference=None if ref is None else ref.index_select(1, mi),
        )  # fmt: skip
        y_out = tetrajet_linear(
            x.index_select(-1, oi), self.weight.index_select(1, oi), None, self.outlier_recipe,
            layer_id=self.layer_id, call=call,
        )  # fmt: skip
        return y_main + y_out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, outcontrol={self.outlier_ratio}->{self.outlier_recipe.x_fwd.fmt}"


def enable_outcontrol(
    model: nn.Module, *, ratio: float = 0.1, record_start: int = 500, record_steps: int = 50
) -> nn.Module:
    """Swap, in place, every TetraJetLinear of ``model`` for an OutControlLinear (same parameters;
    paper: ratio 0.1, record from iteration 501 for 50 iterations). Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = {n: m for n, m in tetrajet_layers(model).items() if not isinstance(m, OutControlLinear)}
    if not layers:
        raise ValueError("model has no TetraJetLinear layers (call convert_to_tetrajet first)")
    modules = dict(model.named_modules())
    for fqn, layer in layers.items():
        parent_name, _, child = fqn.rpartition(".")
        new = OutControlLinear.from_tetrajet(
            layer, ratio=ratio, record_start=record_start, record_steps=record_steps
        )
        setattr(modules[parent_name], child, new)
    return model


class OsciReset:
    """OsciReset (TetraJet-v2): from optimizer step ``start`` until ``stop``, every ``period`` steps
    open a ``window``-step tracking window of dist_W / dist_Q; at its end, master weights with
    R_w = dist_Q/dist_W ≥ ``threshold`` are reset to their quantized value Q(w) (the FP4 bin centre
    they oscillate around). Q: each layer's RTN forward weight quantizer (or ``spec``).

    Call ``step()`` after every ``optimizer.step()``. Returns the fraction of elements reset when a
    window closes, else None; ``history`` keeps (step, fraction). Paper settings (70M OLMo2):
    start 8000, stop 12505, period 200, window 50, threshold 8.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        start: int,
        stop: int,
        period: int = 200,
        window: int = 50,
        threshold: float = 8.0,
        spec: QuantizerSpec | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for name, v, lo in (
            ("start", start, 0),
            ("stop", stop, 0),
            ("period", period, 1),
            ("window", window, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if stop <= start:
            raise ValueError(f"stop ({stop}) must be > start ({start})")
        if window > period:
            raise ValueError(f"window ({window}) must be <= period ({period}): windows would overlap")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
        if not tetrajet_layers(model):
            raise ValueError("model has no TetraJetLinear layers (call convert_to_tetrajet first)")
        self.model = model
        self.start, self.stop, self.period, self.window = start, stop, period, window
        self.threshold = float(threshold)
        self.spec = spec
        self.num_steps = 0
        self.tracker: OscillationTracker | None = None
        self.history: list[tuple[int, float]] = []
        if spec is not None:  # validate once
            OscillationTracker(model, spec=spec)

    def step(self) -> float | None:
        """Advance one optimizer step (see the class docstring)."""
        self.num_steps += 1
        s = self.num_steps
        if self.tracker is not None:
            self.tracker.update()
            if self.tracker.steps >= self.window:
                frac = self._reset()
                self.tracker = None
                self.history.append((s, frac))
                return frac
            return None
        if self.start <= s < self.stop and (s - self.start) % self.period == 0:
            self.tracker = OscillationTracker(self.model, spec=self.spec, follow_reference=False)
        return None

    @torch.no_grad()
    def _reset(self) -> float:
        assert self.tracker is not None
        ratios = self.tracker.ratios()
        hits = total = 0
        for name, layer in self.tracker.layers.items():
            mask = ratios[name] >= self.threshold
            total += mask.numel()
            n = int(mask.sum())
            if n == 0:
                continue
            hits += n
            w = full_tensor(layer.weight).float()
            spec = self.tracker.spec_of(layer)
            q = fake_quantize(w, spec, -1 if spec.blocks == "reduction" else -2)
            assign_full(layer.weight, torch.where(mask.to(w.device), q, w))
        return hits / total if total else 0.0

    def state_dict(self) -> dict[str, Any]:
        """Schedule position, the open window's statistics (or None) and the history."""
        return {
            "num_steps": self.num_steps,
            "tracker": None if self.tracker is None else self.tracker.state_dict(),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``."""
        if not isinstance(state, dict) or set(state) != {"num_steps", "tracker", "history"}:
            raise ValueError("state must be a dict from OsciReset.state_dict()")
        n = state["num_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_steps must be an int >= 0, got {n!r}")
        tracker = None
        if state["tracker"] is not None:
            tracker = OscillationTracker(self.model, spec=self.spec, follow_reference=False)
            tracker.load_state_dict(state["tracker"])
        self.num_steps, self.tracker = n, tracker
        self.history = [(int(a), float(b)) for a, b in state["history"]]
