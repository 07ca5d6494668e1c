// max|x| over a whole tensor (per-tensor FP8 scales, NVFP4 per-tensor outer scales), with the NaN-wins
// rule of mx::amax_step: one scalar version and one AVX-512 version shared by the CPU quantizers.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/cpu_features.h"
#include "cpu/minifloat_avx512.h"
#include "shared_kernels/microscaling.h"
#include "shared_kernels/minifloat.h"

namespace shared_kernels::cpu {

inline float tensor_amax_scalar(const void* xp, int dtype, int64_t n) {
  float result = 0.0f;
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp parallel
#endif
  {
    float local = 0.0f;
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp for schedule(static) nowait
#endif
    for (int64_t i = 0; i < n; ++i) local = mx::amax_step(local, minifloat::load_as_f32(xp, i, dtype));
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp critical
#endif
    result = mx::amax_step(result, local);
  }
  return result;
}

#if SK_HAVE_AVX512_TARGET
// Same result as tensor_amax_scalar: an unsigned max on |x| bits over pieces of 2^14 elements.
template <int DT>
SK_TARGET_AVX512 float tensor_amax_avx512(const void* xp, int64_t n) {
  constexpr int64_t piece = 1 << 14;
  const int64_t npieces = (n + piece - 1) / piece;
  uint32_t a = 0;
#pragma omp parallel for schedule(static) reduction(max : a)
  for (int64_t t = 0; t < npieces; ++t) a = std::max(a, mf16::amax_bits_range<DT>(xp, t * piece, std::min(n, (t + 1) * piece)));
  return minifloat::bits_f32(a);
}
#endif

}  // namespace shared_kernels::cpu
