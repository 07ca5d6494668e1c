"""Module swap: run SLA / SLA2 inside existing models.

``replace_attention(model, topk=..., variant="sla" | "sla2" | factory, filter_fn=None, ...)`` walks
``model`` and swaps the self-attention of

* **diffusers** ``Attention`` layers (DiT, PixArt, ``Transformer2DModel``, UNet blocks, ...) whose
  processor is diffusers' standard ``AttnProcessor``/``AttnProcessor2_0``: the processor is replaced
  by :class:`SLAAttnProcessor`, an ``nn.Module`` that holds the layer's SLA module (so its
  trainable parameters, e.g. SLA's ``proj_l`` or SLA2's router and ratio, belong to the model:
  ``model.parameters()``, ``state_dict``, ``.to()``). It reproduces ``AttnProcessor2_0``
  (spatial/group norm, q/k norms, output projection, residual, ``rescale_output_factor``) with
  ``scaled_dot_product_attention`` replaced by SLA. Cross-attention layers (``is_cross_attention``)
  and layers with other processors (joint/Flux/IP-adapter/added-KV ...) are left alone and listed
  in ``report.skipped``; models routed through diffusers' attention dispatcher (Flux, Wan, ...)
  have no such processors and are reported as having none.
* **``torch.nn.MultiheadAttention``** (e.g. inside ``nn.TransformerEncoderLayer``): the module is
  replaced by :class:`SLAMultiheadAttention`, which keeps the original's projections (same
  parameters, shared, not copied) and runs SLA between them. Supported: ``batch_first`` either way,
  ``kdim == vdim == embed_dim``, no ``add_bias_kv``/``add_zero_attn``, attention ``dropout == 0``.
  At call time: query, key, value of one sequence length, no ``attn_mask``/``key_padding_mask``,
  ``is_causal=False`` and ``need_weights=False`` (SLA never forms the attention matrix; the error
  says so instead of returning ``None`` weights).

Not supported (documented, not silently handled): attention masks, causal attention, cross-attention,
a softmax scale other than ``head_dim ** -0.5`` (SLA/SLA2 use that scale; such a layer is skipped
with the reason). User modules with their own q/k/v projections can call
:class:`~sparse_linear_attention.module.SparseLinearAttention` or
:class:`~sparse_linear_attention.sla2.SparseLinearAttention2` directly on ``[B, H, L, D]`` tensors.

Every swapped layer gets its *own* SLA module (SLA's parameters are per layer). ``variant`` may also
be a callable ``factory(head_dim, num_heads) -> nn.Module`` whose ``forward(q, k, v)`` maps
``[B, H, L, D]`` to ``[B, H, L, D]`` (used by the benchmark for sparse-only / linear-only
attention). The returned :class:`SwapReport` maps layer names to the new modules and can undo the
swap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ._checks import check_topk

__all__ = ["VARIANTS", "SLAAttnProcessor", "SLAMultiheadAttention", "SwapReport", "replace_attention"]

VARIANTS = ("sla", "sla2")
Factory = Callable[[int, int], nn.Module]


class SLAAttnProcessor(nn.Module):
    """diffusers attention processor running ``attention(q, k, v)`` (an SLA/SLA2 module) in a
    self-attention ``Attention`` layer; diffusers' ``AttnProcessor2_0`` otherwise."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        if not isinstance(attention, nn.Module):
            raise TypeError(f"attention must be an nn.Module, got {type(attention).__name__}")
        self.attention = attention

    def forward(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError(
                "SLAAttnProcessor runs self-attention only, got encoder_hidden_states (cross-attention); "
                "swap only self-attention layers (replace_attention skips is_cross_attention layers)"
            )
        if attention_mask is not None:
            raise ValueError("SLAAttnProcessor does not support attention_mask (SLA has no masking)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = self.attention(query, key, value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class SLAMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with its softmax attention replaced by ``attention(q, k, v)``.

    Shares the projections of ``mha`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``). The
    forward signature is ``nn.MultiheadAttention``'s; see the module docstring for what is supported.
    Returns ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention, attention: nn.Module) -> None:
        super().__init__()
        reason = _mha_unsupported(mha)
        if reason:
            raise ValueError(f"cannot run SLA in this nn.MultiheadAttention: {reason}")
        if not isinstance(attention, nn.Module):
            raise TypeError(f"attention must be an nn.Module, got {type(attention).__name__}")
        self.embed_dim, self.num_heads = mha.embed_dim, mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads
        self.batch_first = mha.batch_first
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.attention = attention
        # PyTorch's fused inference fast path of nn.TransformerEncoderLayer/-Encoder reads the
        # projections straight from self_attn and would bypass SLA; this flag turns it off.
        self._qkv_same_embed_dim = False

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if key_padding_mask is not None or attn_mask is not None:
            raise ValueError(
                "SLAMultiheadAttention does not support attn_mask or key_padding_mask (SLA has no masking)"
            )
        if is_causal:
            raise ValueError("SLAMultiheadAttention does not support is_causal=True (SLA is non-causal)")
        if need_weights:
            raise ValueError(
                "SLAMultiheadAttention never forms the attention matrix: call it with need_weights=False "
                "(nn.TransformerEncoderLayer does)"
            )
        del average_attn_weights  # only meaningful with need_weights=True, rejected above
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] != self.embed_dim:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"{name} must be a 3-D tensor with last dim embed_dim={self.embed_dim}, got {shape}"
                )
        if not (query.shape == key.shape == value.shape):
            raise ValueError(
                "SLA needs self-attention shapes: query, key and value of one shape, got "
                f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, L, E = query.shape
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        wq, wk, wv = w.chunk(3)
        q = nn.functional.linear(query, wq, bq)
        k = nn.functional.linear(key, wk, bk)
        v = nn.functional.linear(value, wv, bv)
        q, k, v = (t.view(B, L, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        o = self.attention(q, k, v).transpose(1, 2).reshape(B, L, E).to(query.dtype)
        o = self.out_proj(o)
        return (o if self.batch_first else o.transpose(0, 1)), None


def _mha_unsupported(mha: nn.MultiheadAttention) -> str | None:
    if not mha._qkv_same_embed_dim:
        return "kdim/vdim differ from embed_dim"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "add_bias_kv / add_zero_attn are not supported"
    if mha.dropout != 0.0:
        return f"attention dropout={mha.dropout} is not supported (SLA has no attention dropout)"
    return None


class SwapReport(Mapping):
    """What :func:`replace_attention` swapped: ``layer name -> new SLA module``.

    ``skipped`` maps the attention layers left alone to the reason. ``undo()`` (or leaving a
    ``with`` block) puts every original processor / module back (the SLA modules are dropped).
    """

    def __init__(
        self, swapped: dict[str, nn.Module], restore: dict[str, Callable[[], None]], skipped: dict[str, str]
    ):
        self._swapped = swapped
        self._restore = restore
        self.skipped = skipped

    def __getitem__(self, name: str) -> nn.Module:
        return self._swapped[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._swapped)

    def __len__(self) -> int:
        return len(self._swapped)

    def __repr__(self) -> str:
        return f"SwapReport(swapped={len(self)}, skipped={len(self.skipped)})"

    def undo(self) -> None:
        """Restore the original attention (idempotent)."""
        for fn in self._restore.values():
            fn()
        self._restore = {}
        self._swapped = {}

    def __enter__(self) -> SwapReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _make_factory(variant: object, topk: float | None, kwargs: dict[str, Any]) -> Factory:
    if callable(variant) and not isinstance(variant, str):
        if topk is not None or kwargs:
            given = (["topk"] if topk is not None else []) + sorted(kwargs)
            raise TypeError(f"variant is a factory: {given} would be ignored; configure the factory instead")
        return variant
    if variant not in VARIANTS:
        raise ValueError(
            f"variant must be one of {VARIANTS} or a callable factory(head_dim, num_heads), got {variant!r}"
        )
    if topk is None:
        raise TypeError(
            f"replace_attention(variant={variant!r}) needs topk (the kept fraction of key blocks)"
        )
    topk = check_topk("topk", topk)
    if variant == "sla":
        from .module import SparseLinearAttention

        SparseLinearAttention(8, topk, **kwargs)  # validate the keywords once, with a clear error
        return lambda head_dim, num_heads: SparseLinearAttention(head_dim, topk, **kwargs)
    from .sla2 import SparseLinearAttention2

    SparseLinearAttention2(8, 1, topk, **kwargs)
    return lambda head_dim, num_heads: SparseLinearAttention2(head_dim, num_heads, topk, **kwargs)


def _is_diffusers_attention(m: nn.Module) -> bool:
    return hasattr(m, "set_processor") and hasattr(m, "processor") and hasattr(m, "to_q")


def _standard_processors() -> tuple[type, ...]:
    try:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    except ImportError:  # diffusers is an optional extra
        return ()
    return (AttnProcessor, AttnProcessor2_0)


def _diffusers_reason(m: nn.Module, standard: tuple[type, ...]) -> str | None:
    if getattr(m, "is_cross_attention", False):
        return "cross-attention (SLA is self-attention only)"
    if not isinstance(m.processor, standard):
        return f"processor {type(m.processor).__name__} is not diffusers' standard AttnProcessor/AttnProcessor2_0"
    head_dim = m.to_q.out_features // m.heads
    if not math.isclose(float(m.scale), head_dim**-0.5, rel_tol=1e-6):
        return f"softmax scale {float(m.scale)} != head_dim ** -0.5 (SLA uses 1/sqrt(head_dim))"
    return None


def _module_device(m: nn.Module) -> torch.device | None:
    p = next(m.parameters(), None)
    return None if p is None else p.device


def replace_attention(
    model: nn.Module,
    *,
    topk: float | None = None,
    variant: str | Factory = "sla",
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    **module_kwargs: Any,
) -> SwapReport:
    """Swap SLA (``variant="sla"``), SLA2 (``"sla2"``) or ``factory(head_dim, num_heads)`` into the
    self-attention layers of ``model`` (diffusers ``Attention`` and ``nn.MultiheadAttention``; see the
    module docstring for what is supported).

    ``topk``: kept fraction of key blocks in (0, 1] (``= 1 − sparsity``), required for the named
    variants. ``module_kwargs`` go to ``SparseLinearAttention(head_dim, topk, **kw)`` (e.g.
    ``feature_map``, ``BLKQ``, ``BLKK``, ``use_bf16``, ``backend``) or ``SparseLinearAttention2(head_dim,
    num_heads, topk, **kw)`` (e.g. ``quant``, ``ratio_init``); unknown keywords raise.
    ``filter_fn(name, module) -> bool`` picks layers (default: all supported ones). New modules are
    placed on the device of the layer they serve (float32 parameters). Raises ``ValueError`` if no
    layer could be swapped (the reasons are in the message). Returns a :class:`SwapReport`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.MultiheadAttention) or _is_diffusers_attention(model):
        raise ValueError(
            "model is itself an attention layer: pass the model that contains it (the layer is replaced "
            "in its parent), or build SLAMultiheadAttention / SLAAttnProcessor directly"
        )
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(
            f"filter_fn must be a callable (name, module) -> bool, got {type(filter_fn).__name__}"
        )
    factory = _make_factory(variant, topk, module_kwargs)
    standard = _standard_processors()
    plan: list[tuple[str, nn.Module, str]] = []
    skipped: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            kind, reason = "mha", _mha_unsupported(m)
        elif _is_diffusers_attention(m):
            kind, reason = "diffusers", _diffusers_reason(m, standard)
        else:
            continue
        if filter_fn is not None and not filter_fn(name, m):
            skipped[name] = "excluded by filter_fn"
        elif reason:
            skipped[name] = reason
        else:
            plan.append((name, m, kind))
    if not plan:
        detail = (
            "; ".join(f"{n or '<model>'}: {r}" for n, r in skipped.items())
            or "the model has no attention layers"
        )
        raise ValueError(f"no attention layer could be swapped ({detail})")
    swapped: dict[str, nn.Module] = {}
    restore: dict[str, Callable[[], None]] = {}
    for name, m, kind in plan:
        if kind == "mha":
            new = factory(m.embed_dim // m.num_heads, m.num_heads)
            wrapper = SLAMultiheadAttention(m, new)
            dev = _module_device(m)
            if dev is not None:
                wrapper.attention.to(dev)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, wrapper)
            restore[name] = lambda p=parent, c=child, orig=m: setattr(p, c, orig)
        else:
            new = factory(m.to_q.out_features // m.heads, m.heads)
            proc = SLAAttnProcessor(new)
            dev = _module_device(m)
            if dev is not None:
                proc.to(dev)
            old = m.processor
            m.set_processor(proc)
            restore[name] = lambda layer=m, p=old: layer.set_processor(p)
        swapped[name] = new
    return SwapReport(swapped, restore, skipped)
