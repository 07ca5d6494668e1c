// CPU kernel (OpenMP) of quantize_fp8: x [B, N, D] -> FP8 codes + float32 scales, with per-channel
// (over N, SageAttention's V), per-block (blocks of tokens along N) or per-tensor amax. A scalar path
// (the SK_HD codec of minifloat.h per element) and an AVX-512 path with identical bits.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/minifloat_avx512.h"
#include "cpu/tensor_amax.h"
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
void quantize_fp8_scalar(std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity,
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
    sp[0] = mx::amax_scale(tensor_amax_scalar(xp, dtype, B * N * D), scale_max);
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

// ---- AVX-512 path: same passes, 16 lanes along D -----------------------------------------------
#if SK_HAVE_AVX512_TARGET

template <int DT>
SK_TARGET_AVX512 void quantize_fp8_avx512(const void* xp, int64_t B, int64_t N, int64_t D, int granularity,
                                          int64_t block_size, float scale_max, int fmt, uint8_t* qp, float* sp) {
  const int64_t nblk = (N + block_size - 1) / block_size;
  if (granularity == 0) {
    constexpr int64_t chunk = 64;
    const int64_t nchunks = (D + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < B * nchunks; ++t) {
      const int64_t b = t / nchunks, d0 = (t % nchunks) * chunk, nd = std::min(chunk, D - d0);
      const int64_t nvec = (nd + 15) / 16;
      __m512i acc[chunk / 16];
      for (auto& a : acc) a = _mm512_setzero_si512();
      for (int64_t n = 0; n < N; ++n) {
        const int64_t row = (b * N + n) * D + d0;
        for (int64_t j = 0; j < nvec; ++j) {
          const __m512 v = conv::load16<DT>(xp, row + 16 * j, conv::tail_mask(nd - 16 * j));
          acc[j] = _mm512_max_epu32(acc[j], mf16::abs_bits16(v));
        }
      }
      alignas(64) uint32_t bits[chunk];
      for (int64_t j = 0; j < chunk / 16; ++j) _mm512_store_si512(bits + 16 * j, acc[j]);
      for (int64_t d = 0; d < nd; ++d) sp[b * D + d0 + d] = mx::amax_scale(minifloat::bits_f32(bits[d]), scale_max);
    }
  } else if (granularity == 1) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < B * nblk; ++t) {
      const int64_t b = t / nblk, n0 = (t % nblk) * block_size, n1 = std::min(N, n0 + block_size);
      const uint32_t a = mf16::amax_bits_range<DT>(xp, (b * N + n0) * D, (b * N + n1) * D);
      sp[t] = mx::amax_scale(minifloat::bits_f32(a), scale_max);
    }
  } else {
    sp[0] = mx::amax_scale(tensor_amax_avx512<DT>(xp, B * N * D), scale_max);
  }

  const mf16::Fmt16 f = mf16::make_fmt16(mx::element_format(fmt));
  const int64_t nvec = (D + 15) / 16;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * N; ++r) {
    const int64_t b = r / N, n = r % N;
    const float* srow = granularity == 0 ? sp + b * D : nullptr;
    const __m512 sblk = _mm512_set1_ps(granularity == 1 ? sp[b * nblk + n / block_size] : sp[0]);
    for (int64_t j = 0; j < nvec; ++j) {
      const __mmask16 m = conv::tail_mask(D - 16 * j);
      const __m512 s = srow ? _mm512_maskz_loadu_ps(m, srow + 16 * j) : sblk;
      const __m512 v = conv::load16<DT>(xp, r * D + 16 * j, m);
      const __m512i code = mf16::encode_rne16(_mm512_div_ps(v, s), f);
      const __mmask16 nonzero = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_NEQ_UQ);  // s == 0 -> q = 0
      mf16::store_bytes16(qp + r * D + 16 * j, m, _mm512_maskz_mov_epi32(nonzero, code));
    }
  }
}

#endif

void quantize_fp8_cpu(std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity,
                      int64_t block_size, float scale_max, int fmt, std::uintptr_t q, std::uintptr_t scale,
                      bool force_scalar) {
#if SK_HAVE_AVX512_TARGET
  if (!force_scalar && avx512_enabled()) {
    const void* xp = reinterpret_cast<const void*>(x);
    uint8_t* qp = reinterpret_cast<uint8_t*>(q);
    float* sp = reinterpret_cast<float*>(scale);
    if (dtype == 0) quantize_fp8_avx512<0>(xp, B, N, D, granularity, block_size, scale_max, fmt, qp, sp);
    if (dtype == 1) quantize_fp8_avx512<1>(xp, B, N, D, granularity, block_size, scale_max, fmt, qp, sp);
    if (dtype == 2) quantize_fp8_avx512<2>(xp, B, N, D, granularity, block_size, scale_max, fmt, qp, sp);
    return;
  }
#endif
  (void)force_scalar;
  quantize_fp8_scalar(x, dtype, B, N, D, granularity, block_size, scale_max, fmt, q, scale);
}

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(quant_fp8) {
  using namespace shared_kernels;
  m.def(
      "quantize_fp8_cpu",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t N, int64_t D, int granularity, int64_t block_size,
         float scale_max, int fmt, std::uintptr_t q, std::uintptr_t scale, bool force_scalar) {
        py::gil_scoped_release nogil;
        cpu::quantize_fp8_cpu(x, dtype, B, N, D, granularity, block_size, scale_max, fmt, q, scale, force_scalar);
      },
      py::arg("x"), py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("D"), py::arg("granularity"),
      py::arg("block_size"), py::arg("scale_max"), py::arg("fmt"), py::arg("q"), py::arg("scale"),
      py::arg("force_scalar") = false,
      "FP8 quantization of x viewed as [B, N, D]; granularity 0=per_channel 1=per_block 2=per_tensor; "
      "force_scalar skips the AVX-512 path (identical bits)");
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
