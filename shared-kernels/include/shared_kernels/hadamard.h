// Fast Walsh-Hadamard transform in Sylvester (natural) order, H_1 = [1], H_2n = [[H, H], [H, -H]]:
// numerics shared by the CPU build and the CUDA kernels. Every backend runs the butterfly stages in
// the same order (h = 1, 2, 4, ..., n/2), computing (a + b, a - b) for each pair (x[j], x[j + h]),
// in float32, then multiplies by normalization_factor(n). Same stage order => same bits.
#pragma once

#include <cmath>

#include "shared_kernels/common.h"

namespace shared_kernels::hadamard {

// One butterfly: (a, b) -> (a + b, a - b).
SK_HD void butterfly(float& a, float& b) {
  const float s = a + b;
  const float d = a - b;
  a = s;
  b = d;
}

// In-place transform of v[0..n) (n a power of two), no normalization.
SK_HD void fwht_inplace(float* v, int n) {
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) butterfly(v[j], v[j + h]);
    }
  }
}

// float32(1 / sqrt(n)) rounded once from double (exact for n = 16, 64; the same constant the
// Python reference uses).
inline float normalization_factor(int n) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(n))); }

}  // namespace shared_kernels::hadamard
