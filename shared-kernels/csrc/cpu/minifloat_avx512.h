// AVX-512 versions of the minifloat codec steps of include/shared_kernels/minifloat.h and
// microscaling.h, 16 float32 lanes at a time, bit-identical to the scalar SK_HD functions:
//   * encode_rne16: minifloat::encode_rne (RNE on the integer bits, subnormals, satfinite, NaN code);
//   * abs_bits16 / amax_bits_range: mx::amax_step as an unsigned max on |x| bits (NaN sorts on top);
//   * pack_e2m1_16: 16 E2M1 codes -> 8 bytes, even lane in the low nibble.
// CPU-only (x86-64 with the SK_TARGET_AVX512 function attribute); the callers pick this path at run
// time with shared_kernels::cpu::avx512_enabled().
#pragma once

#include <cstdint>

#include "cpu/cpu_features.h"
#include "cpu/int8_hadamard_convert.h"
#include "shared_kernels/minifloat.h"

#if SK_HAVE_AVX512_TARGET
#include <immintrin.h>

namespace shared_kernels::cpu::mf16 {

// A minifloat::Format broadcast to 16 lanes (exponents kept biased by 127 like float32's field).
struct Fmt16 {
  __m512i emin_b;      // emin + 127
  __m512i mbits;       // mantissa bits
  __m512i base_shift;  // 23 - mbits
  __m512i max_bits;    // float32 bits of the largest finite value
  __m512i max_code;
  __m512i nan_code;
  __m512i sign_shift;
};

SK_TARGET_AVX512 inline Fmt16 make_fmt16(const minifloat::Format& f) {
  Fmt16 r;
  r.emin_b = _mm512_set1_epi32(f.emin + 127);
  r.mbits = _mm512_set1_epi32(f.mbits);
  r.base_shift = _mm512_set1_epi32(23 - f.mbits);
  r.max_bits = _mm512_set1_epi32(static_cast<int>(f.max_bits));
  r.max_code = _mm512_set1_epi32(static_cast<int>(f.max_code));
  r.nan_code = _mm512_set1_epi32(static_cast<int>(f.nan_code));
  r.sign_shift = _mm512_set1_epi32(f.sign_shift);
  return r;
}

// minifloat::encode_rne of 16 lanes; codes in the low byte of each 32-bit lane.
SK_TARGET_AVX512 inline __m512i encode_rne16(__m512 v, const Fmt16& f) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i u = _mm512_castps_si512(v);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i ef = _mm512_srli_epi32(a, 23);
  const __mmask16 normal = _mm512_test_epi32_mask(ef, ef);
  const __m512i eb = _mm512_mask_mov_epi32(one, normal, ef);  // E + 127 (float32 subnormals: E = -126)
  __m512i m24 = _mm512_and_si512(a, _mm512_set1_epi32(0x7FFFFF));
  m24 = _mm512_mask_or_epi32(m24, normal, m24, _mm512_set1_epi32(0x800000));
  const __m512i egb = _mm512_max_epi32(eb, f.emin_b);  // e_grid + 127
  const __m512i shift = _mm512_add_epi32(f.base_shift, _mm512_sub_epi32(egb, eb));
  const __m512i s = _mm512_min_epu32(shift, _mm512_set1_epi32(31));
  __m512i n = _mm512_srlv_epi32(m24, s);
  const __m512i rem = _mm512_and_si512(m24, _mm512_sub_epi32(_mm512_sllv_epi32(one, s), one));
  const __m512i half = _mm512_sllv_epi32(one, _mm512_sub_epi32(s, one));
  const __mmask16 up = _mm512_cmpgt_epu32_mask(rem, half) |
                       (_mm512_cmpeq_epi32_mask(rem, half) & _mm512_test_epi32_mask(n, one));
  n = _mm512_mask_add_epi32(n, up, n, one);
  __m512i code = _mm512_add_epi32(_mm512_sllv_epi32(_mm512_sub_epi32(egb, f.emin_b), f.mbits), n);
  code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epu32_mask(a, f.max_bits), f.max_code);
  code = _mm512_or_si512(code, _mm512_sllv_epi32(_mm512_srli_epi32(u, 31), f.sign_shift));
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
