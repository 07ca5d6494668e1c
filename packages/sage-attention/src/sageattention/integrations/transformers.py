"""transformers integration: ``sageattn`` as a registered attention implementation.

``register_sageattention()`` adds ``"sageattention"`` to transformers' ``AttentionInterface`` (the
attention function) and ``AttentionMaskInterface`` (``sdpa_mask``, so padding masks reach the
function as ``(B, 1, Sq, Sk)`` bool masks; without it transformers passes ``attention_mask=None``
and padding would be silently ignored). Then select it with
``LlamaConfig(..., attn_implementation="sageattention")``, ``from_pretrained(...,
attn_implementation="sageattention")`` or ``model.set_attn_implementation("sageattention")``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import create_position_bias_mask
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..core import sageattn

__all__ = ["ATTN_IMPLEMENTATION", "register_sageattention", "sageattention_forward"]

ATTN_IMPLEMENTATION = "sageattention"

# sageattn keywords the attention function sets itself; others (smooth_k, backend, ...) may be bound
_OWN_KEYWORDS = frozenset(
    {"q", "k", "v", "tensor_layout", "is_causal", "sm_scale", "scale", "attn_mask", "return_lse", "dropout_p"}
)


def sageattention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    *,
    sageattn_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function running ``sageattn``; same contract as ``sdpa_attention_forward``.

    ``query`` ``(B, Hq, Sq, D)``, ``key``/``value`` ``(B, Hkv, Sk, D)`` (GQA/MQA handled by
    ``sageattn`` without repeating K/V), ``attention_mask`` bool (True = attend) or additive,
    broadcastable to ``(B, Hq, Sq, Sk)``. Causality as in SDPA: ``module.is_causal`` (or the
    ``is_causal`` argument) applies only when there is no mask and ``Sq > 1``. Returns
    ``(output (B, Sq, Hq, D), None)``: attention weights are never materialised. Attention dropout
    (a model in training mode), ``softcap`` and attention sinks (``s_aux``) raise ``ValueError``.
    ``sageattn_kwargs`` (bound by ``register_sageattention``) are passed to ``sageattn``.
    """
    if kwargs.get("softcap") is not None:
        raise ValueError("attn_implementation='sageattention' does not support softcap; use 'eager'")
    if kwargs.get("s_aux") is not None:
        raise ValueError("attn_implementation='sageattention' does not support attention sinks (s_aux)")
    if dropout:
        raise ValueError(
            f"attn_implementation='sageattention' is inference attention without dropout, got dropout={dropout} "
            "(the model is in training mode with attention dropout: call model.eval() or set the dropout to 0)"
        )
    q_length = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(q_length > 1 and attention_mask is None and is_causal)
    if is_causal and key.shape[2] > q_length:
        # as sdpa_attention_forward: an empty static cache during prefill; causal masking is top-left
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        if position_bias is not None:
            position_bias = position_bias[..., :q_length]
    if position_bias is not None:
        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal, query, key)
        is_causal = False
    out = sageattn(
        query,
        key,
        value,
        tensor_layout="HND",
        is_causal=is_causal,
        sm_scale=None if scaling is None else float(scaling),
        attn_mask=attention_mask,
        **(sageattn_kwargs or {}),
    )
    return out.transpose(1, 2).contiguous(), None


def register_sageattention(name: str = ATTN_IMPLEMENTATION, **sageattn_kwargs: Any) -> str:
    """Register ``sageattention_forward`` and ``sdpa_mask`` under ``name`` with transformers'
    ``AttentionInterface`` and ``AttentionMaskInterface``; returns ``name``. Extra keywords (for
    example ``smooth_k=False``, ``backend="torch"``) are passed to every ``sageattn`` call; register
    under another name to use several settings side by side. Registering a name again replaces it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    own = sorted(_OWN_KEYWORDS.intersection(sageattn_kwargs))
    if own:
        raise TypeError(f"the attention function sets {own} itself; pass only other sageattn keywords")
    fn = sageattention_forward
    if sageattn_kwargs:
        fn = functools.partial(sageattention_forward, sageattn_kwargs=dict(sageattn_kwargs))
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
