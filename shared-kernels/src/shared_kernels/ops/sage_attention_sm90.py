"""SageAttention2 forward of the Hopper wgmma kernel (INT8 QKᵀ, FP8 PV, two-level accumulation) as a torch
custom op."""

from __future__ import annotations

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec
from ..reference import sage_attention_sm90 as _ref
from . import _sage_checks as _checks

__all__ = ["sage_attention_fwd_sm90", "sage_attention_sm90_status"]

_OP = "sage_attention_fwd_sm90"
_BINDING = "sage_attention_fwd_sm90_cuda"
_DTYPE_CODE = {torch.float16: 1, torch.bfloat16: 2}
HEAD_DIMS = (64, 128)

_backend.register_op(
    _OP,
    backends=("torch", "cuda"),
    summary="SageAttention2 forward on Hopper (sm_90a wgmma): INT8 QKᵀ per-thread, FP8 P·V two-level, out + LSE",
)


def sage_attention_sm90_status(device: torch.device | str | None = None) -> tuple[bool, str]:
    """``(usable, reason)`` of the CUDA kernel for ``device`` (default: the current CUDA device): the build
    holds sm_90a code and the binding, and the device has compute capability 9.0."""
    dev = torch.device("cuda") if device is None else torch.device(device)
    if dev.type != "cuda":
        return False, f"the kernel runs on CUDA tensors, not on {dev.type}"
    ok, why = _backend.backend_status("cuda", "cuda")
    if not ok:
        return False, why
    C = _lib.native()
    archs = [a for a in str(getattr(C, "cuda_archs", "")).split(",") if a]
    if "90a" not in archs:
        return False, f"this shared-kernels build has no sm_90a code (archs: {', '.join(archs) or 'none'})"
    if not hasattr(C, _BINDING):
        return False, f"the compiled module lacks {_BINDING} (rebuild shared-kernels)"
    if not torch.cuda.is_available():
        return False, "compiled, but no CUDA GPU is present"
    cap = torch.cuda.get_device_capability(dev)
    if cap != (9, 0):
        return False, f"the kernel needs compute capability 9.0 (Hopper), {dev} is sm{cap[0]}{cap[1]}"
    return True, ""


def _run_cuda(q, k, v_t, q_scale, k_scale, v_scale, is_causal, out_dtype):
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    out = _alloc.new_empty((b, hq, nq, d), out_dtype, q.device)
    lse = _alloc.new_empty((b, hq, nq), torch.float32, q.device)
    if out.numel():
        q, k, v_t = (t if t.data_ptr() % 16 == 0 else t.clone() for t in (q, k, v_t))
        _lib.launch(
            "sage_attention_fwd_sm90", q,
            _lib.ptr(q), _lib.ptr(k), _lib.ptr(v_t), _lib.ptr(q_scale), _lib.ptr(k_scale), _lib.ptr(v_scale),
            _lib.ptr(out), _lib.ptr(lse), b, hq, hkv, nq, nk, v_t.shape[-1], d, q_scale.shape[-1],
            k_scale.shape[-1], is_causal, _DTYPE_CODE[out_dtype],
        )  # fmt: skip
    return out, lse


@torch.library.custom_op("shared_kernels::sage_attention_fwd_sm90", mutates_args=())
def _sage_attention_fwd_sm90_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v_t: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    is_causal: bool,
    out_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _run_cuda(q, k, v_t, q_scale, k_scale, v_scale, is_causal, out_dtype)
    return _ref.sage_attention_fwd_sm90(q, k, v_t, q_scale, k_scale, v_scale, is_causal, out_dtype)


@_sage_attention_fwd_sm90_op.register_fake
def _(q, k, v_t, q_scale, k_scale, v_scale, is_causal, out_dtype, backend):
    return q.new_empty(q.shape, dtype=out_dtype), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _check_args(q, k, v_t, q_scale, k_scale, v_scale, is_causal, out_dtype) -> bool:
    _validate.check_tensor("q", q, dtypes=(torch.int8,), ndim=4, contiguous=True)
    _validate.check_tensor("k", k, dtypes=(torch.int8,), ndim=4, contiguous=True, device=q.device)
    _validate.check_tensor(
        "v_t", v_t, dtypes=(torch.float8_e4m3fn,), ndim=4, contiguous=True, device=q.device
    )
    for name, t in (("q_scale", q_scale), ("k_scale", k_scale), ("v_scale", v_scale)):
        _validate.check_tensor(name, t, dtypes=(torch.float32,), ndim=3, contiguous=True, device=q.device)
    is_causal = _validate.check_bool("is_causal", is_causal)
    out_dtype = _checks.check_out_dtype(out_dtype)
    b, hq, nq, d = q.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"q has head dim {d}; supported: 64, 128 (zero-pad smaller head dims)")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k must be [B={b}, Hkv, Nk, D={d}] like q, got shape {tuple(k.shape)}")
    hkv, nk = _checks.check_kv_heads(hq, k)
    nkp = v_t.shape[3]
    if tuple(v_t.shape[:3]) != (b, hkv, d) or nkp < nk or nkp % _ref.VT_ALIGN:
        raise ValueError(
            f"v_t must be V transposed, [B={b}, Hkv={hkv}, D={d}, Nkp] with Nkp >= Nk={nk} and a multiple of "
            f"{_ref.VT_ALIGN}, got shape {tuple(v_t.shape)}"
        )
    _checks.check_scale_groups(
        q_scale, k_scale, b, hq, hkv, _ref.num_q_groups(nq), _ref.num_k_groups(nk), 16, 128
    )
    if tuple(v_scale.shape) != (b, hkv, d):
        raise ValueError(f"v_scale must have shape {(b, hkv, d)}, got {tuple(v_scale.shape)}")
    return is_causal


def sage_attention_fwd_sm90(
    q: torch.Tensor,
    k: torch.Tensor,
    v_t: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    *,
    is_causal: bool = False,
    out_dtype: torch.dtype = torch.float16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 forward of upstream's Hopper kernel on pre-quantized operands; returns ``(out, lse)``.

    ``q`` int8 ``[B, Hq, Nq, D]`` with per-thread ``q_scale`` float32 ``[B, Hq, >= ceil(Nq / 16) · 8]``
    (row ``r`` -> entry ``(r // 16) · 8 + r % 8``; ``sm_scale · log2 e`` folded in), ``k`` int8
    ``[B, Hkv, Nk, D]`` (smoothed) with ``k_scale`` float32 ``[B, Hkv, >= ceil(Nk / 128) · 4]`` (key ``n`` ->
    entry ``(n // 128) · 4 + (n % 8) // 2``), ``v_t`` float8_e4m3fn ``[B, Hkv, D, Nkp]`` (V transposed,
    ``Nkp >= Nk`` a multiple of 16, columns past ``Nk`` ignored) with ``v_scale`` float32 ``[B, Hkv, D]``
    (``V ≈ v_tᵀ · v_scale``). ``D`` in {64, 128}, ``Hq % Hkv == 0`` (GQA), any ``Nq >= 0``, ``Nk >= 1``;
    ``is_causal`` masks key ``j > i`` (top-left). Maths (log2-domain ``S``, online softmax over 128-key
    blocks ``b`` with running max ``m_b``, ``P`` rounded to e4m3, spelled out in
    ``shared_kernels.reference.sage_attention_fwd_sm90``)::

        O = Σ_b 2^(m_b - m) · e4m3(448 · 2^(S_b - m_b)) · V_b / Σ_j 448 · 2^(S_j - m),
        lse = ln2 · (m + log2(Σ_j 2^(S_j - m)))

    ``out`` ``[B, Hq, Nq, D]`` in ``out_dtype`` (float16 or bfloat16), ``lse`` float32 ``[B, Hq, Nq]``,
    natural log, of the scores as given (add ``q·mean(k)·sm_scale`` for the un-smoothed K). The ``cuda``
    backend needs an sm90 GPU and a build with sm_90a (:func:`sage_attention_sm90_status`); ``auto`` takes
    it there and the reference elsewhere. Scales must be finite (not checked: no device sync).
    Cost: ``4·B·Hq·Nq·Nk·D`` ops (half INT8 IGMMA, half FP8 QGMMA; about half when causal). DRAM bytes:
    at least ``B·Hq·Nq·D·(1 + 2) + 2·B·Hkv·Nk·D + 4·B·Hq·Nq`` (+ scales); K/V reach shared memory once per
    64-row q tile (``ceil(Nq / 64)·2·B·Hq·Nk·D`` bytes from L2, 128 ops per byte). Roofline, B=1, H=32,
    N=8192, D=128 (1.10e12 ops, 0.17 GB DRAM, 8.6 GB L2 -> SM) on an H100 SXM (dense peaks 1979 INT8
    TOPS, 1979 FP8 TFLOPS, 3.35 TB/s): >= 0.28 + 0.28 = 0.56 ms tensor cores, 0.05 ms DRAM.
    """
    is_causal = _check_args(q, k, v_t, q_scale, k_scale, v_scale, is_causal, out_dtype)
    resolved = _backend.resolve_backend(_OP, backend, q.device)
    if resolved == "cuda":
        ok, why = sage_attention_sm90_status(q.device)
        if not ok:
            if backend == "cuda":
                raise RuntimeError(f"{_OP}: backend 'cuda' is not available: {why}")
            resolved = "torch"
    return torch.ops.shared_kernels.sage_attention_fwd_sm90(
        q, k, v_t, q_scale, k_scale, v_scale, is_causal, out_dtype, resolved
    )


CUDA_SPECS = [
    # INT8 QK (IGMMA) + FP8 PV (QGMMA) on sm_90a only; the other archs hold a __trap() stub (the launcher
    # refuses devices other than compute capability 9.0), hence "none"
    CudaKernelSpec(
        name="sage_attn_fwd_sm90",
        match="sk_sage_attn_fwd_sm90_kernel",
        expect={80: ("none",), 89: ("none",), 90: ("wgmma",), 100: ("none",)},
    ),
]
