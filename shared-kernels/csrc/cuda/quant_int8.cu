// CUDA INT8 per-block quantization (SageAttention's Q/K quantizer); numerics in
// include/shared_kernels/int8_quant.h. Two kernels: the per-channel mean over all tokens (float64
// accumulation, one thread per channel and token slice), then one CTA per block of tokens: amax
// reduction, scale, quantization.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>

#include "cuda/cuda_utils.cuh"
#include "cuda/quant_int8_launch.h"
#include "shared_kernels/int8_quant.h"

namespace shared_kernels::cuda {
namespace {

namespace i8 = shared_kernels::int8;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

constexpr int kMeanTX = 32;  // channels per CTA
constexpr int kMeanTY = 8;   // token slices per CTA
constexpr int kQuantThreads = 256;

// grid (B, ceil(D / 32)): thread (tx, ty) sums tokens ty, ty + 8, ... of channel d in double, then
// the 8 partial sums are added in ty order.
template <typename T>
__global__ void __launch_bounds__(kMeanTX* kMeanTY)
    sk_int8_channel_mean_kernel(const T* __restrict__ x, float* __restrict__ mean, int64_t N, int64_t D) {
  __shared__ double part[kMeanTY][kMeanTX];
  const int64_t b = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kMeanTX + threadIdx.x;
  double acc = 0.0;
  if (d < D) {
    for (int64_t n = threadIdx.y; n < N; n += kMeanTY) acc += static_cast<double>(to_f32(x[(b * N + n) * D + d]));
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    double s = part[0][threadIdx.x];
    for (int j = 1; j < kMeanTY; ++j) s += part[j][threadIdx.x];
    mean[b * D + d] = static_cast<float>(s / static_cast<double>(N));
  }
}

template <typename T, bool MEAN>
__device__ __forceinline__ float y_at(const T* __restrict__ x, const float* __restrict__ mean, int64_t idx, int64_t d,
                                      float mult) {
  const float v = to_f32(x[idx]);
  if constexpr (MEAN) return i8::transform(v, mean[d], mult);
  else return i8::transform(v, mult);
}

// One CTA per (batch index, token block); blockIdx.x = b * nb + k.
template <typename T, bool MEAN>
__global__ void __launch_bounds__(kQuantThreads)
    sk_int8_quant_block_kernel(const T* __restrict__ x, const float* __restrict__ mean_all, int8_t* __restrict__ q,
                               float* __restrict__ scale, int64_t N, int64_t D, int64_t block, int64_t nb,
                               float mult) {
  const int64_t t = blockIdx.x;
  const int64_t b = t / nb, k = t % nb;
  const int64_t rows = min(block, N - k * block);
  const int64_t base = (b * N + k * block) * D;
  const int64_t len = rows * D;
  const float* mean = MEAN ? mean_all + b * D : nullptr;

  float amax = 0.0f;
  int bad = 0;
  for (int64_t i = threadIdx.x; i < len; i += kQuantThreads) {
    const float a = fabsf(y_at<T, MEAN>(x, mean, base + i, i % D, mult));
    if (!i8::is_finite(a)) bad = 1;
    else amax = fmaxf(amax, a);
  }
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  __shared__ float warp_max[kQuantThreads / 32];
  __shared__ float s_scale;
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    float m = warp_max[0];
    for (int w = 1; w < kQuantThreads / 32; ++w) m = fmaxf(m, warp_max[w]);
    s_scale = i8::scale_from_amax(m, bad != 0);
    scale[t] = s_scale;
  }
  __syncthreads();
  const float s = s_scale;
  for (int64_t i = threadIdx.x; i < len; i += kQuantThreads) {
    q[base + i] = i8::quantize(y_at<T, MEAN>(x, mean, base + i, i % D, mult), s);
  }
}

template <typename T>
void launch_typed(const void* x, int8_t* q, float* scale, float* mean, int64_t B, int64_t N, int64_t D,
                  int64_t block, float mult, cudaStream_t st) {
  const T* xt = static_cast<const T*>(x);
  if (mean != nullptr) {
    if (B > 0x7fffffffLL || D > 65535LL * kMeanTX) throw std::invalid_argument("quantize_int8_per_block (cuda): tensor too large for the mean kernel");
    dim3 grid(static_cast<unsigned>(B), ceil_div(D, kMeanTX));
    sk_int8_channel_mean_kernel<T><<<grid, dim3(kMeanTX, kMeanTY), 0, st>>>(xt, mean, N, D);
    check(cudaGetLastError(), "sk_int8_channel_mean_kernel");
  }
  const int64_t nb = (N + block - 1) / block;
  const int64_t blocks = B * nb;
  if (blocks > 0x7fffffffLL) throw std::invalid_argument("quantize_int8_per_block (cuda): too many blocks");
  if (mean != nullptr) {
    sk_int8_quant_block_kernel<T, true>
        <<<static_cast<unsigned>(blocks), kQuantThreads, 0, st>>>(xt, mean, q, scale, N, D, block, nb, mult);
  } else {
    sk_int8_quant_block_kernel<T, false>
        <<<static_cast<unsigned>(blocks), kQuantThreads, 0, st>>>(xt, nullptr, q, scale, N, D, block, nb, mult);
  }
  check(cudaGetLastError(), "sk_int8_quant_block_kernel");
}

}  // namespace

void launch_quantize_int8_per_block(std::uintptr_t x, std::uintptr_t q, std::uintptr_t scale, std::uintptr_t mean,
                                    int64_t B, int64_t N, int64_t D, int64_t block, int dtype, float multiplier,
                                    std::uintptr_t stream) {
  if (B == 0) return;
  auto* xp = reinterpret_cast<const void*>(x);
  auto* qp = reinterpret_cast<int8_t*>(q);
  auto* sp = reinterpret_cast<float*>(scale);
  auto* mp = reinterpret_cast<float*>(mean);
  cudaStream_t st = as_stream(stream);
  switch (dtype) {
    case 0: launch_typed<float>(xp, qp, sp, mp, B, N, D, block, multiplier, st); break;
    case 1: launch_typed<__half>(xp, qp, sp, mp, B, N, D, block, multiplier, st); break;
    case 2: launch_typed<__nv_bfloat16>(xp, qp, sp, mp, B, N, D, block, multiplier, st); break;
    default: throw std::invalid_argument("quantize_int8_per_block (cuda): dtype code must be 0, 1 or 2");
  }
}

}  // namespace shared_kernels::cuda
