// INT8 per-block quantization on the CPU (SageAttention's Q/K quantizer), see
// include/shared_kernels/int8_quant.h for the numerics. OpenMP over blocks; an AVX-512 path for the
// mean, amax and quantize loops and a scalar fallback with identical bits.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/int8_hadamard_convert.h"
#include "registry.h"
#include "shared_kernels/int8_quant.h"

#if defined(SHARED_KERNELS_WITH_CUDA)
#include "cuda/quant_int8_launch.h"
#endif

namespace py = pybind11;

namespace shared_kernels::cpu {
namespace {

namespace i8 = shared_kernels::int8;

struct Int8Args {
  const void* x;
  int8_t* q;
  float* scale;
  float* mean;  // [B, D]; nullptr without mean subtraction
  int64_t B, N, D, block;
  float multiplier;
};

constexpr int64_t kMeanChunk = 64;  // channels per mean task

// ---- scalar path ------------------------------------------------------------------------------

template <int DT>
void mean_scalar(const Int8Args& a) {
  const int64_t chunks = (a.D + kMeanChunk - 1) / kMeanChunk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < a.B * chunks; ++t) {
    const int64_t b = t / chunks, d0 = (t % chunks) * kMeanChunk, nd = std::min(kMeanChunk, a.D - d0);
    double acc[kMeanChunk] = {};
    for (int64_t n = 0; n < a.N; ++n) {
      const int64_t row = (b * a.N + n) * a.D + d0;
      for (int64_t d = 0; d < nd; ++d) acc[d] += static_cast<double>(conv::load<DT>(a.x, row + d));
    }
    for (int64_t d = 0; d < nd; ++d) a.mean[b * a.D + d0 + d] = static_cast<float>(acc[d] / static_cast<double>(a.N));
  }
}

template <int DT, bool MEAN>
inline float y_at(const Int8Args& a, const float* mean, int64_t idx, int64_t d) {
  const float x = conv::load<DT>(a.x, idx);
  if constexpr (MEAN) return i8::transform(x, mean[d], a.multiplier);
  else return i8::transform(x, a.multiplier);
}

template <int DT, bool MEAN>
void quant_scalar(const Int8Args& a) {
  const int64_t nb = (a.N + a.block - 1) / a.block;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < a.B * nb; ++t) {
    const int64_t b = t / nb, k = t % nb;
    const int64_t rows = std::min(a.block, a.N - k * a.block);
    const int64_t base = (b * a.N + k * a.block) * a.D;
    const float* mean = MEAN ? a.mean + b * a.D : nullptr;
    float amax = 0.0f;
    bool bad = false;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t d = 0; d < a.D; ++d) {
        const float v = std::fabs(y_at<DT, MEAN>(a, mean, base + r * a.D + d, d));
        if (!i8::is_finite(v)) bad = true;
        else if (v > amax) amax = v;
      }
    }
    const float scale = i8::scale_from_amax(amax, bad);
    a.scale[t] = scale;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t d = 0; d < a.D; ++d) {
        const int64_t idx = base + r * a.D + d;
        a.q[idx] = i8::quantize(y_at<DT, MEAN>(a, mean, idx, d), scale);
      }
    }
  }
}

// ---- AVX-512 path -----------------------------------------------------------------------------
#if SK_HAVE_AVX512_TARGET

template <int DT>
SK_TARGET_AVX512 void mean_avx512(const Int8Args& a) {
  const int64_t chunks = (a.D + kMeanChunk - 1) / kMeanChunk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < a.B * chunks; ++t) {
    const int64_t b = t / chunks, d0 = (t % chunks) * kMeanChunk, nd = std::min(kMeanChunk, a.D - d0);
    __m512d acc[kMeanChunk / 8];
    for (auto& v : acc) v = _mm512_setzero_pd();
    const int64_t nvec = (nd + 15) / 16;
    for (int64_t n = 0; n < a.N; ++n) {
      const int64_t row = (b * a.N + n) * a.D + d0;
      for (int64_t j = 0; j < nvec; ++j) {
        const __m512 v = conv::load16<DT>(a.x, row + 16 * j, conv::tail_mask(nd - 16 * j));
        const __m256 lo = _mm512_castps512_ps256(v);
        const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        acc[2 * j] = _mm512_add_pd(acc[2 * j], _mm512_cvtps_pd(lo));
        acc[2 * j + 1] = _mm512_add_pd(acc[2 * j + 1], _mm512_cvtps_pd(hi));
      }
    }
    alignas(64) double sums[kMeanChunk];
    for (int64_t j = 0; j < kMeanChunk / 8; ++j) _mm512_store_pd(sums + 8 * j, acc[j]);
    for (int64_t d = 0; d < nd; ++d) a.mean[b * a.D + d0 + d] = static_cast<float>(sums[d] / static_cast<double>(a.N));
  }
}

template <int DT, bool MEAN>
SK_TARGET_AVX512 inline __m512 y16(const Int8Args& a, const float* mean, int64_t idx, int64_t d, __mmask16 m,
                                   __m512 mult) {
  const __m512 x = conv::load16<DT>(a.x, idx, m);
  if constexpr (MEAN) return _mm512_mul_ps(_mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, mean + d)), mult);
  else return _mm512_mul_ps(x, mult);
}

template <int DT, bool MEAN>
SK_TARGET_AVX512 void quant_avx512(const Int8Args& a) {
  const int64_t nb = (a.N + a.block - 1) / a.block;
  const int64_t nvec = (a.D + 15) / 16;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < a.B * nb; ++t) {
    const int64_t b = t / nb, k = t % nb;
    const int64_t rows = std::min(a.block, a.N - k * a.block);
    const int64_t base = (b * a.N + k * a.block) * a.D;
    const float* mean = MEAN ? a.mean + b * a.D : nullptr;
    const __m512 mult = _mm512_set1_ps(a.multiplier);
    const __m512 fmax = _mm512_set1_ps(FLT_MAX);
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < nvec; ++j) {
        const __mmask16 m = conv::tail_mask(a.D - 16 * j);
        const __m512 v = _mm512_abs_ps(y16<DT, MEAN>(a, mean, base + r * a.D + 16 * j, 16 * j, m, mult));
        bad |= _mm512_mask_cmp_ps_mask(m, v, fmax, _CMP_NLE_UQ);  // inf or NaN
        vmax = _mm512_mask_max_ps(vmax, m, vmax, v);
      }
    }
    const float scale = i8::scale_from_amax(_mm512_reduce_max_ps(vmax), bad != 0);
    a.scale[t] = scale;
    if (!(scale > 0.0f)) {
      std::memset(a.q + base, 0, static_cast<size_t>(rows * a.D));
      continue;
    }
    const __m512 vs = _mm512_set1_ps(scale);
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    const __m512i half = _mm512_castps_si512(_mm512_set1_ps(0.5f));
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < nvec; ++j) {
        const __mmask16 m = conv::tail_mask(a.D - 16 * j);
        const int64_t idx = base + r * a.D + 16 * j;
        const __m512 y = y16<DT, MEAN>(a, mean, idx, 16 * j, m, mult);
        const __m512 h = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(y), sign), half));
        __m512 v = _mm512_roundscale_ps(_mm512_add_ps(_mm512_div_ps(y, vs), h), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm512_mask_cvtsepi32_storeu_epi8(a.q + idx, m, _mm512_cvttps_epi32(v));
      }
    }
  }
}
#endif

template <int DT>
void run(const Int8Args& a, bool vec) {
#if SK_HAVE_AVX512_TARGET
  if (vec) {
    if (a.mean) {
      mean_avx512<DT>(a);
      quant_avx512<DT, true>(a);
    } else {
      quant_avx512<DT, false>(a);
    }
    return;
  }
#endif
  (void)vec;
  if (a.mean) {
    mean_scalar<DT>(a);
    quant_scalar<DT, true>(a);
  } else {
    quant_scalar<DT, false>(a);
  }
}

void quantize_int8_per_block_cpu(std::uintptr_t x, std::uintptr_t q, std::uintptr_t scale, std::uintptr_t mean,
                                 int64_t B, int64_t N, int64_t D, int64_t block, int dtype, double multiplier,
                                 bool force_scalar) {
  if (B < 0 || N < 1 || D < 1 || block < 1) throw std::invalid_argument("quantize_int8_per_block_cpu: bad sizes");
  Int8Args a{reinterpret_cast<const void*>(x), reinterpret_cast<int8_t*>(q), reinterpret_cast<float*>(scale),
             reinterpret_cast<float*>(mean), B, N, D, block, static_cast<float>(multiplier)};
  const bool vec = !force_scalar && avx512_enabled();
  py::gil_scoped_release release;
  switch (dtype) {
    case conv::kFloat32: run<conv::kFloat32>(a, vec); break;
    case conv::kFloat16: run<conv::kFloat16>(a, vec); break;
    case conv::kBFloat16: run<conv::kBFloat16>(a, vec); break;
    default: throw std::invalid_argument("quantize_int8_per_block_cpu: dtype code must be 0, 1 or 2");
  }
}

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(quant_int8) {
  m.def("quantize_int8_per_block_cpu", &shared_kernels::cpu::quantize_int8_per_block_cpu, py::arg("x"),
        py::arg("q"), py::arg("scale"), py::arg("mean"), py::arg("B"), py::arg("N"), py::arg("D"),
        py::arg("block_size"), py::arg("dtype"), py::arg("multiplier"), py::arg("force_scalar") = false,
        "INT8 per-block quantization of a contiguous [B, N, D] tensor (dtype 0 fp32, 1 fp16, 2 bf16): "
        "q int8 [B, N, D], scale fp32 [B, ceil(N/block)], mean fp32 [B, D] (mean=0: no mean subtraction).");
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.def(
      "quantize_int8_per_block_cuda",
      [](std::uintptr_t x, std::uintptr_t q, std::uintptr_t scale, std::uintptr_t mean, int64_t B, int64_t N,
         int64_t D, int64_t block, int dtype, double multiplier, std::uintptr_t stream) {
        py::gil_scoped_release release;
        shared_kernels::cuda::launch_quantize_int8_per_block(x, q, scale, mean, B, N, D, block, dtype,
                                                             static_cast<float>(multiplier), stream);
      },
      py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("mean"), py::arg("B"), py::arg("N"), py::arg("D"),
      py::arg("block_size"), py::arg("dtype"), py::arg("multiplier"), py::arg("stream"),
      "CUDA INT8 per-block quantization (same arguments as the CPU entry point, plus the stream).");
#endif
}
