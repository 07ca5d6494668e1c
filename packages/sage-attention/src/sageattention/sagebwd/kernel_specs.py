"""SageBwd kernels for ``tools/kernel_report`` (``--spec-module sageattention.sagebwd.kernel_specs``).

The forward, dK/dV and dQ kernels must run their INT8 matmuls on integer tensor cores and
``dO·Vᵀ`` on fp16 ones (``mma.sync`` on sm80/89, ``wgmma`` on sm90a, ``tcgen05`` on sm100a); the
``Δ`` preprocess is memory bound ("none"). Shapes of a real launch (``kernels.forward`` /
``kernels.backward``): tiles 64 × 64, head dim 128 (and 64 causal), 8 warps for dK/dV and for dQ at D > 64, else 4.
"""

from __future__ import annotations

from shared_kernels.kernel_specs import TritonKernelSpec

_TC = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}
_NONE = {80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)}
_ARCHS = (80, 89, 90, 100)
_INTS = ("NQ", "NK", "HQ", "HKV", "D", "DV", "NQB", "NKB")
_MSTR = ("stride_mb", "stride_mh", "stride_mm")


def _fn(name: str):
    def load():
        from . import kernels

        return getattr(kernels, name)

    return load


def _cx(d: int, causal: bool, mask_mode: int) -> dict:
    return dict(
        QGROUP=128, BLOCK_M=64, BLOCK_N=64, BLOCK_D=d, BLOCK_DV=d, IS_CAUSAL=causal,
        MASK_MODE=mask_mode, INTERPRET=False,
    )  # fmt: skip


def _spec(name, kernel, signature, d, causal=False, mask_mode=0, tc=True, warps=4):
    return TritonKernelSpec(
        name=name,
        fn=_fn(kernel),
        signature=signature,
        constexprs=_cx(d, causal, mask_mode),
        expect={a: (_TC if tc else _NONE)[a] for a in _ARCHS},
        divisible_by_16=(*tuple(k for k in signature if k.endswith("_ptr")), "D", "DV"),
        num_warps=warps,
        num_stages=1,
        archs=_ARCHS,
    )


_FWD = {
    **dict.fromkeys(("q_ptr", "k_ptr", "v_ptr"), "*i8"),
    **dict.fromkeys(("qs_ptr", "ks_ptr", "vs_ptr", "mask_ptr", "o_ptr", "lse_ptr"), "*fp32"),
    **dict.fromkeys(_INTS + _MSTR, "i32"),
}
_COMMON_BWD = {
    "q_ptr": "*i8", "k_ptr": "*i8", "v16_ptr": "*fp16", "qs_ptr": "*fp32", "ks_ptr": "*fp32",
    "mask_ptr": "*fp32", "lse_ptr": "*fp32", "delta_ptr": "*fp32", "do16_ptr": "*fp16", "g_ptr": "*fp32",
}  # fmt: skip
_DKDV = {
    **_COMMON_BWD, "do8_ptr": "*i8", "sdo_ptr": "*fp32", "dk_ptr": "*fp32", "dv_ptr": "*fp32",
    **dict.fromkeys((*_INTS, "NDOB", *_MSTR), "i32"),
}  # fmt: skip
_DQ = {**_COMMON_BWD, "dq_ptr": "*fp32", **dict.fromkeys(_INTS + _MSTR, "i32"), "sm_scale": "fp32"}
_PRE = {
    "do_ptr": "*fp32",
    "o_ptr": "*fp32",
    "dlse_ptr": "*fp32",
    "delta_ptr": "*fp32",
    "NQ": "i32",
    "DV": "i32",
}


def _pre_spec():
    return TritonKernelSpec(
        name="sagebwd_preprocess_dv128",
        fn=_fn("sagebwd_preprocess_kernel"),
        signature=_PRE,
        constexprs=dict(HAS_DLSE=True, BLOCK_M=64, BLOCK_DV=128),
        expect={a: _NONE[a] for a in _ARCHS},
        divisible_by_16=("do_ptr", "o_ptr", "DV"),
        num_warps=4,
        num_stages=1,
        archs=_ARCHS,
    )


TRITON_KERNELS = [
    _spec("sagebwd_fwd_d128", "sagebwd_fwd_kernel", _FWD, 128),
    _spec("sagebwd_fwd_d64_causal", "sagebwd_fwd_kernel", _FWD, 64, causal=True),
    _spec("sagebwd_dkdv_d128", "sagebwd_dkdv_kernel", _DKDV, 128, warps=8),
    _spec("sagebwd_dkdv_d64_addmask", "sagebwd_dkdv_kernel", _DKDV, 64, mask_mode=1, warps=8),
    _spec("sagebwd_dq_d128", "sagebwd_dq_kernel", _DQ, 128, warps=8),
    _spec("sagebwd_dq_d64_causal", "sagebwd_dq_kernel", _DQ, 64, causal=True),
    _pre_spec(),
]
