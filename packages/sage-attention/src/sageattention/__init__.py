"""SageAttention 1/2/2++/3 quantized attention and SageBwd trainable 8-bit attention.

Part of the ML-efficiency kernels monorepo; built on ``shared-kernels``.
"""

__version__ = "0.1.0.dev0"

import importlib.util

from . import triton_api as _triton_api
from .core import sageattn
from .int4 import sageattn_qk_int4_pv_fp8_cuda, sageattn_qk_int4_pv_fp16_cuda
from .sa3 import sageattn3_blackwell
from .sagebwd import sageattn_train
from .sagebwd.autograd import no_backward as _no_backward
from .variants import (
    sageattn_qk_int8_pv_fp8_cuda,
    sageattn_qk_int8_pv_fp8_cuda_sm90,
    sageattn_qk_int8_pv_fp16_cuda,
)
from .varlen import sageattn_varlen

if importlib.util.find_spec("triton") is not None:  # Triton kernels behind the upstream *_cuda names
    from . import triton_variants  # noqa: F401  (registers into variants.KERNELS)
# compiled kernels after Triton: register_kernel(first=True) puts them ahead of it in the chain
from . import (
    cuda_kernels,  # noqa: F401  (registers where shared-kernels has the CUDA op)
    cuda_sm90,  # noqa: F401  (the Hopper wgmma kernel, where built and on sm90)
)

# inference-only kernels: backward through them raises a RuntimeError pointing to sageattn (SageBwd)
sageattn_qk_int8_pv_fp8_triton = _no_backward(_triton_api.sageattn_qk_int8_pv_fp8_triton)
sageattn_qk_int8_pv_fp16_triton = _no_backward(_triton_api.sageattn_qk_int8_pv_fp16_triton)
sageattn_varlen_triton = _no_backward(_triton_api.sageattn_varlen_triton)

__all__ = [
    "__version__",
    "sageattn",
    "sageattn3_blackwell",
    "sageattn_qk_int4_pv_fp8_cuda",
    "sageattn_qk_int4_pv_fp16_cuda",
    "sageattn_qk_int8_pv_fp8_cuda",
    "sageattn_qk_int8_pv_fp8_cuda_sm90",
    "sageattn_qk_int8_pv_fp8_triton",
    "sageattn_qk_int8_pv_fp16_cuda",
    "sageattn_qk_int8_pv_fp16_triton",
    "sageattn_train",
    "sageattn_varlen",
    "sageattn_varlen_triton",
]
