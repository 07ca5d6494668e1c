// INT8 per-block quantization (SageAttention's Q/K quantizer): numerics shared by the CPU build and
// the CUDA kernels, so the CPU tests check the very code the GPU runs.
//
//   y     = (float32(x) - mean) * multiplier          (without mean: float32(x) * multiplier)
//   amax  = max |y| over the block
//   scale = amax / 127                                 (NaN when amax is inf/NaN)
//   q     = clamp(trunc(y / scale + copysign(0.5, y)), -127, 127)   (0 when scale is 0 or NaN)
#pragma once

#include <math.h>

#include <cfloat>
#include <cstdint>
#include <limits>

#include "shared_kernels/common.h"

namespace shared_kernels::int8 {

// Element transform applied before the block statistics; float32 ops in this order.
SK_HD float transform(float x, float mean, float multiplier) { return (x - mean) * multiplier; }
SK_HD float transform(float x, float multiplier) { return x * multiplier; }

// True for finite values (false for +-inf and NaN).
SK_HD bool is_finite(float a) { return fabsf(a) <= FLT_MAX; }

// Block scale from the block's max |y| (amax >= 0, or NaN): non-finite amax gives a quiet NaN.
SK_HD float scale_from_amax(float amax, bool any_non_finite) {
  if (any_non_finite || !is_finite(amax)) return std::numeric_limits<float>::quiet_NaN();
  return amax / 127.0f;
}

// Round half away from zero (trunc(v + copysign(0.5, v))), clamped to [-127, 127]; a zero or NaN
// scale gives 0.
SK_HD int8_t quantize(float y, float scale) {
  if (!(scale > 0.0f)) return 0;
  float v = truncf(y / scale + copysignf(0.5f, y));
  v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
  return static_cast<int8_t>(static_cast<int>(v));
}

}  // namespace shared_kernels::int8
