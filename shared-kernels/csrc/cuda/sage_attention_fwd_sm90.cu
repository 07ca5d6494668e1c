// SageAttention2 forward for Hopper (sm_90a): INT8 Q.K^T on wgmma (IGMMA m64n128k32), online exp2 softmax,
// FP8 e4m3 P.V on wgmma (QGMMA m64nDk32) with per-channel V scales and two-level accumulation, LSE out.
// Scale-group layout and launcher contract: include/shared_kernels/sage_attention_sm90.h; maths:
// shared_kernels/reference/sage_attention_sm90.py (upstream SageAttention's qk_int_sv_f8_cuda_sm90 recipe).
//
// Grid (ceil(Nq / 64), Hq, B); a CTA is one warpgroup (128 threads) owning 64 query rows, 16 per warp, with its
// Q fragments in registers (the A operand of the int8 wgmma). Per 128-key block:
//  1. K (int8 [128][D]) and V^T (e4m3 [D][128]) are copied with cp.async into a 2-stage shared-memory ring (the
//     next block is in flight while this one is computed), zero-filled past Nk, in the no-swizzle GMMA
//     "interleaved" K-major layout (8 rows x 16 bytes core matrices). K rows are permuted (k_tile_row) so the
//     score fragment is the A fragment of the P.V wgmma over keys in natural order.
//  2. S = Q.K^T: D / 32 wgmma.m64n128k32.s32.s8.s8 into 64 int32 registers per thread.
//  3. S is dequantized with the lane's q_scale (one) and k_scale (two: even / odd 8-column tiles), padded keys
//     (>= Nk) and causal keys (j > i, top-left) get -inf, the running row max m moves, P = 2^(S - m + log2 448)
//     (in [0, 448]) is summed in fp32 into l and rounded to e4m3 four at a time.
//  4. O_blk = P.V over the 128 keys: 4 wgmma.m64nDk32.f32.e4m3.e4m3 into a fresh fp32 accumulator, then
//     O = O * 2^(m_old - m_new) + O_blk in fp32 (two-level accumulation: the QGMMA accumulator keeps only
//     ~22 significant bits, the running sum is a true fp32 add).
// Epilogue: O / l * v_scale[channel] to fp16 / bf16, lse = ln 2 * (m + log2 l - log2 448).
//
// Cost per (batch, q head): 2 * Nq * Nk_eff * D INT8 ops + 2 * Nq * Nk_eff * D FP8 ops (Nk_eff = Nk, about
// Nk / 2 when causal), plus ~Nq * Nk_eff exp2. Bytes from DRAM: Q, out and lse once (Nq * D * (1 + 2) + 4 * Nq),
// K and V^T once (2 * Nk * D, per kv head), scales. Bytes into shared memory: K and V^T once per 64-row q tile
// (ceil(Nq / 64) * 2 * Nk * D, from L2): 128 ops per byte, so the L2 -> SM stream, not DRAM, is the second
// limit after the tensor cores.
//
// Code for other archs: the kernel body exists only where __CUDA_ARCH_FEAT_SM90_ALL is defined (sm_90a); on
// sm80 / sm89 / sm100a it is a __trap() stub and the launcher refuses devices other than compute capability 9.0.
// Not tuned: no TMA, no warp specialization, no swizzled smem (upstream uses TMA + 2 consumer warpgroups).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <stdexcept>

#include "cuda/cuda_utils.cuh"
#include "shared_kernels/sage_attention_sm90.h"

namespace shared_kernels::cuda {
namespace {

namespace s9 = shared_kernels::sage_attention_sm90;

constexpr int kThreads = 128;  // one warpgroup
constexpr int kBlockM = s9::kBlockQ;
constexpr int kBlockN = s9::kBlockK;
constexpr int kStages = 2;

template <int D>
struct Tile {
  static constexpr int kKBytes = kBlockN * D;          // int8 K tile
  static constexpr int kVBytes = D * kBlockN;          // e4m3 V^T tile
  static constexpr int kStage = kKBytes + kVBytes;     // one pipeline stage
  static constexpr int kSmem = kStages * kStage;       // 32 KiB (D = 64) / 64 KiB (D = 128)
};

struct Params {
  const int8_t* q;
  const int8_t* k;
  const uint8_t* vt;
  const float* qs;
  const float* ks;
  const float* vs;
  void* out;
  float* lse;
  int64_t Hq, Hkv, Nq, Nk, Nkp, qs_len, ks_len;
  bool causal;
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr float kLn2 = 0.6931471805599453f;
// No-swizzle K-major smem tiles: 8 rows x 16 bytes core matrices (128 contiguous bytes), the core matrices of
// one 8-row group consecutive along K (leading byte offset 128), 8-row groups "SBO" bytes apart.
template <int D>
__device__ constexpr int k_sbo() { return 8 * D; }  // K tile [128 keys][D bytes]
constexpr int kVSbo = 8 * kBlockN;                    // V^T tile [D channels][128 keys]

// ---- PTX wrappers (sm_90a only) -------------------------------------------------------------------------
// wgmma.mma_async m64n128k32 s32.s8.s8: A (64 x 32) from registers, B (N x 32, K-major) by smem descriptor.
__device__ __forceinline__ void wgmma_qk_m64n128k32_s8(int (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p;\n"
      "}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
      "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
      "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
      "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
      "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
      "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
      "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
      "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// wgmma.mma_async m64n64k32 f32.e4m3.e4m3: A (64 x 32) from registers, B (N x 32, K-major) by smem descriptor.
__device__ __forceinline__ void wgmma_pv_m64n64k32_e4m3(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// wgmma.mma_async m64n128k32 f32.e4m3.e4m3: A (64 x 32) from registers, B (N x 32, K-major) by smem descriptor.
__device__ __forceinline__ void wgmma_pv_m64n128k32_e4m3(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}


__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator reads / writes across the asynchronous wgmma.
__device__ __forceinline__ void reg_fence(int& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
// cp.async writes through the generic proxy, wgmma reads through the async proxy.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// GMMA shared-memory descriptor, no swizzle: start address, leading byte offset (between the two 16-byte
// core matrices along K), stride byte offset (between 8-row groups), all >> 4; layout type 0 (bits 62-63).
__device__ __forceinline__ uint64_t gmma_desc(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4) | (static_cast<uint64_t>((lbo >> 4) & 0x3fffu) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3fffu) << 32);
}

__device__ __forceinline__ uint32_t ldg32(const int8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Four floats -> four e4m3 bytes, x0 in the lowest byte (round to nearest even, saturate to +-448).
__device__ __forceinline__ uint32_t pack_e4m3x4(float x0, float x1, float x2, float x3) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(x2, x3), __NV_SATFINITE, __NV_E4M3);
  return (lo & 0xffffu) | (hi << 16);
}

__device__ __forceinline__ void store_pair(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

template <int D>
__device__ __forceinline__ void wgmma_pv(float (&d)[D / 2], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
  if constexpr (D == 64) {
    wgmma_pv_m64n64k32_e4m3(d, a, desc, scale_d);
  } else {
    wgmma_pv_m64n128k32_e4m3(d, a, desc, scale_d);
  }
}

// Issue the cp.async copies of K block kb and V^T block kb into one stage (zero-fill past Nk).
template <int D>
__device__ __forceinline__ void load_stage(uint32_t s_k, const int8_t* __restrict__ kh, const uint8_t* __restrict__ vth,
                                           int64_t Nk, int64_t Nkp, int64_t k0) {
  constexpr int kChunks = D / 16;  // 16-byte chunks per K row
  // K: thread i -> permuted row p = 8 * (i / (8 * kChunks)) + i % 8, chunk (i / 8) % kChunks; 8 consecutive threads
  // fill one 128-byte core matrix.
#pragma unroll
  for (int i = threadIdx.x; i < kBlockN * kChunks; i += kThreads) {
    const int pl = i & 7, c = (i >> 3) % kChunks, pg = i / (8 * kChunks);
    const int p = pg * 8 + pl;
    const int64_t key = k0 + s9::k_tile_key(p);
    const bool ok = key < Nk;
    const uint32_t dst = s_k + pg * k_sbo<D>() + c * 128 + pl * 16;
    cp_async16(dst, ok ? static_cast<const void*>(kh + key * D + c * 16) : static_cast<const void*>(kh), ok ? 16 : 0);
  }
  // V^T: thread i -> channel d = 8 * (i / 64) + i % 8, key chunk (i / 8) % 8.
  const uint32_t s_v = s_k + Tile<D>::kKBytes;
#pragma unroll
  for (int i = threadIdx.x; i < D * (kBlockN / 16); i += kThreads) {
    const int dl = i & 7, c = (i >> 3) & 7, dg = i >> 6;
    const int64_t key = k0 + c * 16;
    const int64_t left = Nk - key;
    const int n = left <= 0 ? 0 : (left >= 16 ? 16 : static_cast<int>(left));
    const uint32_t dst = s_v + dg * kVSbo + c * 128 + dl * 16;
    const uint8_t* src = vth + static_cast<int64_t>(dg * 8 + dl) * Nkp + key;
    cp_async16(dst, n > 0 ? static_cast<const void*>(src) : static_cast<const void*>(vth), n);
  }
}

template <int D, typename OutT>
__device__ __forceinline__ void attn_fwd_sm90(const Params& prm) {
  constexpr int kKSteps = D / 32;  // k32 steps of Q.K^T
  constexpr int kOT = D / 8;       // n8 output tiles
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t s_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  const int64_t b = blockIdx.z, hq = blockIdx.y, hk = hq / (prm.Hq / prm.Hkv);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t wrow0 = q0 + warp * 16, r_lo = wrow0 + g, r_hi = r_lo + 8;
  const int64_t Nq = prm.Nq, Nk = prm.Nk;

  const int8_t* qh = prm.q + (b * prm.Hq + hq) * Nq * D;
  const int8_t* kh = prm.k + (b * prm.Hkv + hk) * Nk * D;
  const uint8_t* vth = prm.vt + (b * prm.Hkv + hk) * D * prm.Nkp;
  const float* qsh = prm.qs + (b * prm.Hq + hq) * prm.qs_len;
  const float* ksh = prm.ks + (b * prm.Hkv + hk) * prm.ks_len;

  const int64_t kv_end = prm.causal ? (Nk < q0 + kBlockM ? Nk : q0 + kBlockM) : Nk;
  const int nkb = static_cast<int>((kv_end + kBlockN - 1) / kBlockN);

  load_stage<D>(s_base, kh, vth, Nk, prm.Nkp, 0);
  cp_async_commit();

  // Q fragments (A of m64n128k32, the same per-warp layout as mma.m16n8k32), zero past Nq.
  uint32_t qf[kKSteps][4];
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    const int c = kk * 32 + 4 * t;
    qf[kk][0] = r_lo < Nq ? ldg32(qh + r_lo * D + c) : 0u;
    qf[kk][1] = r_hi < Nq ? ldg32(qh + r_hi * D + c) : 0u;
    qf[kk][2] = r_lo < Nq ? ldg32(qh + r_lo * D + c + 16) : 0u;
    qf[kk][3] = r_hi < Nq ? ldg32(qh + r_hi * D + c + 16) : 0u;
  }
  // rows r_lo and r_hi share one per-thread group
  const float q_sc = wrow0 < Nq ? qsh[s9::q_group(r_lo)] : 0.f;

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = static_cast<int64_t>(kb) * kBlockN;
    const uint32_t s_k = s_base + (kb & 1) * Tile<D>::kStage;
    const uint32_t s_v = s_k + Tile<D>::kKBytes;
    if (kb + 1 < nkb) load_stage<D>(s_base + ((kb + 1) & 1) * Tile<D>::kStage, kh, vth, Nk, prm.Nkp, k0 + kBlockN);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = this block
    cp_async_wait_1();
    fence_async_shared();
    __syncthreads();

    // ---- S = Q.K^T (int32), 64 x 128 per warpgroup ----
    int s[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      s[i] = 0;
      reg_fence(s[i]);  // defined before the wgmma.fence, not between it and the wgmma
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      wgmma_qk_m64n128k32_s8(s, qf[kk], gmma_desc(s_k + kk * 32 * 8, 128, k_sbo<D>()), kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait_all();
#pragma unroll
    for (int i = 0; i < 64; ++i) reg_fence(s[i]);

    // ---- dequantize, mask, online softmax (log2 domain) ----
    const float sc_even = q_sc * ksh[kb * s9::kKGroupsPerBlock + 2 * (t & 1)];
    const float sc_odd = q_sc * ksh[kb * s9::kKGroupsPerBlock + 2 * (t & 1) + 1];
    const bool need_mask = k0 + kBlockN > Nk || (prm.causal && k0 + kBlockN - 1 > q0);
    float p[64];
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = __int2float_rn(s[4 * j + e]) * ((j & 1) ? sc_odd : sc_even);
        if (need_mask) {
          const int64_t key = k0 + 16 * (j >> 1) + 4 * t + 2 * (j & 1) + (e & 1);
          const int64_t row = e < 2 ? r_lo : r_hi;
          if (key >= Nk || (prm.causal && key > row)) x = -INFINITY;
        }
        p[4 * j + e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float alpha[2], m_use[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);
      m_use[h] = m_new == -INFINITY ? 0.f : m_new;  // no key yet: everything stays 0, no NaN
      alpha[h] = exp2f(m[h] - m_use[h]);
      m[h] = m_new;
      l[h] *= alpha[h];
    }
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const float e = exp2f(p[i] - m_use[(i >> 1) & 1] + s9::kFp8POffset);
      p[i] = e;
      l[(i >> 1) & 1] += e;
    }
    // P in e4m3 as the A fragments of the 4 k32 steps: step c holds keys 32c .. 32c + 31 (natural order).
    uint32_t pf[4][4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const float* x = p + 16 * c;
      pf[c][0] = pack_e4m3x4(x[0], x[1], x[4], x[5]);
      pf[c][1] = pack_e4m3x4(x[2], x[3], x[6], x[7]);
      pf[c][2] = pack_e4m3x4(x[8], x[9], x[12], x[13]);
      pf[c][3] = pack_e4m3x4(x[10], x[11], x[14], x[15]);
    }

    // ---- O_blk = P.V (fresh accumulator), then O = O * alpha + O_blk ----
    float ob[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) {
      ob[i] = 0.f;
      reg_fence(ob[i]);
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
#pragma unroll
      for (int r = 0; r < 4; ++r) reg_fence(pf[c][r]);
    }
    wgmma_fence();
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      wgmma_pv<D>(ob, pf[c], gmma_desc(s_v + c * 256, 128, kVSbo), c > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait_all();
#pragma unroll
    for (int i = 0; i < D / 2; ++i) {
      reg_fence(ob[i]);
      o[i] = o[i] * alpha[(i >> 1) & 1] + ob[i];
    }
    __syncthreads();  // this stage is refilled by the next iteration's cp.async
  }

  // ---- epilogue: row sums, normalize, per-channel V scale, store O and the natural-log LSE ----
  const float* vsh = prm.vs + (b * prm.Hkv + hk) * D;
  OutT* oh = static_cast<OutT*>(prm.out) + (b * prm.Hq + hq) * Nq * D;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    const int64_t row = h == 0 ? r_lo : r_hi;
    if (row >= Nq) continue;
    const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
#pragma unroll
    for (int j = 0; j < kOT; ++j) {
      const int d = j * 8 + 2 * t;
      store_pair(oh + row * D + d, o[4 * j + 2 * h] * inv * vsh[d], o[4 * j + 2 * h + 1] * inv * vsh[d + 1]);
    }
    if (t == 0) {
      prm.lse[(b * prm.Hq + hq) * Nq + row] = l[h] > 0.f ? (m[h] + log2f(l[h]) - s9::kFp8POffset) * kLn2 : -INFINITY;
    }
  }
}

#endif  // sm_90a

template <int D, typename OutT>
__global__ void __launch_bounds__(kThreads) sk_sage_attn_fwd_sm90_kernel(const Params prm) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  attn_fwd_sm90<D, OutT>(prm);
#elif defined(__CUDA_ARCH__)
  __trap();  // wgmma exists only on sm_90a; the launcher refuses other devices
#endif
}

template <int D, typename OutT>
void launch_typed(const Params& prm, int64_t B, cudaStream_t st) {
  const dim3 grid(ceil_div(prm.Nq, kBlockM), static_cast<unsigned>(prm.Hq), static_cast<unsigned>(B));
  auto kernel = sk_sage_attn_fwd_sm90_kernel<D, OutT>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile<D>::kSmem),
        "cudaFuncSetAttribute(sk_sage_attn_fwd_sm90_kernel)");
  kernel<<<grid, kThreads, Tile<D>::kSmem, st>>>(prm);
  check(cudaGetLastError(), "sk_sage_attn_fwd_sm90_kernel");
}

}  // namespace

void launch_sage_attention_fwd_sm90(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v_t, std::uintptr_t q_scale,
                                    std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out,
                                    std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk,
                                    int64_t Nkp, int64_t D, int64_t q_scale_len, int64_t k_scale_len, bool causal,
                                    int out_dtype, std::uintptr_t stream) {
  const char* me = "sage_attention_fwd_sm90 (cuda): ";
  if (B == 0 || Hq == 0 || Nq == 0) return;
  if (B < 0 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || Nq < 0 || Nk < 1) {
    throw std::invalid_argument(std::string(me) + "bad sizes (need Hq % Hkv == 0, Nk >= 1)");
  }
  if (D != 64 && D != 128) throw std::invalid_argument(std::string(me) + "head dim D must be 64 or 128");
  if (Nkp < Nk || Nkp % s9::kVtAlign != 0) {
    throw std::invalid_argument(std::string(me) + "v_t's key dimension Nkp must be >= Nk and a multiple of 16");
  }
  if (q_scale_len < s9::num_q_groups(Nq) || k_scale_len < s9::num_k_groups(Nk)) {
    throw std::invalid_argument(std::string(me) + "q_scale / k_scale have too few groups");
  }
  if (out_dtype != 1 && out_dtype != 2) {
    throw std::invalid_argument(std::string(me) + "out_dtype code must be 1 (fp16) or 2 (bf16)");
  }
  if (q % 16 || k % 16 || v_t % 16 || out % 4 || q_scale % 4 || k_scale % 4 || v_scale % 4 || lse % 4) {
    throw std::invalid_argument(std::string(me) + "q, k, v_t must be 16-byte aligned, out and the fp32 arrays 4-byte");
  }
  if (B > 65535 || Hq > 65535 || (Nq + kBlockM - 1) / kBlockM > 0x7fffffffLL) {
    throw std::invalid_argument(std::string(me) + "too many batch entries or heads (max 65535 each)");
  }
  int dev = 0, major = 0, minor = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
  if (major != 9 || minor != 0) {
    throw std::invalid_argument(std::string(me) + "needs a compute capability 9.0 (Hopper) device, got " +
                                std::to_string(major) + "." + std::to_string(minor));
  }
  const Params prm{reinterpret_cast<const int8_t*>(q), reinterpret_cast<const int8_t*>(k),
                   reinterpret_cast<const uint8_t*>(v_t), reinterpret_cast<const float*>(q_scale),
                   reinterpret_cast<const float*>(k_scale), reinterpret_cast<const float*>(v_scale),
                   reinterpret_cast<void*>(out), reinterpret_cast<float*>(lse), Hq, Hkv, Nq, Nk, Nkp,
                   q_scale_len, k_scale_len, causal};
  cudaStream_t st = as_stream(stream);
  if (D == 64) {
    if (out_dtype == 1) launch_typed<64, __half>(prm, B, st); else launch_typed<64, __nv_bfloat16>(prm, B, st);
  } else {
    if (out_dtype == 1) launch_typed<128, __half>(prm, B, st); else launch_typed<128, __nv_bfloat16>(prm, B, st);
  }
}

}  // namespace shared_kernels::cuda
