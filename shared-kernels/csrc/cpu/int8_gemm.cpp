// INT8 GEMM with per-block scales on the CPU (SageAttention's S = Q.K^T on INT8 operands), see
// include/shared_kernels/int8_gemm.h for the numerics. OpenMP over output tiles; an AVX-512 VNNI
// path (vpdpbusd) and a scalar fallback, both exact int32 accumulation, so identical bits.
//
// VNNI trick: vpdpbusd multiplies unsigned by signed bytes, so b is packed as u8 = b + 128 (b ^ 0x80)
// and sum_k a * (b + 128) - 128 * sum_k a = sum_k a * b. The int32 lanes wrap (modular arithmetic),
// and the final value fits in int32 for K <= kMaxK, so the result is exact.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/int8_hadamard_convert.h"
#include "registry.h"
#include "shared_kernels/int8_gemm.h"

#if defined(SHARED_KERNELS_WITH_CUDA)
#include "cuda/int8_gemm_launch.h"
#endif

namespace py = pybind11;

namespace shared_kernels::cpu {
namespace {

namespace ig = shared_kernels::int8_gemm;

struct GemmArgs {
  const int8_t* a;   // [B, M, K]
  const int8_t* b;   // [B, N, K]
  const float* sa;   // [B, ceil(M / bm)]
  const float* sb;   // [B, ceil(N / bn)]
  void* out;         // [B, M, N]
  int64_t B, M, N, K, bm, bn;
  int64_t nbm() const { return (M + bm - 1) / bm; }
  int64_t nbn() const { return (N + bn - 1) / bn; }
};

constexpr int64_t kRowChunk = 32;  // rows of a per OpenMP task

// ---- scalar path ------------------------------------------------------------------------------

template <int DT>
void gemm_scalar(const GemmArgs& g) {
  const int64_t chunks = (g.M + kRowChunk - 1) / kRowChunk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < g.B * chunks; ++t) {
    const int64_t bi = t / chunks, i0 = (t % chunks) * kRowChunk, i1 = std::min(i0 + kRowChunk, g.M);
    for (int64_t i = i0; i < i1; ++i) {
      const int8_t* arow = g.a + (bi * g.M + i) * g.K;
      const float sa = g.sa[bi * g.nbm() + i / g.bm];
      for (int64_t j = 0; j < g.N; ++j) {
        const int8_t* brow = g.b + (bi * g.N + j) * g.K;
        int32_t acc = 0;
        for (int64_t k = 0; k < g.K; ++k) acc += static_cast<int32_t>(arow[k]) * static_cast<int32_t>(brow[k]);
        conv::store<DT>(g.out, (bi * g.M + i) * g.N + j, ig::dequant(acc, sa, g.sb[bi * g.nbn() + j / g.bn]));
      }
    }
  }
}

// ---- AVX-512 VNNI path ------------------------------------------------------------------------
#if SK_HAVE_AVX512_TARGET

constexpr int kMR = 4;            // rows per micro-tile
constexpr int kNV = 4;            // 16-column vectors per micro-tile
constexpr int64_t kNR = 16 * kNV;  // columns per packed panel
constexpr int64_t kPanelQuad = kNR * 4;  // bytes of one panel per 4 values of k

// b [N, K] -> panels [ceil(N / 64)][ceil(K / 4)][64 columns][4 k] of u8 = b ^ 0x80, zero padded
// (a zero u8 contributes nothing, so padded columns and k are harmless). Called inside a parallel region.
void pack_b(const GemmArgs& g, uint8_t* packed, int64_t panels, int64_t kq) {
#pragma omp for schedule(static)
  for (int64_t t = 0; t < g.B * panels; ++t) {
    const int64_t bi = t / panels, p = t % panels;
    uint8_t* dst = packed + t * kq * kPanelQuad;
    std::memset(dst, 0, static_cast<size_t>(kq * kPanelQuad));
    const int64_t j0 = p * kNR, nj = std::min(kNR, g.N - j0);
    for (int64_t jj = 0; jj < nj; ++jj) {
      const int8_t* brow = g.b + (bi * g.N + j0 + jj) * g.K;
      for (int64_t k = 0; k < g.K; ++k) {
        dst[(k >> 2) * kPanelQuad + jj * 4 + (k & 3)] = static_cast<uint8_t>(brow[k]) ^ 0x80u;
      }
    }
  }
}

// 4 bytes of a row at k = 4 * q (zero beyond K).
inline int32_t quad(const int8_t* row, int64_t q, int64_t K) {
  int32_t v = 0;
  const int64_t k = 4 * q;
  std::memcpy(&v, row + k, static_cast<size_t>(std::min<int64_t>(4, K - k)));
  return v;
}

template <int DT, int MR>
SK_TARGET_AVX512VNNI void micro_tile(const GemmArgs& g, const uint8_t* panel, int64_t kq, int64_t bi, int64_t i0,
                                     int64_t j0, const int32_t* corr, const float* sbcol) {
  __m512i acc[MR][kNV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_setzero_si512();
  const int8_t* arow[MR];
  for (int r = 0; r < MR; ++r) arow[r] = g.a + (bi * g.M + i0 + r) * g.K;
  const int64_t full = g.K / 4;
  for (int64_t q = 0; q < full; ++q) {
    __m512i bv[kNV];
    for (int v = 0; v < kNV; ++v) bv[v] = _mm512_loadu_si512(panel + q * kPanelQuad + v * 64);
    for (int r = 0; r < MR; ++r) {
      int32_t w;
      std::memcpy(&w, arow[r] + 4 * q, 4);
      const __m512i av = _mm512_set1_epi32(w);
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], bv[v], av);
    }
  }
  if (full < kq) {  // K % 4 tail
    __m512i bv[kNV];
    for (int v = 0; v < kNV; ++v) bv[v] = _mm512_loadu_si512(panel + full * kPanelQuad + v * 64);
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(quad(arow[r], full, g.K));
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], bv[v], av);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const int64_t i = i0 + r;
    const __m512i c = _mm512_set1_epi32(corr[i]);
    const __m512 sa = _mm512_set1_ps(g.sa[bi * g.nbm() + i / g.bm]);
    for (int v = 0; v < kNV; ++v) {
      const int64_t j = j0 + 16 * v;
      if (j >= g.N) break;
      const __mmask16 m = conv::tail_mask(g.N - j);
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], c));  // RNE, like float32(acc)
      const __m512 y = _mm512_mul_ps(_mm512_mul_ps(f, sa), _mm512_maskz_loadu_ps(m, sbcol + j));
      conv::store16<DT>(g.out, (bi * g.M + i) * g.N + j, y, m);
    }
  }
}

template <int DT>
SK_TARGET_AVX512VNNI void gemm_vnni(const GemmArgs& g) {
  const int64_t panels = (g.N + kNR - 1) / kNR, kq = (g.K + 3) / 4;
  std::vector<uint8_t> packed(static_cast<size_t>(g.B * panels * kq * kPanelQuad));
  // corr[i] = 128 * sum_k a[i, k]; sbcol[j] = b_scale[j / bn]
  std::vector<int32_t> corr(static_cast<size_t>(g.B * g.M));
  std::vector<float> sbcol(static_cast<size_t>(g.B * g.N));
  const int64_t chunks = (g.M + kRowChunk - 1) / kRowChunk;
  // One parallel region (each start costs a thread wake-up, milliseconds on a loaded machine), and
  // none for small problems (below ~2^24 multiply-adds one core takes well under 0.1 ms).
  const bool parallel = g.B * g.M * g.N * g.K >= (int64_t{1} << 24);
#pragma omp parallel if (parallel)
  {
    pack_b(g, packed.data(), panels, kq);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < g.B * g.M; ++r) {
      int32_t s = 0;
      for (int64_t k = 0; k < g.K; ++k) s += g.a[r * g.K + k];
      corr[r] = 128 * s;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < g.B * g.N; ++r) sbcol[r] = g.sb[(r / g.N) * g.nbn() + (r % g.N) / g.bn];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < g.B * chunks * panels; ++t) {
      const int64_t bi = t / (chunks * panels), c = (t / panels) % chunks, p = t % panels;
      const uint8_t* panel = packed.data() + (bi * panels + p) * kq * kPanelQuad;
      const int64_t i1 = std::min((c + 1) * kRowChunk, g.M);
      const int32_t* cr = corr.data() + bi * g.M;
      const float* sbc = sbcol.data() + bi * g.N;
      int64_t i = c * kRowChunk;
      for (; i + kMR <= i1; i += kMR) micro_tile<DT, kMR>(g, panel, kq, bi, i, p * kNR, cr, sbc);
      for (; i < i1; ++i) micro_tile<DT, 1>(g, panel, kq, bi, i, p * kNR, cr, sbc);
    }
  }
}
#endif

template <int DT>
void run(const GemmArgs& g, bool vnni) {
#if SK_HAVE_AVX512_TARGET
  if (vnni) {
    gemm_vnni<DT>(g);
    return;
  }
#endif
  (void)vnni;
  gemm_scalar<DT>(g);
}

void int8_gemm_cpu(std::uintptr_t a, std::uintptr_t b, std::uintptr_t a_scale, std::uintptr_t b_scale,
                   std::uintptr_t out, int64_t B, int64_t M, int64_t N, int64_t K, int64_t block_m, int64_t block_n,
                   int out_dtype, bool force_scalar) {
  if (B < 0 || M < 1 || N < 1 || K < 1 || K > ig::kMaxK || block_m < 1 || block_n < 1) {
    throw std::invalid_argument("int8_gemm_cpu: bad sizes");
  }
  const GemmArgs g{reinterpret_cast<const int8_t*>(a), reinterpret_cast<const int8_t*>(b),
                   reinterpret_cast<const float*>(a_scale), reinterpret_cast<const float*>(b_scale),
                   reinterpret_cast<void*>(out), B, M, N, K, block_m, block_n};
  const bool vnni = !force_scalar && avx512_enabled() && cpu_features().avx512vnni;
  if (B == 0) return;
  py::gil_scoped_release release;
  switch (out_dtype) {
    case conv::kFloat32: run<conv::kFloat32>(g, vnni); break;
    case conv::kFloat16: run<conv::kFloat16>(g, vnni); break;
    case conv::kBFloat16: run<conv::kBFloat16>(g, vnni); break;
    default: throw std::invalid_argument("int8_gemm_cpu: out_dtype code must be 0, 1 or 2");
  }
}

bool int8_gemm_vnni_available() { return avx512_enabled() && cpu_features().avx512vnni; }

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(int8_gemm) {
  m.def("int8_gemm_cpu", &shared_kernels::cpu::int8_gemm_cpu, py::arg("a"), py::arg("b"), py::arg("a_scale"),
        py::arg("b_scale"), py::arg("out"), py::arg("B"), py::arg("M"), py::arg("N"), py::arg("K"),
        py::arg("block_m"), py::arg("block_n"), py::arg("out_dtype"), py::arg("force_scalar") = false,
        "INT8 GEMM out[B, M, N] = (float32(a[B, M, K] . b[B, N, K]^T) * a_scale[B, ceil(M/block_m)]) * "
        "b_scale[B, ceil(N/block_n)], out dtype code 0 fp32, 1 fp16, 2 bf16; contiguous operands.");
  m.def("int8_gemm_cpu_vnni", &shared_kernels::cpu::int8_gemm_vnni_available,
        "True when int8_gemm_cpu takes the AVX-512 VNNI path (unless force_scalar).");
#if defined(SHARED_KERNELS_WITH_CUDA)
  m.def(
      "int8_gemm_cuda",
      [](std::uintptr_t a, std::uintptr_t b, std::uintptr_t a_scale, std::uintptr_t b_scale, std::uintptr_t out,
         int64_t B, int64_t M, int64_t N, int64_t K, int64_t block_m, int64_t block_n, int out_dtype,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        shared_kernels::cuda::launch_int8_gemm(a, b, a_scale, b_scale, out, B, M, N, K, block_m, block_n, out_dtype,
                                               stream);
      },
      py::arg("a"), py::arg("b"), py::arg("a_scale"), py::arg("b_scale"), py::arg("out"), py::arg("B"), py::arg("M"),
      py::arg("N"), py::arg("K"), py::arg("block_m"), py::arg("block_n"), py::arg("out_dtype"), py::arg("stream"),
      "CUDA INT8 GEMM (mma.sync m16n8k32 s8; same arguments as the CPU entry point, plus the stream).");
#endif
}
