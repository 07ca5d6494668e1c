// fp16 / bf16 <-> fp32 conversions for the CPU kernels of int8 quantization and Hadamard transform:
// scalar versions bit-identical to the AVX-512 ones (round to nearest even; NaNs stay NaN, quieted,
// sign kept, payload truncated like F16C's vcvtps2ph).
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/cpu_features.h"

#if SK_HAVE_AVX512_TARGET
#include <immintrin.h>
#endif

namespace shared_kernels::cpu::conv {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0x1f) return bits_to_float(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u));
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-08f;  // m * 2^-24, exact
    return bits_to_float(sign | float_to_bits(v));
  }
  return bits_to_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax >= 0x38800000u) {                                              // normal half
    uint32_t r = ax - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  if (ax <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25 rounds to zero
  const uint32_t e = ax >> 23;
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // value in units of 2^-24 is m >> shift
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

inline float bf16_to_f32(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

template <int DT>
inline float load(const void* p, int64_t i) {
  if constexpr (DT == kFloat32) return static_cast<const float*>(p)[i];
  else if constexpr (DT == kFloat16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

template <int DT>
inline void store(void* p, int64_t i, float v) {
  if constexpr (DT == kFloat32) static_cast<float*>(p)[i] = v;
  else if constexpr (DT == kFloat16) static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}

#if SK_HAVE_AVX512_TARGET
// 16 lanes from p[i..i+16) under mask m (masked-off lanes read as 0.0f).
template <int DT>
SK_TARGET_AVX512 inline __m512 load16(const void* p, int64_t i, __mmask16 m) {
  if constexpr (DT == kFloat32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i);
    if constexpr (DT == kFloat16) {
      return _mm512_cvtph_ps(h);
    } else {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
}

// Store 16 lanes to p[i..i+16) under mask m, rounding to nearest even like f32_to_f16/f32_to_bf16.
template <int DT>
SK_TARGET_AVX512 inline void store16(void* p, int64_t i, __m512 v, __mmask16 m) {
  if constexpr (DT == kFloat32) {
    _mm512_mask_storeu_ps(static_cast<float*>(p) + i, m, v);
  } else if constexpr (DT == kFloat16) {
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, m, h);
  } else {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __m512i nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i r = _mm512_mask_blend_epi32(is_nan, rounded, nan);
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, m, _mm512_cvtepi32_epi16(r));
  }
}

SK_TARGET_AVX512 inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << remaining) - 1u);
}
#endif

}  // namespace shared_kernels::cpu::conv
