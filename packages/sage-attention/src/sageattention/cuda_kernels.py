"""The compiled mma.sync kernel ``shared_kernels.sage_attention_fwd`` behind upstream's ``*_cuda`` names.

Importing this module registers, when this shared-kernels build compiled the op's ``cuda`` backend,
:func:`qk_int8_pv_fp16_cuda_kernel` first in the chain of ``variants.KERNELS
["sageattn_qk_int8_pv_fp16_cuda"]`` (before the Triton kernel) and :func:`qk_int8_pv_fp8_cuda_kernel`
for ``"sageattn_qk_int8_pv_fp8_cuda"``. Each checks at call time that the tensors are on a CUDA
device whose compute capability the build can run (sm80+ for FP16 P·V, sm89+ for FP8 P·V; see
:func:`device_reason`) and that the kernel implements the config (:func:`supported`); otherwise it
raises ``NotImplementedError`` and the chain goes on (Triton for fp16, else the reference): never
different maths.

What the kernel computes is ``modes.sage_attention_mode(cfg)`` (SageAttention2, Zhang et al. 2025,
eq. 3-5) for these configs:

* FP16 P·V (``pv_dtype="fp16"``) with ``pv_accum_dtype`` ``"fp32"`` (fp16 MMA, float32
  accumulator), ``"fp16+fp32"`` (an f16 MMA accumulator per 64-key block added into float32) or
  ``"fp16"`` (f16 accumulator throughout; V scaled so that ``Nk·max|V| <= 2^14`` as in ``modes``);
* FP8 e4m3 P·V with ``pv_accum_dtype`` ``"fp32+fp32"`` (a fresh float32 accumulator per 64-key
  block added into float32: the kernel's two-level accumulation; V per channel with max 448) or
  ``"fp32+fp16"`` (SageAttention2++: an f16 MMA accumulator per block, V per channel with a max
  ``v_scale_max <= 65504 / (448·64)``, 2.25 upstream, so a block sum cannot overflow);
* ``smooth_v`` (V minus its token mean, added back to the output in float32, as ``modes``);
* INT8 Q/K granularities whose groups contain the kernel's per-thread groups (Q row ``r`` ->
  ``(r // W)·8 + r % 8`` with ``W`` = 32 or 16, key ``n`` -> ``(n // 64)·4 + (n % 8) // 2``):
  ``per_thread`` (``warpq`` a multiple of 16, ``warpk`` of 64), ``per_warp`` (``warpq`` a multiple
  of 16, ``blkk`` of 64), ``per_block`` (``blkq`` of 16, ``blkk`` of 64); not ``per_token``;
* key blocks of 64 for the online softmax (``pv_block=64``), ``smooth_k``, ``qk_rotation``
  (Q/K rotated before quantizing: exact), ``prescale_q`` either way, causal (top-left), GQA,
  Nq ≠ Nk, head dims up to 128 (zero-padded to 64 or 128: exact), fp16/bf16/fp32 inputs.

INT4 Q/K (``qk_quant_dtype="int4"``, :mod:`sageattention.int4`) runs on the INT4 kernel
``shared_kernels.sage_attention_fwd_int4``, with ``smooth_q`` (its exact correction is the kernel's bias).

Not implemented (``NotImplementedError``): ``attn_mask``, ``smooth_q`` with INT8, FP8 ``"fp32"``
(upstream's single-level FP8 accumulator), INT4 Q/K with an f16 accumulator, ``per_token``, head dims
above 128.

Quantization is ``modes._prepare_qk`` itself (the same quantizer as the reference, bit for bit):
its per-token scales are gathered into the kernel's per-thread scale vectors (``sm_scale·log2 e``
folded into ``q_scale``). V (minus its mean with ``smooth_v``): FP16 P·V feeds ``fp16(V / v_scale)``
with the reference's per-channel power-of-two ``v_scale`` (for ``"fp16"`` the smaller one of
``modes``); FP8 P·V feeds ``shared_kernels.quantize_fp8``'s e4m3 codes with the scale divided by that
same power of two (exact). The kernel's output (``O / v_scale``, at most 256 in
magnitude, in fp16, bf16 for bf16 inputs) is multiplied by the power of two in float32 (exact), so
an fp32 input gets an fp16-rounded output (relative 2^-11, far below the INT8 error). The lse is
the kernel's natural-log lse of the smoothed scores plus ``sm_scale·q·mean(K)``
(``reference.lse_natural``). Non-finite scales (a NaN/inf in Q, K or V) are replaced by 1 before
the launch (the kernel does not check them) and the affected rows, heads or channels are set to
NaN afterwards, as the reference gives.

Cost: the kernel's ``4·B·Hq·Nq·Nk·D`` ops plus ``O((Nq + Nk)·D)`` quantization work in PyTorch.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from . import modes, variants
from . import reference as ref
from .core import Prepared

__all__ = [
    "MIN_CAPABILITY",
    "compiled_attention",
    "device_reason",
    "qk_int8_pv_fp8_cuda_kernel",
    "qk_int8_pv_fp16_cuda_kernel",
    "register",
    "runs_on",
    "supported",
]

_log = logging.getLogger(__name__)
_OP = "sage_attention_fwd"
_FP16 = "sageattn_qk_int8_pv_fp16_cuda"
_FP8 = "sageattn_qk_int8_pv_fp8_cuda"
#: lowest compute capability of each variant's kernel (FP8 mma.sync needs sm89); the INT4 variants
#: (``int4.py``) add theirs, with their shared-kernels op in :data:`KERNEL_OPS`
MIN_CAPABILITY = {_FP16: (8, 0), _FP8: (8, 9)}
#: the shared-kernels op behind each variant's compiled kernel
KERNEL_OPS = {_FP16: _OP, _FP8: _OP}
_KERNEL_K = 64  # keys per kernel block (K scale groups and online softmax)
#: the kernel's P·V accumulation modes (``sage_attention_fwd``'s ``pv_accum``) by P·V dtype
KERNEL_PV_ACCUM = {"fp16": ("fp32", "fp16+fp32", "fp16"), "fp8": ("fp32+fp32", "fp32+fp16")}
#: largest FP8 V scale max for ``"fp32+fp16"``: a 64-key block sum of P (<= 448) times V stays in f16
F16_BLOCK_V_MAX = 65504.0 / (448.0 * _KERNEL_K)


def _padded(d: int) -> int:
    return 64 if d <= 64 else 128


def runs_on(capability: tuple[int, int], archs: list[str]) -> bool:
    """Whether code compiled for ``archs`` (CMake style: ``"80"``, ``"89"``, ``"90a"``) runs on a GPU of
    ``capability``: a plain arch runs on the same major with a newer-or-equal minor (SASS) or, through
    its PTX, on any newer GPU; an arch-specific ``"90a"`` only on exactly that capability."""
    cc = capability[0] * 10 + capability[1]
    for a in archs:
        a = a.strip()
        specific = a.endswith(("a", "f"))
        digits = a.rstrip("af")
        if not digits.isdigit():
            continue
        n = int(digits)
        if (specific and n == cc) or (not specific and n <= cc):
            return True
    return False


@functools.cache
def _build_info(op: str = _OP) -> tuple[bool, tuple[str, ...]]:
    """(the shared-kernels op ``op``'s ``cuda`` backend is compiled in this build, the compiled archs), as
    ``shared_kernels.capabilities()`` reports them. Read from the registry and the native module
    that ``capabilities()`` reads, because ``capabilities()`` itself lists the GPUs by name, which
    initialises CUDA: importing sageattention must not (forked DataLoader workers)."""
    try:
        from shared_kernels import _backend, _lib
    except ImportError:  # pragma: no cover - another shared-kernels layout: the public report
        import shared_kernels

        caps = shared_kernels.capabilities()
        has = "cuda" in caps["ops"].get(op, {}).get("backends", {}) and bool(caps["cuda"]["compiled"])
        return has, tuple(caps["cuda"]["archs"])
    info = _backend.registered_ops().get(op)
    has = info is not None and "cuda" in info.backends and _lib.cuda_compiled()
    archs = _lib._C.cuda_archs.split(",") if has and _lib._C.cuda_archs else []
    return has, tuple(a for a in archs if a)


@functools.cache
def _device_reason_cached(index: int, name: str) -> str | None:
    op = KERNEL_OPS[name]
    has, archs = _build_info() if op == _OP else _build_info(op)
    if not has:
        return f"this shared-kernels build has no CUDA code for {op}"
    cap = torch.cuda.get_device_capability(index)
    if cap < MIN_CAPABILITY[name]:
        need = "{}.{}".format(*MIN_CAPABILITY[name])
        return f"{name} needs compute capability {need}+, device {index} is {cap[0]}.{cap[1]}"
    if not runs_on(cap, list(archs)):
        return f"no compiled arch in {list(archs)} runs on compute capability {cap[0]}.{cap[1]}"
    return None


def device_reason(device: torch.device, name: str) -> str | None:
    """None if the compiled kernel of ``name`` can run on ``device``, else why not."""
    if name not in MIN_CAPABILITY:
        raise ValueError(f"name must be one of {tuple(MIN_CAPABILITY)}, got {name!r}")
    if device.type != "cuda":
        return f"the compiled kernel runs on CUDA tensors, these are on {device}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_reason_cached(index, name)


def _q_warp(cfg: modes.SageConfig) -> int | None:
    """The kernel's ``warp_q`` (32 or 16) whose Q groups lie inside the config's groups, or None."""
    size = {"per_thread": cfg.warpq, "per_warp": cfg.warpq, "per_block": cfg.blkq}.get(cfg.qk_quant_gran)
    if size is None:
        return None
    return 32 if size % 32 == 0 else 16 if size % 16 == 0 else None


def _k_ok(cfg: modes.SageConfig) -> bool:
    size = {"per_thread": cfg.warpk, "per_warp": cfg.blkk, "per_block": cfg.blkk}.get(cfg.qk_quant_gran)
    return size is not None and size % _KERNEL_K == 0


def supported(p: Prepared, cfg: modes.SageConfig) -> str | None:
    """None if the compiled kernel computes ``modes.sage_attention_mode(cfg)`` for ``p`` (any
    device: the device is checked by the registered kernels), else the first unsupported option."""
    fp8 = cfg.pv_dtype == "fp8"
    int4 = cfg.qk_quant_dtype == "int4"
    accum = cfg.pv_accum_dtype
    accum_ok = accum in KERNEL_PV_ACCUM[cfg.pv_dtype][: 1 if int4 else None]  # INT4 kernel: fp32 modes
    if fp8 and accum == "fp32+fp16":
        vmax_ok = 0.0 < cfg.v_scale_max <= F16_BLOCK_V_MAX
    else:
        vmax_ok = not fp8 or cfg.v_scale_max == 448.0
    d = max(p.q.shape[3], p.v.shape[3])
    checks = (
        ("pv_accum_dtype", f"{accum} with {cfg.pv_dtype} P·V" + (" and INT4 Q/K" if int4 else ""), accum_ok),
        ("v_scale_max", f"{cfg.v_scale_max} with pv_accum_dtype={accum}", vmax_ok),
        # Q smoothing's q̄·Kᵀ correction is the INT4 kernel's bias input (rows of blkq, a multiple of 16)
        ("smooth_q", cfg.smooth_q, not cfg.smooth_q or (int4 and cfg.blkq % 16 == 0)),
        ("attn_mask", "a mask", p.mask is None),
        ("pv_block", cfg.pv_block, cfg.pv_block == _KERNEL_K),
        ("qk_quant_gran", f"{cfg.qk_quant_gran} (Q groups)", _q_warp(cfg) is not None),
        ("qk_quant_gran", f"{cfg.qk_quant_gran} (K groups)", _k_ok(cfg)),
        ("head dim", d, d <= 128),
    )
    for name, val, ok in checks:
        if not ok:
            return f"{name}={val!r}"
    return None


def _gather_scales(tok_scale: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Per-token scales ``[..., n]`` -> the kernel's group vector (the first token of each group;
    groups past the end get 1)."""
    valid = idx < n
    out = tok_scale[..., idx.clamp(max=n - 1)]
    return torch.where(valid, out, torch.ones_like(out))


def _finite_or_one(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bad = ~torch.isfinite(x)
    return torch.where(bad, torch.ones_like(x), x).contiguous(), bad


def compiled_attention(p: Prepared, cfg: modes.SageConfig, *, op_backend: str = "cuda"):
    """``modes.sage_attention_mode(cfg)`` through ``shared_kernels.sage_attention_fwd`` (or, for
    ``cfg.qk_quant_dtype="int4"``, ``shared_kernels.sage_attention_fwd_int4`` with Q and K packed two per
    byte and the Q-smoothing correction ``q̄·K'ᵀ·sm_scale·log2 e`` as its bias); returns as ``p.finish``.
    ``op_backend="torch"`` runs the op's float64 reference instead of the compiled kernel (tests on CPU
    tensors). Raises ``NotImplementedError`` for configs the kernel lacks."""
    from shared_kernels import pack_int4, quantize_fp8, sage_attention_fwd, sage_attention_fwd_int4

    if op_backend not in ("cuda", "torch", "auto"):
        raise ValueError(f"op_backend must be one of ('cuda', 'torch', 'auto'), got {op_backend!r}")
    why = supported(p, cfg)
    if why is not None:
        raise NotImplementedError(f"the compiled sage_attention_fwd kernel does not implement {why}")
    if p.is_empty:
        return p.empty_result()
    hq, nq = p.q.shape[1], p.q.shape[2]
    hkv, nk, dv = p.k.shape[1], p.k.shape[2], p.v.shape[3]
    dev = p.q.device
    q8f, qs_tok, k8f, ks_tok, kf, qmean, km, c = modes._prepare_qk(p.q, p.k, p.sm_scale, cfg)
    dp = _padded(max(q8f.shape[3], dv))
    warp_q = _q_warp(cfg)
    gq = torch.arange(-(-nq // warp_q) * 8, device=dev)
    gk = torch.arange(-(-nk // _KERNEL_K) * 4, device=dev)
    q_scale = _gather_scales(qs_tok, (gq // 8) * warp_q + gq % 8, nq)
    q_scale = q_scale * torch.tensor(c, dtype=torch.float32, device=dev)
    k_scale = _gather_scales(ks_tok, (gk // 4) * _KERNEL_K + 2 * (gk % 4), nk)
    q_scale, bad_q = _finite_or_one(q_scale)
    k_scale, bad_k = _finite_or_one(k_scale)

    def pad_d(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, dp - x.shape[3])).contiguous()

    q8 = pad_d(q8f.to(torch.int8))
    k8 = pad_d(k8f.to(torch.int8))
    vf = p.v.float()
    vm = None
    if cfg.smooth_v:  # modes' mean, in its order: float64 sum over the tokens, rounded to float32
        vm = (p.v.double().sum(dim=-2, keepdim=True) / nk).float()
        vf = vf - vm
    if cfg.pv_accum_dtype == "fp16":  # modes' smaller scale: the f16 sum over all keys stays finite
        vs = modes._v_scale_pow2(vf, min(ref.V_MAX, modes._FP16_ACC_BUDGET / nk))
    else:
        vs = ref.v_channel_scale(vf)  # [B, Hkv, 1, Dv] powers of two: the kernel sees |V / vs| <= 256
    if cfg.pv_dtype == "fp8":
        codes, vsc = quantize_fp8(vf.contiguous(), "e4m3", "per_channel", scale_max=cfg.v_scale_max)
        v_in = pad_d(codes)
        v_scale, bad_v = _finite_or_one(vsc / vs[:, :, 0])
        v_scale = torch.nn.functional.pad(v_scale, (0, dp - dv), value=1.0).contiguous()
    else:
        v_in = pad_d((vf / vs).half())
        v_scale, bad_v = None, ~torch.isfinite(vs[:, :, 0])
    out_dtype = torch.bfloat16 if p.q.dtype == torch.bfloat16 else torch.float16
    rep = hq // hkv
    if cfg.qk_quant_dtype == "int4":
        bias = None
        if qmean is not None:  # modes' correction, in its float32 order: (q̄ · K'ᵀ) · c
            corr = torch.matmul(qmean, kf.repeat_interleave(rep, dim=1).transpose(-1, -2))
            bias = (corr * c if c != 1.0 else corr).contiguous()
        o, lse = sage_attention_fwd_int4(
            pack_int4(q8), pack_int4(k8), v_in, q_scale, k_scale, v_scale, bias=bias, bias_rows=cfg.blkq,
            is_causal=p.is_causal, warp_q=warp_q, out_dtype=out_dtype, backend=op_backend,
        )  # fmt: skip
    else:
        o, lse = sage_attention_fwd(
            q8, k8, v_in, q_scale, k_scale, v_scale, is_causal=p.is_causal, warp_q=warp_q,
            out_dtype=out_dtype, pv_accum=cfg.pv_accum_dtype, backend=op_backend,
        )  # fmt: skip
    o = o[..., :dv].float() * vs.repeat_interleave(rep, dim=1)
    if vm is not None:  # no fully masked row here: Nk >= 1, no mask, causal is top-left
        o = o + vm.repeat_interleave(rep, dim=1)
    # NaN where the reference gives NaN: a non-finite Q group -> its rows; K -> the whole head; V -> channel
    nan_row = _gather_rows(bad_q, nq, warp_q) | bad_k.any(dim=-1).repeat_interleave(rep, dim=1)[..., None]
    o = torch.where(nan_row[..., None] | bad_v.repeat_interleave(rep, dim=1)[:, :, None, :], math.nan, o)
    lse = torch.where(nan_row, math.nan, lse)
    if km is not None:
        lse = lse + ref.lse_natural(torch.zeros_like(lse), p.q, km, p.sm_scale)
    return p.finish(o, lse)


def _gather_rows(bad_groups: torch.Tensor, nq: int, warp_q: int) -> torch.Tensor:
    """``[B, Hq, groups]`` -> ``[B, Hq, Nq]``: the flag of every query row's group."""
    r = torch.arange(nq, device=bad_groups.device)
    return bad_groups[..., (r // warp_q) * 8 + r % 8]


def _kernel(name: str, p: Prepared, cfg: modes.SageConfig):
    why = device_reason(p.q.device, name) or supported(p, cfg)
    if why is not None:
        raise NotImplementedError(f"{name}: the compiled kernel does not run here: {why}")
    return compiled_attention(p, cfg, op_backend="cuda")


def qk_int8_pv_fp16_cuda_kernel(p: Prepared, cfg: modes.SageConfig):
    """``sageattn_qk_int8_pv_fp16_cuda`` on the compiled kernel (sm80+), else ``NotImplementedError``."""
    return _kernel(_FP16, p, cfg)


def qk_int8_pv_fp8_cuda_kernel(p: Prepared, cfg: modes.SageConfig):
    """``sageattn_qk_int8_pv_fp8_cuda`` on the compiled kernel (sm89+), else ``NotImplementedError``."""
    return _kernel(_FP8, p, cfg)


qk_int8_pv_fp16_cuda_kernel.supports = lambda p, cfg: device_reason(p.q.device, _FP16) or supported(p, cfg)
qk_int8_pv_fp8_cuda_kernel.supports = lambda p, cfg: device_reason(p.q.device, _FP8) or supported(p, cfg)


def register() -> bool:
    """Put the compiled kernels first in ``variants.KERNELS`` when the build has the op's ``cuda``
    backend; returns whether it did (idempotent)."""
    if not _build_info()[0]:
        _log.debug("shared_kernels has no compiled sage_attention_fwd: compiled kernels not registered")
        return False
    variants.register_kernel(_FP16, qk_int8_pv_fp16_cuda_kernel, first=True)
    variants.register_kernel(_FP8, qk_int8_pv_fp8_cuda_kernel, first=True)
    return True


register()
