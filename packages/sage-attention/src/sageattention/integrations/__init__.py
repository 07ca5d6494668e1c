"""Integrations with diffusers and transformers, imported lazily.

``import sageattention`` and ``import sageattention.integrations`` import neither library; the
first access to a name below imports the submodule that defines it (and with it that library):

- ``sageattention.integrations.diffusers``: ``SageAttnProcessor``, ``apply_sageattn``,
  ``enable_sageattention``, ``SageAttnPatch``;
- ``sageattention.integrations.transformers``: ``register_sageattention``,
  ``sageattention_forward``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SageAttnPatch": "diffusers",
    "SageAttnProcessor": "diffusers",
    "apply_sageattn": "diffusers",
    "enable_sageattention": "diffusers",
    "register_sageattention": "transformers",
    "sageattention_forward": "transformers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
