// Launcher of the CUDA INT8 GEMM with per-block scales (defined in int8_gemm.cu).
#pragma once
#include <cstdint>

namespace shared_kernels::cuda {

// a int8 [B, M, K], b int8 [B, N, K] (contiguous), a_scale fp32 [B, ceil(M / block_m)], b_scale fp32
// [B, ceil(N / block_n)], out [B, M, N] of dtype code 0 fp32, 1 fp16, 2 bf16.
void launch_int8_gemm(std::uintptr_t a, std::uintptr_t b, std::uintptr_t a_scale, std::uintptr_t b_scale,
                      std::uintptr_t out, int64_t B, int64_t M, int64_t N, int64_t K, int64_t block_m,
                      int64_t block_n, int out_dtype, std::uintptr_t stream);

}  // namespace shared_kernels::cuda
