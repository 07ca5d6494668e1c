// MX (MXFP4 / MXFP8) and NVFP4 quantization on the GPU: one thread per block of 32 (MX) or 16
// (NVFP4) elements along the block axis, running the very block rules and codecs of
// include/shared_kernels/{microscaling,minifloat,philox}.h that the CPU build runs. For column
// blocks (axis -2) consecutive threads take consecutive columns, so loads are coalesced.
// Memory-bound, no tensor cores.
#include "cuda/cuda_utils.cuh"
#include "cuda/microscaling_launch.h"
#include "shared_kernels/microscaling.h"

namespace shared_kernels::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) mx_quantize_kernel(const void* __restrict__ x, int dtype, mx::Geometry g,
                                                               int elem, int scale_rule, int rounding, uint64_t seed,
                                                               int64_t offset, uint8_t* __restrict__ data,
                                                               uint8_t* __restrict__ scales) {
  const int64_t line = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (line >= g.line_count(32)) return;
  mx::mx_quantize_line(x, dtype, g, line, elem, scale_rule, rounding, seed, offset, data, scales);
}

// Tensor amax of |x| as float bits (atomicMax on uint32 is the float order for |x|; NaN wins).
__global__ void __launch_bounds__(256) nvfp4_tensor_amax_kernel(const void* __restrict__ x, int dtype, int64_t n,
                                                                unsigned int* __restrict__ amax_bits) {
  float a = 0.0f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    a = mx::amax_step(a, minifloat::load_as_f32(x, i, dtype));
  }
  unsigned int bits = minifloat::f32_bits(a);
  for (int s = 16; s > 0; s >>= 1) {
    const unsigned int o = __shfl_xor_sync(0xFFFFFFFFu, bits, s);
    bits = o > bits ? o : bits;
  }
  if ((threadIdx.x & 31) == 0 && bits != 0u) atomicMax(amax_bits, bits);
}

// outer_mode 0: turn the amax bits in outer[0] into amax / 2688; 2: outer[0] = 1.
__global__ void nvfp4_outer_finalize_kernel(float* outer, int outer_mode) {
  if (threadIdx.x == 0 && blockIdx.x == 0) outer[0] = outer_mode == 0 ? mx::nvfp4_outer_scale(outer[0]) : 1.0f;
}

// One FP32 outer scale per 128 consecutive elements along the axis.
__global__ void __launch_bounds__(kThreads) nvfp4_outer128_kernel(const void* __restrict__ x, int dtype,
                                                                  mx::Geometry g, float* __restrict__ outer) {
  const int64_t line = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (line >= g.line_count(128)) return;
  mx::nvfp4_outer128_line(x, dtype, g, line, outer);
}

__global__ void __launch_bounds__(kThreads) nvfp4_quantize_kernel(const void* __restrict__ x, int dtype,
                                                                  mx::Geometry g, int outer_mode, int rounding,
                                                                  uint64_t seed, int64_t offset,
                                                                  uint8_t* __restrict__ data,
                                                                  uint8_t* __restrict__ scales,
                                                                  const float* __restrict__ outer) {
  const int64_t line = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (line >= g.line_count(16)) return;
  mx::nvfp4_quantize_line(x, dtype, g, line, outer_mode, outer, rounding, seed, offset, data, scales);
}

}  // namespace

void launch_quantize_mx(std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows, int elem,
                        int scale_rule, int rounding, uint64_t seed, int64_t offset, std::uintptr_t data,
                        std::uintptr_t scales, std::uintptr_t stream) {
  const mx::Geometry g{B, M, K, along_rows};
  const int64_t lines = g.line_count(32);
  if (lines == 0) return;
  mx_quantize_kernel<<<ceil_div(lines, kThreads), kThreads, 0, as_stream(stream)>>>(
      reinterpret_cast<const void*>(x), dtype, g, elem, scale_rule, rounding, seed, offset,
      reinterpret_cast<uint8_t*>(data), reinterpret_cast<uint8_t*>(scales));
  check(cudaGetLastError(), "mx_quantize_kernel");
}

void launch_quantize_nvfp4(std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows,
                           int outer_mode, int rounding, uint64_t seed, int64_t offset, std::uintptr_t data,
                           std::uintptr_t scales, std::uintptr_t outer, std::uintptr_t stream) {
  cudaStream_t st = as_stream(stream);
  const mx::Geometry g{B, M, K, along_rows};
  const void* xp = reinterpret_cast<const void*>(x);
  float* op = reinterpret_cast<float*>(outer);
  if (g.line_count(16) == 0) return;
  if (outer_mode == 0) {
    check(cudaMemsetAsync(op, 0, sizeof(float), st), "quantize_nvfp4 memset");
    const int64_t n = B * M * K;
    const int64_t blocks = (n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024;
    nvfp4_tensor_amax_kernel<<<static_cast<unsigned int>(blocks), 256, 0, st>>>(xp, dtype, n,
                                                                              reinterpret_cast<unsigned int*>(op));
    check(cudaGetLastError(), "nvfp4_tensor_amax_kernel");
  }
  if (outer_mode == 1) {
    nvfp4_outer128_kernel<<<ceil_div(g.line_count(128), kThreads), kThreads, 0, st>>>(xp, dtype, g, op);
    check(cudaGetLastError(), "nvfp4_outer128_kernel");
  } else {
    nvfp4_outer_finalize_kernel<<<1, 32, 0, st>>>(op, outer_mode);
    check(cudaGetLastError(), "nvfp4_outer_finalize_kernel");
  }
  nvfp4_quantize_kernel<<<ceil_div(g.line_count(16), kThreads), kThreads, 0, st>>>(
      xp, dtype, g, outer_mode, rounding, seed, offset, reinterpret_cast<uint8_t*>(data),
      reinterpret_cast<uint8_t*>(scales), op);
  check(cudaGetLastError(), "nvfp4_quantize_kernel");
}

}  // namespace shared_kernels::cuda
