// CPU kernels (OpenMP) of the microscaling ops: MXFP4 / MXFP8 and NVFP4 quantization, plus test hooks
// that expose the minifloat codecs and Philox of include/shared_kernels to Python. The scalar path
// runs the SK_HD per-line bodies of microscaling.h; the AVX-512 path (RNE only: stochastic rounding
// stays scalar) gives identical bits: 16 elements of a line per vector for blocks along K, 16
// neighbouring columns (one line per lane) for blocks along M.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <algorithm>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/minifloat_avx512.h"
#include "cpu/tensor_amax.h"
#include "registry.h"
#include "shared_kernels/microscaling.h"
#include "shared_kernels/minifloat.h"
#include "shared_kernels/philox.h"

#if defined(SHARED_KERNELS_WITH_CUDA)
#include "cuda/microscaling_launch.h"
#endif

namespace py = pybind11;

namespace shared_kernels::cpu {
namespace {

using minifloat::Format;

Format format_of(int fmt) { return mx::element_format(fmt); }

template <typename F>
void parallel_for(int64_t n, F&& f) {
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (int64_t i = 0; i < n; ++i) f(i);
}

// The per-line bodies live in microscaling.h (the CUDA kernels run the same functions, one thread
// per line). Elem, Rounding and Dtype are compile-time here so the codec folds per combination.
template <int Elem, int Rounding, int Dtype>
void quantize_mx_lines(const void* xp, const mx::Geometry& g, int scale_rule, uint64_t seed, int64_t offset,
                       uint8_t* dp, uint8_t* sp) {
  parallel_for(g.line_count(32), [&](int64_t line) {
    mx::mx_quantize_line(xp, Dtype, g, line, Elem, scale_rule, Rounding, seed, offset, dp, sp);
  });
}

template <int Elem, int Rounding>
void quantize_mx_dtype(int dtype, const void* xp, const mx::Geometry& g, int scale_rule, uint64_t seed,
                       int64_t offset, uint8_t* dp, uint8_t* sp) {
  if (dtype == 0) quantize_mx_lines<Elem, Rounding, 0>(xp, g, scale_rule, seed, offset, dp, sp);
  if (dtype == 1) quantize_mx_lines<Elem, Rounding, 1>(xp, g, scale_rule, seed, offset, dp, sp);
  if (dtype == 2) quantize_mx_lines<Elem, Rounding, 2>(xp, g, scale_rule, seed, offset, dp, sp);
}

template <int Elem>
void quantize_mx_rounding(int rounding, int dtype, const void* xp, const mx::Geometry& g, int scale_rule,
                          uint64_t seed, int64_t offset, uint8_t* dp, uint8_t* sp) {
  if (rounding) {
    quantize_mx_dtype<Elem, 1>(dtype, xp, g, scale_rule, seed, offset, dp, sp);
  } else {
    quantize_mx_dtype<Elem, 0>(dtype, xp, g, scale_rule, seed, offset, dp, sp);
  }
}

void quantize_mx_cpu(std::uintptr_t x, int dtype, const mx::Geometry& g, int elem, int scale_rule, int rounding,
                     uint64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales) {
  const void* xp = reinterpret_cast<const void*>(x);
  uint8_t* dp = reinterpret_cast<uint8_t*>(data);
  uint8_t* sp = reinterpret_cast<uint8_t*>(scales);
  if (elem == 0) quantize_mx_rounding<0>(rounding, dtype, xp, g, scale_rule, seed, offset, dp, sp);
  if (elem == 1) quantize_mx_rounding<1>(rounding, dtype, xp, g, scale_rule, seed, offset, dp, sp);
  if (elem == 2) quantize_mx_rounding<2>(rounding, dtype, xp, g, scale_rule, seed, offset, dp, sp);
}

// outer_mode: 0 = tensor, 1 = block128, 2 = none. Same passes as the CUDA launcher: outer scales
// first, then one 16-element line at a time.
void quantize_nvfp4_cpu(std::uintptr_t x, int dtype, const mx::Geometry& g, int outer_mode, int rounding,
                        uint64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales,
                        std::uintptr_t outer) {
  const void* xp = reinterpret_cast<const void*>(x);
  uint8_t* dp = reinterpret_cast<uint8_t*>(data);
  uint8_t* sp = reinterpret_cast<uint8_t*>(scales);
  float* op = reinterpret_cast<float*>(outer);
  if (outer_mode == 0) {
    op[0] = mx::nvfp4_outer_scale(tensor_amax_scalar(xp, dtype, g.B * g.M * g.K));
  } else if (outer_mode == 1) {
    parallel_for(g.line_count(128), [&](int64_t line) { mx::nvfp4_outer128_line(xp, dtype, g, line, op); });
  } else {
    op[0] = 1.0f;
  }
  parallel_for(g.line_count(16), [&](int64_t line) {
    mx::nvfp4_quantize_line(xp, dtype, g, line, outer_mode, op, rounding, seed, offset, dp, sp);
  });
}

// ---- AVX-512 path (RNE) -------------------------------------------------------------------------
#if SK_HAVE_AVX512_TARGET

// Blocks of 32 along K (axis -1): line = 32 contiguous elements, two vectors.
template <int DT>
SK_TARGET_AVX512 void mx_rows_avx512(const void* xp, const mx::Geometry& g, int elem, int scale_rule, uint8_t* dp,
                                     uint8_t* sp) {
  const mf16::Fmt16 f = mf16::make_fmt16(mx::element_format(elem));
  const int64_t lines = g.line_count(32);
#pragma omp parallel for schedule(static)
  for (int64_t line = 0; line < lines; ++line) {
    const int64_t f0 = line * 32;
    const __m512 x0 = conv::load16<DT>(xp, f0, 0xFFFF), x1 = conv::load16<DT>(xp, f0 + 16, 0xFFFF);
    const uint32_t a = _mm512_reduce_max_epu32(_mm512_max_epu32(mf16::abs_bits16(x0), mf16::abs_bits16(x1)));
    const uint32_t sbyte = mx::shared_exponent_byte(minifloat::bits_f32(a), elem, scale_rule);
    sp[line] = static_cast<uint8_t>(sbyte);
    const __m512 inv = _mm512_set1_ps(1.0f / minifloat::decode_e8m0(sbyte));
    const __m512i c0 = mf16::encode_rne16(_mm512_mul_ps(x0, inv), f);
    const __m512i c1 = mf16::encode_rne16(_mm512_mul_ps(x1, inv), f);
    if (elem == 0) {
      mf16::pack_e2m1_16(dp + f0 / 2, c0);
      mf16::pack_e2m1_16(dp + f0 / 2 + 8, c1);
    } else {
      mf16::store_bytes16(dp + f0, 0xFFFF, c0);
      mf16::store_bytes16(dp + f0 + 16, 0xFFFF, c1);
    }
  }
}

// Blocks of 32 along M (axis -2): lanes = 16 neighbouring columns k0 .. k0 + 15, one line each.
template <int DT>
SK_TARGET_AVX512 void mx_cols_avx512(const void* xp, const mx::Geometry& g, int elem, int scale_rule, uint8_t* dp,
                                     uint8_t* sp) {
  const mf16::Fmt16 f = mf16::make_fmt16(mx::element_format(elem));
  const int64_t K = g.K, segs = g.M / 32, kvec = (K + 15) / 16;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < g.B * segs * kvec; ++t) {
    const int64_t k0 = (t % kvec) * 16, bs = t / kvec;  // bs = b * segs + seg
    const __mmask16 m = conv::tail_mask(K - k0);
    const int64_t base = bs * 32 * K + k0;
    __m512i acc = _mm512_setzero_si512();
    for (int64_t j = 0; j < 32; ++j) acc = _mm512_max_epu32(acc, mf16::abs_bits16(conv::load16<DT>(xp, base + j * K, m)));
    const __m512i sbyte = mf16::shared_exponent_byte16(acc, elem, scale_rule);
    mf16::store_bytes16(sp + bs * K + k0, m, sbyte);
    const __m512 vinv = _mm512_div_ps(_mm512_set1_ps(1.0f), mf16::decode_e8m0_16(sbyte));
    if (elem == 0) {
      for (int64_t p = 0; p < 16; ++p) {
        const __m512i lo = mf16::encode_rne16(_mm512_mul_ps(conv::load16<DT>(xp, base + 2 * p * K, m), vinv), f);
        const __m512i hi = mf16::encode_rne16(_mm512_mul_ps(conv::load16<DT>(xp, base + (2 * p + 1) * K, m), vinv), f);
        mf16::store_bytes16(dp + (bs * 16 + p) * K + k0, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)));
      }
    } else {
      for (int64_t j = 0; j < 32; ++j) {
        const __m512i c = mf16::encode_rne16(_mm512_mul_ps(conv::load16<DT>(xp, base + j * K, m), vinv), f);
        mf16::store_bytes16(dp + base + j * K, m, c);
      }
    }
  }
}

template <int DT>
SK_TARGET_AVX512 void nvfp4_avx512(const void* xp, const mx::Geometry& g, int outer_mode, uint8_t* dp, uint8_t* sp,
                                   float* op) {
  const mf16::Fmt16 f = mf16::make_fmt16(minifloat::e2m1());
  const mf16::Fmt16 fe4m3 = mf16::make_fmt16(minifloat::e4m3());
  const int64_t K = g.K;
  // outer scales
  if (outer_mode == 0) {
    op[0] = mx::nvfp4_outer_scale(tensor_amax_avx512<DT>(xp, g.B * g.M * K));
  } else if (outer_mode == 1 && !g.along_rows) {
#pragma omp parallel for schedule(static)
    for (int64_t line = 0; line < g.line_count(128); ++line) {
      const uint32_t a = mf16::amax_bits_range<DT>(xp, line * 128, line * 128 + 128);
      op[line] = mx::nvfp4_outer_scale(minifloat::bits_f32(a));
    }
  } else if (outer_mode == 1) {
    const int64_t segs = g.M / 128, kvec = (K + 15) / 16;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < g.B * segs * kvec; ++t) {
      const int64_t k0 = (t % kvec) * 16, bs = t / kvec;
      const __mmask16 m = conv::tail_mask(K - k0);
      __m512i acc = _mm512_setzero_si512();
      for (int64_t j = 0; j < 128; ++j) {
        acc = _mm512_max_epu32(acc, mf16::abs_bits16(conv::load16<DT>(xp, (bs * 128 + j) * K + k0, m)));
      }
      alignas(64) uint32_t amax[16];
      _mm512_store_si512(amax, acc);
      for (int64_t l = 0; l < std::min<int64_t>(16, K - k0); ++l) {
        op[bs * K + k0 + l] = mx::nvfp4_outer_scale(minifloat::bits_f32(amax[l]));
      }
    }
  } else {
    op[0] = 1.0f;
  }
  // 16-blocks
  if (!g.along_rows) {
#pragma omp parallel for schedule(static)
    for (int64_t line = 0; line < g.line_count(16); ++line) {
      const int64_t f0 = line * 16;
      const __m512 x = conv::load16<DT>(xp, f0, 0xFFFF);
      const uint32_t a = _mm512_reduce_max_epu32(mf16::abs_bits16(x));
      const float outer = outer_mode == 2 ? 1.0f : op[outer_mode == 1 ? f0 / 128 : 0];
      const uint32_t sc = mx::nvfp4_block_scale_code(minifloat::bits_f32(a), outer);
      sp[line] = static_cast<uint8_t>(sc);
      const float denom = mx::nvfp4_denominator(sc, outer);
      __m512i c = _mm512_setzero_si512();
      if (denom != 0.0f) c = mf16::encode_rne16(_mm512_div_ps(x, _mm512_set1_ps(denom)), f);
      mf16::pack_e2m1_16(dp + f0 / 2, c);
    }
    return;
  }
  const int64_t segs = g.M / 16, kvec = (K + 15) / 16;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < g.B * segs * kvec; ++t) {
    const int64_t k0 = (t % kvec) * 16, bs = t / kvec;  // bs = b * segs + seg
    const __mmask16 m = conv::tail_mask(K - k0);
    const int64_t base = bs * 16 * K + k0;
    __m512i acc = _mm512_setzero_si512();
    for (int64_t j = 0; j < 16; ++j) acc = _mm512_max_epu32(acc, mf16::abs_bits16(conv::load16<DT>(xp, base + j * K, m)));
    const int64_t b = bs / segs, m16 = (bs % segs) * 16;
    __m512 outer;
    if (outer_mode == 1) outer = _mm512_maskz_loadu_ps(m, op + (b * (g.M / 128) + m16 / 128) * K + k0);
    else outer = _mm512_set1_ps(outer_mode == 2 ? 1.0f : op[0]);
    // nvfp4_block_scale_code and nvfp4_denominator, 16 lanes
    const __m512 q = _mm512_div_ps(_mm512_castsi512_ps(acc), _mm512_mul_ps(_mm512_set1_ps(6.0f), outer));
    const __mmask16 outer_nonzero = _mm512_cmp_ps_mask(outer, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    const __m512i sc = _mm512_maskz_mov_epi32(outer_nonzero, mf16::encode_rne16(q, fe4m3));
    mf16::store_bytes16(sp + bs * K + k0, m, sc);
    const __m512 vd = _mm512_mul_ps(mf16::decode_e4m3_pos16(sc), outer);
    const __mmask16 nonzero = _mm512_cmp_ps_mask(vd, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    for (int64_t p = 0; p < 8; ++p) {
      const __m512i lo = mf16::encode_rne16(_mm512_div_ps(conv::load16<DT>(xp, base + 2 * p * K, m), vd), f);
      const __m512i hi = mf16::encode_rne16(_mm512_div_ps(conv::load16<DT>(xp, base + (2 * p + 1) * K, m), vd), f);
      const __m512i byte = _mm512_maskz_mov_epi32(nonzero, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)));
      mf16::store_bytes16(dp + (bs * 8 + p) * K + k0, m, byte);
    }
  }
}

template <int DT>
SK_TARGET_AVX512 void encode_rne_avx512(const float* xp, int64_t n, int fmt, uint8_t* op) {
  const mf16::Fmt16 f = mf16::make_fmt16(format_of(fmt));
  const int64_t nvec = (n + 15) / 16;
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < nvec; ++j) {
    const __mmask16 m = conv::tail_mask(n - 16 * j);
    mf16::store_bytes16(op + 16 * j, m, mf16::encode_rne16(_mm512_maskz_loadu_ps(m, xp + 16 * j), f));
  }
}

#endif

bool use_avx512(bool force_scalar) {
#if SK_HAVE_AVX512_TARGET
  return !force_scalar && avx512_enabled();
#else
  (void)force_scalar;
  return false;
#endif
}

void quantize_mx(std::uintptr_t x, int dtype, const mx::Geometry& g, int elem, int scale_rule, int rounding,
                 uint64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales, bool force_scalar) {
#if SK_HAVE_AVX512_TARGET
  if (rounding == 0 && use_avx512(force_scalar)) {
    const void* xp = reinterpret_cast<const void*>(x);
    uint8_t* dp = reinterpret_cast<uint8_t*>(data);
    uint8_t* sp = reinterpret_cast<uint8_t*>(scales);
    auto run = [&](auto dt) {
      constexpr int DT = decltype(dt)::value;
      if (g.along_rows) mx_cols_avx512<DT>(xp, g, elem, scale_rule, dp, sp);
      else mx_rows_avx512<DT>(xp, g, elem, scale_rule, dp, sp);
    };
    if (dtype == 0) run(std::integral_constant<int, 0>{});
    if (dtype == 1) run(std::integral_constant<int, 1>{});
    if (dtype == 2) run(std::integral_constant<int, 2>{});
    return;
  }
#endif
  (void)force_scalar;
  quantize_mx_cpu(x, dtype, g, elem, scale_rule, rounding, seed, offset, data, scales);
}

void quantize_nvfp4(std::uintptr_t x, int dtype, const mx::Geometry& g, int outer_mode, int rounding, uint64_t seed,
                    int64_t offset, std::uintptr_t data, std::uintptr_t scales, std::uintptr_t outer,
                    bool force_scalar) {
#if SK_HAVE_AVX512_TARGET
  if (rounding == 0 && use_avx512(force_scalar)) {
    const void* xp = reinterpret_cast<const void*>(x);
    uint8_t* dp = reinterpret_cast<uint8_t*>(data);
    uint8_t* sp = reinterpret_cast<uint8_t*>(scales);
    float* op = reinterpret_cast<float*>(outer);
    if (dtype == 0) nvfp4_avx512<0>(xp, g, outer_mode, dp, sp, op);
    if (dtype == 1) nvfp4_avx512<1>(xp, g, outer_mode, dp, sp, op);
    if (dtype == 2) nvfp4_avx512<2>(xp, g, outer_mode, dp, sp, op);
    return;
  }
#endif
  (void)force_scalar;
  quantize_nvfp4_cpu(x, dtype, g, outer_mode, rounding, seed, offset, data, scales, outer);
}

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(microscaling) {
  using namespace shared_kernels;
  // --- test hooks for the torch-free headers -------------------------------------------------
  m.def(
      "minifloat_encode_cpu",
      [](std::uintptr_t x, int64_t n, int fmt, int rounding, std::uintptr_t bits, std::uintptr_t out,
         bool force_scalar) {
        py::gil_scoped_release nogil;
        const float* xp = reinterpret_cast<const float*>(x);
        const int64_t* bp = reinterpret_cast<const int64_t*>(bits);
        uint8_t* op = reinterpret_cast<uint8_t*>(out);
#if SK_HAVE_AVX512_TARGET
        if (rounding == 0 && cpu::use_avx512(force_scalar)) {
          cpu::encode_rne_avx512<0>(xp, n, fmt, op);
          return;
        }
#endif
        (void)force_scalar;
        const auto f = cpu::format_of(fmt);
        cpu::parallel_for(n, [&](int64_t i) {
          op[i] = static_cast<uint8_t>(rounding ? minifloat::encode_sr(xp[i], static_cast<uint32_t>(bp[i]), f)
                                                : minifloat::encode_rne(xp[i], f));
        });
      },
      py::arg("x"), py::arg("n"), py::arg("fmt"), py::arg("rounding"), py::arg("bits"), py::arg("out"),
      py::arg("force_scalar") = false,
      "float32[n] -> codes uint8[n]; fmt 0=e2m1 1=e4m3 2=e5m2; rounding 0=rne 1=sr with int64 bits[n]; "
      "force_scalar skips the AVX-512 RNE path");
  m.def(
      "minifloat_decode_cpu",
      [](std::uintptr_t codes, int64_t n, int fmt, std::uintptr_t out) {
        py::gil_scoped_release nogil;
        const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes);
        float* op = reinterpret_cast<float*>(out);
        if (fmt == 3) {
          cpu::parallel_for(n, [&](int64_t i) { op[i] = minifloat::decode_e8m0(cp[i]); });
          return;
        }
        const auto f = cpu::format_of(fmt);
        cpu::parallel_for(n, [&](int64_t i) { op[i] = minifloat::decode(cp[i], f); });
      },
      "codes uint8[n] -> float32[n]; fmt 0=e2m1 1=e4m3 2=e5m2 3=e8m0");
  m.def(
      "philox_bits_cpu",
      [](int64_t seed, int64_t offset, int64_t n, std::uintptr_t out) {
        py::gil_scoped_release nogil;
        int64_t* op = reinterpret_cast<int64_t*>(out);
        cpu::parallel_for(n, [&](int64_t i) {
          op[i] = philox::element_bits(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset + i));
        });
      },
      "32 Philox bits (as int64) of elements offset .. offset + n - 1");
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
        const auto r = philox::philox4x32_10(philox::U32x4{{ctr[0], ctr[1], ctr[2], ctr[3]}}, key[0], key[1]);
        return std::array<uint32_t, 4>{r.v[0], r.v[1], r.v[2], r.v[3]};
      },
      "one Philox4x32-10 block (counter words, key words) -> four words");
  // --- ops -----------------------------------------------------------------------------------
  m.def(
      "quantize_mx_cpu",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows, int elem, int scale_rule,
         int rounding, int64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales, bool force_scalar) {
        py::gil_scoped_release nogil;
        cpu::quantize_mx(x, dtype, mx::Geometry{B, M, K, along_rows}, elem, scale_rule, rounding,
                         static_cast<uint64_t>(seed), offset, data, scales, force_scalar);
      },
      py::arg("x"), py::arg("dtype"), py::arg("B"), py::arg("M"), py::arg("K"), py::arg("along_rows"),
      py::arg("elem"), py::arg("scale_rule"), py::arg("rounding"), py::arg("seed"), py::arg("offset"),
      py::arg("data"), py::arg("scales"), py::arg("force_scalar") = false,
      "MX quantization of x viewed as [B, M, K], 32-blocks along K (along_rows=False) or M; force_scalar "
      "skips the AVX-512 path (RNE only; identical bits)");
  m.def(
      "quantize_nvfp4_cpu",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows, int outer_mode, int rounding,
         int64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales, std::uintptr_t outer,
         bool force_scalar) {
        py::gil_scoped_release nogil;
        cpu::quantize_nvfp4(x, dtype, mx::Geometry{B, M, K, along_rows}, outer_mode, rounding,
                            static_cast<uint64_t>(seed), offset, data, scales, outer, force_scalar);
      },
      py::arg("x"), py::arg("dtype"), py::arg("B"), py::arg("M"), py::arg("K"), py::arg("along_rows"),
      py::arg("outer_mode"), py::arg("rounding"), py::arg("seed"), py::arg("offset"), py::arg("data"),
      py::arg("scales"), py::arg("outer"), py::arg("force_scalar") = false,
      "NVFP4 quantization of x viewed as [B, M, K]; outer_mode 0=tensor 1=block128 2=none; force_scalar "
      "skips the AVX-512 path (RNE only; identical bits)");
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.def(
      "quantize_mx_cuda",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows, int elem, int scale_rule,
         int rounding, int64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::launch_quantize_mx(x, dtype, B, M, K, along_rows, elem, scale_rule, rounding, static_cast<uint64_t>(seed),
                                 offset, data, scales, stream);
      });
  m.def(
      "quantize_nvfp4_cuda",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows, int outer_mode, int rounding,
         int64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales, std::uintptr_t outer,
         std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::launch_quantize_nvfp4(x, dtype, B, M, K, along_rows, outer_mode, rounding, static_cast<uint64_t>(seed),
                                    offset, data, scales, outer, stream);
      });
#endif
}
