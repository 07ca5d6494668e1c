// Bindings of the SageAttention2 INT4-QK forward kernel (CUDA only; the CPU backend of the op is the PyTorch
// reference). Registers nothing in a CPU-only build.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "registry.h"

#if defined(SHARED_KERNELS_WITH_CUDA)
#include "shared_kernels/sage_attention.h"
#endif

namespace py = pybind11;

SK_REGISTER_BINDINGS(sage_attention_int4) {
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.def(
      "sage_attention_fwd_int4_cuda",
      [](std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale, std::uintptr_t k_scale,
         std::uintptr_t v_scale, std::uintptr_t out, std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv,
         int64_t Nq, int64_t Nk, int64_t D, int64_t q_scale_len, int64_t k_scale_len, int64_t warp_q, bool causal,
         int pv_fp8, int out_dtype, std::uintptr_t bias, int64_t bias_rows, std::uintptr_t stream) {
        py::gil_scoped_release release;
        shared_kernels::cuda::launch_sage_attention_fwd_int4(q, k, v, q_scale, k_scale, v_scale, out, lse, B, Hq, Hkv,
                                                             Nq, Nk, D, q_scale_len, k_scale_len, warp_q, causal,
                                                             pv_fp8, out_dtype, bias, bias_rows, stream);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("q_scale"), py::arg("k_scale"), py::arg("v_scale"),
      py::arg("out"), py::arg("lse"), py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("Nq"), py::arg("Nk"),
      py::arg("D"), py::arg("q_scale_len"), py::arg("k_scale_len"), py::arg("warp_q"), py::arg("causal"),
      py::arg("pv_fp8"), py::arg("out_dtype"), py::arg("bias"), py::arg("bias_rows"), py::arg("stream"),
      "SageAttention2 forward with INT4 Q.K^T (packed, two per byte, low nibble first) and per-thread scales, "
      "optional Q-smoothing bias rows, FP16 or FP8 e4m3 (sm89+) P.V. See include/shared_kernels/sage_attention.h.");
#else
  (void)m;
#endif
}
