// Fused INT8 attention forward (SageAttention2 per-block QK, fp16 P.V): the element numerics shared by
// the CPU paths (scalar and AVX-512) and any future GPU kernel, so they produce identical bits.
//
// Per (b, q head h, query row i), key blocks of kBlockK = 64 keys, block jb:
//   s_j   = int8_gemm::dequant(sum_d q8[i, d] * k8[j, d], q_scale[i / block_q], k_scale[jb])   (log2 units)
//   s_j   = s_j + mask[i, j] * kLog2e                (optional additive mask, natural-log units)
//   s_j   = -inf where j > i                         (causal, top-left; blocks with 64 * jb > i skipped)
//   m'    = max(m, max_j s_j)  (NaN propagates),  mu = (m' == -inf ? 0 : m')
//   p_j   = exp2_neg(s_j - mu),  alpha = exp2_neg(m - mu)
//   l     = add_rn(mul_rn(l, alpha), row_sum(p))     (row_sum: fixed tree, see int8_attention.cpp)
//   pv_c  = sum_j fp16(p_j) * v16[j, c]              (j ascending, float32; products are exact),
//           v16[j, c] = fp16(float32(v[j, c]) / v_scale[c])   (v_scale: optional per-channel divisor)
//   acc_c = add_rn(mul_rn(acc_c, alpha), pv_c)
// Finally o_c = (acc_c / l) * v_scale_c and lse2 = m + float(log2(double(l))) (log2 units), o = 0 and
// lse2 = -inf where l == 0 (every key masked).
//
// mul_rn / add_rn are single float32 operations that the compiler may not contract into an FMA
// (the result would depend on the optimiser otherwise).
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#include "shared_kernels/common.h"

namespace shared_kernels::int8_attention {

constexpr int kBlockK = 64;
constexpr float kLog2e = 1.44269504088896340736f;
constexpr float kExp2Min = -125.0f;  // exp2_neg(x) = 0 below (keeps 2^n normal: no subnormal P)

// exp2(f) on [-0.5, 0.5]: degree-6 polynomial fitted for relative error (max 1.1e-7 in float32
// Horner form, i.e. < 2 ulp), c0 = 1.
constexpr float kExp2C1 = 0x1.62e430p-1f;
constexpr float kExp2C2 = 0x1.ebfbdap-3f;
constexpr float kExp2C3 = 0x1.c6aed4p-5f;
constexpr float kExp2C4 = 0x1.3b2dbcp-7f;
constexpr float kExp2C5 = 0x1.5f456ap-10f;
constexpr float kExp2C6 = 0x1.41d334p-13f;

SK_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  float r = a * b;
  __asm__("" : "+x"(r));  // opaque: no FMA contraction across this point
  return r;
#endif
}

SK_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// 2^x for x <= 0 (or NaN): n = rint(x), f = x - n (exact), poly(f) * 2^n; 0 below kExp2Min
// (and for -inf), NaN for NaN.
SK_HD float exp2_neg(float x) {
  if (x != x) return x + x;
  if (!(x >= kExp2Min)) return 0.0f;
  const float n = rintf(x);
  const float f = x - n;
  float p = kExp2C6;
  p = add_rn(mul_rn(p, f), kExp2C5);
  p = add_rn(mul_rn(p, f), kExp2C4);
  p = add_rn(mul_rn(p, f), kExp2C3);
  p = add_rn(mul_rn(p, f), kExp2C2);
  p = add_rn(mul_rn(p, f), kExp2C1);
  p = add_rn(mul_rn(p, f), 1.0f);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return mul_rn(p, scale);
}

// max with NaN propagation (like torch.maximum).
SK_HD float max_nan(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

}  // namespace shared_kernels::int8_attention
