// quantize_fp8 on the GPU: (1) per-group amax of |x| as float bits with atomicMax (for
// non-negative floats the uint32 order is the float order and NaN bits sort above inf, so the max
// propagates NaN), (2) scale = amax / scale_max in place, (3) encode every element with the
// shared minifloat.h codec. Memory-bound, no tensor cores.
#include "cuda/cuda_utils.cuh"
#include "cuda/quant_fp8_launch.h"
#include "shared_kernels/microscaling.h"

namespace shared_kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kStripRows = 64;

struct Fp8Geometry {
  int64_t B, N, D, block_size, nblk, strips_per_group, strips_per_b, dchunks;
  int granularity;
};

__global__ void fp8_amax_kernel(const void* __restrict__ x, int dtype, Fp8Geometry g, unsigned int* __restrict__ amax) {
  const int64_t blk = blockIdx.x;
  const int64_t dchunk = blk % g.dchunks;
  const int64_t strip = (blk / g.dchunks) % g.strips_per_b;
  const int64_t b = blk / (g.dchunks * g.strips_per_b);
  const int64_t d = dchunk * kThreads + threadIdx.x;
  int64_t r0, r1, group;
  if (g.granularity == 1) {
    const int64_t tb = strip / g.strips_per_group;
    r0 = tb * g.block_size + (strip % g.strips_per_group) * kStripRows;
    const int64_t end = (tb + 1) * g.block_size < g.N ? (tb + 1) * g.block_size : g.N;
    r1 = r0 + kStripRows < end ? r0 + kStripRows : end;
    group = b * g.nblk + tb;
  } else {
    r0 = strip * kStripRows;
    r1 = r0 + kStripRows < g.N ? r0 + kStripRows : g.N;
    group = g.granularity == 0 ? b * g.D + d : 0;
  }
  float a = 0.0f;
  if (d < g.D) {
    for (int64_t r = r0; r < r1; ++r) a = mx::amax_step(a, minifloat::load_as_f32(x, (b * g.N + r) * g.D + d, dtype));
  }
  unsigned int bits = minifloat::f32_bits(a);
  if (g.granularity == 0) {
    if (d < g.D) atomicMax(amax + group, bits);
    return;
  }
  for (int s = 16; s > 0; s >>= 1) {
    const unsigned int o = __shfl_xor_sync(0xFFFFFFFFu, bits, s);
    bits = o > bits ? o : bits;
  }
  if ((threadIdx.x & 31) == 0 && bits != 0u) atomicMax(amax + group, bits);
}

__global__ void fp8_scale_kernel(float* __restrict__ scale, int64_t n, float scale_max) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) scale[i] = mx::amax_scale(scale[i], scale_max);  // the buffer holds the amax bits
}

__global__ void fp8_encode_kernel(const void* __restrict__ x, int dtype, Fp8Geometry g, int fmt,
                                  const float* __restrict__ scale, uint8_t* __restrict__ q) {
  const int64_t total = g.B * g.N * g.D;
  const minifloat::Format f = mx::element_format(fmt);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t sidx = 0;
    if (g.granularity == 0) {
      sidx = (i / (g.N * g.D)) * g.D + i % g.D;
    } else if (g.granularity == 1) {
      sidx = (i / (g.N * g.D)) * g.nblk + ((i / g.D) % g.N) / g.block_size;
    }
    const float s = scale[sidx];
    const float v = minifloat::load_as_f32(x, i, dtype);
    q[i] = s == 0.0f ? 0u : static_cast<uint8_t>(minifloat::encode_rne(v / s, f));
  }
}

}  // namespace

void launch_quantize_fp8(std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity,
                         int64_t block_size, float scale_max, int fmt, std::uintptr_t q, std::uintptr_t scale,
                         std::uintptr_t stream) {
  cudaStream_t st = as_stream(stream);
  Fp8Geometry g{};
  g.B = B;
  g.N = N;
  g.D = D;
  g.block_size = block_size;
  g.granularity = granularity;
  g.nblk = (N + block_size - 1) / block_size;
  g.strips_per_group = (block_size + kStripRows - 1) / kStripRows;
  g.strips_per_b = granularity == 1 ? g.nblk * g.strips_per_group : (N + kStripRows - 1) / kStripRows;
  g.dchunks = (D + kThreads - 1) / kThreads;
  const int64_t ngroups = granularity == 0 ? B * D : (granularity == 1 ? B * g.nblk : 1);
  float* sp = reinterpret_cast<float*>(scale);
  check(cudaMemsetAsync(sp, 0, ngroups * sizeof(float), st), "quantize_fp8 memset");
  const int64_t amax_blocks = B * g.strips_per_b * g.dchunks;
  fp8_amax_kernel<<<static_cast<unsigned int>(amax_blocks), kThreads, 0, st>>>(
      reinterpret_cast<const void*>(x), dtype, g, reinterpret_cast<unsigned int*>(sp));
  check(cudaGetLastError(), "fp8_amax_kernel");
  fp8_scale_kernel<<<ceil_div(ngroups, 256), 256, 0, st>>>(sp, ngroups, scale_max);
  check(cudaGetLastError(), "fp8_scale_kernel");
  const int64_t total = B * N * D;
  const int64_t enc_blocks = (total + 255) / 256 < 65536 * 8 ? (total + 255) / 256 : 65536 * 8;
  fp8_encode_kernel<<<static_cast<unsigned int>(enc_blocks), 256, 0, st>>>(
      reinterpret_cast<const void*>(x), dtype, g, fmt, sp, reinterpret_cast<uint8_t*>(q));
  check(cudaGetLastError(), "fp8_encode_kernel");
}

}  // namespace shared_kernels::cuda
