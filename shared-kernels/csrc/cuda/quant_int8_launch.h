// Launchers of the CUDA INT8 per-block quantization kernels (defined in quant_int8.cu).
#pragma once
#include <cstdint>

namespace shared_kernels::cuda {

// x: contiguous [B, N, D] (dtype 0 fp32, 1 fp16, 2 bf16); q int8 [B, N, D]; scale fp32
// [B, ceil(N / block)]; mean fp32 [B, D] or 0 (no mean subtraction).
void launch_quantize_int8_per_block(std::uintptr_t x, std::uintptr_t q, std::uintptr_t scale, std::uintptr_t mean,
                                    int64_t B, int64_t N, int64_t D, int64_t block, int dtype, float multiplier,
                                    std::uintptr_t stream);

}  // namespace shared_kernels::cuda
