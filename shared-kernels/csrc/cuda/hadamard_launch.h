// Launcher of the CUDA Walsh-Hadamard butterfly kernel (defined in hadamard.cu).
#pragma once
#include <cstdint>

namespace shared_kernels::cuda {

// x, y: `groups` contiguous groups of n in {16, 32, 64, 128} elements (dtype 0 fp32, 1 fp16,
// 2 bf16); signs: float32[n] or 0.
void launch_hadamard_transform(std::uintptr_t x, std::uintptr_t y, std::uintptr_t signs, int64_t groups, int n,
                               int dtype, bool normalize, std::uintptr_t stream);

}  // namespace shared_kernels::cuda
