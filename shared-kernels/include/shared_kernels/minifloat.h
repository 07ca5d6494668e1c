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

// Shared by RNE and SR: the magnitude as n_floor * q + rem / 2^s * q, where q is the grid step of
// the binade of |v| in the target format. Returns false for zero-like input handled by caller.
struct GridSplit {
  uint32_t n;      // floor(|v| / q)
  uint32_t rem;    // remainder bits (valid when shift <= 31)
  int shift;       // number of dropped bits s (|v| / q = (m24 >> s) + rem / 2^s)
  uint32_t m24;    // float32 significand with the implicit bit
  int e_grid;      // exponent of the target binade, >= emin
};

SK_HD GridSplit grid_split(uint32_t a, Format fmt) {
  // a: float32 magnitude bits, finite, below the format max.
  int E = static_cast<int>(a >> 23) - 127;
  uint32_t m24 = (a & 0x7FFFFFu) | 0x800000u;
  if ((a >> 23) == 0) {  // float32 subnormal: value = mantissa * 2^-149
    E = -126;
    m24 = a & 0x7FFFFFu;
  }
  const int eg = E > fmt.emin ? E : fmt.emin;
  const int s = 23 - fmt.mbits + (eg - E);  // >= 23 - mbits > 0
  GridSplit g;
  g.m24 = m24;
  g.shift = s;
  g.e_grid = eg;
  if (s >= 32) {
    g.n = 0;
    g.rem = 0;  // unused: callers handle s >= 32 from m24
  } else {
    g.n = m24 >> s;
    g.rem = m24 & ((1u << s) - 1u);
  }
  return g;
}

// Integer multiple n of the grid step of binade e_grid -> magnitude code (carry-over to the next
// binade and subnormal -> normal promotion come out of the addition).
SK_HD uint32_t grid_to_code(uint32_t n, int e_grid, Format fmt) {
  return (static_cast<uint32_t>(e_grid - fmt.emin) << fmt.mbits) + n;
}

// Round-to-nearest-even, satfinite.
SK_HD uint32_t encode_rne(float v, Format fmt) {
  const uint32_t u = f32_bits(v);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return fmt.nan_code;
  const uint32_t sign = (u >> 31) << fmt.sign_shift;
  if (a >= fmt.max_bits) return sign | fmt.max_code;
  const GridSplit g = grid_split(a, fmt);
  uint32_t n;
  if (g.shift >= 32) {
    n = 0;  // far below half the smallest subnormal
  } else {
    n = g.n;
    const uint32_t half = 1u << (g.shift - 1);
    // branch-free: the comparison outcomes are data dependent (random for real data)
    n += static_cast<uint32_t>(g.rem > half) | (static_cast<uint32_t>(g.rem == half) & n & 1u);
  }
  return sign | grid_to_code(n, g.e_grid, fmt);
}

// Stochastic rounding with 32 random bits r: round up with probability frac (= r < frac * 2^32).
SK_HD uint32_t encode_sr(float v, uint32_t r, Format fmt) {
  const uint32_t u = f32_bits(v);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return fmt.nan_code;
  const uint32_t sign = (u >> 31) << fmt.sign_shift;
  if (a >= fmt.max_bits) return sign | fmt.max_code;
  const GridSplit g = grid_split(a, fmt);
  uint32_t n = g.n;
  uint64_t threshold;  // floor(frac * 2^32)
  if (g.shift <= 32) {
    const uint64_t rem = g.shift == 32 ? g.m24 : g.rem;
    threshold = rem << (32 - g.shift);
  } else {
    threshold = g.shift - 32 >= 24 ? 0 : (g.m24 >> (g.shift - 32));
  }
  n += static_cast<uint32_t>(static_cast<uint64_t>(r) < threshold);
  return sign | grid_to_code(n, g.e_grid, fmt);
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
