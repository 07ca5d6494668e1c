// CPU kernel (OpenMP, scalar) of quantize_fp8: x [B, N, D] -> FP8 codes + float32 scales, with
// per-channel (over N, SageAttention's V), per-block (blocks of tokens along N) or per-tensor amax.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "registry.h"
#include "shared_kernels/microscaling.h"
#include "shared_kernels/minifloat.h"

#if defined(SHARED_KERNELS_WITH_CUDA)
#include "cuda/quant_fp8_launch.h"
#endif

namespace py = pybind11;

namespace shared_kernels::cpu {
namespace {

// granularity: 0 = per_channel (scale [B, D]), 1 = per_block (scale [B, ceil(N / bs)]),
// 2 = per_tensor (scale [1]). fmt: 1 = e4m3, 2 = e5m2 (element format ids of microscaling.h).
void quantize_fp8_cpu(std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity,
                      int64_t block_size, float scale_max, int fmt, std::uintptr_t q, std::uintptr_t scale) {
  const void* xp = reinterpret_cast<const void*>(x);
  uint8_t* qp = reinterpret_cast<uint8_t*>(q);
  float* sp = reinterpret_cast<float*>(scale);
  const auto f = mx::element_format(fmt);
  const int64_t nblk = (N + block_size - 1) / block_size;

  // Pass 1: amax per group, stored into the scale buffer, then scale = amax / scale_max.
  if (granularity == 0) {
    const int64_t chunk = 64, nchunks = (D + chunk - 1) / chunk;
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (int64_t t = 0; t < B * nchunks; ++t) {
      const int64_t b = t / nchunks, d0 = (t % nchunks) * chunk, d1 = std::min(D, d0 + chunk);
      float acc[64] = {0.0f};
      for (int64_t n = 0; n < N; ++n) {
        const int64_t row = (b * N + n) * D;
        for (int64_t d = d0; d < d1; ++d) acc[d - d0] = mx::amax_step(acc[d - d0], minifloat::load_as_f32(xp, row + d, dtype));
      }
      for (int64_t d = d0; d < d1; ++d) sp[b * D + d] = mx::amax_scale(acc[d - d0], scale_max);
    }
  } else if (granularity == 1) {
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (int64_t t = 0; t < B * nblk; ++t) {
      const int64_t b = t / nblk, n0 = (t % nblk) * block_size, n1 = std::min(N, n0 + block_size);
      float a = 0.0f;
      for (int64_t i = (b * N + n0) * D; i < (b * N + n1) * D; ++i) a = mx::amax_step(a, minifloat::load_as_f32(xp, i, dtype));
      sp[t] = mx::amax_scale(a, scale_max);
    }
  } else {
    float result = 0.0f;
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp parallel
#endif
    {
      float local = 0.0f;
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp for schedule(static) nowait
#endif
      for (int64_t i = 0; i < B * N * D; ++i) local = mx::amax_step(local, minifloat::load_as_f32(xp, i, dtype));
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp critical
#endif
      result = mx::amax_step(result, local);
    }
    sp[0] = mx::amax_scale(result, scale_max);
  }

  // Pass 2: q = encode_rne_sat(x / scale); a zero scale (all-zero group) gives q = 0.
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (int64_t r = 0; r < B * N; ++r) {
    const int64_t b = r / N, n = r % N;
    const float* srow = granularity == 0 ? sp + b * D : nullptr;
    const float sblk = granularity == 1 ? sp[b * nblk + n / block_size] : sp[0];
    for (int64_t d = 0; d < D; ++d) {
      const float s = srow ? srow[d] : sblk;
      const float v = minifloat::load_as_f32(xp, r * D + d, dtype);
      qp[r * D + d] = s == 0.0f ? 0u : static_cast<uint8_t>(minifloat::encode_rne(v / s, f));
    }
  }
}

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(quant_fp8) {
  using namespace shared_kernels;
  m.def(
      "quantize_fp8_cpu",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity, int64_t block_size,
         float scale_max, int fmt, std::uintptr_t q, std::uintptr_t scale) {
        py::gil_scoped_release nogil;
        cpu::quantize_fp8_cpu(x, dtype, B, N, D, granularity, block_size, scale_max, fmt, q, scale);
      },
      "FP8 quantization of x viewed as [B, N, D]; granularity 0=per_channel 1=per_block 2=per_tensor");
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.def(
      "quantize_fp8_cuda",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity, int64_t block_size,
         float scale_max, int fmt, std::uintptr_t q, std::uintptr_t scale, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::launch_quantize_fp8(x, dtype, B, N, D, granularity, block_size, scale_max, fmt, q, scale, stream);
      });
#endif
}
