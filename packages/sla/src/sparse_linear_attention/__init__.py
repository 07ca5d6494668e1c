"""SLA and SLA2: fine-tunable sparse + linear attention for diffusion transformers.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.0.1"

from .feature_maps import FEATURE_MAPS, get_feature_map
from .module import SparseLinearAttention
from .reference import (
    block_map_skip,
    block_map_topk,
    block_sparse_attention_ref,
    linear_attention_ref,
    mean_pool,
    sla_reference,
)

__all__ = [
    "FEATURE_MAPS",
    "SparseLinearAttention",
    "__version__",
    "block_map_skip",
    "block_map_topk",
    "block_sparse_attention_ref",
    "get_feature_map",
    "linear_attention_ref",
    "mean_pool",
    "sla_reference",
]
