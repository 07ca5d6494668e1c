// Launcher of the quantize_fp8 CUDA kernels (implemented in quant_fp8.cu; no torch, no pybind11).
#pragma once
#include <cstdint>

namespace shared_kernels::cuda {

// x viewed as [B, N, D]; granularity 0 = per_channel, 1 = per_block, 2 = per_tensor; fmt 1 = e4m3,
// 2 = e5m2; dtype 0 = f32, 1 = f16, 2 = bf16. q: B*N*D bytes; scale: float32 per group.
void launch_quantize_fp8(std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity,
                         int64_t block_size, float scale_max, int fmt, std::uintptr_t q, std::uintptr_t scale,
                         std::uintptr_t stream);

}  // namespace shared_kernels::cuda
