"""SLA and SLA2: fine-tunable sparse + linear attention for diffusion transformers.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.1.0.dev0"

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
from .sla2 import SparseLinearAttention2
from .swap import SLAAttnProcessor, SLAMultiheadAttention, SwapReport, replace_attention

__all__ = [
    "FEATURE_MAPS",
    "SLAAttnProcessor",
    "SLAMultiheadAttention",
    "SparseLinearAttention",
    "SparseLinearAttention2",
    "SwapReport",
    "__version__",
    "block_map_skip",
    "block_map_topk",
    "block_sparse_attention_ref",
    "get_feature_map",
    "linear_attention_ref",
    "mean_pool",
    "replace_attention",
    "sla_reference",
]
