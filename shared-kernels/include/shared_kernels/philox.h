// Philox4x32-10 counter-based RNG (Salmon, Moraes, Dror, Shaw, SC'11), host and device.
//
// Convention used by every stochastic-rounding kernel of shared-kernels: the 32 random bits of
// element g (g = offset + flat element index) are word (g & 3) of
// philox4x32_10(counter = {lo32(g >> 2), hi32(g >> 2), 0, 0}, key = {lo32(seed), hi32(seed)}).
// So one Philox call serves four consecutive elements, and CPU and GPU draw the same bits.
#pragma once

#include "shared_kernels/common.h"

namespace shared_kernels::philox {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;

struct U32x4 {
  uint32_t v[4];
};

SK_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

SK_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c.v[0], hi0, lo0);
    mulhilo(kMul1, c.v[2], hi1, lo1);
    c = U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return c;
}

// Word k (0..3) of a block without dynamic array indexing (keeps GPU code out of local memory).
SK_HD uint32_t word(const U32x4& w, uint32_t k) {
  return k == 0 ? w.v[0] : (k == 1 ? w.v[1] : (k == 2 ? w.v[2] : w.v[3]));
}

// The four words for counter block g >> 2 (see the file comment).
SK_HD U32x4 block_bits(uint64_t seed, uint64_t g) {
  const uint64_t ctr = g >> 2;
  return philox4x32_10(U32x4{{static_cast<uint32_t>(ctr), static_cast<uint32_t>(ctr >> 32), 0u, 0u}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// 32 random bits of element g.
SK_HD uint32_t element_bits(uint64_t seed, uint64_t g) { return word(block_bits(seed, g), static_cast<uint32_t>(g & 3u)); }

// Sequential reader that reuses one Philox call for four consecutive element indices.
struct Stream {
  uint64_t seed;
  uint64_t cached = ~0ull;  // counter block currently held
  U32x4 words{};
  SK_HD explicit Stream(uint64_t s) : seed(s) {}
  SK_HD uint32_t at(uint64_t g) {
    if ((g >> 2) != cached) {
      cached = g >> 2;
      words = block_bits(seed, g);
    }
    return word(words, static_cast<uint32_t>(g & 3u));
  }
};

}  // namespace shared_kernels::philox
