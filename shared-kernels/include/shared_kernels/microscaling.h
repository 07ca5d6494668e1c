// Block-scale rules of OCP MX v1.0 (MXFP4 / MXFP8) and NVIDIA NVFP4, plus the per-element
// quantization step shared by the CPU and CUDA kernels (see reference/microscaling.py).
#pragma once

#include "shared_kernels/common.h"
#include "shared_kernels/minifloat.h"
#include "shared_kernels/philox.h"

#if defined(__CUDACC__)
#define SK_UNROLL _Pragma("unroll")
#else
#define SK_UNROLL
#endif

namespace shared_kernels::mx {

using minifloat::Format;

// Element formats: 0 = E2M1 (mxfp4 / nvfp4), 1 = E4M3, 2 = E5M2.
SK_HD Format element_format(int elem) {
  return elem == 0 ? minifloat::e2m1() : (elem == 1 ? minifloat::e4m3() : minifloat::e5m2());
}
SK_HD int element_emax(int elem) { return elem == 0 ? 2 : (elem == 1 ? 8 : 15); }
SK_HD uint32_t element_max_mantissa(int elem) { return elem == 0 ? 0x400000u : 0x600000u; }  // 1.5, 1.75

// NaN-propagating |v| max step on the float bits: for non-negative floats the uint32 order is the
// float order and every NaN sorts above +inf, so an integer max is a branch-free amax that keeps
// NaN (m must come from a previous step or be +0).
SK_HD float amax_step(float m, float v) {
  const uint32_t a = minifloat::f32_bits(v) & 0x7FFFFFFFu;  // |v|, as torch.abs
  const uint32_t mb = minifloat::f32_bits(m);
  return minifloat::bits_f32(a > mb ? a : mb);
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


// ---- per-line bodies: the CPU loops and the CUDA kernels (one thread per line) both call these --

// MX: quantize line `line` of 32 elements (scale byte + 32 codes). The CPU build calls it with
// compile-time elem / rounding / dtype, so the codec folds to straight-line code.
SK_HD void mx_quantize_line(const void* x, int dtype, const Geometry& g, int64_t line, int elem, int scale_rule,
                            int rounding, uint64_t seed, int64_t offset, uint8_t* data, uint8_t* scales) {
  const int64_t f0 = g.line_start(line, 32);
  const int64_t es = g.elem_stride();
  float v[32];
  float amax = 0.0f;
  SK_UNROLL
  for (int j = 0; j < 32; ++j) {
    v[j] = minifloat::load_as_f32(x, f0 + j * es, dtype);
    amax = amax_step(amax, v[j]);
  }
  const uint32_t sbyte = shared_exponent_byte(amax, elem, scale_rule);
  scales[g.index_div(f0, 32)] = static_cast<uint8_t>(sbyte);
  // x / 2^e == x * 2^-e exactly (both are the correctly rounded x * 2^-e; NaN stays NaN)
  const float inv_scale = 1.0f / minifloat::decode_e8m0(sbyte);
  philox::Stream rng(seed);
  if (elem == 0) {
    const int64_t b0 = g.index_div(f0, 2);
    SK_UNROLL
    for (int p = 0; p < 16; ++p) {
      const uint32_t r0 = rounding ? rng.at(static_cast<uint64_t>(offset + f0 + (2 * p) * es)) : 0u;
      const uint32_t r1 = rounding ? rng.at(static_cast<uint64_t>(offset + f0 + (2 * p + 1) * es)) : 0u;
      const uint32_t lo = encode_element(v[2 * p] * inv_scale, 0, rounding, r0);
      const uint32_t hi = encode_element(v[2 * p + 1] * inv_scale, 0, rounding, r1);
      data[b0 + p * es] = static_cast<uint8_t>(lo | (hi << 4));
    }
  } else {
    SK_UNROLL
    for (int j = 0; j < 32; ++j) {
      const uint32_t r = rounding ? rng.at(static_cast<uint64_t>(offset + f0 + j * es)) : 0u;
      data[f0 + j * es] = static_cast<uint8_t>(encode_element(v[j] * inv_scale, elem, rounding, r));
    }
  }
}

// amax of |x| over line `line` of `len` elements along the axis.
SK_HD float line_amax(const void* x, int dtype, const Geometry& g, int64_t line, int64_t len) {
  const int64_t f0 = g.line_start(line, len);
  const int64_t es = g.elem_stride();
  float a = 0.0f;
  for (int64_t j = 0; j < len; ++j) a = amax_step(a, minifloat::load_as_f32(x, f0 + j * es, dtype));
  return a;
}

// NVFP4 outer scale of 128-line `line` into its slot of the outer tensor.
SK_HD void nvfp4_outer128_line(const void* x, int dtype, const Geometry& g, int64_t line, float* outer) {
  outer[g.index_div(g.line_start(line, 128), 128)] = nvfp4_outer_scale(line_amax(x, dtype, g, line, 128));
}

// NVFP4: quantize 16-line `line` (E4M3 block-scale code + 8 packed bytes). outer_mode 0 = tensor
// (outer[0]), 1 = block128 (outer per 128-line), 2 = none (1).
SK_HD void nvfp4_quantize_line(const void* x, int dtype, const Geometry& g, int64_t line, int outer_mode,
                               const float* outer, int rounding, uint64_t seed, int64_t offset, uint8_t* data,
                               uint8_t* scales) {
  const int64_t f0 = g.line_start(line, 16);
  const int64_t es = g.elem_stride();
  float v[16];
  float amax = 0.0f;
  SK_UNROLL
  for (int j = 0; j < 16; ++j) {
    v[j] = minifloat::load_as_f32(x, f0 + j * es, dtype);
    amax = amax_step(amax, v[j]);
  }
  const float outer_scale = outer_mode == 2 ? 1.0f : outer[outer_mode == 1 ? g.index_div(f0, 128) : 0];
  const uint32_t sc = nvfp4_block_scale_code(amax, outer_scale);
  scales[g.index_div(f0, 16)] = static_cast<uint8_t>(sc);
  const float denom = nvfp4_denominator(sc, outer_scale);
  philox::Stream rng(seed);
  const int64_t b0 = g.index_div(f0, 2);
  SK_UNROLL
  for (int p = 0; p < 8; ++p) {
    uint32_t lo = 0u, hi = 0u;
    if (denom != 0.0f) {
      const uint32_t r0 = rounding ? rng.at(static_cast<uint64_t>(offset + f0 + (2 * p) * es)) : 0u;
      const uint32_t r1 = rounding ? rng.at(static_cast<uint64_t>(offset + f0 + (2 * p + 1) * es)) : 0u;
      lo = encode_element(v[2 * p] / denom, 0, rounding, r0);
      hi = encode_element(v[2 * p + 1] / denom, 0, rounding, r1);
    }
    data[b0 + p * es] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

}  // namespace shared_kernels::mx
