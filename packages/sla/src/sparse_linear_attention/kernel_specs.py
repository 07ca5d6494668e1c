"""Kernels of ``sparse_linear_attention`` for ``tools/kernel_report`` (AOT-compiled for sm80/89/90a/100a).

Block-sparse attention (``triton/block_sparse.py``): the forward, dK/dV and dQ kernels are matmul
bound and must run on tensor cores (``mma.sync`` HMMA on sm80/89, ``wgmma`` on sm90a, ``tcgen05`` on
sm100a) with no spills; the backward preprocess (Δ = rowsum(dO∘O)) is memory bound and declares
"none". Shapes are those of a real launch (``block_sparse.launch_config``): bf16 inputs, SLA blocks
64×64 (upstream default) and 128×64, head dims 64 and 128.

The linear-branch kernels (``triton/linear_complement.py``) declare their own ``KERNEL_SPECS`` list;
it is imported here when that module exists.
"""

from __future__ import annotations

from shared_kernels.kernel_specs import TritonKernelSpec

_TC = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}
_NONE = {80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)}


def _fwd():
    from .triton.block_sparse import bsa_fwd_kernel

    return bsa_fwd_kernel


def _dkdv():
    from .triton.block_sparse import bsa_bwd_dkdv_kernel

    return bsa_bwd_dkdv_kernel


def _dq():
    from .triton.block_sparse import bsa_bwd_dq_kernel

    return bsa_bwd_dq_kernel


def _pre():
    from .triton.block_sparse import bsa_bwd_preprocess_kernel

    return bsa_bwd_preprocess_kernel


def _strides(*names: str) -> dict[str, str]:
    return {f"stride_{n}{s}": "i32" for n in names for s in ("b", "h", "l")}


def _div(*names: str) -> tuple[str, ...]:
    # pointers are 16-byte aligned and the batch/head/token strides multiples of 16 (D = 64 or 128)
    return tuple(f"{n}_ptr" for n in names) + tuple(f"stride_{n}{s}" for n in names for s in ("b", "h", "l"))


_INTS = dict.fromkeys(("L", "H", "MQ", "MK"), "i32")


def _cfg(kernel: str, blkq: int, blkk: int, d: int):
    # the launcher's own table, so the report compiles exactly what a GPU launch runs
    from .triton.block_sparse import launch_config

    return launch_config(kernel, blkq, blkk, d)


def _spec(name: str, kernel: str, *, blkq: int, blkk: int, d: int, dtype: str = "bf16") -> TritonKernelSpec:
    t = f"*{dtype}"
    cfg = _cfg(kernel, blkq, blkk, d)
    common = dict(
        HEAD_DIM=d,
        BLKQ=blkq,
        BLKK=blkk,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=d,
        UPCAST=False,
        DOT_PREC="tf32",
    )
    if kernel == "fwd":
        fn = _fwd
        signature = {
            "q_ptr": t, "k_ptr": t, "v_ptr": t, "o_ptr": t, "lse_ptr": "*fp32", "lut_ptr": "*i32",
            "cnt_ptr": "*i32", **_INTS, **_strides("q", "k", "v", "o"), "qk_scale": "fp32",
        }  # fmt: skip
        div = _div("q", "k", "v", "o")
    elif kernel == "dkdv":
        fn = _dkdv
        signature = {
            "q_ptr": t, "k_ptr": t, "v_ptr": t, "do_ptr": t, "lse_ptr": "*fp32", "delta_ptr": "*fp32",
            "dk_ptr": t, "dv_ptr": t, "lut_t_ptr": "*i32", "cnt_t_ptr": "*i32", **_INTS,
            **_strides("q", "k", "v", "do", "dk", "dv"), "sm_scale": "fp32",
        }  # fmt: skip
        div = _div("q", "k", "v", "do", "dk", "dv")
    else:
        fn = _dq
        signature = {
            "q_ptr": t, "k_ptr": t, "v_ptr": t, "do_ptr": t, "lse_ptr": "*fp32", "delta_ptr": "*fp32",
            "dq_ptr": t, "lut_ptr": "*i32", "cnt_ptr": "*i32", **_INTS,
            **_strides("q", "k", "v", "do", "dq"), "sm_scale": "fp32",
        }  # fmt: skip
        div = _div("q", "k", "v", "do", "dq")
    return TritonKernelSpec(
        name=name,
        fn=fn,
        signature=signature,
        constexprs=common,
        expect=dict(_TC),
        divisible_by_16=div,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _pre_spec(name: str, d: int) -> TritonKernelSpec:
    return TritonKernelSpec(
        name=name,
        fn=_pre,
        signature={
            "o_ptr": "*bf16",
            "do_ptr": "*bf16",
            "dlse_ptr": "*fp32",
            "delta_ptr": "*fp32",
            "L": "i32",
            "H": "i32",
            **_strides("o", "do"),
        },
        constexprs={"HEAD_DIM": d, "BLOCK_M": 64, "BLOCK_D": d, "HAS_DLSE": True},
        expect=dict(_NONE),
        divisible_by_16=_div("o", "do"),
        num_warps=4,
        num_stages=1,
    )


TRITON_KERNELS = [
    _spec("sla_block_sparse_fwd_d128_b64x64", "fwd", blkq=64, blkk=64, d=128),
    _spec("sla_block_sparse_fwd_d64_b64x64", "fwd", blkq=64, blkk=64, d=64),
    _spec("sla_block_sparse_fwd_d128_b128x64", "fwd", blkq=128, blkk=64, d=128),
    _spec("sla_block_sparse_fwd_d64_b128x64_fp16", "fwd", blkq=128, blkk=64, d=64, dtype="fp16"),
    _spec("sla_block_sparse_bwd_dkdv_d128_b64x64", "dkdv", blkq=64, blkk=64, d=128),
    _spec("sla_block_sparse_bwd_dkdv_d64_b64x64", "dkdv", blkq=64, blkk=64, d=64),
    _spec("sla_block_sparse_bwd_dkdv_d128_b128x64", "dkdv", blkq=128, blkk=64, d=128),
    _spec("sla_block_sparse_bwd_dq_d128_b64x64", "dq", blkq=64, blkk=64, d=128),
    _spec("sla_block_sparse_bwd_dq_d64_b64x64", "dq", blkq=64, blkk=64, d=64),
    _spec("sla_block_sparse_bwd_dq_d128_b128x64", "dq", blkq=128, blkk=64, d=128),
    _pre_spec("sla_block_sparse_bwd_preprocess_d128", 128),
]

try:  # sla-core's fused linear branch (complement trick), when that module exists
    from .triton.linear_complement import KERNEL_SPECS as _LINEAR_SPECS
except ModuleNotFoundError as exc:  # a missing module only; errors inside it propagate
    if exc.name != f"{__package__}.triton.linear_complement":
        raise
    _LINEAR_SPECS = []
TRITON_KERNELS += list(_LINEAR_SPECS)

CUDA_KERNELS: list = []
