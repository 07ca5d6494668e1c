// Block-scale rules of OCP MX v1.0 (MXFP4 / MXFP8) and NVIDIA NVFP4, plus the per-element
// quantization step shared by the CPU and CUDA kernels (see reference/microscaling.py).
#pragma once

#include "shared_kernels/common.h"
#include "shared_kernels/minifloat.h"
#include "shared_kernels/philox.h"

namespace shared_kernels::mx {

using minifloat::Format;

// Element formats: 0 = E2M1 (mxfp4 / nvfp4), 1 = E4M3, 2 = E5M2.
SK_HD Format element_format(int elem) {
  return elem == 0 ? minifloat::e2m1() : (elem == 1 ? minifloat::e4m3() : minifloat::e5m2());
}
SK_HD int element_emax(int elem) { return elem == 0 ? 2 : (elem == 1 ? 8 : 15); }
SK_HD uint32_t element_max_mantissa(int elem) { return elem == 0 ? 0x400000u : 0x600000u; }  // 1.5, 1.75

// NaN-propagating |v| max step (a NaN amax stays NaN).
SK_HD float amax_step(float m, float v) {
  const float a = minifloat::bits_f32(minifloat::f32_bits(v) & 0x7FFFFFFFu);  // |v|, as torch.abs
  return (a > m || a != a) ? a : m;
}

// E8M0 byte of a block. scale_rule 0 = floor (OCP: floor(log2 amax) - emax), 1 = truncation-free
// (TetraJet: ceil(log2(amax / max_elem))). floor(log2) is read from the float32 exponent field;
// amax == 0 -> byte 0 (2^-127); e clamped to [-127, 127]; NaN amax -> 0xFF.
SK_HD uint32_t shared_exponent_byte(float amax, int elem, int scale_rule) {
  if (amax != amax) return 0xFFu;
  if (amax == 0.0f) return 0u;
  const uint32_t bits = minifloat::f32_bits(amax);
  int e = static_cast<int>((bits >> 23) & 0xFFu) - 127 - element_emax(elem);
  if (scale_rule == 1 && (bits & 0x7FFFFFu) > element_max_mantissa(elem)) ++e;
  e = e < -127 ? -127 : (e > 127 ? 127 : e);
  return static_cast<uint32_t>(e + 127);
}

// Element code of v = x / scale; rounding 0 = RNE, 1 = stochastic with bits r.
SK_HD uint32_t encode_element(float v, int elem, int rounding, uint32_t r) {
  const Format f = element_format(elem);
  return rounding == 0 ? minifloat::encode_rne(v, f) : minifloat::encode_sr(v, r, f);
}

// A NaN as the canonical quiet NaN 0x7FC00000: NaN payloads out of arithmetic differ between CPU
// (propagates the input NaN) and GPU (0x7FFFFFFF); scales stay bit-identical across backends.
SK_HD float canonical_nan(float v) { return v != v ? minifloat::bits_f32(0x7FC00000u) : v; }

// Float32 group scale amax / divisor (FP8 scales, NVFP4 outer scales), NaN canonical.
SK_HD float amax_scale(float amax, float divisor) { return canonical_nan(amax / divisor); }

// NVFP4 outer scale from an amax (tensor or 128-block): amax / (448 * 6).
SK_HD float nvfp4_outer_scale(float amax) { return amax_scale(amax, 2688.0f); }

// NVFP4 E4M3 block-scale code: E4M3_rne_sat(amax16 / (6 * outer)); a zero outer gives code 0.
SK_HD uint32_t nvfp4_block_scale_code(float amax16, float outer) {
  if (outer == 0.0f) return 0u;
  return minifloat::encode_rne(amax16 / (6.0f * outer), minifloat::e4m3());
}

// The divisor of the elements of an NVFP4 block: decode(block_scale) * outer (0 -> codes 0).
SK_HD float nvfp4_denominator(uint32_t scale_code, float outer) {
  return minifloat::decode(scale_code, minifloat::e4m3()) * outer;
}

// Geometry of x viewed as [B, M, K] with blocks along K (axis -1: B = 1) or along M (axis -2).
struct Geometry {
  int64_t B, M, K;
  bool along_rows;  // axis -2: blocks run down the rows of each column
  // Index into a tensor that has x's shape with the axis size divided by d, of element f.
  SK_HD int64_t index_div(int64_t f, int64_t d) const {
    if (!along_rows) return f / d;
    const int64_t b = f / (M * K), m = (f / K) % M, k = f % K;
    return (b * (M / d) + m / d) * K + k;
  }
  SK_HD int64_t elem_stride() const { return along_rows ? K : 1; }
  SK_HD int64_t axis_len() const { return along_rows ? M : K; }
  // Lines of `len` consecutive elements along the axis: count and first element of line i.
  SK_HD int64_t line_count(int64_t len) const { return B * M * K / len; }
  SK_HD int64_t line_start(int64_t i, int64_t len) const {
    if (!along_rows) return i * len;
    const int64_t k = i % K, seg = (i / K) % (M / len), b = i / (K * (M / len));
    return (b * M + seg * len) * K + k;
  }
};

}  // namespace shared_kernels::mx
