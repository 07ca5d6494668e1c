"""Feature maps φ of SLA's linear branch (SLA paper, ``o_l = φ(Q)(φ(K)ᵀV) / (φ(Q)·Σφ(K))``).

All three are parameter-free and elementwise or row-wise over the head dimension D, so the feature
dimension equals D:

| name        | φ(x)                      | note                                       |
|-------------|---------------------------|--------------------------------------------|
| ``softmax`` | ``softmax(x, dim=-1)``    | upstream default; rows sum to 1            |
| ``elu``     | ``elu(x) + 1``            | strictly positive                          |
| ``relu``    | ``relu(x)``               | can be all-zero: the ``eps`` keeps o finite |

Upstream documents ``'hedgehog'`` (a learnable map) but raises ``NotImplementedError``; so do we,
naming the supported maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEATURE_MAPS", "EluFeatureMap", "ReluFeatureMap", "SoftmaxFeatureMap", "get_feature_map"]

FEATURE_MAPS = ("softmax", "elu", "relu")


class SoftmaxFeatureMap(nn.Module):
    """φ(x) = softmax(x) over the last (head) dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=-1)


class EluFeatureMap(nn.Module):
    """φ(x) = elu(x) + 1 (Katharopoulos et al. 2020)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x) + 1.0


class ReluFeatureMap(nn.Module):
    """φ(x) = relu(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


_CLASSES = {"softmax": SoftmaxFeatureMap, "elu": EluFeatureMap, "relu": ReluFeatureMap}


def get_feature_map(name: str) -> nn.Module:
    """A new feature-map module for ``name`` in :data:`FEATURE_MAPS`.

    Raises ``NotImplementedError`` for ``'hedgehog'`` (documented upstream, never implemented there)
    and ``ValueError`` for any other name.
    """
    if not isinstance(name, str):
        raise TypeError(f"feature_map must be a str in {FEATURE_MAPS}, got {type(name).__name__}")
    if name == "hedgehog":
        raise NotImplementedError(
            f"feature_map='hedgehog' is not implemented (upstream SLA documents it but raises too); "
            f"supported: {FEATURE_MAPS}"
        )
    if name not in _CLASSES:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")
    return _CLASSES[name]()
