"""Kernels of ``sageattention`` for ``tools/kernel_report`` (AOT-compiled for sm80/89/90a/100a),
SageBwd's training kernels included (``sagebwd/kernel_specs.py``).

Attention: INT8 ``Q·Kᵀ`` must run on integer tensor cores (``mma.sync`` IMMA on sm80/89, ``wgmma``
IGMMA on sm90a, ``tcgen05`` on sm100a) and so must ``P·V`` (fp16 HMMA/HGMMA, or FP8 QMMA/QGMMA on
sm89+; Triton has no e4m3 on sm80, so the FP8 kernels skip that arch). Quantizers are memory bound
and declare "none". Shapes are those of a real launch (``triton.attn.launch``): head dim 128 (or 64,
256), BLOCK_M 128 × BLOCK_N 64 (BLOCK_M 64 with a mask, D > 128, or fp16-accumulated PV on
sm100), 8 warps, 3 stages, bf16 inputs.
"""

from __future__ import annotations

from shared_kernels.kernel_specs import TritonKernelSpec

_TC = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}
_NONE = {80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)}


def _attn():
    from .triton.attn import sage_attn_fwd_kernel

    return sage_attn_fwd_kernel


def _quant_int8():
    from .triton.quant import quant_int8_kernel

    return quant_int8_kernel


def _quant_rows():
    from .triton.quant import quant_int8_rows_kernel

    return quant_int8_rows_kernel


def _quant_fp8():
    from .triton.quant import quant_fp8_kernel

    return quant_fp8_kernel


def _reduce():
    from .triton.quant import token_reduce_kernel

    return token_reduce_kernel


_ATTN_INTS = ("NQ", "NK", "HQ", "HKV", "D", "DV", "NQG", "NKB")
_ATTN_STRIDES = ("stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_oh", "stride_on")
_MASK_STRIDES = ("stride_mb", "stride_mh", "stride_mm")


def _attn_spec(
    name,
    *,
    v="*bf16",
    o="*bf16",
    mask="*fp32",
    d=128,
    pv_fp8=False,
    archs=(80, 89, 90, 100),
    stages=3,
    warps=8,
    **cx,
):
    constexprs = dict(
        QGROUP=128, BLOCK_M=128, BLOCK_N=64, BLOCK_D=d, BLOCK_DV=d, IS_CAUSAL=False, MASK_MODE=0,
        PV_FP8=pv_fp8, PV_ACC16=False, INTERPRET=False, STORE_LSE=True, VARLEN=False,
        KS_PER_COL=False, POST_SCALE=False, QC_BLK=0, ACC_KSTEP=0,
    )  # fmt: skip
    constexprs.update(cx)
    signature = {
        "q_ptr": "*i8", "k_ptr": "*i8", "v_ptr": v, "qs_ptr": "*fp32", "ks_ptr": "*fp32",
        "vs_ptr": "*fp32", "mask_ptr": mask, "o_ptr": o, "lse_ptr": "*fp32",
        **dict.fromkeys(("cu_q_ptr", "cu_k_ptr", "blk_ptr", "goff_ptr"), "*i32"),
        **dict.fromkeys(_ATTN_INTS + _ATTN_STRIDES + _MASK_STRIDES, "i32"), "score_mul": "fp32",
        "qc_ptr": "*fp32",
    }  # fmt: skip
    return TritonKernelSpec(
        name=name,
        fn=_attn,
        signature=signature,
        constexprs=constexprs,
        expect={a: _TC[a] for a in archs},
        divisible_by_16=(
            "q_ptr",
            "k_ptr",
            "v_ptr",
            "o_ptr",
            "D",
            "DV",
            "stride_vb",
            "stride_vh",
            "stride_vn",
            "stride_ob",
            "stride_oh",
            "stride_on",
            "mask_ptr",
            *_MASK_STRIDES,
        ),
        num_warps=warps,
        num_stages=stages,
        archs=archs,
    )


def _quant_spec(name, fn, signature, constexprs, archs=(80, 89, 90, 100), num_warps=4, div=()):
    return TritonKernelSpec(
        name=name,
        fn=fn,
        signature=signature,
        constexprs=constexprs,
        expect={a: _NONE[a] for a in archs},
        divisible_by_16=div,
        num_warps=num_warps,
        num_stages=1,
        archs=archs,
    )


_STRIDES3 = dict.fromkeys(("stride_b", "stride_h", "stride_n"), "i32")
# per_thread / per_token (triton_variants): a Q scale per row, a K scale per key, scores times
# sm_scale·log2 e after dequantizing (fp32 output, as triton_variants launches it)
_ROWS = dict(QGROUP=1, KS_PER_COL=True, POST_SCALE=True)
_ROWS_SIG = {
    "x_ptr": "*bf16", "mean_ptr": "*fp32", "q_ptr": "*i8", "scale_ptr": "*fp32",
    **dict.fromkeys(("N", "D", "H"), "i32"), **_STRIDES3, "multiplier": "fp32",
}  # fmt: skip
_ROWS_DIV = ("x_ptr", "q_ptr", "D", "stride_b", "stride_h", "stride_n")

TRITON_KERNELS = [
    _attn_spec("sage_attn_fwd_int8_fp16pv_d128"),
    _attn_spec("sage_attn_fwd_int8_fp16pv_d64_causal", d=64, IS_CAUSAL=True),
    _attn_spec("sage_attn_fwd_int8_fp16pv_acc16_d128", PV_ACC16=True, archs=(80, 89, 90)),
    _attn_spec("sage_attn_fwd_int8_fp16pv_acc16_d128_m64", PV_ACC16=True, archs=(100,), BLOCK_M=64),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d128_perwarp_boolmask", mask="*u8", QGROUP=32, MASK_MODE=2, BLOCK_M=64
    ),
    _attn_spec("sage_attn_fwd_int8_fp16pv_d128_addmask", MASK_MODE=1, BLOCK_M=64),
    _attn_spec(
        "sage_attn_fwd_int8_fp8pv_d128_addmask",
        v="*fp8e4nv",
        pv_fp8=True,
        MASK_MODE=1,
        archs=(89, 90, 100),
        BLOCK_M=64,
    ),
    _attn_spec("sage_attn_fwd_int8_fp16pv_d256", d=256, BLOCK_M=64, archs=(80, 90, 100)),
    # 99 KB of shared memory per block on sm86/89/12x: 2 stages (triton.attn.num_stages)
    _attn_spec("sage_attn_fwd_int8_fp16pv_d256_sm89", d=256, BLOCK_M=64, archs=(89,), stages=2),
    _attn_spec("sage_attn_fwd_int8_fp16pv_d128_varlen_causal", VARLEN=True, IS_CAUSAL=True),
    _attn_spec("sage_attn_fwd_int8_fp8pv_d128", v="*fp8e4nv", pv_fp8=True, archs=(89, 90, 100)),
    _attn_spec(
        "sage_attn_fwd_int8_fp8pv_d64_causal",
        v="*fp8e4nv",
        d=64,
        pv_fp8=True,
        archs=(89, 90, 100),
        IS_CAUSAL=True,
    ),
    _attn_spec("sage_attn_fwd_int8_fp16pv_d128_perthread", o="*fp32", archs=(80, 89, 90), **_ROWS),
    _attn_spec("sage_attn_fwd_int8_fp16pv_d128_perthread_m64", o="*fp32", archs=(100,), BLOCK_M=64, **_ROWS),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d64_perthread_causal",
        o="*fp32",
        d=64,
        IS_CAUSAL=True,
        archs=(80, 89, 90),
        **_ROWS,
    ),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d64_perthread_causal_m64",
        o="*fp32",
        d=64,
        IS_CAUSAL=True,
        archs=(100,),
        BLOCK_M=64,
        **_ROWS,
    ),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d128_perthread_addmask", o="*fp32", MASK_MODE=1, BLOCK_M=64, **_ROWS
    ),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d128_perthread_smoothq", o="*fp32", QC_BLK=128, archs=(80, 89, 90), **_ROWS
    ),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d128_perthread_smoothq_m64",
        o="*fp32",
        QC_BLK=128,
        archs=(100,),
        BLOCK_M=64,
        **_ROWS,
    ),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d128_perthread_kstep16_acc16", o="*fp32", ACC_KSTEP=1, BLOCK_M=64, **_ROWS
    ),
    _attn_spec(
        "sage_attn_fwd_int8_fp16pv_d64_perthread_kstep16_allfp16",
        o="*fp32",
        d=64,
        ACC_KSTEP=2,
        BLOCK_M=64,
        **_ROWS,
    ),
    _quant_spec(
        "sage_quant_int8_rows_q_per_thread_d128",
        _quant_rows,
        _ROWS_SIG,
        {"HAS_MEAN": False, "TILE": 32, "T": 8, "C": 1, "ADD_EPS": True, "BLOCK_R": 64, "BLOCK_D": 128},
        num_warps=8,
        div=_ROWS_DIV,
    ),
    _quant_spec(
        "sage_quant_int8_rows_k_per_thread_smooth_d128",
        _quant_rows,
        _ROWS_SIG,
        {"HAS_MEAN": True, "TILE": 64, "T": 4, "C": 2, "ADD_EPS": True, "BLOCK_R": 64, "BLOCK_D": 128},
        num_warps=8,
        div=(*_ROWS_DIV, "mean_ptr"),
    ),
    _quant_spec(
        "sage_quant_int8_rows_per_token_d128",
        _quant_rows,
        _ROWS_SIG,
        {"HAS_MEAN": False, "TILE": 1, "T": 1, "C": 1, "ADD_EPS": False, "BLOCK_R": 64, "BLOCK_D": 128},
        num_warps=8,
        div=_ROWS_DIV,
    ),
    _quant_spec(
        "sage_quant_int8_q_per_block_d128",
        _quant_int8,
        {
            "x_ptr": "*bf16",
            "mean_ptr": "*fp32",
            "q_ptr": "*i8",
            "scale_ptr": "*fp32",
            "gtab_ptr": "*i32",
            **dict.fromkeys(("N", "D", "H", "NG"), "i32"),
            **_STRIDES3,
            "multiplier": "fp32",
        },
        {"HAS_MEAN": False, "GS": 128, "BLOCK_D": 128, "VARLEN": False},
        num_warps=8,
        div=("x_ptr", "q_ptr", "D", "stride_b", "stride_h", "stride_n"),
    ),
    _quant_spec(
        "sage_quant_int8_k_smooth_varlen_d128",
        _quant_int8,
        {
            "x_ptr": "*bf16",
            "mean_ptr": "*fp32",
            "q_ptr": "*i8",
            "scale_ptr": "*fp32",
            "gtab_ptr": "*i32",
            **dict.fromkeys(("N", "D", "H", "NG"), "i32"),
            **_STRIDES3,
            "multiplier": "fp32",
        },
        {"HAS_MEAN": True, "GS": 64, "BLOCK_D": 128, "VARLEN": True},
        num_warps=4,
        div=("x_ptr", "q_ptr", "mean_ptr", "D", "stride_b", "stride_h", "stride_n"),
    ),
    _quant_spec(
        "sage_token_mean_fp64",
        _reduce,
        {
            "x_ptr": "*bf16",
            "out_ptr": "*fp32",
            "cu_ptr": "*i32",
            **dict.fromkeys(("N", "D", "H"), "i32"),
            **_STRIDES3,
        },
        {"MEAN": True, "CHUNK_N": 64, "BLOCK_D": 64, "VARLEN": False},
        div=("x_ptr", "out_ptr", "D", "stride_b", "stride_h", "stride_n"),
    ),
    _quant_spec(
        "sage_token_amax_varlen",
        _reduce,
        {
            "x_ptr": "*bf16",
            "out_ptr": "*fp32",
            "cu_ptr": "*i32",
            **dict.fromkeys(("N", "D", "H"), "i32"),
            **_STRIDES3,
        },
        {"MEAN": False, "CHUNK_N": 64, "BLOCK_D": 64, "VARLEN": True},
        div=("x_ptr", "out_ptr", "D", "stride_b", "stride_h", "stride_n"),
    ),
    _quant_spec(
        "sage_quant_fp8_v_d128",
        _quant_fp8,
        {
            "x_ptr": "*bf16",
            "scale_ptr": "*fp32",
            "q_ptr": "*fp8e4nv",
            **dict.fromkeys(("N", "D", "H"), "i32"),
            **_STRIDES3,
        },
        {"BLOCK_N": 64, "BLOCK_D": 128, "EMULATE_CVT": False},
        archs=(89, 90, 100),
        div=("x_ptr", "q_ptr", "D", "stride_b", "stride_h", "stride_n"),
    ),
]

CUDA_KERNELS: list = []

# SageAttention3 (NVFP4, tl.dot_scaled with E4M3 scales per 16): block-scaled tensor cores on sm100a
from .sa3.triton_fp4 import SA3_KERNEL_SPECS  # noqa: E402

TRITON_KERNELS += SA3_KERNEL_SPECS

# SageBwd (trainable INT8 attention): forward, Δ preprocess, dK/dV and dQ at their real launch
# configs (sagebwd/kernels.py launch table; one row per group of archs sharing a config)
from .sagebwd.kernel_specs import TRITON_KERNELS as _SAGEBWD_SPECS  # noqa: E402

TRITON_KERNELS += _SAGEBWD_SPECS
