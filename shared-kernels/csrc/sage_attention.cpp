// Bindings of the SageAttention2 forward kernel (CUDA only; the CPU backend of the op is the PyTorch
// reference). Registers nothing in a CPU-only build.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "registry.h"

#if defined(SHARED_KERNELS_WITH_CUDA)
#include "shared_kernels/sage_attention.h"
#endif

namespace py = pybind11;

SK_REGISTER_BINDINGS(sage_attention) {
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.def(
      "sage_attention_fwd_cuda",
      [](std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale, std::uintptr_t k_scale,
         std::uintptr_t v_scale, std::uintptr_t out, std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv,
         int64_t Nq, int64_t Nk, int64_t D, int64_t q_scale_len, int64_t k_scale_len, int64_t warp_q, bool causal,
         int pv_mode, int out_dtype, std::uintptr_t stream) {
        py::gil_scoped_release release;
        shared_kernels::cuda::launch_sage_attention_fwd(q, k, v, q_scale, k_scale, v_scale, out, lse, B, Hq, Hkv, Nq,
                                                        Nk, D, q_scale_len, k_scale_len, warp_q, causal, pv_mode,
                                                        out_dtype, stream);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("q_scale"), py::arg("k_scale"), py::arg("v_scale"),
      py::arg("out"), py::arg("lse"), py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("Nq"), py::arg("Nk"),
      py::arg("D"), py::arg("q_scale_len"), py::arg("k_scale_len"), py::arg("warp_q"), py::arg("causal"),
      py::arg("pv_mode"), py::arg("out_dtype"), py::arg("stream"),
      "SageAttention2 forward: INT8 QK^T with per-thread scales and P.V mode pv_mode: 0 fp16 V, fp32 "
      "accumulation; 1 fp8 e4m3 V (sm89+), fp32+fp32; 2 fp8 V (sm89+), fp32+fp16 (SageAttention2++); 3 fp16 V, "
      "fp16+fp32; 4 fp16 V, fp16. out dtype code 1 fp16, 2 bf16; lse natural log. See "
      "include/shared_kernels/sage_attention.h.");
#else
  (void)m;
#endif
}
