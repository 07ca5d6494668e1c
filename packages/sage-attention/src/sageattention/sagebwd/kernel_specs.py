"""SageBwd kernels for ``tools/kernel_report`` (included in ``sageattention.kernel_specs``).

The forward, dK/dV and dQ kernels must run their INT8 matmuls on integer tensor cores and
``dO·Vᵀ`` on fp16 ones (``mma.sync`` on sm80/89, ``wgmma`` on sm90a, ``tcgen05`` on sm100a); the
``Δ`` preprocess is memory bound ("none"). Every row is a real launch of ``kernels.forward`` /
``kernels.backward``: tiles 64 × 64, the launcher's constexprs, and ``num_warps`` / ``num_stages``
(and the dK/dV kernel's ``TWO_PASS``) read from its launch table ``kernels.launch_config`` for
each arch; where the table differs between archs, a variant gets one row per group of archs
(name suffix ``_sm80_89`` etc.). tests/test_sagebwd_specs.py checks them against real launches.
"""

from __future__ import annotations

from shared_kernels.kernel_specs import TritonKernelSpec

from . import kernels as _k

_TC = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}
_NONE = {80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)}
_INTS = ("NQ", "NK", "HQ", "HKV", "D", "DV", "NQB", "NKB")
_MSTR = ("stride_mb", "stride_mh", "stride_mm")
_FN = {
    "fwd": "sagebwd_fwd_kernel",
    "preprocess": "sagebwd_preprocess_kernel",
    "dkdv": "sagebwd_dkdv_kernel",
    "dq": "sagebwd_dq_kernel",
}


def _fn(name: str):
    def load():
        return getattr(_k, name)

    return load


def _mask_type(mask_mode: int) -> str:
    return "*u8" if mask_mode == 2 else "*fp32"  # bool masks are passed as uint8


def _signature(kernel: str, mask_mode: int) -> dict[str, str]:
    mask = _mask_type(mask_mode)
    if kernel == "fwd":
        return {
            **dict.fromkeys(("q_ptr", "k_ptr", "v_ptr"), "*i8"),
            **dict.fromkeys(("qs_ptr", "ks_ptr", "vs_ptr"), "*fp32"),
            "mask_ptr": mask,
            **dict.fromkeys(("o_ptr", "lse_ptr"), "*fp32"),
            **dict.fromkeys(_INTS + _MSTR, "i32"),
        }
    if kernel == "preprocess":
        return {
            **dict.fromkeys(("do_ptr", "o_ptr", "dlse_ptr", "delta_ptr"), "*fp32"),
            "NQ": "i32",
            "DV": "i32",
        }
    common = {
        "q_ptr": "*i8", "k_ptr": "*i8", "v16_ptr": "*fp16", "qs_ptr": "*fp32", "ks_ptr": "*fp32",
        "mask_ptr": mask, "lse_ptr": "*fp32", "delta_ptr": "*fp32", "do16_ptr": "*fp16",
        "g_ptr": "*fp32",
    }  # fmt: skip
    if kernel == "dkdv":
        return {
            **common, "do8_ptr": "*i8", "sdo_ptr": "*fp32", "dk_ptr": "*fp32", "dv_ptr": "*fp32",
            **dict.fromkeys((*_INTS, "NDOB", *_MSTR), "i32"),
        }  # fmt: skip
    return {**common, "dq_ptr": "*fp32", **dict.fromkeys(_INTS + _MSTR, "i32"), "sm_scale": "fp32"}


def constexprs(kernel: str, d: int, causal: bool = False, mask_mode: int = 0, arch: int = 80) -> dict:
    """The constexprs ``kernels.forward`` / ``kernels.backward`` pass to ``kernel`` for head dim
    ``d`` (= Dv) on ``arch`` (compiled, so ``INTERPRET=False``; dK/dV's ``TWO_PASS`` included)."""
    bd = max(16, 1 << (d - 1).bit_length())
    if kernel == "preprocess":
        return dict(HAS_DLSE=True, BLOCK_M=64, BLOCK_DV=bd)
    cx = dict(
        QGROUP=128, BLOCK_M=64, BLOCK_N=64, BLOCK_D=bd, BLOCK_DV=bd, IS_CAUSAL=causal,
        MASK_MODE=mask_mode, INTERPRET=False,
    )  # fmt: skip
    if kernel == "dkdv":
        cx["TWO_PASS"] = _k.launch_config(kernel, arch, d, d, mask_mode != 0)["TWO_PASS"]
    return cx


def _divisible(kernel: str, signature: dict[str, str]) -> tuple[str, ...]:
    if kernel == "preprocess":
        return ("do_ptr", "o_ptr", "DV")
    return (*tuple(k for k in signature if k.endswith("_ptr")), "D", "DV")


def specs_for(name: str, kernel: str, d: int, causal: bool = False, mask_mode: int = 0) -> list:
    """The report rows of one launch variant: one spec per group of archs that share a config."""
    groups: dict[tuple, list[int]] = {}
    for arch in _k.ARCHS:
        cfg = _k.launch_config(kernel, arch, d, d, mask_mode != 0)
        key = (cfg["num_warps"], cfg["num_stages"], cfg.get("TWO_PASS"))
        groups.setdefault(key, []).append(arch)
    out = []
    sig = _signature(kernel, mask_mode)
    for (warps, stages, _), archs in groups.items():
        suffix = "" if len(groups) == 1 else "_sm" + "_".join(str(a) for a in archs)
        out.append(
            TritonKernelSpec(
                name=name + suffix,
                fn=_fn(_FN[kernel]),
                signature=sig,
                constexprs=constexprs(kernel, d, causal, mask_mode, archs[0]),
                expect={a: (_NONE if kernel == "preprocess" else _TC)[a] for a in archs},
                divisible_by_16=_divisible(kernel, sig),
                num_warps=warps,
                num_stages=stages,
                archs=tuple(archs),
            )
        )
    return out


# (name, kernel, head dim, causal, mask mode 0 none / 1 additive fp32 / 2 bool)
VARIANTS = (
    ("sagebwd_fwd_d128", "fwd", 128, False, 0),
    ("sagebwd_fwd_d64_causal", "fwd", 64, True, 0),
    ("sagebwd_fwd_d128_boolmask", "fwd", 128, False, 2),
    ("sagebwd_fwd_d64_addmask_causal", "fwd", 64, True, 1),
    ("sagebwd_preprocess_dv128", "preprocess", 128, False, 0),
    ("sagebwd_preprocess_dv64", "preprocess", 64, False, 0),
    ("sagebwd_dkdv_d128", "dkdv", 128, False, 0),
    ("sagebwd_dkdv_d128_causal", "dkdv", 128, True, 0),
    ("sagebwd_dkdv_d64", "dkdv", 64, False, 0),
    ("sagebwd_dkdv_d64_causal", "dkdv", 64, True, 0),
    ("sagebwd_dkdv_d64_addmask", "dkdv", 64, False, 1),
    ("sagebwd_dkdv_d128_boolmask", "dkdv", 128, False, 2),
    ("sagebwd_dq_d128", "dq", 128, False, 0),
    ("sagebwd_dq_d64_causal", "dq", 64, True, 0),
    ("sagebwd_dq_d128_addmask", "dq", 128, False, 1),
    ("sagebwd_dq_d64_boolmask", "dq", 64, False, 2),
)

TRITON_KERNELS = [s for v in VARIANTS for s in specs_for(*v)]
