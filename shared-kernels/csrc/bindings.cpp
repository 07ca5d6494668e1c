// The compiled module `shared_kernels._C`. It never links libtorch: every kernel entry point takes
// raw addresses (uintptr_t), sizes, strides and, for CUDA, a stream handle as an integer.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "registry.h"

#if defined(SHARED_KERNELS_WITH_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace shared_kernels::cpu {

static std::atomic<int> g_force_scalar{-1};

bool avx512_compiled() { return SK_HAVE_AVX512_TARGET != 0; }

bool avx512_enabled() {
  int force = g_force_scalar.load();
  if (force < 0) {
    const char* isa = std::getenv("SHARED_KERNELS_CPU_ISA");
    force = (isa != nullptr && std::strcmp(isa, "scalar") == 0) ? 1 : 0;
    g_force_scalar.store(force);
  }
  const auto& f = cpu_features();
  return !force && avx512_compiled() && f.avx512f && f.avx512bw && f.avx512vl;
}

}  // namespace shared_kernels::cpu

PYBIND11_MODULE(_C, m) {
  m.doc() = "shared-kernels compiled core (CPU always; CUDA when built with nvcc)";
  using namespace shared_kernels;
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.attr("cuda_compiled") = true;
  m.attr("cuda_archs") = std::string(SHARED_KERNELS_CUDA_ARCHS);
  m.attr("cuda_version") = std::string(SHARED_KERNELS_CUDA_VERSION);
  m.attr("cutlass_version") = std::string(SHARED_KERNELS_CUTLASS_VERSION);
#else
  m.attr("cuda_compiled") = false;
  m.attr("cuda_archs") = std::string();
  m.attr("cuda_version") = std::string();
  m.attr("cutlass_version") = std::string();
#endif
#if defined(SHARED_KERNELS_WITH_OPENMP)
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.def("cpu_features", [] {
    const auto& f = cpu::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512vnni"] = f.avx512vnni;
    d["avx512_compiled"] = cpu::avx512_compiled();
    d["avx512_enabled"] = cpu::avx512_enabled();
    return d;
  });
  m.def("num_threads", [] {
#if defined(SHARED_KERNELS_WITH_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  std::vector<std::string> names;
  for (auto& [name, fn] : bind::registry()) {
    fn(m);
    names.emplace_back(name);
  }
  m.attr("binding_groups") = names;
}
