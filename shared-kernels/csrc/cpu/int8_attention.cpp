// Fused INT8 attention forward on the CPU (SageAttention2: INT8 per-block Q.K^T, online exp2 softmax,
// fp16 P.V with float32 accumulation; V divided by its channel scale and rounded to fp16 in the packing pass), see include/shared_kernels/int8_attention.h for the numerics.
// Flash-style: per (b, q head, tile of kTileQ query rows) a loop over blocks of 64 keys; S is never
// materialised beyond one [kTileQ, 64] tile. OpenMP over (b, head, tile); an AVX-512 VNNI path
// (vpdpbusd for Q.K^T like int8_gemm.cpp, exp2 and P.V in AVX-512) and a scalar fallback that gives
// identical bits (P.V products of two fp16 values are exact in float32, so FMA and mul+add agree;
// every other float operation is an explicitly rounded one in the same order in both paths).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/int8_hadamard_convert.h"
#include "registry.h"
#include "shared_kernels/int8_attention.h"
#include "shared_kernels/int8_gemm.h"

namespace py = pybind11;

namespace shared_kernels::cpu {
namespace {

namespace ia = shared_kernels::int8_attention;
namespace ig = shared_kernels::int8_gemm;

constexpr int64_t kBK = ia::kBlockK;
constexpr int64_t kTileQ = 32;  // query rows per OpenMP task
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct AttnArgs {
  const int8_t* q;     // [B, Hq, Nq, D]
  const int8_t* k;     // [B, Hkv, Nk, D]
  const float* qs;     // [B, Hq, ceil(Nq / block_q)]
  const float* ks;     // [B, Hkv, ceil(Nk / 64)]
  const void* v;       // [B, Hkv, Nk, Dv], dtype code v_dtype (conv::DType)
  const float* vs;     // [B, Hkv, Dv] or nullptr (1): V is divided by it before the fp16 rounding
  const float* mask;   // additive, element strides ms_*, or nullptr
  int64_t ms_b, ms_h, ms_i, ms_j;
  float* o;    // [B, Hq, Nq, Dv]
  float* lse;  // [B, Hq, Nq], log2 units
  int64_t B, Hq, Hkv, Nq, Nk, D, Dv, block_q;
  bool causal;
  int v_dtype;

  int64_t group() const { return Hq / Hkv; }
  int64_t nkb() const { return (Nk + kBK - 1) / kBK; }
  int64_t nqb() const { return (Nq + block_q - 1) / block_q; }
  int64_t tiles() const { return (Nq + kTileQ - 1) / kTileQ; }
  const float* mask_row(int64_t b, int64_t h, int64_t i) const { return mask + b * ms_b + h * ms_h + i * ms_i; }
};

// Fixed summation tree of 64 values (identical in both paths): 16 lanes c = ((p[c] + p[16 + c]) +
// p[32 + c]) + p[48 + c], then halves 16 -> 8 -> 4 -> 2 -> 1 (lane c + lane c + half).
inline float row_sum_scalar(const float* p) {
  float t[16];
  for (int c = 0; c < 16; ++c) t[c] = ((p[c] + p[16 + c]) + p[32 + c]) + p[48 + c];
  for (int w = 8; w >= 1; w /= 2)
    for (int c = 0; c < w; ++c) t[c] = t[c] + t[c + w];
  return t[0];
}

// v16[j, c] = fp16(float32(v[j, c]) / v_scale[c]) as a float32 value (exact), for all (b, kv head).
template <int DT>
void v16_scalar(const AttnArgs& a, float* out) {
  const int64_t rows = a.B * a.Hkv * a.Nk;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* vs = a.vs ? a.vs + (r / a.Nk) * a.Dv : nullptr;
    for (int64_t c = 0; c < a.Dv; ++c) {
      const float x = conv::load<DT>(a.v, r * a.Dv + c);
      out[r * a.Dv + c] = conv::f16_to_f32(conv::f32_to_f16(vs ? x / vs[c] : x));
    }
  }
}

inline void store_lse(const AttnArgs& a, int64_t b, int64_t h, int64_t i, float m, float l) {
  a.lse[(b * a.Hq + h) * a.Nq + i] =
      l == 0.0f ? kNegInf : ia::add_rn(m, static_cast<float>(std::log2(static_cast<double>(l))));
}

// o = (acc / l) * v_scale (0 where l == 0) and lse2 = m + log2(l).
inline void finish_row(const AttnArgs& a, int64_t b, int64_t h, int64_t i, float m, float l, const float* acc) {
  float* orow = a.o + ((b * a.Hq + h) * a.Nq + i) * a.Dv;
  const float* vs = a.vs ? a.vs + (b * a.Hkv + h / a.group()) * a.Dv : nullptr;
  const bool empty = l == 0.0f;
  for (int64_t c = 0; c < a.Dv; ++c) {
    const float y = empty ? 0.0f : acc[c] / l;
    orow[c] = vs ? y * vs[c] : y;
  }
  store_lse(a, b, h, i, m, l);
}

// ---- scalar path ------------------------------------------------------------------------------

void attention_scalar(const AttnArgs& a) {
  const int64_t tiles = a.tiles(), nkb = a.nkb();
  std::vector<float> v16(static_cast<size_t>(a.B * a.Hkv * a.Nk * a.Dv));
  switch (a.v_dtype) {
    case conv::kFloat32: v16_scalar<conv::kFloat32>(a, v16.data()); break;
    case conv::kFloat16: v16_scalar<conv::kFloat16>(a, v16.data()); break;
    default: v16_scalar<conv::kBFloat16>(a, v16.data()); break;
  }
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>(a.Dv)), pv(static_cast<size_t>(a.Dv));
    float s[kBK], p[kBK];
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < a.B * a.Hq * tiles; ++t) {
      const int64_t b = t / (a.Hq * tiles), h = (t / tiles) % a.Hq, hk = h / a.group();
      const int64_t i0 = (t % tiles) * kTileQ, i1 = std::min(i0 + kTileQ, a.Nq);
      const int8_t* kbase = a.k + (b * a.Hkv + hk) * a.Nk * a.D;
      const float* vbase = v16.data() + (b * a.Hkv + hk) * a.Nk * a.Dv;
      const float* ksb = a.ks + (b * a.Hkv + hk) * nkb;
      for (int64_t i = i0; i < i1; ++i) {
        const int8_t* qrow = a.q + ((b * a.Hq + h) * a.Nq + i) * a.D;
        const float qsc = a.qs[(b * a.Hq + h) * a.nqb() + i / a.block_q];
        float m = kNegInf, l = 0.0f;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t jb = 0; jb < nkb; ++jb) {
          const int64_t j0 = jb * kBK, jn = std::min(kBK, a.Nk - j0);
          if (a.causal && j0 > i) break;
          float mx = kNegInf;
          for (int64_t jj = 0; jj < kBK; ++jj) {
            const int64_t j = j0 + jj;
            float x = kNegInf;
            if (jj < jn && !(a.causal && j > i)) {
              const int8_t* krow = kbase + j * a.D;
              int32_t dot = 0;
              for (int64_t d = 0; d < a.D; ++d) dot += static_cast<int32_t>(qrow[d]) * static_cast<int32_t>(krow[d]);
              // baseline x86-64 code: no FMA instruction, so dequant and the mask add stay separate
              x = ig::dequant(dot, qsc, ksb[jb]);
              if (a.mask) x = ia::add_rn(x, ia::mul_rn(a.mask_row(b, h, i)[j * a.ms_j], ia::kLog2e));
            }
            s[jj] = x;
            mx = ia::max_nan(mx, x);
          }
          const float mnew = ia::max_nan(m, mx);
          const float mu = mnew == kNegInf ? 0.0f : mnew;
          for (int64_t jj = 0; jj < kBK; ++jj) p[jj] = ia::exp2_neg(s[jj] - mu);
          const float alpha = ia::exp2_neg(m - mu);
          l = ia::add_rn(ia::mul_rn(l, alpha), row_sum_scalar(p));
          m = mnew;
          std::fill(pv.begin(), pv.end(), 0.0f);
          for (int64_t jj = 0; jj < jn; ++jj) {
            const float p16 = conv::f16_to_f32(conv::f32_to_f16(p[jj]));
            const float* vrow = vbase + (j0 + jj) * a.Dv;
            for (int64_t c = 0; c < a.Dv; ++c) pv[c] += p16 * vrow[c];  // exact product
          }
          for (int64_t c = 0; c < a.Dv; ++c) acc[c] = ia::add_rn(ia::mul_rn(acc[c], alpha), pv[c]);
        }
        finish_row(a, b, h, i, m, l, acc.data());
      }
    }
  }
}

// ---- AVX-512 VNNI path ------------------------------------------------------------------------
#if SK_HAVE_AVX512_TARGET

constexpr int kRnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Explicitly rounded float ops (builtins the compiler never contracts into FMAs).
SK_TARGET_AVX512VNNI inline __m512 mulr(__m512 a, __m512 b) { return _mm512_mul_round_ps(a, b, kRnd); }
SK_TARGET_AVX512VNNI inline __m512 addr(__m512 a, __m512 b) { return _mm512_add_round_ps(a, b, kRnd); }
SK_TARGET_AVX512VNNI inline __m512 subr(__m512 a, __m512 b) { return _mm512_sub_round_ps(a, b, kRnd); }

// Vector twin of ia::exp2_neg (same operations in the same order).
SK_TARGET_AVX512VNNI inline __m512 exp2_neg16(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(ia::kExp2Min), _CMP_NLT_UQ);  // x >= min or NaN
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = subr(x, n);
  __m512 p = _mm512_set1_ps(ia::kExp2C6);
  p = addr(mulr(p, f), _mm512_set1_ps(ia::kExp2C5));
  p = addr(mulr(p, f), _mm512_set1_ps(ia::kExp2C4));
  p = addr(mulr(p, f), _mm512_set1_ps(ia::kExp2C3));
  p = addr(mulr(p, f), _mm512_set1_ps(ia::kExp2C2));
  p = addr(mulr(p, f), _mm512_set1_ps(ia::kExp2C1));
  p = addr(mulr(p, f), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(keep, mulr(p, _mm512_castsi512_ps(e)));
}

SK_TARGET_AVX512VNNI inline float row_sum16x4(__m512 p0, __m512 p1, __m512 p2, __m512 p3) {
  const __m512 t = addr(addr(addr(p0, p1), p2), p3);
  const __m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1));
  const __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
  const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
  return _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)));
}

struct Packed {
  // K of each (b, kv head, key block) as u8 = k ^ 0x80 in [ceil(D/4)][64 keys][4] panels, zero padded;
  // V as float32 holding fp16(v / v_scale) [Nk rounded up to 64][Dv rounded up to 16], zero padded.
  std::vector<uint8_t> k;
  std::vector<float> v;
  int64_t dq, dvp;
  int64_t kpanel() const { return dq * kBK * 4; }
  int64_t vblock() const { return kBK * dvp; }
};

template <int DT>
SK_TARGET_AVX512VNNI inline __m512 v16_load(const AttnArgs& a, int64_t bh, int64_t j, int64_t c0) {
  const __mmask16 m = conv::tail_mask(a.Dv - c0);
  __m512 x = conv::load16<DT>(a.v, (bh * a.Nk + j) * a.Dv + c0, m);
  if (a.vs) x = _mm512_maskz_div_ps(m, x, _mm512_maskz_loadu_ps(m, a.vs + bh * a.Dv + c0));
  return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

SK_TARGET_AVX512VNNI void pack_kv(const AttnArgs& a, Packed& pk) {
  const int64_t nkb = a.nkb();
  // dynamic: on a loaded machine a thread that is not running yet does not hold up the others
#pragma omp for schedule(dynamic)
  for (int64_t t = 0; t < a.B * a.Hkv * nkb; ++t) {
    const int64_t bh = t / nkb, jb = t % nkb, j0 = jb * kBK, jn = std::min(kBK, a.Nk - j0);
    uint8_t* kd = pk.k.data() + t * pk.kpanel();
    std::memset(kd, 0, static_cast<size_t>(pk.kpanel()));
    for (int64_t jj = 0; jj < jn; ++jj) {
      const int8_t* krow = a.k + (bh * a.Nk + j0 + jj) * a.D;
      for (int64_t d = 0; d < a.D; ++d) kd[(d >> 2) * kBK * 4 + jj * 4 + (d & 3)] = static_cast<uint8_t>(krow[d]) ^ 0x80u;
    }
    float* vd = pk.v.data() + t * pk.vblock();
    for (int64_t jj = 0; jj < kBK; ++jj) {
      float* dst = vd + jj * pk.dvp;
      for (int64_t c0 = 0; c0 < pk.dvp; c0 += 16) {
        __m512 x = _mm512_setzero_ps();
        if (jj < jn && c0 < a.Dv) {
          if (a.v_dtype == conv::kFloat32) x = v16_load<conv::kFloat32>(a, bh, j0 + jj, c0);
          else if (a.v_dtype == conv::kFloat16) x = v16_load<conv::kFloat16>(a, bh, j0 + jj, c0);
          else x = v16_load<conv::kBFloat16>(a, bh, j0 + jj, c0);
        }
        _mm512_storeu_ps(dst + c0, x);
      }
    }
  }
}

// S tile rows [MR] x 64 keys of one block: int32 dot products via vpdpbusd, dequantised, masked.
template <int MR>
SK_TARGET_AVX512VNNI inline void s_tile(const AttnArgs& a, const int8_t* qbuf, int64_t qstride, const int32_t* corr,
                                        const float* qsc, const uint8_t* panel, int64_t dq, float ksc, int64_t b,
                                        int64_t h, int64_t i, int64_t j0, float* sbuf) {
  __m512i acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t qd = 0; qd < dq; ++qd) {
    __m512i kv[4];
    for (int v = 0; v < 4; ++v) kv[v] = _mm512_loadu_si512(panel + qd * kBK * 4 + v * 64);
    for (int r = 0; r < MR; ++r) {
      int32_t w;
      std::memcpy(&w, qbuf + r * qstride + 4 * qd, 4);
      const __m512i qv = _mm512_set1_epi32(w);
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], kv[v], qv);
    }
  }
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 ninf = _mm512_set1_ps(kNegInf), log2e = _mm512_set1_ps(ia::kLog2e);
  for (int r = 0; r < MR; ++r) {
    const __m512i c = _mm512_set1_epi32(corr[r]);
    const __m512 sa = _mm512_set1_ps(qsc[r]), sb = _mm512_set1_ps(ksc);
    const float* mrow = a.mask ? a.mask_row(b, h, i + r) : nullptr;
    for (int v = 0; v < 4; ++v) {
      const int64_t j = j0 + 16 * v;
      __m512 s = mulr(mulr(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], c)), sa), sb);
      const __mmask16 valid = j < a.Nk ? conv::tail_mask(a.Nk - j) : static_cast<__mmask16>(0);
      if (mrow && valid) {
        __m512 mv;
        if (a.ms_j == 1) {
          mv = _mm512_maskz_loadu_ps(valid, mrow + j);
        } else {
          alignas(64) float tmp[16] = {};
          for (int64_t u = 0; u < 16 && j + u < a.Nk; ++u) tmp[u] = mrow[(j + u) * a.ms_j];
          mv = _mm512_load_ps(tmp);
        }
        s = addr(s, mulr(mv, log2e));
      }
      __mmask16 keep = valid;
      if (a.causal) {
        const __m512i jv = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(j)));
        keep &= _mm512_cmp_epi32_mask(jv, _mm512_set1_epi32(static_cast<int32_t>(i + r)), _MM_CMPINT_LE);
      }
      _mm512_storeu_ps(sbuf + r * kBK + 16 * v, _mm512_mask_mov_ps(ninf, keep, s));
    }
  }
}

// pv[MR rows][NV vectors] = sum_j p16[r][j] * V[j][c0 ..] and acc = acc * alpha + pv for live rows.
template <int MR, int NV>
SK_TARGET_AVX512VNNI inline void pv_tile(const float* pbuf, const float* vblk, int64_t dvp, int64_t jn, int64_t c0,
                                         float* accbuf, const float* alpha, const bool* live) {
  __m512 pv[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) pv[r][v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < jn; ++j) {
    __m512 vv[NV];
    for (int v = 0; v < NV; ++v) vv[v] = _mm512_loadu_ps(vblk + j * dvp + c0 + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512 pb = _mm512_set1_ps(pbuf[r * kBK + j]);
      for (int v = 0; v < NV; ++v) pv[r][v] = _mm512_fmadd_ps(pb, vv[v], pv[r][v]);  // exact product
    }
  }
  for (int r = 0; r < MR; ++r) {
    if (!live[r]) continue;
    const __m512 al = _mm512_set1_ps(alpha[r]);
    for (int v = 0; v < NV; ++v) {
      float* dst = accbuf + r * dvp + c0 + 16 * v;
      _mm512_storeu_ps(dst, addr(mulr(_mm512_loadu_ps(dst), al), pv[r][v]));
    }
  }
}

template <int MR>
SK_TARGET_AVX512VNNI inline void pv_rows(const float* pbuf, const float* vblk, int64_t dvp, int64_t jn, float* accbuf,
                                         const float* alpha, const bool* live) {
  int64_t c0 = 0;
  for (; c0 + 64 <= dvp; c0 += 64) pv_tile<MR, 4>(pbuf, vblk, dvp, jn, c0, accbuf, alpha, live);
  for (; c0 < dvp; c0 += 16) pv_tile<MR, 1>(pbuf, vblk, dvp, jn, c0, accbuf, alpha, live);
}

// Vector twin of finish_row (IEEE division and product, so identical bits); acc holds >= Dv
// rounded up to 16 floats.
SK_TARGET_AVX512VNNI inline void finish_row16(const AttnArgs& a, int64_t b, int64_t h, int64_t i, float m, float l,
                                              const float* acc) {
  float* orow = a.o + ((b * a.Hq + h) * a.Nq + i) * a.Dv;
  const float* vs = a.vs ? a.vs + (b * a.Hkv + h / a.group()) * a.Dv : nullptr;
  const bool empty = l == 0.0f;
  const __m512 lv = _mm512_set1_ps(l);
  for (int64_t c0 = 0; c0 < a.Dv; c0 += 16) {
    const __mmask16 m16 = conv::tail_mask(a.Dv - c0);
    __m512 y = empty ? _mm512_setzero_ps() : _mm512_div_ps(_mm512_loadu_ps(acc + c0), lv);
    if (vs) y = mulr(y, _mm512_maskz_loadu_ps(m16, vs + c0));
    _mm512_mask_storeu_ps(orow + c0, m16, y);
  }
  store_lse(a, b, h, i, m, l);
}

SK_TARGET_AVX512VNNI void attention_vnni(const AttnArgs& a) {
  const int64_t nkb = a.nkb(), tiles = a.tiles();
  Packed pk;
  pk.dq = (a.D + 3) / 4;
  pk.dvp = (a.Dv + 15) / 16 * 16;
  pk.k.resize(static_cast<size_t>(a.B * a.Hkv * nkb * pk.kpanel()));
  pk.v.resize(static_cast<size_t>(a.B * a.Hkv * nkb * pk.vblock()));
  const int64_t qstride = pk.dq * 4;
#pragma omp parallel
  {
    pack_kv(a, pk);  // ends with the implicit barrier of its omp for
    std::vector<int8_t> qbuf(static_cast<size_t>(kTileQ * qstride));
    std::vector<float> accbuf(static_cast<size_t>(kTileQ * pk.dvp));
    alignas(64) float sbuf[kTileQ * kBK];
    alignas(64) float pbuf[kTileQ * kBK];
    int32_t corr[kTileQ];
    float qsc[kTileQ], m[kTileQ], l[kTileQ], alpha[kTileQ];
    bool live[kTileQ];
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < a.B * a.Hq * tiles; ++t) {
      const int64_t b = t / (a.Hq * tiles), h = (t / tiles) % a.Hq, hk = h / a.group();
      const int64_t i0 = (t % tiles) * kTileQ, rows = std::min(kTileQ, a.Nq - i0);
      const float* ksb = a.ks + (b * a.Hkv + hk) * nkb;
      std::fill(qbuf.begin(), qbuf.end(), int8_t{0});
      for (int64_t r = 0; r < rows; ++r) {
        const int8_t* qrow = a.q + ((b * a.Hq + h) * a.Nq + i0 + r) * a.D;
        std::memcpy(qbuf.data() + r * qstride, qrow, static_cast<size_t>(a.D));
        int32_t sum = 0;
        for (int64_t d = 0; d < a.D; ++d) sum += qrow[d];
        corr[r] = 128 * sum;
        qsc[r] = a.qs[(b * a.Hq + h) * a.nqb() + (i0 + r) / a.block_q];
        m[r] = kNegInf;
        l[r] = 0.0f;
      }
      std::fill(accbuf.begin(), accbuf.end(), 0.0f);
      for (int64_t jb = 0; jb < nkb; ++jb) {
        const int64_t j0 = jb * kBK, jn = std::min(kBK, a.Nk - j0);
        if (a.causal && j0 > i0 + rows - 1) break;
        const uint8_t* panel = pk.k.data() + ((b * a.Hkv + hk) * nkb + jb) * pk.kpanel();
        const float* vblk = pk.v.data() + ((b * a.Hkv + hk) * nkb + jb) * pk.vblock();
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4)
          s_tile<4>(a, qbuf.data() + r * qstride, qstride, corr + r, qsc + r, panel, pk.dq, ksb[jb], b, h, i0 + r, j0,
                    sbuf + r * kBK);
        for (; r < rows; ++r)
          s_tile<1>(a, qbuf.data() + r * qstride, qstride, corr + r, qsc + r, panel, pk.dq, ksb[jb], b, h, i0 + r, j0,
                    sbuf + r * kBK);
        for (r = 0; r < rows; ++r) {
          live[r] = !(a.causal && j0 > i0 + r);
          if (!live[r]) {
            std::memset(pbuf + r * kBK, 0, sizeof(float) * kBK);
            continue;
          }
          const float* srow = sbuf + r * kBK;
          __m512 sv[4];
          __mmask16 nan = 0;
          __m512 vmax = _mm512_set1_ps(kNegInf);
          for (int v = 0; v < 4; ++v) {
            sv[v] = _mm512_load_ps(srow + 16 * v);
            nan |= _mm512_cmp_ps_mask(sv[v], sv[v], _CMP_UNORD_Q);
            vmax = _mm512_max_ps(vmax, sv[v]);
          }
          const float mx = nan ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_max_ps(vmax);
          const float mnew = ia::max_nan(m[r], mx);
          const float mu = mnew == kNegInf ? 0.0f : mnew;
          const __m512 muv = _mm512_set1_ps(mu);
          __m512 pv[4];
          for (int v = 0; v < 4; ++v) {
            pv[v] = exp2_neg16(subr(sv[v], muv));
            const __m256i h16 = _mm512_cvtps_ph(pv[v], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm512_store_ps(pbuf + r * kBK + 16 * v, _mm512_cvtph_ps(h16));
          }
          alpha[r] = ia::exp2_neg(m[r] - mu);
          l[r] = ia::add_rn(ia::mul_rn(l[r], alpha[r]), row_sum16x4(pv[0], pv[1], pv[2], pv[3]));
          m[r] = mnew;
        }
        for (r = 0; r + 4 <= rows; r += 4)
          pv_rows<4>(pbuf + r * kBK, vblk, pk.dvp, jn, accbuf.data() + r * pk.dvp, alpha + r, live + r);
        for (; r < rows; ++r) pv_rows<1>(pbuf + r * kBK, vblk, pk.dvp, jn, accbuf.data() + r * pk.dvp, alpha + r, live + r);
      }
      for (int64_t r = 0; r < rows; ++r) finish_row16(a, b, h, i0 + r, m[r], l[r], accbuf.data() + r * pk.dvp);
    }
  }
}
#endif

bool vnni_available() { return avx512_enabled() && cpu_features().avx512vnni; }

void int8_attention_cpu(std::uintptr_t q, std::uintptr_t k, std::uintptr_t q_scale, std::uintptr_t k_scale,
                        std::uintptr_t v, std::uintptr_t v_scale, std::uintptr_t mask, int64_t ms_b, int64_t ms_h,
                        int64_t ms_i, int64_t ms_j, std::uintptr_t o, std::uintptr_t lse, int64_t B, int64_t Hq,
                        int64_t Hkv, int64_t Nq, int64_t Nk, int64_t D, int64_t Dv, int64_t block_q, bool causal,
                        int v_dtype, bool force_scalar) {
  if (B < 0 || Hq < 1 || Hkv < 1 || Hq % Hkv || Nq < 0 || Nk < 1 || D < 1 || D > ig::kMaxK || Dv < 1 ||
      block_q < 1 || Nk > (int64_t{1} << 30)) {
    throw std::invalid_argument("int8_attention_cpu: bad sizes");
  }
  if (v_dtype != conv::kFloat32 && v_dtype != conv::kFloat16 && v_dtype != conv::kBFloat16) {
    throw std::invalid_argument("int8_attention_cpu: v_dtype code must be 0, 1 or 2");
  }
  const AttnArgs a{reinterpret_cast<const int8_t*>(q), reinterpret_cast<const int8_t*>(k),
                   reinterpret_cast<const float*>(q_scale), reinterpret_cast<const float*>(k_scale),
                   reinterpret_cast<const void*>(v), reinterpret_cast<const float*>(v_scale),
                   reinterpret_cast<const float*>(mask), ms_b, ms_h, ms_i, ms_j,
                   reinterpret_cast<float*>(o), reinterpret_cast<float*>(lse),
                   B, Hq, Hkv, Nq, Nk, D, Dv, block_q, causal, v_dtype};
  if (B == 0 || Nq == 0) return;
  const bool vnni = !force_scalar && vnni_available();
  py::gil_scoped_release release;
#if SK_HAVE_AVX512_TARGET
  if (vnni) {
    attention_vnni(a);
    return;
  }
#endif
  (void)vnni;
  attention_scalar(a);
}

}  // namespace
}  // namespace shared_kernels::cpu

SK_REGISTER_BINDINGS(int8_attention) {
  m.def("int8_attention_cpu", &shared_kernels::cpu::int8_attention_cpu, py::arg("q"), py::arg("k"),
        py::arg("q_scale"), py::arg("k_scale"), py::arg("v"), py::arg("v_scale"), py::arg("mask"), py::arg("ms_b"),
        py::arg("ms_h"), py::arg("ms_i"), py::arg("ms_j"), py::arg("o"), py::arg("lse"), py::arg("B"), py::arg("Hq"),
        py::arg("Hkv"), py::arg("Nq"), py::arg("Nk"), py::arg("D"), py::arg("Dv"), py::arg("block_q"),
        py::arg("causal"), py::arg("v_dtype"), py::arg("force_scalar") = false,
        "Fused INT8 attention forward: q int8 [B,Hq,Nq,D], k int8 [B,Hkv,Nk,D], q_scale [B,Hq,ceil(Nq/block_q)], "
        "k_scale [B,Hkv,ceil(Nk/64)], v [B,Hkv,Nk,Dv] (v_dtype 0 fp32, 1 fp16, 2 bf16), v_scale fp32 [B,Hkv,Dv] "
        "(0: none; V / v_scale is rounded to fp16, the output multiplied by v_scale), mask fp32 with element "
        "strides (0: none); writes o fp32 [B,Hq,Nq,Dv] and lse fp32 [B,Hq,Nq] (log2 units).");
  m.def("int8_attention_cpu_vnni", &shared_kernels::cpu::vnni_available,
        "True when int8_attention_cpu takes the AVX-512 VNNI path (unless force_scalar).");
}
