// CPU kernels (OpenMP, scalar) of the microscaling ops: MXFP4 / MXFP8 and NVFP4 quantization, plus
// test hooks that expose the minifloat codecs and Philox of include/shared_kernels to Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <vector>

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

float tensor_amax(const void* xp, int dtype, int64_t n) {
  float result = 0.0f;
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp parallel
#endif
  {
    float local = 0.0f;
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp for schedule(static) nowait
#endif
    for (int64_t i = 0; i < n; ++i) local = mx::amax_step(local, minifloat::load_as_f32(xp, i, dtype));
#if defined(SHARED_KERNELS_WITH_OPENMP)
#pragma omp critical
#endif
    result = mx::amax_step(result, local);
  }
  return result;
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
    op[0] = mx::nvfp4_outer_scale(tensor_amax(xp, dtype, g.B * g.M * g.K));
  } else if (outer_mode == 1) {
    parallel_for(g.line_count(128), [&](int64_t line) { mx::nvfp4_outer128_line(xp, dtype, g, line, op); });
  } else {
    op[0] = 1.0f;
  }
  parallel_for(g.line_count(16), [&](int64_t line) {
    mx::nvfp4_quantize_line(xp, dtype, g, line, outer_mode, op, rounding, seed, offset, dp, sp);
  });
}

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(microscaling) {
  using namespace shared_kernels;
  // --- test hooks for the torch-free headers -------------------------------------------------
  m.def(
      "minifloat_encode_cpu",
      [](std::uintptr_t x, int64_t n, int fmt, int rounding, std::uintptr_t bits, std::uintptr_t out) {
        py::gil_scoped_release nogil;
        const float* xp = reinterpret_cast<const float*>(x);
        const int64_t* bp = reinterpret_cast<const int64_t*>(bits);
        uint8_t* op = reinterpret_cast<uint8_t*>(out);
        const auto f = cpu::format_of(fmt);
        cpu::parallel_for(n, [&](int64_t i) {
          op[i] = static_cast<uint8_t>(rounding ? minifloat::encode_sr(xp[i], static_cast<uint32_t>(bp[i]), f)
                                                : minifloat::encode_rne(xp[i], f));
        });
      },
      "float32[n] -> codes uint8[n]; fmt 0=e2m1 1=e4m3 2=e5m2; rounding 0=rne 1=sr with int64 bits[n]");
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
         int rounding, int64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales) {
        py::gil_scoped_release nogil;
        cpu::quantize_mx_cpu(x, dtype, mx::Geometry{B, M, K, along_rows}, elem, scale_rule, rounding,
                             static_cast<uint64_t>(seed), offset, data, scales);
      },
      "MX quantization of x viewed as [B, M, K], 32-blocks along K (along_rows=False) or M");
  m.def(
      "quantize_nvfp4_cpu",
      [](std::uintptr_t x, int dtype, int64_t B, int64_t M, int64_t K, bool along_rows, int outer_mode, int rounding,
         int64_t seed, int64_t offset, std::uintptr_t data, std::uintptr_t scales, std::uintptr_t outer) {
        py::gil_scoped_release nogil;
        cpu::quantize_nvfp4_cpu(x, dtype, mx::Geometry{B, M, K, along_rows}, outer_mode, rounding,
                                static_cast<uint64_t>(seed), offset, data, scales, outer);
      },
      "NVFP4 quantization of x viewed as [B, M, K]; outer_mode 0=tensor 1=block128 2=none");
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
