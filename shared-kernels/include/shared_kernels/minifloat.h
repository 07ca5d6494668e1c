// Minifloat codecs (E2M1, E4M3 "fn", E5M2, E8M0) shared by the CPU build and the CUDA kernels.
//
// Encoding from float32 is done on the integer bits, so it is exact and identical on host and
// device (no dependence on the FPU rounding mode, FTZ or fast-math):
//   * RNE: round to nearest, ties to even, on the grid of the target format (subnormals included);
//   * SR : round the magnitude down to the grid, then up iff r < frac * 2^32 (r uniform uint32),
//          so E[decode(encode_sr(v, r))] == v (unbiased; for |v| below 2^-32 grid steps the
//          threshold is truncated, a bias < 2^-32 of one grid step);
//   * saturation ("satfinite"): |v| >= max (including +-inf) encodes to +-max;
//   * NaN: E4M3 / E5M2 encode NaN as the canonical 0x7F (sign dropped: the sign of a NaN produced by
//     x / NaN differs between CPU and GPU); E2M1 has no NaN and encodes NaN as +0 (code 0x0) — the MX
//     and NVFP4 quantizers mark such blocks through their NaN scale instead;
//   * signed zero: the sign of v is kept, so values that round to zero give -0 for negative v.
#pragma once

#include "shared_kernels/common.h"

namespace shared_kernels::minifloat {

// Format descriptors. max_code is the code of the largest finite magnitude.
struct Format {
  int mbits;          // mantissa bits
  int emin;           // exponent of the smallest normal binade (1 - bias)
  int bias;
  uint32_t max_code;  // magnitude code of the largest finite value
  uint32_t max_bits;  // float32 bits of that value
  uint32_t nan_code;  // code for NaN (0 when the format has none)
  int sign_shift;     // bit position of the sign
};

// (Functions rather than constexpr globals: device code cannot reference host globals.)
// E2M1: +-{0, .5, 1, 1.5, 2, 3, 4, 6}
SK_HD Format e2m1() { return Format{1, 0, 1, 0x7u, 0x40C00000u, 0x0u, 3}; }
// E4M3 "fn": bias 7, max 448, no inf, NaN 0x7F / 0xFF
SK_HD Format e4m3() { return Format{3, -6, 7, 0x7Eu, 0x43E00000u, 0x7Fu, 7}; }
// E5M2: bias 15, max 57344, inf 0x7C, NaN 0x7D..0x7F
SK_HD Format e5m2() { return Format{2, -14, 15, 0x7Bu, 0x47600000u, 0x7Fu, 7}; }

SK_HD uint32_t f32_bits(float f) {
  union {
    float f;
    uint32_t u;
  } v{f};
  return v.u;
}

SK_HD float bits_f32(uint32_t u) {
  union {
    uint32_t u;
    float f;
  } v{u};
  return v.f;
}

// 2^k as float32 for k in [-149, 127] (subnormal results included), exactly.
SK_HD float exp2i(int k) {
  if (k >= -126) return bits_f32(static_cast<uint32_t>(k + 127) << 23);
  return bits_f32(1u << (k + 149));
}

// Shared by RNE and SR: |v| (float32 magnitude bits a) on the grid of its binade in the target
// format: |v| / q = m24 / 2^shift with q = 2^(e_grid - mbits). Everything below is branch-free
// (selects only), so the GPU does not diverge and the CPU compiler can vectorize it.
struct GridSplit {
  uint32_t m24;  // float32 significand (implicit bit included for normals)
  int shift;     // dropped bits: |v| / q = m24 / 2^shift, shift >= 23 - mbits
  int e_grid;    // exponent of the target binade, >= emin
};

SK_HD GridSplit grid_split(uint32_t a, Format fmt) {
  const uint32_t ef = a >> 23;
  const bool normal = ef != 0u;  // float32 subnormals: value = mantissa * 2^-149
  const int E = static_cast<int>(normal ? ef : 1u) - 127;
  GridSplit g;
  g.m24 = (a & 0x7FFFFFu) | (normal ? 0x800000u : 0u);
  g.e_grid = E > fmt.emin ? E : fmt.emin;
  g.shift = 23 - fmt.mbits + (g.e_grid - E);
  return g;
}

// Integer multiple n of the grid step of binade e_grid -> magnitude code (carry-over to the next
// binade and subnormal -> normal promotion come out of the addition); then satfinite, sign, NaN.
SK_HD uint32_t finish_code(uint32_t n, const GridSplit& g, uint32_t a, uint32_t u, Format fmt) {
  uint32_t code = (static_cast<uint32_t>(g.e_grid - fmt.emin) << fmt.mbits) + n;
  code = a >= fmt.max_bits ? fmt.max_code : code;  // |v| >= max, +-inf: saturate
  code |= (u >> 31) << fmt.sign_shift;
  return a > 0x7F800000u ? fmt.nan_code : code;
}

// Round-to-nearest-even, satfinite.
SK_HD uint32_t encode_rne(float v, Format fmt) {
  const uint32_t u = f32_bits(v);
  const uint32_t a = u & 0x7FFFFFFFu;
  const GridSplit g = grid_split(a, fmt);
  // shift >= 32 means |v| < 2^-8 of the smallest subnormal step: 31 gives the same result (0)
  const int s = g.shift < 31 ? g.shift : 31;
  uint32_t n = g.m24 >> s;
  const uint32_t rem = g.m24 & ((1u << s) - 1u);
  const uint32_t half = 1u << (s - 1);
  n += static_cast<uint32_t>(rem > half) | (static_cast<uint32_t>(rem == half) & n & 1u);
  return finish_code(n, g, a, u, fmt);
}

// Stochastic rounding with 32 random bits r: round the magnitude down to the grid, then up iff
// r < floor(frac * 2^32) (probability frac; for shift > 32 the truncation biases by < 2^-32 step).
SK_HD uint32_t encode_sr(float v, uint32_t r, Format fmt) {
  const uint32_t u = f32_bits(v);
  const uint32_t a = u & 0x7FFFFFFFu;
  const GridSplit g = grid_split(a, fmt);
  const int s = g.shift < 63 ? g.shift : 63;
  const uint64_t m = g.m24;
  uint32_t n = static_cast<uint32_t>(m >> s);
  const uint64_t rem = m & ((1ull << s) - 1ull);
  const uint64_t threshold = (rem << 32) >> s;  // floor(frac * 2^32); rem < 2^24
  n += static_cast<uint32_t>(static_cast<uint64_t>(r) < threshold);
  return finish_code(n, g, a, u, fmt);
}

// Decode a code (sign at fmt.sign_shift) to float32.
SK_HD float decode(uint32_t c, Format fmt) {
  const uint32_t mag = c & ((1u << fmt.sign_shift) - 1u);
  const bool neg = (c >> fmt.sign_shift) & 1u;
  float r;
  if (fmt.nan_code != 0 && mag == fmt.nan_code) {
    r = bits_f32(0x7FC00000u);
  } else if (fmt.nan_code != 0 && mag > fmt.max_code) {  // E5M2: 0x7C inf, 0x7D..0x7F NaN
    r = mag == fmt.max_code + 1 ? bits_f32(0x7F800000u) : bits_f32(0x7FC00000u);
  } else {
    const uint32_t ef = mag >> fmt.mbits;
    const uint32_t mant = mag & ((1u << fmt.mbits) - 1u);
    const uint32_t sig = ef ? (mant | (1u << fmt.mbits)) : mant;
    const int e = (ef ? static_cast<int>(ef) : 1) - fmt.bias - fmt.mbits;
    r = static_cast<float>(sig) * exp2i(e);  // exact: sig < 2^(mbits+1)
  }
  return neg ? -r : r;
}

SK_HD uint32_t encode_e2m1_rne(float v) { return encode_rne(v, e2m1()); }
SK_HD uint32_t encode_e4m3_rne(float v) { return encode_rne(v, e4m3()); }
SK_HD uint32_t encode_e5m2_rne(float v) { return encode_rne(v, e5m2()); }
SK_HD uint32_t encode_e2m1_sr(float v, uint32_t r) { return encode_sr(v, r, e2m1()); }
SK_HD uint32_t encode_e4m3_sr(float v, uint32_t r) { return encode_sr(v, r, e4m3()); }
SK_HD uint32_t encode_e5m2_sr(float v, uint32_t r) { return encode_sr(v, r, e5m2()); }
SK_HD float decode_e2m1(uint32_t c) { return decode(c & 0xFu, e2m1()); }
SK_HD float decode_e4m3(uint32_t c) { return decode(c & 0xFFu, e4m3()); }
SK_HD float decode_e5m2(uint32_t c) { return decode(c & 0xFFu, e5m2()); }

// E8M0: 2^(e - 127), 0xFF = NaN (no sign, no zero).
SK_HD float decode_e8m0(uint32_t b) {
  b &= 0xFFu;
  if (b == 0xFFu) return bits_f32(0x7FC00000u);
  return exp2i(static_cast<int>(b) - 127);
}

// Input loaders: 0 = float32, 1 = float16, 2 = bfloat16.
SK_HD float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t ef = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  uint32_t out;
  if (ef == 0x1Fu) {
    out = 0x7F800000u | (mant << 13);
  } else if (ef != 0) {
    out = ((ef + 112u) << 23) | (mant << 13);
  } else {
    return bits_f32(sign) + (sign ? -1.0f : 1.0f) * static_cast<float>(mant) * exp2i(-24);
  }
  return bits_f32(sign | out);
}

SK_HD float bf16_bits_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

SK_HD float load_as_f32(const void* p, int64_t i, int dtype) {
  if (dtype == 0) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return dtype == 1 ? f16_bits_to_f32(h) : bf16_bits_to_f32(h);
}

}  // namespace shared_kernels::minifloat
