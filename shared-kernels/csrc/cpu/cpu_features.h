// Run-time CPU feature detection for the AVX-512 / VNNI fast paths (x86-64 only).
#pragma once

namespace shared_kernels::cpu {

struct CpuFeatures {
  bool avx2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
};

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures r;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    r.avx2 = __builtin_cpu_supports("avx2");
    r.avx512f = __builtin_cpu_supports("avx512f");
    r.avx512bw = __builtin_cpu_supports("avx512bw");
    r.avx512vl = __builtin_cpu_supports("avx512vl");
    r.avx512vnni = __builtin_cpu_supports("avx512vnni");
#endif
    return r;
  }();
  return f;
}

// True when the AVX-512 (F+BW+VL) path may run. SHARED_KERNELS_CPU_ISA=scalar forces the
// scalar fallback (read once), so tests can compare both paths on one machine.
bool avx512_enabled();
bool avx512_compiled();

}  // namespace shared_kernels::cpu

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SK_HAVE_AVX512_TARGET 1
#define SK_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define SK_TARGET_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#else
#define SK_HAVE_AVX512_TARGET 0
#define SK_TARGET_AVX512
#define SK_TARGET_AVX512VNNI
#endif
