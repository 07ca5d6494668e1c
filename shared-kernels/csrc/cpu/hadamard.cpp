// Fast Walsh-Hadamard transform on the CPU over independent groups of n in {16, 32, 64, 128}
// contiguous elements (see include/shared_kernels/hadamard.h). OpenMP over groups; an AVX-512 path
// that keeps a group in n/16 registers (in-register stages via lane permutes) and a scalar
// fallback; both run the same butterflies in the same order, so they give identical bits.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "cpu/cpu_features.h"
#include "cpu/int8_hadamard_convert.h"
#include "registry.h"
#include "shared_kernels/hadamard.h"

#if defined(SHARED_KERNELS_WITH_CUDA)
#include "cuda/hadamard_launch.h"
#endif

namespace py = pybind11;

namespace shared_kernels::cpu {
namespace {

namespace hd = shared_kernels::hadamard;

struct HadArgs {
  const void* x;
  void* y;
  const float* signs;  // n entries or nullptr
  int64_t groups;
  int n;
  bool normalize;
};

template <int DT>
void hadamard_scalar(const HadArgs& a) {
  const float c = hd::normalization_factor(a.n);
  const int n = a.n;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < a.groups; ++g) {
    float v[128];
    const int64_t base = g * n;
    for (int i = 0; i < n; ++i) v[i] = conv::load<DT>(a.x, base + i);
    if (a.signs) {
      for (int i = 0; i < n; ++i) v[i] = v[i] * a.signs[i];
    }
    hd::fwht_inplace(v, n);
    if (a.normalize) {
      for (int i = 0; i < n; ++i) v[i] = v[i] * c;
    }
    for (int i = 0; i < n; ++i) conv::store<DT>(a.y, base + i, v[i]);
  }
}

#if SK_HAVE_AVX512_TARGET
// Stage h < 16 inside one register: lane j pairs with lane j ^ h; the lane with bit h clear gets
// a + b, the other a - b (a = lower lane, b = upper lane), exactly the scalar butterfly.
template <int H>
SK_TARGET_AVX512 inline __m512 stage_in_register(__m512 v) {
  const __m512i idx = _mm512_xor_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_epi32(H));
  constexpr __mmask16 upper = H == 1 ? 0xAAAA : H == 2 ? 0xCCCC : H == 4 ? 0xF0F0 : 0xFF00;
  const __m512 p = _mm512_permutexvar_ps(idx, v);
  return _mm512_mask_sub_ps(_mm512_add_ps(v, p), upper, p, v);
}

template <int DT, int V>  // V = n / 16 registers per group
SK_TARGET_AVX512 void hadamard_avx512(const HadArgs& a) {
  constexpr int n = 16 * V;
  const __m512 c = _mm512_set1_ps(hd::normalization_factor(n));
  __m512 s[V];
  for (int k = 0; k < V; ++k) s[k] = a.signs ? _mm512_loadu_ps(a.signs + 16 * k) : _mm512_set1_ps(1.0f);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t base = g * n;
    __m512 v[V];
    for (int k = 0; k < V; ++k) v[k] = conv::load16<DT>(a.x, base + 16 * k, 0xffff);
    if (a.signs) {
      for (int k = 0; k < V; ++k) v[k] = _mm512_mul_ps(v[k], s[k]);
    }
    for (int k = 0; k < V; ++k) {
      v[k] = stage_in_register<1>(v[k]);
      v[k] = stage_in_register<2>(v[k]);
      v[k] = stage_in_register<4>(v[k]);
      v[k] = stage_in_register<8>(v[k]);
    }
    for (int hv = 1; hv < V; hv *= 2) {  // stage h = 16 * hv across registers
      for (int i = 0; i < V; i += 2 * hv) {
        for (int j = i; j < i + hv; ++j) {
          const __m512 sum = _mm512_add_ps(v[j], v[j + hv]);
          const __m512 dif = _mm512_sub_ps(v[j], v[j + hv]);
          v[j] = sum;
          v[j + hv] = dif;
        }
      }
    }
    if (a.normalize) {
      for (int k = 0; k < V; ++k) v[k] = _mm512_mul_ps(v[k], c);
    }
    for (int k = 0; k < V; ++k) conv::store16<DT>(a.y, base + 16 * k, v[k], 0xffff);
  }
}

template <int DT>
void dispatch_avx512(const HadArgs& a) {
  switch (a.n) {
    case 16: hadamard_avx512<DT, 1>(a); break;
    case 32: hadamard_avx512<DT, 2>(a); break;
    case 64: hadamard_avx512<DT, 4>(a); break;
    default: hadamard_avx512<DT, 8>(a); break;
  }
}
#endif

template <int DT>
void run(const HadArgs& a, bool vec) {
#if SK_HAVE_AVX512_TARGET
  if (vec) {
    dispatch_avx512<DT>(a);
    return;
  }
#endif
  (void)vec;
  hadamard_scalar<DT>(a);
}

void hadamard_transform_cpu(std::uintptr_t x, std::uintptr_t y, std::uintptr_t signs, int64_t groups, int n,
                            int dtype, bool normalize, bool force_scalar) {
  if (n != 16 && n != 32 && n != 64 && n != 128) {
    throw std::invalid_argument("hadamard_transform_cpu: block size must be 16, 32, 64 or 128");
  }
  if (groups < 0) throw std::invalid_argument("hadamard_transform_cpu: groups must be >= 0");
  HadArgs a{reinterpret_cast<const void*>(x), reinterpret_cast<void*>(y), reinterpret_cast<const float*>(signs),
            groups, n, normalize};
  const bool vec = !force_scalar && avx512_enabled();
  py::gil_scoped_release release;
  switch (dtype) {
    case conv::kFloat32: run<conv::kFloat32>(a, vec); break;
    case conv::kFloat16: run<conv::kFloat16>(a, vec); break;
    case conv::kBFloat16: run<conv::kBFloat16>(a, vec); break;
    default: throw std::invalid_argument("hadamard_transform_cpu: dtype code must be 0, 1 or 2");
  }
}

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(hadamard) {
  m.def("hadamard_transform_cpu", &shared_kernels::cpu::hadamard_transform_cpu, py::arg("x"), py::arg("y"),
        py::arg("signs"), py::arg("groups"), py::arg("block_size"), py::arg("dtype"), py::arg("normalize"),
        py::arg("force_scalar") = false,
        "Walsh-Hadamard transform of `groups` contiguous groups of block_size elements (dtype 0 fp32, 1 fp16, "
        "2 bf16); signs: float32[block_size] or 0.");
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.def(
      "hadamard_transform_cuda",
      [](std::uintptr_t x, std::uintptr_t y, std::uintptr_t signs, int64_t groups, int n, int dtype, bool normalize,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        shared_kernels::cuda::launch_hadamard_transform(x, y, signs, groups, n, dtype, normalize, stream);
      },
      py::arg("x"), py::arg("y"), py::arg("signs"), py::arg("groups"), py::arg("block_size"), py::arg("dtype"),
      py::arg("normalize"), py::arg("stream"), "CUDA Walsh-Hadamard transform (same arguments plus the stream).");
#endif
}
