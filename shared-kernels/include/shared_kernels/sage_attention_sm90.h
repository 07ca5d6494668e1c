// SageAttention2 forward for Hopper (sm90a, wgmma): the per-thread scale-group layout tied to the
// wgmma fragments and the launcher of the CUDA kernel (csrc/cuda/sage_attention_fwd_sm90.cu).
// Torch-free. The Python reference (shared_kernels/reference/sage_attention_sm90.py) spells the same layout.
//
// A CTA is one warpgroup (4 warps) owning 64 query rows, 16 per warp; keys come in blocks of 128 (one
// m64n128k32 wgmma tile). In the m64nN accumulator a lane holds rows g, g + 8 of its warp's 16 rows
// (g = lane / 4) and, inside every 8-column tile, columns 2t, 2t + 1 (t = lane % 4). Hence upstream's sm90
// per-thread groups (WARPQ = 16, WARPK = BLKK = 128):
//   q row r  -> q_scale[(r / 16) * 8 + r % 8]       8 groups per 16 rows (rows g and g + 8 share one)
//   key n    -> k_scale[(n / 128) * 4 + (n % 8) / 2] 4 groups per 128-key block
// The kernel permutes the key order of each K tile in shared memory so that the score fragment doubles as
// the A fragment of the FP8 P.V wgmma over keys in their natural order (V is read untouched); a lane then
// meets two of the four K groups of a block (one for even, one for odd 8-column tiles).
#pragma once

#include <cstdint>

#include "shared_kernels/common.h"

namespace shared_kernels::sage_attention_sm90 {

constexpr int kBlockQ = 64;                        // query rows per CTA (one warpgroup)
constexpr int kWarpQ = 16;                         // query rows per warp (per q_scale group of 8)
constexpr int kBlockK = 128;                       // keys per K/V block (and per k_scale group of 4)
constexpr int kKGroupsPerBlock = 4;                // k_scale entries per 128-key block
constexpr int kQGroupsPerWarp = 8;                 // q_scale entries per 16 rows
constexpr int kVtAlign = 16;                       // v_t's key dimension is padded to a multiple of this
constexpr float kFp8POffset = 8.807354922057604f;  // log2(448): P is scaled to [0, 448] before e4m3

SK_HD int64_t q_group(int64_t row) { return (row / kWarpQ) * kQGroupsPerWarp + (row & 7); }
SK_HD int64_t k_group(int64_t key) { return (key / kBlockK) * kKGroupsPerBlock + ((key & 7) >> 1); }
SK_HD int64_t num_q_groups(int64_t nq) { return (nq + kWarpQ - 1) / kWarpQ * kQGroupsPerWarp; }
SK_HD int64_t num_k_groups(int64_t nk) { return (nk + kBlockK - 1) / kBlockK * kKGroupsPerBlock; }

// Shared-memory row of key r (0..127 of a block) in the permuted K tile: inside each 16 keys, key 4t + e goes
// to row 2t + e and key 4t + 2 + e to row 8 + 2t + e (t < 4, e < 2), so the score columns 2t, 2t + 1 of the
// n8 tiles 2i and 2i + 1 are the keys 16i + 4t .. 16i + 4t + 3: the k positions 4t .. 4t + 3 of the
// m64nNk32 e4m3 A fragment of lane t.
SK_HD int k_tile_row(int r) { return (r & ~15) | (2 * ((r & 15) >> 2) + (r & 1) + 8 * ((r >> 1) & 1)); }
// Inverse: the key held by permuted row p.
SK_HD int k_tile_key(int p) { return (p & ~15) | (4 * ((p & 7) >> 1) + 2 * ((p >> 3) & 1) + (p & 1)); }

}  // namespace shared_kernels::sage_attention_sm90

namespace shared_kernels::cuda {

// q int8 [B, Hq, Nq, D], k int8 [B, Hkv, Nk, D], v_t fp8 e4m3 [B, Hkv, D, Nkp] (V transposed, Nkp >= Nk,
// Nkp % 16 == 0, entries past Nk are never read), all contiguous and 16-byte aligned; q_scale fp32
// [B, Hq, q_scale_len] (sm_scale * log2 e folded in), k_scale fp32 [B, Hkv, k_scale_len], v_scale fp32
// [B, Hkv, D] (V ~ v_t * v_scale per channel); out [B, Hq, Nq, D] of dtype code 1 fp16 or 2 bf16; lse fp32
// [B, Hq, Nq] (natural log). D in {64, 128}. Needs an sm90 device (the kernel exists only as sm_90a code).
void launch_sage_attention_fwd_sm90(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v_t, std::uintptr_t q_scale,
                                    std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out,
                                    std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk,
                                    int64_t Nkp, int64_t D, int64_t q_scale_len, int64_t k_scale_len, bool causal,
                                    int out_dtype, std::uintptr_t stream);

}  // namespace shared_kernels::cuda
