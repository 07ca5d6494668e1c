"""Hardware GEMM backends for TetraJetLinear. Importing this package registers them:

- ``"triton_scaled"``: Triton ``tl.dot_scaled`` MX GEMM (``mx_matmul``; Blackwell block-scaled MMA
  on sm100a, bf16 upcast + MMA on older GPUs, Triton's interpreter on the CPU);
- ``"cutlass_sm100"``: shared-kernels' CUTLASS block-scaled GEMM (``shared_kernels.mx_gemm``), sm100a.

Use with ``TetraJetRecipe(..., gemm_backend="triton_scaled")`` after ``import tetrajet.gemm``.
"""

from .register import cutlass_sm100_gemm, register_backends, triton_scaled_gemm
from .triton_scaled import MX_FORMATS, mx_matmul

register_backends()

__all__ = ["MX_FORMATS", "cutlass_sm100_gemm", "mx_matmul", "register_backends", "triton_scaled_gemm"]
