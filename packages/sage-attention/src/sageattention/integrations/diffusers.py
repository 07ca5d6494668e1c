"""diffusers integration: ``SageAttnProcessor`` and helpers that swap it into a model or pipeline.

The processor is diffusers' ``AttnProcessor2_0`` with ``scaled_dot_product_attention`` replaced by
``sageattn``: spatial norm, group norm, cross-attention (``norm_cross``), q/k norms, the additive
attention mask, the output projection, the residual connection and ``rescale_output_factor`` are
handled exactly as there. One difference: the softmax scale is ``attn.scale`` (as in diffusers'
classic ``AttnProcessor``); ``AttnProcessor2_0`` ignores it and uses ``head_dim ** -0.5``, which is
the same value unless the layer was built with ``scale_qk=False`` or a custom ``scale``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.utils import deprecate

from ..core import sageattn

__all__ = ["SageAttnPatch", "SageAttnProcessor", "apply_sageattn", "enable_sageattention"]

# Processors whose maths SageAttnProcessor reproduces; any other processor (joint/Flux/IP-adapter/
# LoRA/added-KV ...) does something else around the attention call and is left alone.
REPLACEABLE_PROCESSORS: tuple[type, ...] = (AttnProcessor, AttnProcessor2_0)

# sageattn keywords the processor sets itself; everything else (smooth_k, backend, ...) is forwarded.
_OWN_KEYWORDS = frozenset(
    {"q", "k", "v", "tensor_layout", "is_causal", "sm_scale", "scale", "attn_mask", "return_lse", "dropout_p"}
)


class SageAttnProcessor:
    """Attention processor for diffusers ``Attention`` layers that runs ``sageattn``.

    ``sageattn_kwargs`` (for example ``smooth_k=False`` or ``backend="torch"``) are passed to every
    ``sageattn`` call. Use ``model.set_attn_processor(SageAttnProcessor())`` where the model has it
    (UNets, PixArt), or ``apply_sageattn(model)`` for any model (DiT has no ``set_attn_processor``).
    """

    def __init__(self, **sageattn_kwargs: Any) -> None:
        own = sorted(_OWN_KEYWORDS.intersection(sageattn_kwargs))
        if own:
            raise TypeError(f"SageAttnProcessor sets {own} itself; pass only other sageattn keywords")
        self.sageattn_kwargs = dict(sageattn_kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.sageattn_kwargs.items())
        return f"SageAttnProcessor({args})"

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if len(args) > 0 or kwargs.get("scale", None) is not None:
            deprecate(
                "scale",
                "1.0.0",
                "The `scale` argument is deprecated and ignored (as in AttnProcessor2_0); pass it through "
                "the pipeline's `cross_attention_kwargs` instead.",
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # (B * heads, 1 or Sq, Sk) -> (B, heads, 1 or Sq, Sk), broadcast by sageattn
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = sageattn(
            query,
            key,
            value,
            tensor_layout="HND",
            is_causal=False,
            sm_scale=float(attn.scale),
            attn_mask=attention_mask,
            **self.sageattn_kwargs,
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class SageAttnPatch(Mapping):
    """What ``apply_sageattn`` replaced: a mapping ``module name -> previous processor``.

    ``skipped`` maps the attention layers left alone to their processor class name. ``undo()`` (or
    leaving the ``with`` block) puts every previous processor back.
    """

    def __init__(
        self, modules: dict[str, torch.nn.Module], previous: dict[str, Any], skipped: dict[str, str]
    ):
        self._modules = modules
        self._previous = previous
        self.skipped = skipped

    def __getitem__(self, name: str) -> Any:
        return self._previous[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._previous)

    def __len__(self) -> int:
        return len(self._previous)

    def __repr__(self) -> str:
        return f"SageAttnPatch(replaced={len(self)}, skipped={len(self.skipped)})"

    def undo(self) -> None:
        """Restore the previous processors (idempotent)."""
        for name, proc in self._previous.items():
            self._modules[name].set_processor(proc)
        self._previous = {}

    def __enter__(self) -> SageAttnPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _attention_layers(model: torch.nn.Module, prefix: str) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, m in model.named_modules():
        if hasattr(m, "set_processor") and hasattr(m, "processor"):
            yield prefix + name, m


def apply_sageattn(
    model: torch.nn.Module, processor: SageAttnProcessor | None = None, **sageattn_kwargs: Any
) -> SageAttnPatch:
    """Swap ``SageAttnProcessor`` into every attention layer of a diffusers model that uses diffusers'
    standard processor (``AttnProcessor``/``AttnProcessor2_0``/``SageAttnProcessor``).

    Works on any model (DiT, PixArt, ``Transformer2DModel``, UNets, VAEs). Layers with other
    processors are left alone and listed in ``patch.skipped``; if no layer could be swapped a
    ``ValueError`` says why (models routed through diffusers' attention dispatcher, such as Flux,
    need ``set_attention_backend`` instead). Returns a ``SageAttnPatch`` (previous processors, undo).
    """
    return _apply({"": model}, processor, sageattn_kwargs)


def enable_sageattention(
    pipe_or_model: Any,
    processor: SageAttnProcessor | None = None,
    components: tuple[str, ...] = ("transformer", "unet"),
    **sageattn_kwargs: Any,
) -> SageAttnPatch:
    """``apply_sageattn`` on a model, or on the ``components`` (default transformer and unet; add
    ``"vae"`` etc. if wanted) of a ``DiffusionPipeline``. Names in the patch are prefixed with the
    component name (``"unet.down_blocks.0..."``)."""
    if isinstance(pipe_or_model, torch.nn.Module):
        return _apply({"": pipe_or_model}, processor, sageattn_kwargs)
    found = getattr(pipe_or_model, "components", None)
    if not isinstance(found, dict):
        raise TypeError(
            f"pipe_or_model must be a torch.nn.Module or a DiffusionPipeline, got {type(pipe_or_model).__name__}"
        )
    models = {f"{c}.": found[c] for c in components if isinstance(found.get(c), torch.nn.Module)}
    if not models:
        raise ValueError(f"the pipeline has none of the components {components} (it has {sorted(found)})")
    return _apply(models, processor, sageattn_kwargs)


def _apply(
    models: dict[str, torch.nn.Module], processor: SageAttnProcessor | None, sageattn_kwargs: dict[str, Any]
) -> SageAttnPatch:
    if processor is None:
        processor = SageAttnProcessor(**sageattn_kwargs)
    elif sageattn_kwargs:
        raise TypeError("pass either a processor or sageattn keywords, not both")
    elif not isinstance(processor, SageAttnProcessor):
        raise TypeError(f"processor must be a SageAttnProcessor, got {type(processor).__name__}")
    modules: dict[str, torch.nn.Module] = {}
    previous: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for prefix, model in models.items():
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, m in _attention_layers(model, prefix):
            if isinstance(m.processor, (*REPLACEABLE_PROCESSORS, SageAttnProcessor)):
                modules[name], previous[name] = m, m.processor
            else:
                skipped[name] = type(m.processor).__name__
    if not previous:
        what = (
            f"its attention layers use {sorted(set(skipped.values()))}"
            if skipped
            else "it has no attention layers"
        )
        raise ValueError(
            "no attention layer with diffusers' standard processor (AttnProcessor/AttnProcessor2_0) found: "
            f"{what}. Models whose attention goes through diffusers' dispatcher (Flux, Wan, ...) take "
            "`model.set_attention_backend('sage')` instead (CUDA and sageattention>=2.1.1 only)."
        )
    for m in modules.values():
        m.set_processor(processor)
    return SageAttnPatch(modules, previous, skipped)
