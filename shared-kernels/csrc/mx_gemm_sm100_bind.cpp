// Python bindings of the CUTLASS block-scaled MX GEMM for sm100a (csrc/cuda_sm100/mx_gemm_sm100.cu).
// Present only when CMake compiled that file (CUDA build with 100a in SHARED_KERNELS_CUDA_ARCHS).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "registry.h"

#if defined(SHARED_KERNELS_WITH_SM100_MX_GEMM)
#include "cuda_sm100/mx_gemm_sm100_launch.h"
#endif

namespace py = pybind11;

SK_REGISTER_BINDINGS(mx_gemm_sm100) {
#if defined(SHARED_KERNELS_WITH_SM100_MX_GEMM)
  m.def("mx_gemm_sm100_workspace_size", &shared_kernels::cuda::mx_gemm_sm100_workspace_size, py::arg("fmt"),
        py::arg("out_dtype"), py::arg("M"), py::arg("N"), py::arg("K"),
        "Bytes of device workspace the sm100a MX GEMM needs for this problem.");
  m.def(
      "mx_gemm_sm100_cuda",
      [](int fmt, int out_dtype, std::uintptr_t a, std::uintptr_t sfa, std::uintptr_t b, std::uintptr_t sfb,
         std::uintptr_t out, int64_t M, int64_t N, int64_t K, std::uintptr_t workspace, std::size_t workspace_bytes,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        shared_kernels::cuda::launch_mx_gemm_sm100(fmt, out_dtype, a, sfa, b, sfb, out, M, N, K, workspace,
                                                   workspace_bytes, stream);
      },
      py::arg("fmt"), py::arg("out_dtype"), py::arg("a"), py::arg("sfa"), py::arg("b"), py::arg("sfb"),
      py::arg("out"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("stream"),
      "CUTLASS sm100a block-scaled GEMM out[M, N] = A . B^T (fmt 0 MXFP4 x MXFP4, 1 MXFP8 E4M3 x E4M3; out_dtype "
      "0 fp32, 2 bf16; scales in CUTLASS's 128x4 block-scaled layout).");
  m.attr("mx_gemm_sm100_compiled") = true;
#else
  m.attr("mx_gemm_sm100_compiled") = false;
#endif
}
