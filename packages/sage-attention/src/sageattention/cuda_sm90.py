"""The Hopper wgmma kernel of shared-kernels behind ``sageattn_qk_int8_pv_fp8_cuda_sm90`` (``variants.KERNELS``).

:func:`register` (called once at import) puts :func:`sm90_kernel` first in
``variants.KERNELS["sageattn_qk_int8_pv_fp8_cuda_sm90"]`` when the shared-kernels build compiled the ``cuda``
backend of ``sage_attention_fwd_sm90`` with sm_90a code; it reads the build only (no CUDA initialisation at
import). Each call checks the device (compute capability 9.0 and a usable op, :func:`kernel_available`,
cached per device) with the options in :func:`supported`. The kernel (``shared_kernels.sage_attention_fwd_sm90``) computes the maths of
:func:`sageattention.modes.sage_attention_mode` for the variant's config: Q/K are quantized here by
``modes.quantize_int8_groups`` (the oracle's quantizer, bit for bit), V by ``shared_kernels.quantize_fp8``
per channel (as the oracle), scores ``Q8·K8ᵀ · (q_scale · sm_scale·log2 e) · k_scale``, online exp2
softmax over 128-key blocks, ``P`` E4M3 of ``P·448``, a fresh wgmma accumulator per block added into
float32. It differs from the oracle by the last bits of ``exp2``, the float32 order of the dequantization
product and the oracle's *fp22* emulation of the block accumulator (the hardware's own rounding is not
public); the tests hold it to a cosine ≥ 0.9999 against the oracle.

Supported: ``qk_quant_gran`` ``per_thread``, ``per_warp`` and ``per_block`` with the variant's tiles
(64-row Q tiles, 16-row warps, 128-key K tiles: every such group is a union of the kernel's per-thread
groups), ``smooth_k`` on/off, ``prescale_q`` either way, causal (top-left), GQA/MQA, ``Nq ≠ Nk``, head dims
≤ 128 (zero-padded to 64 or 128; padded channels change no score and are sliced off), fp16/bf16 inputs,
HND/NHD. Anything else (``per_token``, ``smooth_q``, ``qk_rotation``, ``attn_mask``, another accumulator or
tile size, fp32 inputs, head dims > 128, a device other than sm90) makes :func:`sm90_attention` raise
``NotImplementedError`` naming the option; the variant then runs the next kernel of its chain or
``modes.sage_attention_mode`` (the same maths ``backend="torch"`` runs), logged at DEBUG level; ``sageattn``
asks ``sm90_kernel.supports`` first and routes such calls to Triton. Non-finite inputs: the oracle
makes every score of a NaN/inf group NaN, the kernel's rows touching such a group are NaN or garbage.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from . import cuda_kernels, modes, variants
from . import reference as ref
from .core import Prepared

__all__ = ["KERNEL_NAME", "kernel_available", "register", "sm90_attention", "sm90_kernel", "supported"]

_log = logging.getLogger(__name__)
KERNEL_NAME = "sageattn_qk_int8_pv_fp8_cuda_sm90"
_OP = "sage_attention_fwd_sm90"
_TILES = dict(blkq=64, warpq=16, blkk=128, warpk=128, pv_block=128)
_DTYPES = (torch.float16, torch.bfloat16)
_GRANS = ("per_thread", "per_warp", "per_block")


def kernel_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """``(available, reason)``: shared-kernels reports the op's ``cuda`` backend usable, its build holds
    sm_90a code, and ``device`` (default: the current CUDA device) has compute capability 9.0."""
    try:
        import shared_kernels

        caps = shared_kernels.capabilities()
    except Exception as exc:  # a broken or old shared-kernels: no kernel, the reference runs
        return False, f"shared_kernels.capabilities() failed: {exc!r}"
    entry = caps.get("ops", {}).get(_OP, {}).get("backends", {}).get("cuda")
    if entry is None:
        return False, f"this shared-kernels has no 'cuda' backend of {_OP}"
    if not entry.get("usable", False):
        return False, f"{_OP} 'cuda': {entry.get('reason', 'not usable')}"
    archs = caps.get("cuda", {}).get("archs", [])
    if "90a" not in archs:
        return False, f"this shared-kernels build has no sm_90a code (archs: {archs})"
    cap = tuple(torch.cuda.get_device_capability(device))
    if cap != (9, 0):
        return False, f"the kernel needs compute capability 9.0 (Hopper), the device is sm{cap[0]}{cap[1]}"
    return True, ""


def register() -> bool:
    """Put :func:`sm90_kernel` first in ``variants.KERNELS[KERNEL_NAME]`` when this shared-kernels build
    compiled the op's ``cuda`` backend with sm_90a code; returns whether it did (idempotent). Reads the
    build, not the GPU (importing sageattention must not initialise CUDA): the device is checked per call
    by :func:`supported` (cached per device), and a call it cannot run falls through to the next kernel of
    the chain or to the reference."""
    has, archs = cuda_kernels._build_info(_OP)
    if not (has and "90a" in archs):
        _log.debug("%s: no sm_90a build of %s: the sm90 kernel is not registered", KERNEL_NAME, _OP)
        return False
    variants.register_kernel(KERNEL_NAME, sm90_kernel, first=True)
    return True


@functools.cache
def _device_status(index: int) -> tuple[bool, str]:
    """:func:`kernel_available` for CUDA device ``index``, once per process (it builds the whole
    ``shared_kernels.capabilities()`` report: too slow for every attention call)."""
    return kernel_available(torch.device("cuda", index))


def _padded(d: int) -> int:
    return 64 if d <= 64 else 128


def supported(p: Prepared, cfg: modes.SageConfig, device_check: bool = True) -> str | None:
    """None if the kernel reproduces ``modes.sage_attention_mode(cfg)`` for ``p``, else the name and value of
    the first unsupported option (``device_check=False`` skips the device: for the ``torch`` backend)."""
    d = max(p.q.shape[3], p.v.shape[3])
    checks = [
        ("pv_dtype", cfg.pv_dtype, cfg.pv_dtype == "fp8"),
        ("pv_accum_dtype", cfg.pv_accum_dtype, cfg.pv_accum_dtype == "fp32+fp32"),
        ("v_scale_max", cfg.v_scale_max, cfg.v_scale_max == 448.0),
        ("smooth_v", cfg.smooth_v, not cfg.smooth_v),
        ("qk_quant_gran", cfg.qk_quant_gran, cfg.qk_quant_gran in _GRANS),
        *((name, getattr(cfg, name), getattr(cfg, name) == val) for name, val in _TILES.items()),
        ("smooth_q", cfg.smooth_q, not cfg.smooth_q),
        ("qk_rotation", cfg.qk_rotation, cfg.qk_rotation is None),
        ("attn_mask", "given", p.mask is None),
        ("dtype", p.q.dtype, p.q.dtype in _DTYPES),
        ("head dim", d, d <= 128),
    ]
    if device_check:
        dev = p.q.device
        if dev.type == "cuda":
            ok, why = _device_status(dev.index if dev.index is not None else torch.cuda.current_device())
        else:
            ok, why = False, "not a CUDA tensor"
        checks.append(("device", f"{p.q.device} ({why})", p.q.is_cuda and ok))
    for name, val, ok in checks:
        if not ok:
            return f"{name}={val!r}"
    return None


def _group_scales(tok: torch.Tensor, idx: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-token scales ``[..., N]`` (constant over each kernel group) -> ``[..., groups]``; groups without a
    token get 1 (never read)."""
    out = torch.ones((*tok.shape[:-1], groups), dtype=torch.float32, device=tok.device)
    return out.scatter(-1, idx.expand_as(tok), tok.float())


def sm90_attention(p: Prepared, cfg: modes.SageConfig, backend: str = "cuda"):
    """``modes.sage_attention_mode(cfg)`` on the shared-kernels sm90 op; the result as ``p.finish``.

    ``backend="torch"`` runs the op's float64 reference instead of the kernel (the same wrapper: tests).
    Raises ``NotImplementedError`` naming the option the kernel does not implement.
    """
    import shared_kernels
    from shared_kernels.reference import sage_attention_sm90 as skref

    why = supported(p, cfg, device_check=backend == "cuda")
    if why is not None:
        raise NotImplementedError(f"the sm90 kernel does not implement {why}")
    if p.is_empty:
        return p.empty_result()
    b, _, nq, d = p.q.shape
    hkv, nk, dv = p.k.shape[1], p.k.shape[2], p.v.shape[3]
    dp = _padded(max(d, dv))
    c = p.sm_scale * ref.LOG2E
    kf = p.k.float()
    km = None
    if cfg.smooth_k:
        km = (p.k.double().sum(dim=-2, keepdim=True) / nk).float()
        kf = kf - km
    qf = p.q.float()
    if cfg.prescale_q:
        qf = qf * torch.tensor(c, dtype=torch.float32, device=qf.device)
    q8, qs_tok = modes.quantize_int8_groups(qf, "q", cfg.qk_quant_gran, cfg)
    k8, ks_tok = modes.quantize_int8_groups(kf, "k", cfg.qk_quant_gran, cfg)
    mult = 1.0 if cfg.prescale_q else c
    q_scale = _group_scales(qs_tok * mult, skref.q_group_index(nq, qf.device), skref.num_q_groups(nq))
    k_scale = _group_scales(ks_tok, skref.k_group_index(nk, kf.device), skref.num_k_groups(nk))
    codes, v_scale = shared_kernels.quantize_fp8(p.v.contiguous(), "e4m3", "per_channel", scale_max=448.0)
    nkp = -(-nk // skref.VT_ALIGN) * skref.VT_ALIGN
    v_t = torch.zeros((b, hkv, dp, nkp), dtype=torch.float8_e4m3fn, device=codes.device)
    v_t[:, :, :dv, :nk] = codes.transpose(-1, -2)
    v_scale = torch.nn.functional.pad(v_scale, (0, dp - dv), value=1.0).contiguous()
    q8 = torch.nn.functional.pad(q8, (0, dp - d)).to(torch.int8).contiguous()
    k8 = torch.nn.functional.pad(k8, (0, dp - d)).to(torch.int8).contiguous()
    o, lse = shared_kernels.sage_attention_fwd_sm90(
        q8, k8, v_t, q_scale, k_scale, v_scale, is_causal=p.is_causal, out_dtype=p.q.dtype, backend=backend
    )
    return p.finish(o[..., :dv], ref.lse_natural(lse / math.log(2.0), p.q, km, p.sm_scale))


def sm90_kernel(p: Prepared, cfg: modes.SageConfig):
    """``variants.KERNELS[KERNEL_NAME]``: :func:`sm90_attention` on the kernel; a call it does not implement
    (:func:`supported`, also attached as ``sm90_kernel.supports`` for ``sageattn``'s routing) raises
    ``NotImplementedError`` and the caller runs the next kernel or ``modes.sage_attention_mode`` (the same
    maths in PyTorch)."""
    return sm90_attention(p, cfg)


sm90_kernel.supports = supported

register()
