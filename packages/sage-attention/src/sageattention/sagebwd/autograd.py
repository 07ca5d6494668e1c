"""``sageattn_train``: differentiable SageBwd attention (the custom ops of :mod:`.ops`, which
``torch.compile(fullgraph=True)`` traces), and the guard that makes backward through an
inference-only variant a clear error."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable

import torch

from .. import core
from . import ops

__all__ = ["SageBwdFunction", "no_backward", "sageattn_train"]

_log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "triton")
MAX_TRITON_DIM = 256
_HAS_TRITON = importlib.util.find_spec("triton") is not None  # once: dynamo does not trace importlib


def _triton_runs(device: torch.device) -> bool:
    return _HAS_TRITON and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


class SageBwdFunction:
    """Former ``torch.autograd.Function`` of SageBwd, kept as a name:
    ``SageBwdFunction.apply(q, k, v, mask, sm_scale, is_causal, smooth_k, quantize, impl)`` is
    :func:`sageattention.sagebwd.ops.sagebwd_attention` (the ``torch.library`` custom ops
    ``sageattention::sagebwd_fwd``/``sagebwd_bwd`` with a registered autograd formula, which
    ``torch.compile`` traces without graph breaks): ``(o in q's dtype, lse)`` on HND tensors."""

    apply = staticmethod(ops.sagebwd_attention)


def sageattn_train(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: float | None = None,
    return_lse: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    smooth_k: bool = True,
    quantize: bool = True,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageBwd: 8-bit attention with a backward (SageAttention3 paper §4), differentiable in q, k, v
    (and in the returned lse).

    Forward: per-block INT8 Q (128 queries), K (64 keys, mean-smoothed), V (64 keys), per-token INT8
    ``P̃`` reusing the online-softmax maxima, int32 accumulation. Backward: ``S = QKᵀ``, ``dV = PᵀdO``,
    ``dQ = dS·K``, ``dK = dSᵀQ`` per-block INT8 (tiles of 64 × 64), ``dP = dO·Vᵀ`` fp16 with float32
    accumulation, ``dS = P∘(dP - rowsum(dO∘O))``. Maths: :mod:`sageattention.sagebwd.reference`.

    Arguments as :func:`sageattention.sageattn` (q, k, v fp16/bf16/fp32, same device; HND or NHD;
    GQA when ``Hq % Hkv == 0``; ``Nq != Nk``; ``attn_mask`` bool (True = attend) or additive float
    broadcastable to ``[B, Hq, Nq, Nk]``, not with ``is_causal``, and not itself requiring grad;
    ``scale`` alias of ``sm_scale``). ``quantize=False`` runs the same recomputation without any
    rounding (the exact gradient in float32). ``backend``: ``"auto"`` = Triton kernels on CUDA
    (head dims ≤ 256), else the PyTorch reference; ``"torch"`` = the reference (any device;
    materialises ``S``); ``"triton"`` = the kernels (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``).
    Returns ``o`` in q's dtype and layout, and with ``return_lse`` the float32 natural-log lse
    ``[B, Hq, Nq]`` of the un-smoothed scores. Fully masked rows give 0, lse ``-inf``, zero gradients.
    Inputs are never modified. Cost: forward ``2·B·Hq·Nq·Nk·(D + Dv)`` INT8 ops; backward
    ``8·B·Hq·Nq·Nk·D`` INT8 + ``4·B·Hq·Nq·Nk·Dv`` fp16 ops (``D = Dv``; half when causal).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(quantize, bool):
        raise TypeError(f"quantize must be a bool, got {type(quantize).__name__}")
    p = core.prepare_inputs(
        q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask, scale
    )
    if isinstance(attn_mask, torch.Tensor) and attn_mask.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "attn_mask requires grad: sageattn_train has no gradient for the mask; detach it "
            "(or use torch.nn.functional.scaled_dot_product_attention for a learned bias)"
        )
    d, dv = p.q.shape[3], p.v.shape[3]
    if backend == "triton" and not _triton_runs(p.q.device):
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 with Triton installed), got "
            f"{p.q.device}; available backends: 'torch' (any device), 'auto'"
        )
    if backend == "triton" and max(d, dv) > MAX_TRITON_DIM:
        raise ValueError(f"backend='triton' supports head dims <= {MAX_TRITON_DIM}, got D={d}, Dv={dv}")
    if backend == "triton" and not quantize:
        raise ValueError("quantize=False runs in PyTorch only: use backend='torch' or 'auto'")
    impl = backend
    if backend == "auto":
        impl = "triton" if (quantize and p.q.device.type == "cuda" and _triton_runs(p.q.device)
                            and max(d, dv) <= MAX_TRITON_DIM) else "torch"  # fmt: skip
    o, lse = ops.sagebwd_attention(p.q, p.k, p.v, p.mask, p.sm_scale, p.is_causal, p.smooth_k, quantize, impl)
    return p.finish(o, lse)


def _no_backward_message(name: str) -> str:
    return (
        f"{name} is an inference kernel without a backward: it cannot give gradients. For "
        f"training use sageattention.sageattn (SageBwd: INT8 forward and backward when q, k or v "
        f"requires grad) or sageattention.sagebwd.sageattn_train"
    )


@torch.library.custom_op("sageattention::no_backward_error", mutates_args=())
def _no_backward_error(
    grads: list[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raises the error of an inference variant's backward when it runs. An op (not a ``raise`` in
    ``backward``) so that ``torch.compile`` traces the backward and the error comes at backward time;
    it takes the incoming gradients so that it can only be scheduled in the backward graph."""
    raise RuntimeError(_no_backward_message(name))


@_no_backward_error.register_fake
def _(grads, q, k, v, name):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _NoBackward(torch.autograd.Function):
    """Passes an inference variant's outputs through; its backward raises (never wrong gradients)."""

    @staticmethod
    def forward(ctx, name, q, k, v, *outs):
        ctx.name = name
        ctx.save_for_backward(q, k, v)
        res = tuple(o.view_as(o) for o in outs)
        return res if len(res) > 1 else res[0]

    @staticmethod
    def backward(ctx, *grads):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = torch.ops.sageattention.no_backward_error(list(grads), q, k, v, ctx.name)
        return (None, dq, dk, dv, *(None for _ in grads))


def no_backward(fn: Callable) -> Callable:
    """Wrap the inference variant ``fn(q, k, v, ...)``: when grad mode is on and q, k or v requires
    grad, it runs under ``torch.no_grad()`` and its outputs raise a ``RuntimeError`` naming the
    variant at backward time (the forward result itself is usable, e.g. for evaluation)."""

    @functools.wraps(fn)
    def wrapper(q, k, v, *args, **kwargs):
        needs = torch.is_grad_enabled() and any(
            isinstance(x, torch.Tensor) and x.requires_grad for x in (q, k, v)
        )
        if not needs:
            return fn(q, k, v, *args, **kwargs)
        with torch.no_grad():
            out = fn(q, k, v, *args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        grads = [x for x in (q, k, v)]
        res = _NoBackward.apply(fn.__name__, *grads, *outs)
        return res

    wrapper.__wrapped_inference__ = True
    return wrapper
