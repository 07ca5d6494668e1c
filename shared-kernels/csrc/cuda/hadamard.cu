// CUDA Walsh-Hadamard transform (Sylvester order) over groups of N in {16, 32, 64, 128}: each thread
// holds 4 consecutive elements of a group in registers, N / 4 neighbouring lanes hold one group.
// Stages h = 1, 2 run inside the thread, stages h = 4 .. N/2 across lanes with __shfl_xor_sync.
// Same butterflies in the same order as the CPU kernel (include/shared_kernels/hadamard.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>

#include "cuda/cuda_utils.cuh"
#include "cuda/hadamard_launch.h"
#include "shared_kernels/hadamard.h"

namespace shared_kernels::cuda {
namespace {

namespace hd = shared_kernels::hadamard;

constexpr int kThreads = 256;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    sk_hadamard_butterfly_kernel(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ signs,
                                 int64_t groups, float scale) {
  constexpr int L = N / 4;  // lanes per group (4..32): a warp holds 32 / L whole groups
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t g = t / L;
  const int lane = static_cast<int>(t % L);
  const bool active = g < groups;
  const int64_t base = g * N + 4 * lane;
  float v[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) v[e] = active ? to_f32(x[base + e]) : 0.0f;
  if (signs != nullptr) {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = v[e] * signs[4 * lane + e];
  }
  hd::butterfly(v[0], v[1]);  // h = 1
  hd::butterfly(v[2], v[3]);
  hd::butterfly(v[0], v[2]);  // h = 2
  hd::butterfly(v[1], v[3]);
#pragma unroll
  for (int m = 1; m < L; m <<= 1) {  // h = 4 * m: partner lane ^ m; lower lane keeps a + b
    const bool upper = (lane & m) != 0;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float p = __shfl_xor_sync(0xffffffffu, v[e], m);
      v[e] = upper ? p - v[e] : v[e] + p;
    }
  }
  if (active) {
#pragma unroll
    for (int e = 0; e < 4; ++e) y[base + e] = from_f32<T>(v[e] * scale);
  }
}

template <typename T, int N>
void launch_n(const void* x, void* y, const float* signs, int64_t groups, float scale, cudaStream_t st) {
  const int64_t threads = groups * (N / 4);
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffLL) throw std::invalid_argument("hadamard_transform (cuda): tensor too large");
  sk_hadamard_butterfly_kernel<T, N><<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(
      static_cast<const T*>(x), static_cast<T*>(y), signs, groups, scale);
  check(cudaGetLastError(), "sk_hadamard_butterfly_kernel");
}

template <typename T>
void launch_typed(const void* x, void* y, const float* signs, int64_t groups, int n, float scale, cudaStream_t st) {
  switch (n) {
    case 16: launch_n<T, 16>(x, y, signs, groups, scale, st); break;
    case 32: launch_n<T, 32>(x, y, signs, groups, scale, st); break;
    case 64: launch_n<T, 64>(x, y, signs, groups, scale, st); break;
    case 128: launch_n<T, 128>(x, y, signs, groups, scale, st); break;
    default: throw std::invalid_argument("hadamard_transform (cuda): block size must be 16, 32, 64 or 128");
  }
}

}  // namespace

void launch_hadamard_transform(std::uintptr_t x, std::uintptr_t y, std::uintptr_t signs, int64_t groups, int n,
                               int dtype, bool normalize, std::uintptr_t stream) {
  if (groups == 0) return;
  const float scale = normalize ? hd::normalization_factor(n) : 1.0f;
  auto* xp = reinterpret_cast<const void*>(x);
  auto* yp = reinterpret_cast<void*>(y);
  auto* sp = reinterpret_cast<const float*>(signs);
  cudaStream_t st = as_stream(stream);
  switch (dtype) {
    case 0: launch_typed<float>(xp, yp, sp, groups, n, scale, st); break;
    case 1: launch_typed<__half>(xp, yp, sp, groups, n, scale, st); break;
    case 2: launch_typed<__nv_bfloat16>(xp, yp, sp, groups, n, scale, st); break;
    default: throw std::invalid_argument("hadamard_transform (cuda): dtype code must be 0, 1 or 2");
  }
}

}  // namespace shared_kernels::cuda
