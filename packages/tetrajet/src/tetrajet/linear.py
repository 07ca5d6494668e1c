"""``TetraJetLinear``: nn.Linear whose three GEMMs run on quantized operands (TetraJet,
arXiv 2502.20853, Eq. 3-5; six quantizers, double quantization, STE through every quantizer).

    forward   Y  = Q1(X) · Q2(W)ᵀ + b                       (reduction over K = in_features)
    backward  ∇X = Q3(∇Y) · Q4(Ŵ)      Ŵ = dequant(Q2(W)) if double_quantization else W   (over N)
              ∇W = Q5(∇Yᵀ) · Q6(X̂)     X̂ = dequant(Q1(X)) if double_quantization else X   (over M)
              ∇b = Σ_rows ∇Y  (high precision)

X has any leading batch dims (flattened to M rows). Blocks run along each GEMM's reduction dim:
1xB rows of the left operand, Bx1 columns of the right one. Reduction lengths that are not a
multiple of the block size are zero padded (exact: see ``tetrajet.fake_quant``). Bias is added
to the float32 GEMM result before the cast to X's dtype (to the autocast dtype inside
``torch.autocast``, where X and W may differ in dtype; operands are still quantized from their own
precision and multiplied in float32, and the gradients come back in X's and W's dtypes).

Stochastic rounding is reproducible: quantizer q of call c of a layer uses the Philox key
``derive_seed(recipe.seed, layer_id, q, c)``; ``sr_calls`` counts the layer's training forwards
(the key of a backward is fixed when its forward runs). Save/restore it with the model
(``tetrajet.sr_state`` / ``load_sr_state``) to resume bit-identically.

Hooks: the GEMM backend (``recipe.gemm_backend``, see ``tetrajet.backends``), the gradient-path
transform (``recipe.grad_transform``) and the forward weight's rounding direction
(``set_weight_rounding_reference``: Q-EMA passes its EMA weights; Q2 then picks, of the two grid
points bracketing W/S, the one nearer to W_ref/S).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .backends import get_gemm_backend, get_grad_transform
from .fake_quant import SUPPORTED_DTYPES, QuantizedOperand, derive_seed, quantize_operand, quantize_toward
from .recipe import QuantizerSpec, TetraJetRecipe

__all__ = ["TetraJetLinear", "tetrajet_linear"]

_TRANSFORM_SALT = 0x7472616E73666F72  # b"transfor": separates transform keys from SR keys


@dataclass(frozen=True)
class _Call:
    """Everything one forward/backward pair needs besides tensors."""

    recipe: TetraJetRecipe
    layer_id: int
    call: int
    gemm: Callable[[QuantizedOperand, QuantizedOperand], torch.Tensor]
    transform: Callable[..., torch.Tensor] | None
    out_dtype: torch.dtype

    def seed(self, quantizer: str) -> int:
        return derive_seed(self.recipe.seed, self.layer_id, quantizer, self.call)

    def transform_seed(self, quantizer: str) -> int:
        """Key of the gradient transform of the GEMM whose left operand is ``quantizer``: a
        different key from every SR draw (so transform signs and rounding bits are independent)."""
        return derive_seed(self.recipe.seed ^ _TRANSFORM_SALT, self.layer_id, quantizer, self.call)


def _block_axis(spec: QuantizerSpec, reduction_axis: int) -> int:
    if spec.blocks == "reduction":
        return reduction_axis
    return -1 if reduction_axis == -2 else -2


def _common_multiple(*specs: QuantizerSpec) -> int:
    """Padding multiple shared by the reduction-blocked operands of one GEMM (block sizes are
    powers of two, so the largest is the least common multiple)."""
    return max([s.block_size for s in specs if s.blocks == "reduction"] + [1])


def _quantize(
    x: torch.Tensor, spec: QuantizerSpec, reduction_axis: int, multiple: int, seed: int
) -> QuantizedOperand:
    axis = _block_axis(spec, reduction_axis)
    pad = multiple if spec.blocks == "reduction" and spec.enabled else None
    return quantize_operand(x, spec, axis, seed=seed, pad_multiple=pad)


def _pad_dim(t: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    extra = (-t.shape[dim]) % multiple
    if extra == 0:
        return t
    return F.pad(t, (0, extra) if dim == 1 else (0, 0, 0, extra))


def _grad_gemm(
    c: _Call,
    left: torch.Tensor,
    left_reduction_dim: int,
    right: torch.Tensor,
    names: tuple[str, str],
) -> torch.Tensor:
    """float32 product of one backward GEMM. ``left`` is stored with its reduction dim at
    ``left_reduction_dim`` (1: the GEMM's left operand itself; 0: its transpose, i.e. ∇Y for ∇W);
    ``right`` is [reduction, out]."""
    ls, rs = (getattr(c.recipe, n) for n in names)
    if c.transform is not None:
        size = c.recipe.grad_transform_size
        multiple = max(size, _common_multiple(ls, rs))
        left = _pad_dim(left.float(), left_reduction_dim, multiple)
        right = _pad_dim(right.float(), 0, multiple)
        seed = c.transform_seed(names[0])
        left = c.transform(left, dim=left_reduction_dim, seed=seed, size=size, side="left").contiguous()
        right = c.transform(right, dim=0, seed=seed, size=size, side="right").contiguous()
    multiple = _common_multiple(ls, rs)
    lq = _quantize(left.contiguous(), ls, -1 if left_reduction_dim == 1 else -2, multiple, c.seed(names[0]))
    if left_reduction_dim == 0:
        lq = lq.t()
    rq = _quantize(right.contiguous(), rs, -2, multiple, c.seed(names[1]))
    return c.gemm(lq, rq)


class _TetraJetLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        c: _Call,
        w_reference: torch.Tensor | None,
    ) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return _TetraJetLinearFunction._forward(ctx, x, weight, bias, c, w_reference)

    @staticmethod
    def _forward(ctx, x, weight, bias, c, w_reference):
        r = c.recipe
        k = x.shape[-1]
        x2 = x.reshape(-1, k).contiguous()
        multiple = _common_multiple(r.x_fwd, r.w_fwd)
        qx = _quantize(x2, r.x_fwd, -1, multiple, 0)
        if w_reference is not None and r.w_fwd.enabled:
            axis = _block_axis(r.w_fwd, -1)
            pad = multiple if r.w_fwd.blocks == "reduction" else None
            qw = quantize_toward(weight, w_reference, r.w_fwd, axis, pad_multiple=pad)
        else:
            qw = _quantize(weight, r.w_fwd, -1, multiple, 0)
        y = c.gemm(qx, qw.t())
        if bias is not None:
            y = y + bias.float()
        y = y.to(c.out_dtype).reshape(*x.shape[:-1], weight.shape[0])

        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.c = c
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        saved_x = saved_w = None
        ctx.qx = ctx.qw = None
        if need_dw:
            if r.double_quantization and r.x_fwd.enabled:
                ctx.qx = qx  # packed: the dW GEMM re-quantizes what the forward used
            else:
                saved_x = x2
        if need_dx:
            if r.double_quantization and r.w_fwd.enabled:
                ctx.qw = qw
            else:
                saved_w = weight
        ctx.save_for_backward(saved_x, saved_w)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with torch.autocast(grad_out.device.type, enabled=False):
            return _TetraJetLinearFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        c: _Call = ctx.c
        saved_x, saved_w = ctx.saved_tensors
        n = grad_out.shape[-1]
        dy = grad_out.reshape(-1, n).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_src = ctx.qw.dequantize(torch.float32) if ctx.qw is not None else saved_w
            dx = _grad_gemm(c, dy, 1, w_src, ("dy_for_dx", "w_for_dx"))
            grad_x = dx.to(ctx.x_dtype).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            x_src = ctx.qx.dequantize(torch.float32) if ctx.qx is not None else saved_x
            dw = _grad_gemm(c, dy, 0, x_src, ("dy_for_dw", "x_for_dw"))
            grad_w = dw.to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = dy.float().sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    """Y's dtype: the autocast dtype inside ``torch.autocast`` (like nn.Linear), else x's dtype.
    Operands are always quantized from their own precision and multiplied in float32."""
    return _autocast_dtype(x) or x.dtype


def _check_inputs(x: object, weight: object, bias: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(
            f"weight must be a 2-D tensor [out_features, in_features], got {getattr(weight, 'shape', weight)}"
        )
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x.shape[-1] must equal in_features={weight.shape[1]}, got x.shape={tuple(x.shape)}"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x.dtype must be float32, float16 or bfloat16, got {x.dtype}")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"weight.dtype must be float32, float16 or bfloat16, got {weight.dtype}")
    if weight.dtype != x.dtype and _autocast_dtype(x) is None:
        raise TypeError(
            f"x.dtype {x.dtype} must equal weight.dtype {weight.dtype} (cast the input or the module)"
        )
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but weight on {weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"bias must be a tensor of shape ({weight.shape[0]},), got {getattr(bias, 'shape', bias)}"
            )
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x on {x.device}")
        if bias.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"bias.dtype must be float32, float16 or bfloat16, got {bias.dtype}")
    if not torch.is_floating_point(x) or x.is_complex():
        raise TypeError(f"x must be a real floating tensor, got {x.dtype}")


def _check_recipe(recipe: object) -> TetraJetRecipe:
    if not isinstance(recipe, TetraJetRecipe):
        raise TypeError(f"recipe must be a TetraJetRecipe, got {type(recipe).__name__}")
    _gemm, supports = get_gemm_backend(recipe.gemm_backend)
    get_grad_transform(recipe.grad_transform)
    if recipe.outlier_channel_ratio > 0:
        raise NotImplementedError(
            f"outlier_channel_ratio={recipe.outlier_channel_ratio} (TetraJet-v2 OutControl) is not implemented by "
            "TetraJetLinear; set it to 0"
        )
    if supports is not None:
        pairs = (("x_fwd", "w_fwd"), ("dy_for_dx", "w_for_dx"), ("dy_for_dw", "x_for_dw"))
        for a, b in pairs:
            why = supports(getattr(recipe, a), getattr(recipe, b))
            if why is not None:
                raise ValueError(
                    f"gemm_backend={recipe.gemm_backend!r} cannot run the GEMM of {a} x {b}: {why}"
                )
    return recipe


def tetrajet_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    recipe: TetraJetRecipe,
    *,
    layer_id: int = 0,
    call: int = 0,
    weight_reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Functional TetraJet linear (see the module docstring): Y = Q1(X)·Q2(W)ᵀ + b with the
    quantized backward. ``layer_id`` and ``call`` select the stochastic-rounding streams;
    ``weight_reference`` (shape of ``weight``) steers Q2's rounding direction (Q-EMA).
    FLOPs: 6·M·N·K for forward + backward (plus quantizer passes, ~5 ops/element per operand)."""
    _check_inputs(x, weight, bias)
    recipe = _check_recipe(recipe)
    for name, v in (("layer_id", layer_id), ("call", call)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if weight_reference is not None:
        _check_reference(weight_reference, weight, recipe)
    gemm, _ = get_gemm_backend(recipe.gemm_backend)
    c = _Call(recipe, layer_id, call, gemm, get_grad_transform(recipe.grad_transform), _output_dtype(x))
    return _TetraJetLinearFunction.apply(x, weight, bias, c, weight_reference)


def _check_reference(ref: object, weight: torch.Tensor, recipe: TetraJetRecipe) -> None:
    if not isinstance(ref, torch.Tensor):
        raise TypeError(f"weight reference must be a torch.Tensor, got {type(ref).__name__}")
    if ref.shape != weight.shape:
        raise ValueError(
            f"weight reference shape {tuple(ref.shape)} must equal weight shape {tuple(weight.shape)}"
        )
    if ref.device != weight.device:
        raise ValueError(f"weight reference is on {ref.device} but weight on {weight.device}")
    if ref.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"weight reference dtype must be float32, float16 or bfloat16, got {ref.dtype}")
    if not recipe.w_fwd.enabled:
        raise ValueError(
            "a weight rounding reference needs an enabled w_fwd quantizer (recipe.w_fwd.fmt is 'none')"
        )


class TetraJetLinear(nn.Linear):
    """Drop-in nn.Linear (same parameters and state_dict keys) running TetraJet's quantized GEMMs.

    recipe: TetraJetRecipe (default: every quantizer off, i.e. nn.Linear maths).
    layer_id: this layer's id in the stochastic-rounding key (``convert_to_tetrajet`` numbers the
        converted layers 0, 1, ... in module order).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        recipe: TetraJetRecipe | None = None,
        layer_id: int = 0,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = _check_recipe(TetraJetRecipe() if recipe is None else recipe)
        if isinstance(layer_id, bool) or not isinstance(layer_id, int) or layer_id < 0:
            raise ValueError(f"layer_id must be a non-negative int, got {layer_id!r}")
        self.layer_id = layer_id
        self.sr_calls = 0
        self.weight_reference: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: TetraJetRecipe, *, layer_id: int = 0) -> TetraJetLinear:
        """A TetraJetLinear sharing ``linear``'s Parameter objects (optimizer references stay valid)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.recipe = _check_recipe(recipe)
        if isinstance(layer_id, bool) or not isinstance(layer_id, int) or layer_id < 0:
            raise ValueError(f"layer_id must be a non-negative int, got {layer_id!r}")
        new.layer_id = layer_id
        new.sr_calls = 0
        new.weight_reference = None
        new.train(linear.training)
        return new

    def set_weight_rounding_reference(self, reference: torch.Tensor | None) -> None:
        """Q-EMA hook: Q2 rounds W toward ``reference`` (kept by reference, not copied; the
        caller updates it in place after each optimizer step). None restores RNE."""
        if reference is not None:
            _check_reference(reference, self.weight, self.recipe)
        self.weight_reference = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, self.weight, self.bias)
        call = self.sr_calls
        if self.training and torch.is_grad_enabled():
            self.sr_calls += 1
        gemm, _ = get_gemm_backend(self.recipe.gemm_backend)
        transform = get_grad_transform(self.recipe.grad_transform)
        c = _Call(self.recipe, self.layer_id, call, gemm, transform, _output_dtype(x))
        ref = self.weight_reference
        if ref is not None:
            _check_reference(ref, self.weight, self.recipe)
        return _TetraJetLinearFunction.apply(x, self.weight, self.bias, c, ref)

    def extra_repr(self) -> str:
        r = self.recipe
        q = ", ".join(f"{n}={s.fmt}/{s.rounding}" for n, s in r.quantizers().items())
        return f"{super().extra_repr()}, {q}, double_quantization={r.double_quantization}, layer_id={self.layer_id}"
