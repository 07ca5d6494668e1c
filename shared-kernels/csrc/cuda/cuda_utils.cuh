// Small helpers shared by the CUDA launchers (no torch headers here or in any .cu file).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace shared_kernels::cuda {

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("shared_kernels CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

inline unsigned int ceil_div(long long a, long long b) { return static_cast<unsigned int>((a + b - 1) / b); }

}  // namespace shared_kernels::cuda
