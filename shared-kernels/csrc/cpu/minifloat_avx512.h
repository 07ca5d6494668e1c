// AVX-512 versions of the minifloat codec steps of include/shared_kernels/minifloat.h and
// microscaling.h, 16 float32 lanes at a time, bit-identical to the scalar SK_HD functions:
//   * encode_rne16: minifloat::encode_rne (RNE, subnormals, satfinite, NaN code);
//   * abs_bits16 / amax_bits_range: mx::amax_step as an unsigned max on |x| bits (NaN sorts on top);
//   * pack_e2m1_16: 16 E2M1 codes -> 8 bytes, even lane in the low nibble.
// CPU-only (x86-64 with the SK_TARGET_AVX512 function attribute); the callers pick this path at run
// time with shared_kernels::cpu::avx512_enabled().
#pragma once

#include <cstdint>

#include "cpu/cpu_features.h"
#include "cpu/int8_hadamard_convert.h"
#include "shared_kernels/microscaling.h"
#include "shared_kernels/minifloat.h"

#if SK_HAVE_AVX512_TARGET
#include <immintrin.h>

namespace shared_kernels::cpu::mf16 {

// A minifloat::Format broadcast to 16 lanes, in the form encode_rne16 uses.
struct Fmt16 {
  __m128i shift;          // s0 = 23 - mbits: dropped float32 mantissa bits in the normal range
  __m512i half_m1;        // 2^(s0 - 1) - 1
  __m512i code_offset;    // (126 + emin) << mbits: float32 bits >> s0 minus this = code (normal range)
  __m512i min_normal;     // float32 bits of 2^emin
  __m512 sub_scale;       // 2^(mbits - emin): |v| below 2^emin in units of the subnormal grid step
  __m512i max_bits;       // float32 bits of the largest finite value
  __m512i max_code;
  __m512i nan_code;
  __m512i sign_rshift;    // 31 - sign_shift
  __m512i sign_bit;       // 1 << sign_shift
};

SK_TARGET_AVX512 inline Fmt16 make_fmt16(const minifloat::Format& f) {
  Fmt16 r;
  r.shift = _mm_cvtsi32_si128(23 - f.mbits);
  r.half_m1 = _mm512_set1_epi32((1 << (22 - f.mbits)) - 1);
  r.code_offset = _mm512_set1_epi32((126 + f.emin) << f.mbits);
  r.min_normal = _mm512_set1_epi32((f.emin + 127) << 23);
  r.sub_scale = _mm512_set1_ps(minifloat::exp2i(f.mbits - f.emin));
  r.max_bits = _mm512_set1_epi32(static_cast<int>(f.max_bits));
  r.max_code = _mm512_set1_epi32(static_cast<int>(f.max_code));
  r.nan_code = _mm512_set1_epi32(static_cast<int>(f.nan_code));
  r.sign_rshift = _mm512_set1_epi32(31 - f.sign_shift);
  r.sign_bit = _mm512_set1_epi32(1 << f.sign_shift);
  return r;
}

// minifloat::encode_rne of 16 lanes; codes in the low byte of each 32-bit lane. Same result as the
// scalar grid_split / shift form, computed in two ranges (both exact, no MXCSR dependence):
//   * |v| >= 2^emin (normal in the target): RNE on the float32 bits with the fixed shift s0, the
//     carry into the exponent field gives the next binade; code = (rounded bits >> s0) - offset;
//   * |v| <  2^emin: n = RNE(|v| * 2^(mbits - emin)) (exact power-of-two scaling, then the
//     convert with embedded round-to-nearest-even); n = 2^mbits is the smallest normal's code.
//     Float32 subnormals give 0 here with or without DAZ / FTZ, as in the scalar code.
SK_TARGET_AVX512 inline __m512i encode_rne16(__m512 v, const Fmt16& f) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i lsb = _mm512_and_si512(_mm512_srl_epi32(a, f.shift), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(a, f.half_m1), lsb);
  const __m512i code_n = _mm512_sub_epi32(_mm512_srl_epi32(rounded, f.shift), f.code_offset);
  const __m512 scaled = _mm512_mul_ps(_mm512_castsi512_ps(a), f.sub_scale);
  const __m512i code_s = _mm512_cvt_roundps_epi32(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512i code = _mm512_mask_blend_epi32(_mm512_cmplt_epu32_mask(a, f.min_normal), code_n, code_s);
  code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epu32_mask(a, f.max_bits), f.max_code);
  code = _mm512_or_si512(code, _mm512_and_si512(_mm512_srlv_epi32(u, f.sign_rshift), f.sign_bit));
  return _mm512_mask_mov_epi32(code, _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7F800000)), f.nan_code);
}

// |v| as float32 bits (the operand of mx::amax_step's unsigned max).
SK_TARGET_AVX512 inline __m512i abs_bits16(__m512 v) {
  return _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
}

// Bits of mx::amax_step folded over the contiguous elements [i0, i1) of x (dtype DT), from +0.
template <int DT>
SK_TARGET_AVX512 inline uint32_t amax_bits_range(const void* x, int64_t i0, int64_t i1) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  int64_t i = i0;
  for (; i + 32 <= i1; i += 32) {
    acc0 = _mm512_max_epu32(acc0, abs_bits16(conv::load16<DT>(x, i, 0xFFFF)));
    acc1 = _mm512_max_epu32(acc1, abs_bits16(conv::load16<DT>(x, i + 16, 0xFFFF)));
  }
  for (; i < i1; i += 16) acc0 = _mm512_max_epu32(acc0, abs_bits16(conv::load16<DT>(x, i, conv::tail_mask(i1 - i))));
  return _mm512_reduce_max_epu32(_mm512_max_epu32(acc0, acc1));
}

// mx::shared_exponent_byte of 16 amax lanes given as float32 bits (sign clear).
SK_TARGET_AVX512 inline __m512i shared_exponent_byte16(__m512i a, int elem, int scale_rule) {
  const __m512i one = _mm512_set1_epi32(1);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(a, 23), _mm512_set1_epi32(127 + mx::element_emax(elem)));
  if (scale_rule == 1) {
    const __m512i mant = _mm512_and_si512(a, _mm512_set1_epi32(0x7FFFFF));
    const __mmask16 up = _mm512_cmpgt_epu32_mask(mant, _mm512_set1_epi32(static_cast<int>(mx::element_max_mantissa(elem))));
    e = _mm512_mask_add_epi32(e, up, e, one);
  }
  e = _mm512_min_epi32(_mm512_max_epi32(e, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
  __m512i b = _mm512_maskz_mov_epi32(_mm512_test_epi32_mask(a, a), _mm512_add_epi32(e, _mm512_set1_epi32(127)));
  return _mm512_mask_mov_epi32(b, _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7F800000)), _mm512_set1_epi32(0xFF));
}

// minifloat::decode_e8m0 of 16 bytes (one per lane).
SK_TARGET_AVX512 inline __m512 decode_e8m0_16(__m512i b) {
  __m512i bits = _mm512_slli_epi32(b, 23);
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(b, _mm512_setzero_si512()), _mm512_set1_epi32(0x00400000));
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(b, _mm512_set1_epi32(0xFF)), _mm512_set1_epi32(0x7FC00000));
  return _mm512_castsi512_ps(bits);
}

// minifloat::decode of 16 non-negative E4M3 codes (0 .. 0x7F), one per lane.
SK_TARGET_AVX512 inline __m512 decode_e4m3_pos16(__m512i c) {
  const __m512i ef = _mm512_srli_epi32(c, 3);
  const __m512i mant = _mm512_and_si512(c, _mm512_set1_epi32(7));
  const __m512i normal = _mm512_or_si512(_mm512_slli_epi32(_mm512_add_epi32(ef, _mm512_set1_epi32(120)), 23),
                                         _mm512_slli_epi32(mant, 20));
  const __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(mant), _mm512_set1_ps(minifloat::exp2i(-9)));  // exact
  __m512 r = _mm512_mask_blend_ps(_mm512_test_epi32_mask(ef, ef), sub, _mm512_castsi512_ps(normal));
  return _mm512_mask_mov_ps(r, _mm512_cmpeq_epi32_mask(c, _mm512_set1_epi32(0x7F)),
                            _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
}

// Store 16 E2M1 codes (< 16 each) as 8 bytes: byte p = code[2p] | code[2p + 1] << 4.
SK_TARGET_AVX512 inline void pack_e2m1_16(uint8_t* dst, __m512i codes) {
  const __m512i t = _mm512_or_si512(codes, _mm512_srli_epi64(codes, 28));
  _mm512_mask_cvtepi64_storeu_epi8(dst, 0xFF, t);
}

// Store the low bytes of 16 lanes under mask m.
SK_TARGET_AVX512 inline void store_bytes16(uint8_t* dst, __mmask16 m, __m512i codes) {
  _mm512_mask_cvtepi32_storeu_epi8(dst, m, codes);
}

}  // namespace shared_kernels::cpu::mf16
#endif
