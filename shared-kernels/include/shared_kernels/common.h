// Torch-free numerics shared by the CPU build and the CUDA kernels: every function here is
// __host__ __device__, so the CPU tests exercise the very code the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SK_HD __host__ __device__ __forceinline__
#else
#define SK_HD inline
#endif
