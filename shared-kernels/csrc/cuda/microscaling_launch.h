// Launchers of the MX / NVFP4 CUDA kernels (implemented in microscaling.cu; no torch, no pybind11).
#pragma once
#include <cstdint>

namespace shared_kernels::cuda {

// x viewed as [B, M, K], blocks along K (along_rows = false) or along M; dtype 0 = f32, 1 = f16,
// 2 = bf16; elem 0 = E2M1, 1 = E4M3, 2 = E5M2; scale_rule 0 = floor, 1 = truncation-free;
// rounding 0 = RNE, 1 = stochastic (Philox seed / offset + flat index).
void launch_quantize_mx(std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows, int elem,
                        int scale_rule, int rounding, uint64_t seed, int64_t offset, std::uintptr_t data,
                        std::uintptr_t scales, std::uintptr_t stream);

// outer_mode 0 = tensor, 1 = block128, 2 = none (outer buffer: [1], [lines of 128], [1]).
void launch_quantize_nvfp4(std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows,
                           int outer_mode, int rounding, uint64_t seed, int64_t offset, std::uintptr_t data,
                           std::uintptr_t scales, std::uintptr_t outer, std::uintptr_t stream);

}  // namespace shared_kernels::cuda
