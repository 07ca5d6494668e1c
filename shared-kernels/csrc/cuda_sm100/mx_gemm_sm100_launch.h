// Launcher of the CUTLASS block-scaled MX GEMM for sm100a (defined in mx_gemm_sm100.cu, compiled only
// when 100a is among SHARED_KERNELS_CUDA_ARCHS; SHARED_KERNELS_WITH_SM100_MX_GEMM is then defined).
#pragma once
#include <cstdint>

namespace shared_kernels::cuda {

// Operand format codes: 0 MXFP4 (E2M1 packed two per byte, low nibble = even k), 1 MXFP8 E4M3.
// a [M, K] K-major, b [N, K] K-major (out = a . b^T), sfa / sfb E8M0 scales in CUTLASS's Sm1xx
// block-scaled layout (128x4 atoms, see ops/mx_gemm.py), out [M, N] row-major bf16 (out_dtype 2) or
// fp32 (out_dtype 0). Both operands share one format. workspace: at least
// mx_gemm_sm100_workspace_size(...) bytes (0 is allowed when that is 0).
std::size_t mx_gemm_sm100_workspace_size(int fmt, int out_dtype, int64_t M, int64_t N, int64_t K);

void launch_mx_gemm_sm100(int fmt, int out_dtype, std::uintptr_t a, std::uintptr_t sfa, std::uintptr_t b,
                          std::uintptr_t sfb, std::uintptr_t out, int64_t M, int64_t N, int64_t K,
                          std::uintptr_t workspace, std::size_t workspace_bytes, std::uintptr_t stream);

}  // namespace shared_kernels::cuda
