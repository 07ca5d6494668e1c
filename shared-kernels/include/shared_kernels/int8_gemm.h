// INT8 GEMM with per-block scales (SageAttention's S = Q.K^T on INT8 operands): the epilogue numerics
// shared by the CPU build and the CUDA kernels, so the CPU tests check the very code the GPU runs.
//
//   acc        = sum_k int32(a[i, k]) * int32(b[j, k])            (exact in int32 for K <= kMaxK)
//   out[i, j]  = (float32(acc) * a_scale[i / block_m]) * b_scale[j / block_n]
//
// float32(acc) rounds to nearest even; the two products are float32 multiplications in this order.
#pragma once

#include <cstdint>

#include "shared_kernels/common.h"

namespace shared_kernels::int8_gemm {

// Largest K whose int32 accumulation is exact for every int8 input: K * 128 * 128 <= 2^31 - 1
// (-128 * -128 = 16384 is the largest product).
constexpr int64_t kMaxK = 131071;

SK_HD float dequant(int32_t acc, float a_scale, float b_scale) {
  return (static_cast<float>(acc) * a_scale) * b_scale;
}

}  // namespace shared_kernels::int8_gemm
