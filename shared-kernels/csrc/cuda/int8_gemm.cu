// CUDA INT8 GEMM with per-block scales (SageAttention's S = Q.K^T on INT8 operands); numerics in
// include/shared_kernels/int8_gemm.h. A straightforward tiled kernel: one CTA of 4 warps per 64x64
// output tile, K in steps of 64 staged through shared memory (zero-filled outside M, N, K), each warp
// a 32x32 sub-tile of inline-PTX mma.sync.m16n8k32 s8 x s8 -> s32 (IMMA on sm80/89/90a/100a), and the
// scale epilogue with bounds checks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>

#include "cuda/cuda_utils.cuh"
#include "cuda/int8_gemm_launch.h"
#include "shared_kernels/int8_gemm.h"

namespace shared_kernels::cuda {
namespace {

namespace ig = shared_kernels::int8_gemm;

constexpr int kTile = 64;      // CTA tile: kTile x kTile outputs
constexpr int kBK = 64;        // k per shared-memory stage
constexpr int kStride = 80;    // smem row stride in bytes: 20 words, conflict-free fragment reads
constexpr int kThreads = 128;  // 4 warps, 2 x 2, each 32 x 32

__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// rows [row0, row0 + 64) x k [k0, k0 + 64) of a [rows, K] int8 matrix into smem, zeros outside.
__device__ __forceinline__ void load_tile(uint8_t* __restrict__ s, const int8_t* __restrict__ g, int64_t rows,
                                          int64_t row0, int64_t K, int64_t k0, bool vec) {
#pragma unroll
  for (int c = threadIdx.x; c < kTile * kBK / 16; c += kThreads) {
    const int r = c >> 2, kc = (c & 3) * 16;
    const int64_t row = row0 + r, k = k0 + kc;
    int4 v = make_int4(0, 0, 0, 0);
    if (row < rows) {
      const int8_t* p = g + row * K + k;
      if (vec && k + 16 <= K) {
        v = *reinterpret_cast<const int4*>(p);
      } else {
        uint32_t w[4] = {0u, 0u, 0u, 0u};  // assembled in registers (byte stores would go to local memory)
#pragma unroll
        for (int e = 0; e < 16; ++e) {
          if (k + e < K) w[e >> 2] |= static_cast<uint32_t>(static_cast<uint8_t>(p[e])) << (8 * (e & 3));
        }
        v = make_int4(static_cast<int>(w[0]), static_cast<int>(w[1]), static_cast<int>(w[2]), static_cast<int>(w[3]));
      }
    }
    *reinterpret_cast<int4*>(s + r * kStride + kc) = v;
  }
}

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// grid (ceil(N / 64), ceil(M / 64), B)
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    sk_int8_gemm_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ b, const float* __restrict__ sa,
                        const float* __restrict__ sb, T* __restrict__ out, int64_t M, int64_t N, int64_t K,
                        int64_t block_m, int64_t block_n, bool vec) {
  __shared__ __align__(16) uint8_t sA[kTile * kStride];
  __shared__ __align__(16) uint8_t sB[kTile * kStride];
  const int64_t bi = blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int8_t* ab = a + bi * M * K;
  const int8_t* bb = b + bi * N * K;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int g = lane >> 2, t = lane & 3;

  int acc[2][4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    load_tile(sA, ab, M, m0, K, k0, vec);
    load_tile(sB, bb, N, n0, K, k0, vec);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 32) {
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const uint8_t* p = sA + (wm + mi * 16 + g) * kStride + kk + 4 * t;
        af[mi][0] = lds32(p);
        af[mi][1] = lds32(p + 8 * kStride);
        af[mi][2] = lds32(p + 16);
        af[mi][3] = lds32(p + 8 * kStride + 16);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const uint8_t* p = sB + (wn + ni * 8 + g) * kStride + kk + 4 * t;
        bf[ni][0] = lds32(p);
        bf[ni][1] = lds32(p + 16);
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_s8(acc[mi][ni], af[mi], bf[ni]);
    }
    __syncthreads();
  }

  const int64_t nbm = (M + block_m - 1) / block_m, nbn = (N + block_n - 1) / block_n;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = m0 + wm + mi * 16 + g + 8 * half;
      if (row >= M) continue;
      const float sr = sa[bi * nbm + row / block_m];
      T* orow = out + (bi * M + row) * N;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t col = n0 + wn + ni * 8 + 2 * t + e;
          if (col < N) store_out(orow + col, ig::dequant(acc[mi][ni][2 * half + e], sr, sb[bi * nbn + col / block_n]));
        }
      }
    }
  }
}

template <typename T>
void launch_typed(const int8_t* a, const int8_t* b, const float* sa, const float* sb, void* out, int64_t B, int64_t M,
                  int64_t N, int64_t K, int64_t block_m, int64_t block_n, bool vec, cudaStream_t st) {
  const dim3 grid(ceil_div(N, kTile), ceil_div(M, kTile), static_cast<unsigned>(B));
  sk_int8_gemm_kernel<T><<<grid, kThreads, 0, st>>>(a, b, sa, sb, static_cast<T*>(out), M, N, K, block_m, block_n,
                                                     vec);
  check(cudaGetLastError(), "sk_int8_gemm_kernel");
}

}  // namespace

void launch_int8_gemm(std::uintptr_t a, std::uintptr_t b, std::uintptr_t a_scale, std::uintptr_t b_scale,
                      std::uintptr_t out, int64_t B, int64_t M, int64_t N, int64_t K, int64_t block_m,
                      int64_t block_n, int out_dtype, std::uintptr_t stream) {
  if (B == 0) return;
  if (M < 1 || N < 1 || K < 1 || K > ig::kMaxK || block_m < 1 || block_n < 1) {
    throw std::invalid_argument("int8_gemm (cuda): bad sizes");
  }
  if (B > 65535 || (M + kTile - 1) / kTile > 65535 || (N + kTile - 1) / kTile > 0x7fffffffLL) {
    throw std::invalid_argument("int8_gemm (cuda): too many batch entries (max 65535) or rows (max 65535 * 64)");
  }
  const bool vec = K % 16 == 0 && a % 16 == 0 && b % 16 == 0;  // 16-byte loads stay aligned and in bounds
  auto* ap = reinterpret_cast<const int8_t*>(a);
  auto* bp = reinterpret_cast<const int8_t*>(b);
  auto* sap = reinterpret_cast<const float*>(a_scale);
  auto* sbp = reinterpret_cast<const float*>(b_scale);
  auto* op = reinterpret_cast<void*>(out);
  cudaStream_t st = as_stream(stream);
  switch (out_dtype) {
    case 0: launch_typed<float>(ap, bp, sap, sbp, op, B, M, N, K, block_m, block_n, vec, st); break;
    case 1: launch_typed<__half>(ap, bp, sap, sbp, op, B, M, N, K, block_m, block_n, vec, st); break;
    case 2: launch_typed<__nv_bfloat16>(ap, bp, sap, sbp, op, B, M, N, K, block_m, block_n, vec, st); break;
    default: throw std::invalid_argument("int8_gemm (cuda): out_dtype code must be 0, 1 or 2");
  }
}

}  // namespace shared_kernels::cuda
