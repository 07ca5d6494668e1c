"""SageBwd as two ``torch.library`` custom ops with fake implementations and a registered autograd
formula, so that ``torch.compile(fullgraph=True)`` traces training through them in one graph (the
Triton launchers and the reference's Python loops stay opaque to dynamo and AOTAutograd).

- ``sageattention::sagebwd_fwd(q, k, v, mask, sm_scale, is_causal, smooth_k, quantize, impl)``
  returns the flat tuple ``(o, lse, lse2, q8, k8, scales)``: ``o`` float32 ``[B, Hq, Nq, Dv]``
  (float64 for ``quantize=False`` on float64 inputs), the natural-log ``lse`` and the log2 ``lse2``
  ``[B, Hq, Nq]``, and the rest of :class:`~sageattention.sagebwd.reference.SageBwdSaved`: int8
  ``q8 [B, Hq, Nq, D]``, int8 ``k8 [B, Hkv, Nk, D]`` and one float32 vector ``scales = qs ⧺ ks ⧺ km``
  (Q scales ``[B, Hq, ⌈Nq/128⌉]``, K scales ``[B, Hkv, ⌈Nk/64⌉]``, token mean of K ``[B, Hkv, 1, D]``
  only when ``smooth_k``), flattened. With ``quantize=False`` (the backward then recomputes from Q,
  K, which autograd saves as inputs) ``q8``, ``k8``, ``scales`` are empty float32 tensors of shape
  ``(0,)``: a custom op cannot return None.
- ``sageattention::sagebwd_bwd(do, dlse, v, o, lse2, q, k, q8, k8, scales, mask, sm_scale,
  is_causal, smooth_k, quantize, impl)`` returns float32 ``(dQ, dK, dV)`` (float64 as above);
  ``q``/``k`` are given only for ``quantize=False``, ``q8, k8, scales`` only for ``quantize=True``
  (None otherwise). ``dlse`` None means 0.

``impl`` ``"torch"`` runs :mod:`sageattention.sagebwd.reference`, ``"triton"`` the kernels of
:mod:`sageattention.sagebwd.kernels` (CUDA, or CPU under ``TRITON_INTERPRET=1``; ``quantize=True``
only). The maths and costs are those modules' (SageAttention3 paper §4, steps 1-10 of the reference).
:func:`sagebwd_attention` is the validated, differentiable entry point on HND tensors.
"""

from __future__ import annotations

import math

import torch

from .. import reference as ref
from . import reference as sref

__all__ = ["IMPLS", "sagebwd_attention"]

IMPLS = ("torch", "triton")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _cdiv(a, b: int):
    return (a + b - 1) // b


def _scale_sizes(b, hq, hkv, nq, nk, d, smooth_k: bool) -> tuple:
    """Element counts of ``qs [B, Hq, ⌈Nq/128⌉]``, ``ks [B, Hkv, ⌈Nk/64⌉]``, ``km [B, Hkv, 1, D]``."""
    return b * hq * _cdiv(nq, ref.BLKQ), b * hkv * _cdiv(nk, sref.BLOCK_N), (b * hkv * d if smooth_k else 0)


def _pack_scales(qs: torch.Tensor, ks: torch.Tensor, km: torch.Tensor | None) -> torch.Tensor:
    """``qs ⧺ ks ⧺ km`` flattened into one float32 vector. One 1-D tensor instead of three keeps
    ``torch.compile(dynamic=True)`` from specialising on ``⌈N/128⌉ == 1`` (its contiguity check of a
    ``[B, H, ⌈N/128⌉]`` tensor guards on each size being 1: a recompile at N = 65 and N = 129)."""
    parts = [qs.reshape(-1), ks.reshape(-1)] + ([km.reshape(-1)] if km is not None else [])
    return torch.cat([x.float() for x in parts])


def _unpack_scales(scales: torch.Tensor, q8: torch.Tensor, k8: torch.Tensor, smooth_k: bool):
    """``(qs, ks, km or None)`` views of :func:`_pack_scales`'s vector."""
    b, hq, nq, d = q8.shape
    hkv, nk = k8.shape[1], k8.shape[2]
    nqs, nks, nkm = _scale_sizes(b, hq, hkv, nq, nk, d, smooth_k)
    qs, ks, km = scales.split([nqs, nks, nkm])
    qs, ks = qs.view(b, hq, -1), ks.view(b, hkv, -1)
    return qs, ks, (km.view(b, hkv, 1, d) if smooth_k else None)


@torch.library.custom_op("sageattention::sagebwd_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    sm_scale: float,
    is_causal: bool,
    smooth_k: bool,
    quantize: bool,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    kw = dict(sm_scale=sm_scale, is_causal=is_causal, mask=mask, smooth_k=smooth_k)
    if impl == "triton":
        from . import kernels

        o, lse, saved = kernels.forward(q, k, v, **kw)
    else:
        o, lse, saved = sref.sagebwd_forward(q, k, v, quantize=quantize, **kw)
    if quantize:
        rest = (saved.q8, saved.k8, _pack_scales(saved.qs, saved.ks, saved.km))
    else:
        rest = tuple(q.new_empty((0,), dtype=torch.float32) for _ in range(3))
    # contiguous: the fake's strides (the reference returns slices of padded blocks)
    return tuple(x.contiguous() for x in (o, lse, saved.lse2, *rest))


@_fwd_op.register_fake
def _(q, k, v, mask, sm_scale, is_causal, smooth_k, quantize, impl):
    b, hq, nq, d = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[3]
    exact = torch.float64 if (q.dtype == torch.float64 and not quantize) else torch.float32
    o = q.new_empty((b, hq, nq, dv), dtype=exact)
    lse, lse2 = (q.new_empty((b, hq, nq), dtype=exact) for _ in range(2))
    if not quantize:
        return (o, lse, lse2, *(q.new_empty((0,), dtype=torch.float32) for _ in range(3)))
    q8 = q.new_empty((b, hq, nq, d), dtype=torch.int8)
    k8 = q.new_empty((b, hkv, nk, d), dtype=torch.int8)
    scales = q.new_empty((sum(_scale_sizes(b, hq, hkv, nq, nk, d, smooth_k)),), dtype=torch.float32)
    return o, lse, lse2, q8, k8, scales


@torch.library.custom_op("sageattention::sagebwd_bwd", mutates_args=())
def _bwd_op(
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    v: torch.Tensor,
    o: torch.Tensor,
    lse2: torch.Tensor,
    q: torch.Tensor | None,
    k: torch.Tensor | None,
    q8: torch.Tensor | None,
    k8: torch.Tensor | None,
    scales: torch.Tensor | None,
    mask: torch.Tensor | None,
    sm_scale: float,
    is_causal: bool,
    smooth_k: bool,
    quantize: bool,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qs = ks = km = None
    if quantize:
        qs, ks, km = _unpack_scales(scales, q8, k8, smooth_k)
    saved = sref.SageBwdSaved(q=q, k=k, v=v, o=o, lse2=lse2, q8=q8, qs=qs, k8=k8, ks=ks, km=km)
    if impl == "triton":
        from . import kernels

        return kernels.backward(saved, do, dlse, sm_scale=sm_scale, is_causal=is_causal, mask=mask)
    return sref.sagebwd_backward(
        saved, do, dlse, sm_scale=sm_scale, is_causal=is_causal, mask=mask, quantize=quantize
    )


@_bwd_op.register_fake
def _(do, dlse, v, o, lse2, q, k, q8, k8, scales, mask, sm_scale, is_causal, smooth_k, quantize, impl):
    qq, kk = (q8, k8) if quantize else (q, k)
    return (
        qq.new_empty(qq.shape, dtype=o.dtype),
        kk.new_empty(kk.shape, dtype=o.dtype),
        v.new_empty(v.shape, dtype=o.dtype),
    )


def _setup_context(ctx, inputs, output):
    q, k, v, mask, sm_scale, is_causal, smooth_k, quantize, impl = inputs
    o, _lse, lse2, q8, k8, scales = output
    ctx.mark_non_differentiable(lse2, q8, k8, scales)
    if quantize:
        ctx.save_for_backward(v, o, lse2, None, None, q8, k8, scales, mask)
    else:
        ctx.save_for_backward(v, o, lse2, q, k, None, None, None, mask)
    ctx.cfg = (sm_scale, is_causal, smooth_k, quantize, impl)
    ctx.dtypes = (q.dtype, k.dtype, v.dtype)


def _backward(ctx, do, dlse, *_unused):
    v, o, lse2, q, k, q8, k8, scales, mask = ctx.saved_tensors
    sm_scale, is_causal, smooth_k, quantize, impl = ctx.cfg
    dq, dk, dv = torch.ops.sageattention.sagebwd_bwd(
        do, dlse, v, o, lse2, q, k, q8, k8, scales, mask, sm_scale, is_causal, smooth_k, quantize, impl
    )
    tq, tk, tv = ctx.dtypes
    return dq.to(tq), dk.to(tk), dv.to(tv), None, None, None, None, None, None


torch.library.register_autograd("sageattention::sagebwd_fwd", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "SageBwd has no second-order gradient (its backward, sageattention::sagebwd_bwd, is INT8 "
        "maths without a derivative); use torch.nn.functional.scaled_dot_product_attention where "
        "double backward is needed"
    )


torch.library.register_autograd("sageattention::sagebwd_bwd", _no_double_backward)


def _check_tensor(name: str, x: object, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(t) for t in dtypes]}, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D HND [B, H, N, D], got shape {tuple(x.shape)}")
    return x


def _check_flag(name: str, x: object) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return x


def _empty_result(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, quantize: bool):
    """``Nq = 0`` or ``Nk = 0``: ``o = 0``, ``lse = -inf`` and exact zero gradients (the sums of empty
    slices are 0 and keep the graph connected without touching the values, so inf inputs give no NaN)."""
    b, hq, nq, _ = q.shape
    zero = q[..., :0].sum() + k[..., :0].sum() + v[..., :0].sum()
    o = q.new_zeros((b, hq, nq, v.shape[3])) + zero
    exact = torch.float64 if (q.dtype == torch.float64 and not quantize) else torch.float32
    return o, q.new_full((b, hq, nq), float("-inf"), dtype=exact)


def sagebwd_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    sm_scale: float,
    is_causal: bool,
    smooth_k: bool,
    quantize: bool,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable SageBwd on HND tensors: ``(o, lse)``, ``o = softmax(c·Q·Kᵀ + mask)·V`` in q's
    dtype and the float32 natural-log ``lse [B, Hq, Nq]`` (float64 when ``quantize=False`` on float64
    inputs), with INT8 forward and backward (SageAttention3 paper §4; steps 1-10 of
    :mod:`sageattention.sagebwd.reference`), ``c = sm_scale``.

    One ``sageattention::sagebwd_fwd`` op; its backward is one ``sageattention::sagebwd_bwd`` op.
    ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``, ``v [B, Hkv, Nk, Dv]`` share dtype (fp16, bf16, fp32;
    float64 with ``quantize=False``) and device, ``Hq % Hkv == 0``. ``mask``: None or a floating
    additive mask (natural log, ``-inf`` = masked) broadcastable to ``[B, Hq, Nq, Nk]`` that does not
    require grad. ``impl``: ``"torch"`` (reference, any device) or ``"triton"`` (kernels; CUDA or
    ``TRITON_INTERPRET=1``, ``quantize=True``). Costs: forward ``2·B·Hq·Nq·Nk·(D + Dv)`` INT8 ops,
    backward ``8·B·Hq·Nq·Nk·D`` INT8 + ``4·B·Hq·Nq·Nk·Dv`` fp16 ops (``D = Dv``). No argument is
    modified. ``Nq = 0`` or ``Nk = 0`` gives zeros, lse ``-inf`` and zero gradients without calling
    the ops. :func:`sageattention.sagebwd.sageattn_train` is the user-facing API (layouts, bool
    masks, backend choice)."""
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    quantize = _check_flag("quantize", quantize)
    dtypes = _DTYPES if quantize else (*_DTYPES, torch.float64)
    q, k, v = (_check_tensor(n, x, dtypes) for n, x in (("q", q), ("k", k), ("v", v)))
    for name, flag in (("is_causal", is_causal), ("smooth_k", smooth_k)):
        _check_flag(name, flag)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float, got {type(sm_scale).__name__}")
    if not math.isfinite(sm_scale):
        raise ValueError(f"sm_scale must be finite, got {sm_scale}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype or x.device != q.device:
            raise ValueError(
                f"{name} must share q's dtype and device ({q.dtype}, {q.device}), got {x.dtype}, {x.device}"
            )
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if k.shape[0] != b or v.shape[:3] != k.shape[:3] or k.shape[3] != d or hkv < 1 or hq % hkv:
        raise ValueError(
            f"need q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv] with Hq % Hkv == 0, got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
            raise TypeError(
                f"mask must be None or a floating additive tensor, got {getattr(mask, 'dtype', mask)!r}"
            )
        if mask.device != q.device:
            raise ValueError(f"mask is on {mask.device}, q on {q.device}")
        try:
            ok = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, (b, hq, nq, nk)) == (b, hq, nq, nk)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"mask must be broadcastable to [B, Hq, Nq, Nk] = {[b, hq, nq, nk]}, got {tuple(mask.shape)}"
            )
        if mask.requires_grad and torch.is_grad_enabled():
            raise ValueError("mask requires grad: SageBwd has no gradient for the mask; detach it")
    if impl == "triton" and not quantize:
        raise ValueError("quantize=False runs in PyTorch only: use impl='torch'")
    if nq == 0 or nk == 0:
        return _empty_result(q, k, v, quantize)
    o, lse, *_saved = torch.ops.sageattention.sagebwd_fwd(
        q, k, v, mask, float(sm_scale), is_causal, smooth_k, quantize, impl
    )
    return o.to(q.dtype), lse
