"""``sageattn3_blackwell``: SageAttention3 (NVFP4 Q, K, V and two-level FP4 P) with upstream's
signature plus GQA, ``sm_scale``, ``return_lse``, masks, any head dim, and no input mutation."""

from __future__ import annotations

import math
import os

import torch

from ..core import _check_bool, _check_qkv, check_layout, check_mask, check_qkv_consistent
from . import reference as ref

__all__ = ["fp4_kernel_available", "sageattn3_blackwell"]

_BACKENDS = ("auto", "torch", "triton")
_MAX_TRITON_D = 256


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def fp4_kernel_available(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton NVFP4 kernel can run on ``device``, and why not: it needs FP4 tensor cores
    (CUDA compute capability >= 10.0: sm100/sm103/sm110/sm120/sm121) or ``TRITON_INTERPRET=1`` on the
    CPU, and an installed Triton."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major < 10:
            return (
                False,
                f"{name} (sm{major}{minor}) has no FP4 tensor cores (needs compute capability >= 10.0)",
            )
        return True, ""
    if device.type == "cpu":
        if _interpreting():
            return True, ""
        return False, "on the CPU the Triton kernel runs only in Triton's interpreter (TRITON_INTERPRET=1)"
    return False, f"device type {device.type!r} has no Triton NVFP4 kernel"


def _launch_triton(q, k, v, sm_scale, is_causal, mask, per_block_mean):
    """Quantize with ``shared_kernels.quantize_nvfp4`` (as ``reference.sa3_attention``) and run
    ``sa3_fwd_kernel``. Returns ``(O float32 [B, Hq, Nq, Dv], lse2 [B, Hq, Nq] of the smoothed K)``."""
    from shared_kernels import quantize_nvfp4

    from .triton_fp4 import sa3_fwd_kernel

    b, hq, nq, d = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[3]
    bd = max(64, triton_next_pow2(d))
    bdv = max(64, triton_next_pow2(dv))
    nqp, nkp = -(-nq // ref.BLKQ) * ref.BLKQ, -(-nk // ref.BLKK) * ref.BLKK
    qf, kf, vf = q.float(), k.float(), v.float()
    km = kf.mean(dim=-2, keepdim=True)
    ks = kf - km
    qm = ref.q_block_mean(qf, per_block_mean)
    qs = qf - qm
    pad = torch.nn.functional.pad
    qs = pad(qs, (0, bd - d, 0, nqp - nq))
    ksp = pad(ks, (0, bd - d, 0, nkp - nk))
    vp = pad(vf, (0, bdv - dv, 0, nkp - nk))
    gq, gk, gv = ref.pow2_range_scale(qs), ref.pow2_range_scale(ksp), ref.pow2_range_scale(vp)
    qq = quantize_nvfp4((qs / gq.float()).contiguous(), axis=-1, outer="none")
    kq = quantize_nvfp4((ksp / gk.float()).contiguous(), axis=-1, outer="none")
    vq = quantize_nvfp4((vp / gv.float()).contiguous(), axis=-2, outer="none")
    ks_e = ks.repeat_interleave(hq // hkv, dim=1) if hq != hkv else ks
    qmb = qm[..., :: ref.BLKQ, :]  # one mean per 128-query block
    delta = pad(torch.matmul(qmb, ks_e.transpose(-1, -2)), (0, nkp - nk)).contiguous()
    gk_e = gk.repeat_interleave(hq // hkv, dim=1) if hq != hkv else gk
    smul = (gq * gk_e * (sm_scale * ref.LOG2E)).reshape(b, hq).float().contiguous()
    vmul = gv.reshape(b, hkv).float().contiguous()
    native = not _interpreting()
    scales = (lambda t: t.scales) if native else (lambda t: t.scales.view(torch.uint8))
    if mask is not None:
        mask = mask.expand(b, hq, nq, nk)
        strides = mask.stride()
    else:
        strides = (0, 0, 0, 0)
    o = torch.empty((b, hq, nqp, bdv), dtype=torch.float32, device=q.device)
    lse2 = torch.empty((b, hq, nqp), dtype=torch.float32, device=q.device)
    block_m = 128 if native else 64
    grid = (nqp // block_m, b * hq)
    sa3_fwd_kernel[grid](
        qq.data, scales(qq), kq.data, scales(kq), vq.data, scales(vq), delta,
        mask if mask is not None else o, smul, vmul, o, lse2,
        nq, nk, nqp, nkp, hq, hkv, delta.shape[2], *strides, sm_scale * ref.LOG2E,
        BLOCK_M=block_m, BLOCK_N=ref.BLKK, BLOCK_D=bd, BLOCK_DV=bdv, QGROUP=ref.BLKQ,
        IS_CAUSAL=is_causal, HAS_MASK=mask is not None, NATIVE=native,
        num_warps=8, num_stages=2,
    )  # fmt: skip
    return o[..., :nq, :dv], lse2[..., :nq]


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def sageattn3_blackwell(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    per_block_mean: bool = True,
    *,
    sm_scale: float | None = None,
    return_lse: bool = False,
    tensor_layout: str = "HND",
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention3 forward: ``softmax(Q·Kᵀ·sm_scale + mask)·V`` with NVFP4 (E2M1, E4M3 scale per
    16) Q, K, V and two-level FP4 P (SA3 paper §3; the maths is ``sa3.reference.sa3_attention``).

    Upstream ``sageattn3.sageattn3_blackwell(q, k, v, attn_mask=None, is_causal=False,
    per_block_mean=True)`` plus: GQA/MQA (``Hq % Hkv == 0``), ``sm_scale`` (default ``D^-0.5``),
    ``return_lse`` (natural-log LSE ``[B, Hq, Nq]`` float32 of the un-smoothed scores),
    ``tensor_layout`` ``"HND"``/``"NHD"``, any head dim (zero-padded to a multiple of 16 for the
    torch maths, to 64/128/256 for the kernel: exact, a zero never changes a group's amax), a
    honoured ``attn_mask`` (bool, True = attend, or additive float, broadcastable to
    ``[B, Hq, Nq, Nk]``; not with ``is_causal``), causal masking top-left aligned like SDPA, and the
    caller's tensors are never modified (upstream subtracts K's mean in place). There is no backward:
    inputs that require grad (with grad mode on) raise ``RuntimeError``. ``per_block_mean``:
    Q smoothing by the mean of each 128-token block (else one mean over all tokens), corrected
    exactly by ``q̄·Kᵀ``. Rows with every key masked give 0 (and lse ``-inf``).

    ``backend``: ``"torch"`` (the reference maths in float32, any device), ``"triton"`` (the
    ``tl.dot_scaled`` NVFP4 kernel: CUDA compute capability >= 10.0, or the CPU under
    ``TRITON_INTERPRET=1``; anything else raises ``ValueError`` naming the device and the backends
    that run), ``"auto"`` (``"triton"`` where it runs, else ``"torch"``: same maths, never an SDPA
    fallback). Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs. Returns the output in q's dtype and layout.
    """
    tensor_layout = check_layout(tensor_layout)
    q, k, v = _check_qkv("q", q), _check_qkv("k", k), _check_qkv("v", v)
    is_causal = _check_bool("is_causal", is_causal)
    per_block_mean = _check_bool("per_block_mean", per_block_mean)
    return_lse = _check_bool("return_lse", return_lse)
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise RuntimeError(
            "sageattn3_blackwell has no backward (SageAttention3 is inference-only): gradients through "
            "the FP4 quantizers would be silently wrong. Call it under torch.no_grad() / "
            "torch.inference_mode(), or detach q, k, v"
        )
    qh, kh, vh = check_qkv_consistent(q, k, v, tensor_layout)
    b, hq, nq, d = qh.shape
    nk, dv = kh.shape[2], vh.shape[3]
    if d < 1 or dv < 1:
        raise ValueError(f"head dims must be >= 1, got q/k {d} and v {dv}")
    if sm_scale is not None and (isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float))):
        raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
    if sm_scale is not None and not math.isfinite(sm_scale):
        raise ValueError(f"sm_scale must be finite, got {sm_scale}")
    scale = float(sm_scale) if sm_scale is not None else d**-0.5
    if is_causal and attn_mask is not None:
        raise ValueError(
            "attn_mask and is_causal cannot both be set (as in SDPA): fold the causal mask into attn_mask"
        )
    mask = check_mask(attn_mask, (b, hq, nq, nk), qh.device)
    if mask is not None:
        mask = (
            torch.zeros((), device=qh.device).masked_fill(~mask, float("-inf"))
            if mask.dtype == torch.bool
            else mask.float()
        )
        mask = torch.broadcast_to(mask, (b, hq, nq, nk)) if mask.dim() < 4 else mask
    ok, why = fp4_kernel_available(qh.device)
    if backend == "triton" and not ok:
        runs = "'torch' (reference maths, any device)"
        raise ValueError(
            f"backend='triton' cannot run on {qh.device}: {why}; available backends here: {runs}"
        )
    if backend == "triton" and max(d, dv) > _MAX_TRITON_D:
        raise ValueError(
            f"backend='triton' supports head dims <= {_MAX_TRITON_D}, got {d}/{dv}; use backend='torch'"
        )
    use_triton = backend == "triton" or (
        backend == "auto" and ok and qh.device.type == "cuda" and max(d, dv) <= _MAX_TRITON_D
    )
    if nq == 0 or nk == 0:
        o = qh.new_zeros((b, hq, nq, dv), dtype=torch.float32)
        lse = qh.new_full((b, hq, nq), float("-inf"), dtype=torch.float32)
    elif use_triton:
        o, lse2 = _launch_triton(qh, kh, vh, scale, is_causal, mask, per_block_mean)
        km = kh.float().mean(dim=-2, keepdim=True)
        km = km.repeat_interleave(hq // km.shape[1], dim=1) if km.shape[1] != hq else km
        lse = lse2 * math.log(2.0) + torch.matmul(qh.float(), km.transpose(-1, -2))[..., 0] * scale
    else:
        o, lse = ref.sa3_attention(
            qh, kh, vh, sm_scale=scale, is_causal=is_causal, mask=mask, per_block_mean=per_block_mean
        )
    o = o.to(q.dtype)
    if tensor_layout == "NHD":
        o = o.transpose(1, 2).contiguous()
    return (o, lse.float()) if return_lse else o
