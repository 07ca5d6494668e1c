// SageAttention2 forward (INT8 QK^T with per-thread scales, FP16 or FP8 P.V): the scale-group layout
// tied to the mma.sync fragments and the launcher of the CUDA kernel (csrc/cuda/sage_attention_fwd.cu).
// Torch-free. The Python reference (shared_kernels/reference/sage_attention.py) spells the same layout.
//
// Per-thread groups (SageAttention2 "per_thread", upstream WARPQ / WARPK = 64):
//   q row r  -> q_scale[(r / warp_q) * 8 + r % 8]     warp_q in {16, 32}: the rows one lane of the
//                                                    m16n8k32 A fragment holds (g, g+8, [g+16, g+24])
//   key n    -> k_scale[(n / 64) * 4 + (n % 8) / 2]  the key columns one lane of the C fragment holds
//                                                    (2t, 2t+1 of every n8 tile of a 64-key block)
// so a lane dequantizes its whole 16 x 64 score fragment with one product q_scale * k_scale.
#pragma once

#include <cstdint>

#include "shared_kernels/common.h"

namespace shared_kernels::sage_attention {

constexpr int kBlockK = 64;                       // keys per K/V block (and per k_scale group of 4)
constexpr int kKGroupsPerBlock = 4;               // k_scale entries per 64-key block
constexpr int kQGroupsPerWarpQ = 8;               // q_scale entries per warp_q rows
constexpr float kFp8POffset = 8.807354922057604f;  // log2(448): P is scaled to [0, 448] before e4m3

SK_HD int64_t q_group(int64_t row, int64_t warp_q) { return (row / warp_q) * kQGroupsPerWarpQ + (row & 7); }
SK_HD int64_t k_group(int64_t key) { return (key / kBlockK) * kKGroupsPerBlock + ((key & 7) >> 1); }
SK_HD int64_t num_q_groups(int64_t nq, int64_t warp_q) { return (nq + warp_q - 1) / warp_q * kQGroupsPerWarpQ; }
SK_HD int64_t num_k_groups(int64_t nk) { return (nk + kBlockK - 1) / kBlockK * kKGroupsPerBlock; }

}  // namespace shared_kernels::sage_attention

namespace shared_kernels::cuda {

// q int8 [B, Hq, Nq, D], k int8 [B, Hkv, Nk, D], v fp16 (pv_mode 0, 3, 4) or fp8 e4m3 (pv_mode 1, 2)
// [B, Hkv, Nk, D], all contiguous and 16-byte aligned; q_scale fp32 [B, Hq, q_scale_len] (sm_scale * log2 e
// folded in), k_scale fp32 [B, Hkv, k_scale_len], v_scale fp32 [B, Hkv, D] (fp8 V only, else 0);
// out [B, Hq, Nq, D] of dtype code 1 fp16 or 2 bf16; lse fp32 [B, Hq, Nq] (natural log). D in {64, 128}.
// pv_mode, the P.V accumulation (upstream's pv_accum_dtype; per 64-key block, then the running output):
//   0 fp16 V "fp32": fp32 accumulator       1 fp8 V "fp32+fp32": fresh fp32 block accumulator + fp32
//   2 fp8 V "fp32+fp16": f16 block accumulator + fp32 (SageAttention2++; keep |P.V| of a block under
//     65504: V scaled to max 2.25 with P <= 448)
//   3 fp16 V "fp16+fp32": f16 block accumulator + fp32     4 fp16 V "fp16": f16 accumulator throughout
// FP8 modes need compute capability 8.9+.
void launch_sage_attention_fwd(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale,
                               std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out,
                               std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk,
                               int64_t D, int64_t q_scale_len, int64_t k_scale_len, int64_t warp_q, bool causal,
                               int pv_mode, int out_dtype, std::uintptr_t stream);

}  // namespace shared_kernels::cuda

namespace shared_kernels::cuda {

// INT4 Q.K^T (SageAttention2's 4-bit option): as launch_sage_attention_fwd, but q int8-typed bytes
// [B, Hq, Nq, D/2] and k [B, Hkv, Nk, D/2] hold packed signed int4 (element 2i in the low nibble of byte i,
// values in [-7, 7]) with the same per-thread scale layouts; bias (0 = none) fp32 [B, Hq, ceil(Nq / bias_rows),
// Nk] is added to the log2-domain scores of query rows [j * bias_rows, (j + 1) * bias_rows) (the exact
// mean(Q).K^T correction of Q smoothing, sm_scale * log2 e folded in); bias_rows a multiple of 16.
void launch_sage_attention_fwd_int4(std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t q_scale,
                                    std::uintptr_t k_scale, std::uintptr_t v_scale, std::uintptr_t out,
                                    std::uintptr_t lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Nq, int64_t Nk,
                                    int64_t D, int64_t q_scale_len, int64_t k_scale_len, int64_t warp_q, bool causal,
                                    int pv_fp8, int out_dtype, std::uintptr_t bias, int64_t bias_rows,
                                    std::uintptr_t stream);

}  // namespace shared_kernels::cuda
