// SageAttention2 forward on mma.sync: INT8 Q.K^T with per-thread scales, online exp2 softmax, and P.V in
// FP16 (m16n8k16) or FP8 e4m3 (m16n8k32, sm89+) with one of upstream's five accumulation modes (below).
// Scale-group layout and launcher contract: include/shared_kernels/sage_attention.h; maths:
// shared_kernels/reference/sage_attention.py.
//
// One CTA of 4 warps per (64-query tile, q head, batch); each warp owns 16 query rows and keeps its Q
// fragments in registers. Per 64-key block: K (int8) and V are staged through shared memory (zero-filled
// past Nk), each warp computes its 16 x 64 int32 scores with 2 * D / 32 * 8 IMMA, dequantizes them with
// its lane's single q_scale * k_scale product (the point of per-thread groups), masks padded keys and
// (top-left) causal keys with -inf, updates the running max / sum in the log2 domain and multiplies P by V.
//  - FP16 PV: P -> fp16 straight from the score fragment (the C layout of m16n8 equals the A layout of
//    m16n8k16), V fragments with ldmatrix.trans, fp32 accumulators.
//  - FP8 PV: P is scaled to [0, 448] by adding log2(448) to the exponent and rounded to e4m3; the 32 keys
//    of an m16n8k32 A fragment are the lane's score columns in a permuted order, so V is transposed into
//    shared memory in that same key order. Each 64-key block is summed in a fresh accumulator (2 MMAs)
//    and then added to the fp32 output accumulator (two-level accumulation: on sm89 the QMMA
//    accumulator is not a full fp32 adder, the running sum is).
// P.V accumulation modes (template parameter kMode, the op's pv_accum; upstream's pv_accum_dtype):
//    kPvF16F32acc   "fp32"       fp16 MMA accumulating straight into the fp32 output registers
//    kPvF8F32F32    "fp32+fp32"  FP8 MMA, fresh f32 accumulator per 64-key block, added into fp32
//    kPvF8F32F16    "fp32+fp16"  FP8 MMA with an f16 accumulator per 64-key block (m16n8k32 .f16.e4m3
//                                .e4m3.f16, PTX ISA 8.7, sm89+; SageAttention2++), added into fp32
//    kPvF16F16F32   "fp16+fp32"  fp16 MMA with an f16 accumulator per 64-key block (m16n8k16 .f16.f16
//                                .f16.f16), added into fp32
//    kPvF16F16      "fp16"       fp16 MMA accumulating into f16 output registers (rescaled by alpha in
//                                fp32 and rounded back to f16: fp16(o * alpha), then the MMAs)
//    The per-block f16 accumulators need k-outer / n-inner loops swapped (n-outer): the P fragments of
//    the whole block are packed first (16 words) and each output tile's block sum is finished before the
//    next, so only one tile pair of f16 partials is live.
// INT4 Q.K^T (SageAttention2's 4-bit option, launch_sage_attention_fwd_int4): the same body with kInt4 =
// true. Q and K are packed two signed nibbles per byte (element 2i in the low nibble of byte i), so a row
// is D/2 bytes and one m16n8k64 s4 MMA covers 64 channels: its A/B fragments hold, per lane, the same byte
// offsets (4t, 4t + 16 of each 32-byte step) as the m16n8k32 s8 fragments, and its C fragment is the same,
// so the per-thread scale layout is unchanged. An optional float32 bias row (the exact mean(Q_blk).K^T
// correction of Q smoothing, log2 domain) is added to the scores of every bias_rows query rows.
// Plain (synchronous) loads, no cp.async / double buffering: a correct first slice, not tuned.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <stdexcept>

#include "cuda/cuda_utils.cuh"
#include "shared_kernels/sage_attention.h"

namespace shared_kernels::cuda {
namespace {

namespace sa = shared_kernels::sage_attention;

constexpr int kThreads = 128;         // 4 warps
constexpr int kBlockM = 64;           // query rows per CTA, 16 per warp
constexpr int kBlockN = sa::kBlockK;  // keys per block
constexpr int kNT = kBlockN / 8;      // n8 score tiles per warp and block
constexpr int kVtStride = kBlockN + 16;  // bytes per row of the transposed fp8 V tile (20 words)
constexpr float kLn2 = 0.6931471805599453f;

// P.V modes (the launcher's pv_mode code; see the header comment)
constexpr int kPvF16F32acc = 0;  // fp16 PV, "fp32"
constexpr int kPvF8F32F32 = 1;   // fp8 PV, "fp32+fp32"
constexpr int kPvF8F32F16 = 2;   // fp8 PV, "fp32+fp16" (SageAttention2++)
constexpr int kPvF16F16F32 = 3;  // fp16 PV, "fp16+fp32"
constexpr int kPvF16F16 = 4;     // fp16 PV, "fp16"
constexpr bool pv_is_fp8(int mode) { return mode == kPvF8F32F32 || mode == kPvF8F32F16; }

template <int RB>
constexpr int k_stride() { return RB + 16; }  // K row of RB bytes in smem: int8 20 / 36 words, int4 12 / 20
                                              // words (D = 64 / 128): conflict-free fragment reads
template <int D>
constexpr int v_stride() { return 2 * D + 16; }  // fp16 V row: 9 / 17 x 16 bytes (odd: ldmatrix conflict-free)

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t ldg32(const int8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_s4(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// f16 accumulator (two f16x2 words: row g cols 2t, 2t+1; row g + 8 the same): D = A.B + C
__device__ __forceinline__ void mma_f16_f16acc(uint32_t (&c)[2], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16 {%0,%1}, {%2,%3,%4,%5}, {%6,%7}, {%0,%1};\n"
      : "+r"(c[0]), "+r"(c[1])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_e4m3_f16acc(uint32_t (&c)[2], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f16.e4m3.e4m3.f16 {%0,%1}, {%2,%3,%4,%5}, {%6,%7}, {%0,%1};\n"
      : "+r"(c[0]), "+r"(c[1])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched: the launcher refuses FP8 PV below sm89
#endif
}

__device__ __forceinline__ void mma_e4m3(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched: the launcher refuses FP8 PV below sm89
#endif
}

// Four 8x8 b16 matrices, transposed: lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint8_t* p) {
  const auto a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);  // .x (lo) in the low 16 bits
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Four floats -> four e4m3 bytes, x0 in the lowest byte (round to nearest even, saturate to +-448).
__device__ __forceinline__ uint32_t pack_e4m3x4(float x0, float x1, float x2, float x3) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(x2, x3), __NV_SATFINITE, __NV_E4M3);
  return (lo & 0xffffu) | (hi << 16);
}

__device__ __forceinline__ float2 unpack_half2(uint32_t w) {
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}

// fp16(fp16x2 * alpha) with the product in fp32 (the "fp16" mode's rescale of its f16 accumulator)
__device__ __forceinline__ uint32_t scale_half2(uint32_t w, float alpha) {
  const float2 f = unpack_half2(w);
  return pack_half2(f.x * alpha, f.y * alpha);
}

__device__ __forceinline__ void store_pair(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// Slot of key kk (0..63 inside a block) in the transposed fp8 V tile: inside every 32 keys, the 16-key
// half h holds, for lane t, its score columns 2t, 2t+1 (first n8 tile) then 8+2t, 9+2t (second n8 tile) in
// the k positions 4t..4t+3 of the m16n8k32 A fragment.
__device__ __forceinline__ int fp8_slot(int kk) {
  const int c = kk >> 5, h = (kk >> 4) & 1, r = kk & 15, col = r & 7;
  return c * 32 + h * 16 + 4 * (col >> 1) + 2 * (r >> 3) + (col & 1);
}

template <int RB>  // bytes per K row: D (int8) or D / 2 (packed int4)
__device__ __forceinline__ void load_k_tile(uint8_t* __restrict__ s, const int8_t* __restrict__ kh, int64_t Nk,
                                            int64_t k0) {
  constexpr int kChunks = RB / 16;
#pragma unroll
  for (int c = threadIdx.x; c < kBlockN * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 16;
    const int64_t key = k0 + r;
    int4 v = make_int4(0, 0, 0, 0);
    if (key < Nk) v = *reinterpret_cast<const int4*>(kh + key * RB + col);
    *reinterpret_cast<int4*>(s + r * k_stride<RB>() + col) = v;
  }
}

template <int D>
__device__ __forceinline__ void load_v_tile_f16(uint8_t* __restrict__ s, const __half* __restrict__ vh, int64_t Nk,
                                                int64_t k0) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int c = threadIdx.x; c < kBlockN * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const int64_t key = k0 + r;
    int4 v = make_int4(0, 0, 0, 0);
    if (key < Nk) v = *reinterpret_cast<const int4*>(vh + key * D + col);
    *reinterpret_cast<int4*>(s + r * v_stride<D>() + col * 2) = v;
  }
}

// fp8 V [64 keys][D] -> shared [D][kVtStride] in fp8_slot order, zeros past Nk.
template <int D>
__device__ __forceinline__ void load_v_tile_f8(uint8_t* __restrict__ s, const uint8_t* __restrict__ vh, int64_t Nk,
                                               int64_t k0) {
  constexpr int kChunks = D / 16;
#pragma unroll
  for (int c = threadIdx.x; c < kBlockN * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 16;
    const int64_t key = k0 + r;
    uint32_t w[4] = {0u, 0u, 0u, 0u};
    if (key < Nk) {
      const uint4 v = *reinterpret_cast<const uint4*>(vh + key * D + col);
      w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;  // clang-format: keep
    }
    uint8_t* dst = s + fp8_slot(r);
#pragma unroll
    for (int e = 0; e < 16; ++e) dst[(col + e) * kVtStride] = static_cast<uint8_t>(w[e >> 2] >> (8 * (e & 3)));
  }
}

template <int D, int kMode, typename OutT, bool kInt4 = false>
__device__ __forceinline__ void attn_fwd_body(const int8_t* __restrict__ q, const int8_t* __restrict__ k,
                                              const void* __restrict__ v, const float* __restrict__ qs,
                                              const float* __restrict__ ks, const float* __restrict__ vs,
                                              OutT* __restrict__ out, float* __restrict__ lse, int64_t Hq,
                                              int64_t Hkv, int64_t Nq, int64_t Nk, int64_t qs_len, int64_t ks_len,
                                              int64_t warp_q, bool causal, const float* __restrict__ bias = nullptr,
                                              int64_t bias_rows = 0) {
  constexpr bool kFp8 = pv_is_fp8(kMode);
  constexpr bool kF16Out = kMode == kPvF16F16;  // output accumulator in f16 registers
  constexpr int RB = kInt4 ? D / 2 : D;  // bytes per Q / K row
  constexpr int kKSteps = RB / 32;       // 32-byte k steps of Q.K^T (k32 int8 or k64 int4 MMAs)
  constexpr int kDT = D / 8;       // n8 output tiles
  constexpr int kVBytes = kFp8 ? D * kVtStride : kBlockN * v_stride<D>();
  __shared__ __align__(16) uint8_t sK[kBlockN * k_stride<RB>()];
  __shared__ __align__(16) uint8_t sV[kVBytes];

  const int64_t b = blockIdx.z, hq = blockIdx.y, hk = hq / (Hq / Hkv);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t wrow0 = q0 + warp * 16, r_lo = wrow0 + g, r_hi = r_lo + 8;

  const int8_t* qh = q + (b * Hq + hq) * Nq * RB;
  const int8_t* kh = k + (b * Hkv + hk) * Nk * RB;
  // bias row of this warp's 16 rows (bias_rows is a multiple of 16), null without Q smoothing
  const float* bh = nullptr;
  if constexpr (kInt4) {
    // a warp whose rows all lie past Nq computes discarded scores: it must not read past the bias rows
    if (bias != nullptr && wrow0 < Nq) {
      bh = bias + ((b * Hq + hq) * ((Nq + bias_rows - 1) / bias_rows) + wrow0 / bias_rows) * Nk;
    }
  }
  const float* qsh = qs + (b * Hq + hq) * qs_len;
  const float* ksh = ks + (b * Hkv + hk) * ks_len;

  // Q fragments of this warp's 16 rows (m16n8k32 A layout), zero past Nq.
  uint32_t qf[kKSteps][4];
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    const int c = kk * 32 + 4 * t;
    qf[kk][0] = r_lo < Nq ? ldg32(qh + r_lo * RB + c) : 0u;
    qf[kk][1] = r_hi < Nq ? ldg32(qh + r_hi * RB + c) : 0u;
    qf[kk][2] = r_lo < Nq ? ldg32(qh + r_lo * RB + c + 16) : 0u;
    qf[kk][3] = r_hi < Nq ? ldg32(qh + r_hi * RB + c + 16) : 0u;
  }
  // rows r_lo and r_hi share one per-thread group (same row % 8, same warp_q block)
  const float q_sc = wrow0 < Nq ? qsh[sa::q_group(r_lo, warp_q)] : 0.f;

  const int64_t kv_end = causal ? (Nk < q0 + kBlockM ? Nk : q0 + kBlockM) : Nk;
  const int64_t nkb = (kv_end + kBlockN - 1) / kBlockN;
  constexpr float kOffset = kFp8 ? sa::kFp8POffset : 0.f;

  float o[kF16Out ? 1 : kDT][4];  // fp32 output accumulator (all modes but "fp16")
  uint32_t o16[kF16Out ? kDT : 1][2];  // f16x2 output accumulator ("fp16" mode)
#pragma unroll
  for (int i = 0; i < (kF16Out ? 1 : kDT); ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
#pragma unroll
  for (int i = 0; i < (kF16Out ? kDT : 1); ++i) o16[i][0] = o16[i][1] = 0u;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kBlockN;
    __syncthreads();  // the previous block's tiles are no longer read
    load_k_tile<RB>(sK, kh, Nk, k0);
    if constexpr (kFp8) {
      load_v_tile_f8<D>(sV, static_cast<const uint8_t*>(v) + (b * Hkv + hk) * Nk * D, Nk, k0);
    } else {
      load_v_tile_f16<D>(sV, static_cast<const __half*>(v) + (b * Hkv + hk) * Nk * D, Nk, k0);
    }
    __syncthreads();

    // S = Q.K^T (int32), 16 x 64 per warp
    int acc[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const uint8_t* p = sK + (nt * 8 + g) * k_stride<RB>() + kk * 32 + 4 * t;
        if constexpr (kInt4) {
          mma_s4(acc[nt], qf[kk], lds32(p), lds32(p + 16));
        } else {
          mma_s8(acc[nt], qf[kk], lds32(p), lds32(p + 16));
        }
      }
    }

    // dequantize (one product per lane), mask, running max
    const float sc = q_sc * ksh[kb * sa::kKGroupsPerBlock + t];
    float s[kNT][4];
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = k0 + nt * 8 + 2 * t + (e & 1);
        const int64_t row = e < 2 ? r_lo : r_hi;
        float x = __int2float_rn(acc[nt][e]) * sc;
        if constexpr (kInt4) {
          if (bh != nullptr && key < Nk) x += bh[key];
        }
        if (key >= Nk || (causal && key > row)) x = -INFINITY;
        s[nt][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float alpha[2], m_use[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);
      m_use[h] = m_new == -INFINITY ? 0.f : m_new;  // a row with no key yet: keep everything at 0, no NaN
      alpha[h] = exp2f(m[h] - m_use[h]);
      m[h] = m_new;
      l[h] *= alpha[h];
    }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[nt][e] - m_use[e >> 1] + kOffset);
        s[nt][e] = p;
        l[e >> 1] += p;
      }
    }
    if constexpr (kF16Out) {
#pragma unroll
      for (int i = 0; i < kDT; ++i) {
        o16[i][0] = scale_half2(o16[i][0], alpha[0]);
        o16[i][1] = scale_half2(o16[i][1], alpha[1]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kDT; ++i) {
        o[i][0] *= alpha[0];
        o[i][1] *= alpha[0];
        o[i][2] *= alpha[1];
        o[i][3] *= alpha[1];
      }
    }

    if constexpr (kMode == kPvF16F16F32 || kMode == kPvF16F16) {
      // P as fp16 A fragments of the whole block (4 x 16 keys), then per pair of output tiles: the 4
      // k16 MMAs into an f16 accumulator (a fresh one per block for "fp16+fp32", added into fp32;
      // the output registers themselves for "fp16")
      uint32_t a[kBlockN / 16][4];
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) {
        a[kc][0] = pack_half2(s[2 * kc][0], s[2 * kc][1]);
        a[kc][1] = pack_half2(s[2 * kc][2], s[2 * kc][3]);
        a[kc][2] = pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
        a[kc][3] = pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
      }
      const uint8_t* vbase = sV + (lane & 15) * v_stride<D>() + (lane >> 4) * 16;
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t part[2][2] = {{0u, 0u}, {0u, 0u}};
#pragma unroll
        for (int kc = 0; kc < kBlockN / 16; ++kc) {
          uint32_t bf[4];
          ldmatrix_x4_trans(bf, vbase + kc * 16 * v_stride<D>() + dn * 32);
          if constexpr (kF16Out) {
            mma_f16_f16acc(o16[2 * dn], a[kc], bf[0], bf[1]);
            mma_f16_f16acc(o16[2 * dn + 1], a[kc], bf[2], bf[3]);
          } else {
            mma_f16_f16acc(part[0], a[kc], bf[0], bf[1]);
            mma_f16_f16acc(part[1], a[kc], bf[2], bf[3]);
          }
        }
        if constexpr (!kF16Out) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float2 lo = unpack_half2(part[j][0]), hi = unpack_half2(part[j][1]);
            o[2 * dn + j][0] += lo.x;
            o[2 * dn + j][1] += lo.y;
            o[2 * dn + j][2] += hi.x;
            o[2 * dn + j][3] += hi.y;
          }
        }
      }
    } else if constexpr (!kFp8) {
      // O += P.V, fp16 x fp16 -> fp32, 16 keys per MMA
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) {
        uint32_t a[4];
        a[0] = pack_half2(s[2 * kc][0], s[2 * kc][1]);
        a[1] = pack_half2(s[2 * kc][2], s[2 * kc][3]);
        a[2] = pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
        a[3] = pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
        const uint8_t* vrow = sV + (kc * 16 + (lane & 15)) * v_stride<D>() + (lane >> 4) * 16;
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t bf[4];
          ldmatrix_x4_trans(bf, vrow + dn * 32);
          mma_f16(o[2 * dn], a, bf[0], bf[1]);
          mma_f16(o[2 * dn + 1], a, bf[2], bf[3]);
        }
      }
    } else {
      // O += (P8.V8 over this 64-key block in a fresh accumulator), fp8 e4m3 x e4m3 -> fp32
      uint32_t a[2][4];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int n = 4 * c;
        a[c][0] = pack_e4m3x4(s[n][0], s[n][1], s[n + 1][0], s[n + 1][1]);
        a[c][1] = pack_e4m3x4(s[n][2], s[n][3], s[n + 1][2], s[n + 1][3]);
        a[c][2] = pack_e4m3x4(s[n + 2][0], s[n + 2][1], s[n + 3][0], s[n + 3][1]);
        a[c][3] = pack_e4m3x4(s[n + 2][2], s[n + 2][3], s[n + 3][2], s[n + 3][3]);
      }
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        const uint8_t* vrow = sV + (dt * 8 + g) * kVtStride + 4 * t;
        if constexpr (kMode == kPvF8F32F16) {  // f16 block accumulator (SageAttention2++)
          uint32_t part[2] = {0u, 0u};
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            mma_e4m3_f16acc(part, a[c], lds32(vrow + c * 32), lds32(vrow + c * 32 + 16));
          }
          const float2 lo = unpack_half2(part[0]), hi = unpack_half2(part[1]);
          o[dt][0] += lo.x;
          o[dt][1] += lo.y;
          o[dt][2] += hi.x;
          o[dt][3] += hi.y;
        } else {
          float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int c = 0; c < 2; ++c) mma_e4m3(part, a[c], lds32(vrow + c * 32), lds32(vrow + c * 32 + 16));
          o[dt][0] += part[0];
          o[dt][1] += part[1];
          o[dt][2] += part[2];
          o[dt][3] += part[3];
        }
      }
    }
  }

  // epilogue: full row sums, normalize, (fp8) per-channel V scale, store O and the natural-log LSE
  const float* vsh = kFp8 ? vs + (b * Hkv + hk) * D : nullptr;
  OutT* oh = out + (b * Hq + hq) * Nq * D;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    const int64_t row = h == 0 ? r_lo : r_hi;
    if (row >= Nq) continue;
    const float inv = 1.f / l[h];
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const int d = dt * 8 + 2 * t;
      float x0, x1;
      if constexpr (kF16Out) {
        const float2 f = unpack_half2(o16[dt][h]);
        x0 = f.x * inv;
        x1 = f.y * inv;
      } else {
        x0 = o[dt][2 * h] * inv;
        x1 = o[dt][2 * h + 1] * inv;
      }
      if constexpr (kFp8) {
        x0 *= vsh[d];
        x1 *= vsh[d + 1];
      }
      store_pair(oh + row * D + d, x0, x1);
    }
    if (t == 0) lse[(b * Hq + hq) * Nq + row] = (m[h] + log2f(l[h]) - kOffset) * kLn2;
  }
}

// grid (ceil(Nq / 64), Hq, B). One entry point per P.V mode, so that the kernel report can tell them
// apart by name: f16pv "fp32", f16pv_f16acc "fp16+fp32", f16pv_f16 "fp16", f8pv "fp32+fp32",
// f8pv_f16acc "fp32+fp16".
#define SK_SAGE_F16PV_KERNEL(NAME, MODE)                                                                      \
  template <int D, typename OutT>                                                                            \
  __global__ void __launch_bounds__(kThreads)                                                                \
      NAME(const int8_t* q, const int8_t* k, const __half* v, const float* qs, const float* ks, OutT* out,     \
           float* lse, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk, int64_t qs_len, int64_t ks_len,        \
           int64_t warp_q, bool causal) {                                                                    \
    attn_fwd_body<D, MODE, OutT>(q, k, v, qs, ks, nullptr, out, lse, Hq, Hkv, Nq, Nk, qs_len, ks_len, warp_q, \
                                 causal);                                                                    \
  }

// FP8 P.V: no fp8 mma.sync below sm89 (a __trap stub there; the launcher refuses these devices)
#define SK_SAGE_F8PV_KERNEL(NAME, MODE)                                                                       \
  template <int D, typename OutT>                                                                            \
  __global__ void __launch_bounds__(kThreads)                                                                \
      NAME(const int8_t* q, const int8_t* k, const uint8_t* v, const float* qs, const float* ks,              \
           const float* vs, OutT* out, float* lse, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk,            \
           int64_t qs_len, int64_t ks_len, int64_t warp_q, bool causal) {                                    \
    SK_SAGE_F8PV_BODY(attn_fwd_body<D, MODE, OutT>(q, k, v, qs, ks, vs, out, lse, Hq, Hkv, Nq, Nk, qs_len,    \
                                                   ks_len, warp_q, causal));                                 \
  }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
#define SK_SAGE_F8PV_BODY(...) __trap()
#else
#define SK_SAGE_F8PV_BODY(...) __VA_ARGS__
#endif

SK_SAGE_F16PV_KERNEL(sk_sage_attn_fwd_f16pv_kernel, kPvF16F32acc)
SK_SAGE_F16PV_KERNEL(sk_sage_attn_fwd_f16pv_f16acc_kernel, kPvF16F16F32)
SK_SAGE_F16PV_KERNEL(sk_sage_attn_fwd_f16pv_f16_kernel, kPvF16F16)
SK_SAGE_F8PV_KERNEL(sk_sage_attn_fwd_f8pv_kernel, kPvF8F32F32)
SK_SAGE_F8PV_KERNEL(sk_sage_attn_fwd_f8pv_f16acc_kernel, kPvF8F32F16)

#undef SK_SAGE_F16PV_KERNEL
#undef SK_SAGE_F8PV_KERNEL

// INT4 Q.K^T: q / k packed int4 (two per byte), optional Q-smoothing bias rows; fp32 / fp32+fp32 P.V only
template <int D, typename OutT>
__global__ void __launch_bounds__(kThreads)
    sk_sage_attn_fwd_int4_f16pv_kernel(const int8_t* q, const int8_t* k, const __half* v, const float* qs,
                                       const float* ks, OutT* out, float* lse, int64_t Hq, int64_t Hkv, int64_t Nq,
                                       int64_t Nk, int64_t qs_len, int64_t ks_len, int64_t warp_q, bool causal,
                                       const float* bias, int64_t bias_rows) {
  attn_fwd_body<D, kPvF16F32acc, OutT, true>(q, k, v, qs, ks, nullptr, out, lse, Hq, Hkv, Nq, Nk, qs_len, ks_len,
                                             warp_q, causal, bias, bias_rows);
}

template <int D, typename OutT>
__global__ void __launch_bounds__(kThreads)
    sk_sage_attn_fwd_int4_f8pv_kernel(const int8_t* q, const int8_t* k, const uint8_t* v, const float* qs,
                                      const float* ks, const float* vs, OutT* out, float* lse, int64_t Hq,
                                      int64_t Hkv, int64_t Nq, int64_t Nk, int64_t qs_len, int64_t ks_len,
                                      int64_t warp_q, bool causal, const float* bias, int64_t bias_rows) {
  SK_SAGE_F8PV_BODY(attn_fwd_body<D, kPvF8F32F32, OutT, true>(q, k, v, qs, ks, vs, out, lse, Hq, Hkv, Nq, Nk,
                                                             qs_len, ks_len, warp_q, causal, bias, bias_rows));
}

#undef SK_SAGE_F8PV_BODY

struct Args {
  const int8_t* q;
  const int8_t* k;
  const void* v;
  const float* qs;
  const float* ks;
  const float* vs;
  void* out;
  float* lse;
  int64_t B, Hq, Hkv, Nq, Nk, qs_len, ks_len, warp_q;
  bool causal;
  const float* bias;  // INT4 only (may be null)
  int64_t bias_rows;
};

template <int D, typename OutT>
void launch_typed_int4(const Args& a, bool fp8, cudaStream_t st) {
  const dim3 grid(ceil_div(a.Nq, kBlockM), static_cast<unsigned>(a.Hq), static_cast<unsigned>(a.B));
  auto* out = static_cast<OutT*>(a.out);
  if (fp8) {
    sk_sage_attn_fwd_int4_f8pv_kernel<D, OutT><<<grid, kThreads, 0, st>>>(
        a.q, a.k, static_cast<const uint8_t*>(a.v), a.qs, a.ks, a.vs, out, a.lse, a.Hq, a.Hkv, a.Nq, a.Nk, a.qs_len,
        a.ks_len, a.warp_q, a.causal, a.bias, a.bias_rows);
    check(cudaGetLastError(), "sk_sage_attn_fwd_int4_f8pv_kernel");
  } else {
    sk_sage_attn_fwd_int4_f16pv_kernel<D, OutT><<<grid, kThreads, 0, st>>>(
        a.q, a.k, static_cast<const __half*>(a.v), a.qs, a.ks, out, a.lse, a.Hq, a.Hkv, a.Nq, a.Nk, a.qs_len,
        a.ks_len, a.warp_q, a.causal, a.bias, a.bias_rows);
    check(cudaGetLastError(), "sk_sage_attn_fwd_int4_f16pv_kernel");
  }
}

template <typename Kernel, typename OutT>
void launch_f16pv(Kernel kernel, const char* name, const Args& a, OutT* out, cudaStream_t st) {
  const dim3 grid(ceil_div(a.Nq, kBlockM), static_cast<unsigned>(a.Hq), static_cast<unsigned>(a.B));
  kernel<<<grid, kThreads, 0, st>>>(a.q, a.k, static_cast<const __half*>(a.v), a.qs, a.ks, out, a.lse, a.Hq,
                                    a.Hkv, a.Nq, a.Nk, a.qs_len, a.ks_len, a.warp_q, a.causal);
  check(cudaGetLastError(), name);
}

template <typename Kernel, typename OutT>
void launch_f8pv(Kernel kernel, const char* name, const Args& a, OutT* out, cudaStream_t st) {
  const dim3 grid(ceil_div(a.Nq, kBlockM), static_cast<unsigned>(a.Hq), static_cast<unsigned>(a.B));
  kernel<<<grid, kThreads, 0, st>>>(a.q, a.k, static_cast<const uint8_t*>(a.v), a.qs, a.ks, a.vs, out, a.lse,
                                    a.Hq, a.Hkv, a.Nq, a.Nk, a.qs_len, a.ks_len, a.warp_q, a.causal);
  check(cudaGetLastError(), name);
}

template <int D, typename OutT>
void launch_typed(const Args& a, int mode, cudaStream_t st) {
  auto* out = static_cast<OutT*>(a.out);
  switch (mode) {
    case kPvF16F32acc:
      launch_f16pv(sk_sage_attn_fwd_f16pv_kernel<D, OutT>, "sk_sage_attn_fwd_f16pv_kernel", a, out, st);
      break;
    case kPvF16F16F32:
      launch_f16pv(sk_sage_attn_fwd_f16pv_f16acc_kernel<D, OutT>, "sk_sage_attn_fwd_f16pv_f16acc_kernel", a, out,
                   st);
      break;
    case kPvF16F16:
      launch_f16pv(sk_sage_attn_fwd_f16pv_f16_kernel<D, OutT>, "sk_sage_attn_fwd_f16pv_f16_kernel", a, out, st);
      break;
    case kPvF8F32F32:
      launch_f8pv(sk_sage_attn_fwd_f8pv_kernel<D, OutT>, "sk_sage_attn_fwd_f8pv_kernel", a, out, st);
      break;
    default:  // kPvF8F32F16 (the launcher validated the code)
      launch_f8pv(sk_sage_attn_fwd_f8pv_f16acc_kernel<D, OutT>, "sk_sage_attn_fwd_f8pv_f16acc_kernel", a, out, st);
      break;
  }
}

template <int D>
void launch_d(const Args& a, int mode, bool int4, int out_dtype, cudaStream_t st) {
  if (int4) {
    if (out_dtype == 1) {
      launch_typed_int4<D, __half>(a, mode == kPvF8F32F32, st);
    } else {
      launch_typed_int4<D, __nv_bfloat16>(a, mode == kPvF8F32F32, st);
    }
  } else if (out_dtype == 1) {
    launch_typed<D, __half>(a, mode, st);
  } else {
    launch_typed<D, __nv_bfloat16>(a, mode, st);
  }
}

void launch_common(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale,
                   std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out, std::uintptr_t lse, int64_t B,
                   int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk, int64_t D, int64_t q_scale_len,
                   int64_t k_scale_len, int64_t warp_q, bool causal, int pv_mode, int out_dtype, bool int4,
                   std::uintptr_t bias, int64_t bias_rows, std::uintptr_t stream);

}  // namespace

void launch_sage_attention_fwd(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale,
                               std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out,
                               std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk,
                               int64_t D, int64_t q_scale_len, int64_t k_scale_len, int64_t warp_q, bool causal,
                               int pv_mode, int out_dtype, std::uintptr_t stream) {
  if (pv_mode < kPvF16F32acc || pv_mode > kPvF16F16) {
    throw std::invalid_argument(
        "sage_attention_fwd (cuda): pv_mode must be 0 (fp16 PV, fp32), 1 (fp8 PV, fp32+fp32), 2 (fp8 PV, "
        "fp32+fp16), 3 (fp16 PV, fp16+fp32) or 4 (fp16 PV, fp16)");
  }
  launch_common(q, k, v, q_scale, k_scale, v_scale, out, lse, B, Hq, Hkv, Nq, Nk, D, q_scale_len, k_scale_len, warp_q,
                causal, pv_mode, out_dtype, false, 0, 0, stream);
}

void launch_sage_attention_fwd_int4(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale,
                                    std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out,
                                    std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk,
                                    int64_t D, int64_t q_scale_len, int64_t k_scale_len, int64_t warp_q, bool causal,
                                    int pv_fp8, int out_dtype, std::uintptr_t bias, int64_t bias_rows,
                                    std::uintptr_t stream) {
  if (pv_fp8 != 0 && pv_fp8 != 1) throw std::invalid_argument("sage_attention_fwd_int4 (cuda): pv_fp8 must be 0 or 1");
  if (bias != 0 && (bias_rows < 16 || bias_rows % 16 != 0)) {
    throw std::invalid_argument("sage_attention_fwd_int4 (cuda): bias_rows must be a positive multiple of 16");
  }
  if (bias % 4) throw std::invalid_argument("sage_attention_fwd_int4 (cuda): bias must be 4-byte aligned");
  launch_common(q, k, v, q_scale, k_scale, v_scale, out, lse, B, Hq, Hkv, Nq, Nk, D, q_scale_len, k_scale_len, warp_q,
                causal, pv_fp8 ? kPvF8F32F32 : kPvF16F32acc, out_dtype, true, bias, bias_rows, stream);
}

namespace {

void launch_common(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale,
                   std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out, std::uintptr_t lse, int64_t B,
                   int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk, int64_t D, int64_t q_scale_len,
                   int64_t k_scale_len, int64_t warp_q, bool causal, int pv_mode, int out_dtype, bool int4,
                   std::uintptr_t bias, int64_t bias_rows, std::uintptr_t stream) {
  if (B == 0 || Hq == 0 || Nq == 0) return;
  if (B < 0 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || Nq < 0 || Nk < 1) {
    throw std::invalid_argument("sage_attention_fwd (cuda): bad sizes (need Hq % Hkv == 0, Nk >= 1)");
  }
  if (D != 64 && D != 128) throw std::invalid_argument("sage_attention_fwd (cuda): head dim D must be 64 or 128");
  if (warp_q != 16 && warp_q != 32) throw std::invalid_argument("sage_attention_fwd (cuda): warp_q must be 16 or 32");
  if (q_scale_len < sa::num_q_groups(Nq, warp_q) || k_scale_len < sa::num_k_groups(Nk)) {
    throw std::invalid_argument("sage_attention_fwd (cuda): q_scale / k_scale have too few groups");
  }
  if (out_dtype != 1 && out_dtype != 2) {
    throw std::invalid_argument("sage_attention_fwd (cuda): out_dtype code must be 1 (fp16) or 2 (bf16)");
  }
  if (q % 16 || k % 16 || v % 16 || out % 4) {
    throw std::invalid_argument("sage_attention_fwd (cuda): q, k, v must be 16-byte aligned, out 4-byte aligned");
  }
  const bool fp8 = pv_is_fp8(pv_mode);
  if (fp8 && v_scale == 0) throw std::invalid_argument("sage_attention_fwd (cuda): FP8 PV needs v_scale");
  if (B > 65535 || Hq > 65535 || (Nq + kBlockM - 1) / kBlockM > 0x7fffffffLL) {
    throw std::invalid_argument("sage_attention_fwd (cuda): too many batch entries or heads (max 65535 each)");
  }
  if (fp8) {
    int dev = 0, major = 0, minor = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
    if (major * 10 + minor < 89) {
      throw std::invalid_argument("sage_attention_fwd (cuda): FP8 PV needs compute capability 8.9 or newer");
    }
  }
  const Args a{reinterpret_cast<const int8_t*>(q), reinterpret_cast<const int8_t*>(k),
               reinterpret_cast<const void*>(v), reinterpret_cast<const float*>(q_scale),
               reinterpret_cast<const float*>(k_scale), reinterpret_cast<const float*>(v_scale),
               reinterpret_cast<void*>(out), reinterpret_cast<float*>(lse), B, Hq, Hkv, Nq, Nk, q_scale_len,
               k_scale_len, warp_q, causal, reinterpret_cast<const float*>(bias), bias_rows};
  cudaStream_t st = as_stream(stream);
  if (D == 64) {
    launch_d<64>(a, pv_mode, int4, out_dtype, st);
  } else {
    launch_d<128>(a, pv_mode, int4, out_dtype, st);
  }
}

}  // namespace

}  // namespace shared_kernels::cuda
