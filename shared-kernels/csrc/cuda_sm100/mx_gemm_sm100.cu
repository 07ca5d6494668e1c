// CUTLASS block-scaled MX GEMM for Blackwell (sm100a): out[M, N] = (A ⊙ SFA) · (B ⊙ SFB)^T, with E8M0
// scale factors per 32 consecutive k (OCP MX v1.0). Built with the CUTLASS 4.x collective builder for
// cutlass::arch::OpClassBlockScaledTensorOp: the mainloop issues tcgen05.mma.kind::mxf4 (MXFP4 x MXFP4)
// or tcgen05.mma.kind::mxf8f6f4 (MXFP8 x MXFP8) with block scales held in tensor memory (SASS UTC*MMA),
// operands fed by TMA, accumulator in TMEM, warp-specialized 1-SM kernel, 128x128 CTA tile.
//
// Cost: 2·M·N·K FLOPs; bytes moved M·K·b + N·K·b (b = 0.5 for MXFP4, 1 for MXFP8) + (M + N)·K/32 scale
// bytes + M·N·itemsize(out).
//
// Built when 100a is among the CUDA archs (its own CMake object library); the Python op refuses other devices.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_sm100/mx_gemm_sm100_launch.h"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace shared_kernels::cuda {
namespace {

using namespace cute;

// The kernel body exists only in the sm100a cubin; the cubins of the other archs in the build get an
// empty kernel of the same name (never launched: the Python op refuses devices other than 10.0).
template <class Kernel>
struct Sm100Only : Kernel {
  template <class... Args>
  CUTLASS_DEVICE void operator()(Args&&... args) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL)
    Kernel::operator()(static_cast<Args&&>(args)...);
#endif
  }
};

// One GEMM type per (operand format, output type). ElementC = void: no source operand (beta = 0).
template <class ElementAB, int kAlign, class ElementOut, class TileK>
struct MxGemm {
  using ElementAccumulator = float;
  using ArchTag = cutlass::arch::Sm100;
  using OperatorClass = cutlass::arch::OpClassBlockScaledTensorOp;
  using MmaTileShape = Shape<_128, _128, TileK>;
  using ClusterShape = Shape<_1, _1, _1>;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      ArchTag, OperatorClass, MmaTileShape, ClusterShape, cutlass::epilogue::collective::EpilogueTileAuto,
      ElementAccumulator, ElementAccumulator, void, cutlass::layout::RowMajor, kAlignOut, ElementOut,
      cutlass::layout::RowMajor, kAlignOut, cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      ArchTag, OperatorClass, ElementAB, cutlass::layout::RowMajor, kAlign, ElementAB,
      cutlass::layout::ColumnMajor, kAlign, ElementAccumulator, MmaTileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

  using Kernel = Sm100Only<
      cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue, void>>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

using MxFp4Bf16 = MxGemm<cutlass::mx_float4_t<cutlass::float_e2m1_t>, 32, cutlass::bfloat16_t, _256>;
using MxFp8Bf16 = MxGemm<cutlass::mx_float8_t<cutlass::float_e4m3_t>, 16, cutlass::bfloat16_t, _128>;
using MxFp4F32 = MxGemm<cutlass::mx_float4_t<cutlass::float_e2m1_t>, 32, float, _256>;
using MxFp8F32 = MxGemm<cutlass::mx_float8_t<cutlass::float_e4m3_t>, 16, float, _128>;

template <class G>
typename G::Gemm::Arguments make_args(std::uintptr_t a, std::uintptr_t sfa, std::uintptr_t b, std::uintptr_t sfb,
                                      std::uintptr_t out, int M, int N, int K) {
  using Gemm = typename G::Gemm;
  using Mainloop = typename Gemm::GemmKernel::CollectiveMainloop;
  using Config = typename Mainloop::Sm1xxBlkScaledConfig;
  typename Gemm::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = {M, N, K, 1};
  auto& ml = args.mainloop;
  ml.ptr_A = reinterpret_cast<decltype(ml.ptr_A)>(a);
  ml.dA = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideA{}, {M, K, 1});
  ml.ptr_B = reinterpret_cast<decltype(ml.ptr_B)>(b);
  ml.dB = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideB{}, {N, K, 1});
  ml.ptr_SFA = reinterpret_cast<decltype(ml.ptr_SFA)>(sfa);
  ml.layout_SFA = Config::tile_atom_to_shape_SFA(make_shape(M, N, K, 1));
  ml.ptr_SFB = reinterpret_cast<decltype(ml.ptr_SFB)>(sfb);
  ml.layout_SFB = Config::tile_atom_to_shape_SFB(make_shape(M, N, K, 1));
  auto& ep = args.epilogue;
  ep.thread.alpha = 1.0f;
  ep.thread.beta = 0.0f;
  ep.ptr_C = nullptr;
  ep.dC = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideC{}, {M, N, 1});
  ep.ptr_D = reinterpret_cast<decltype(ep.ptr_D)>(out);
  ep.dD = cutlass::make_cute_packed_stride(typename Gemm::GemmKernel::StrideD{}, {M, N, 1});
  return args;
}

void check(cutlass::Status s, const char* what) {
  if (s != cutlass::Status::kSuccess) {
    throw std::runtime_error(std::string("mx_gemm_sm100: ") + what + " failed: " + cutlassGetStatusString(s));
  }
}

template <class G>
std::size_t workspace_of(int64_t M, int64_t N, int64_t K) {
  auto args = make_args<G>(0, 0, 0, 0, 0, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K));
  return G::Gemm::get_workspace_size(args);
}

template <class G>
void run(std::uintptr_t a, std::uintptr_t sfa, std::uintptr_t b, std::uintptr_t sfb, std::uintptr_t out, int64_t M,
         int64_t N, int64_t K, std::uintptr_t workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  using Gemm = typename G::Gemm;
  auto args = make_args<G>(a, sfa, b, sfb, out, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K));
  if (Gemm::get_workspace_size(args) > workspace_bytes) {
    throw std::runtime_error("mx_gemm_sm100: workspace too small");
  }
  Gemm gemm;
  check(gemm.can_implement(args), "can_implement");
  check(gemm.initialize(args, reinterpret_cast<void*>(workspace), stream), "initialize");
  check(gemm.run(stream), "run");
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("mx_gemm_sm100: launch failed: ") + cudaGetErrorString(err));
  }
}

void check_sizes(int fmt, int out_dtype, int64_t M, int64_t N, int64_t K) {
  if (fmt != 0 && fmt != 1) throw std::invalid_argument("mx_gemm_sm100: fmt must be 0 (mxfp4) or 1 (mxfp8_e4m3)");
  if (out_dtype != 0 && out_dtype != 2) throw std::invalid_argument("mx_gemm_sm100: out_dtype must be 0 or 2");
  if (M < 1 || N < 1 || K < 1 || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || K % 32 != 0) {
    throw std::invalid_argument("mx_gemm_sm100: need 1 <= M, N, K < 2^31 and K % 32 == 0");
  }
}

}  // namespace

std::size_t mx_gemm_sm100_workspace_size(int fmt, int out_dtype, int64_t M, int64_t N, int64_t K) {
  check_sizes(fmt, out_dtype, M, N, K);
  if (fmt == 0) return out_dtype == 2 ? workspace_of<MxFp4Bf16>(M, N, K) : workspace_of<MxFp4F32>(M, N, K);
  return out_dtype == 2 ? workspace_of<MxFp8Bf16>(M, N, K) : workspace_of<MxFp8F32>(M, N, K);
}

void launch_mx_gemm_sm100(int fmt, int out_dtype, std::uintptr_t a, std::uintptr_t sfa, std::uintptr_t b,
                          std::uintptr_t sfb, std::uintptr_t out, int64_t M, int64_t N, int64_t K,
                          std::uintptr_t workspace, std::size_t workspace_bytes, std::uintptr_t stream) {
  check_sizes(fmt, out_dtype, M, N, K);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (fmt == 0) {
    if (out_dtype == 2) run<MxFp4Bf16>(a, sfa, b, sfb, out, M, N, K, workspace, workspace_bytes, s);
    else run<MxFp4F32>(a, sfa, b, sfb, out, M, N, K, workspace, workspace_bytes, s);
  } else {
    if (out_dtype == 2) run<MxFp8Bf16>(a, sfa, b, sfb, out, M, N, K, workspace, workspace_bytes, s);
    else run<MxFp8F32>(a, sfa, b, sfb, out, M, N, K, workspace, workspace_bytes, s);
  }
}

}  // namespace shared_kernels::cuda
