"""Upstream-named SageAttention2 variants with upstream signatures and defaults.

``sageattn_qk_int8_pv_fp16_cuda`` (sm80 kernel: INT8 QK, fp16 PV), ``sageattn_qk_int8_pv_fp8_cuda``
(sm89/sm120 kernel: INT8 QK, FP8 PV, SageAttention2++ with ``pv_accum_dtype="fp32+fp16"``) and
``sageattn_qk_int8_pv_fp8_cuda_sm90`` (Hopper wgmma kernel: Q tiles of 64, K tiles of 128).

Each computes the maths of its upstream kernel with :func:`sageattention.modes.sage_attention_mode`
(the tile sizes, granularities, P/V formats and accumulation of that kernel; see ``modes.py`` for
what is emulated). Kernels are registered in :data:`KERNELS` by name (:func:`register_kernel`), as a
:class:`KernelChain` where several are: with Triton installed, ``sageattention.triton_variants``
registers a Triton kernel for ``sageattn_qk_int8_pv_fp16_cuda`` (fp16 P·V; configurations it does not
implement run this reference, the same maths); where the shared-kernels build has the compiled
``sage_attention_fwd`` (mma.sync), ``sageattention.cuda_kernels`` puts it first for
``sageattn_qk_int8_pv_fp16_cuda`` (sm80+) and registers it for ``sageattn_qk_int8_pv_fp8_cuda``
(sm89+); ``sageattention.cuda_sm90`` registers the Hopper kernel. A kernel that does not implement a
config, or does not run on the tensors' device, raises ``NotImplementedError`` and the next one runs
(priority: compiled CUDA, then Triton, then this reference). On CUDA tensors ``backend="auto"`` (the
default) uses the registered kernels, else the reference; ``backend="torch"`` always runs the
reference; ``backend="cuda"`` without a kernel that runs the call (or on CPU tensors) raises a
``RuntimeError`` naming the device, the reason and the available backends: never silently different
maths.

Beyond upstream (keyword-only): ``attn_mask`` (bool or additive, broadcastable, not with
``is_causal``), ``smooth_q`` (SageAttention2 per-block Q smoothing with the exact ``mean(Q)·Kᵀ``
correction; default None = on for INT4, off for INT8), ``qk_quant_dtype`` (``"int8"``, or ``"int4"``:
SageAttention2's 4-bit Q·Kᵀ, the same call as :mod:`sageattention.int4`'s ``sageattn_qk_int4_*``
function; fp16 and fp8 names only, Hopper has no INT4 MMA), ``qk_rotation`` (``None``, ``"hadamard"``, ``"random_hadamard"``), ``backend``;
``qk_quant_gran`` also takes ``"per_block"`` and ``"per_token"``; fp32 inputs are accepted; head
dims are any (the reference needs no padding; kernels will pad to 64/128/256). Unknown keywords are
a ``TypeError`` (upstream swallows them). These are inference kernels: when q, k or v requires grad
they run under ``no_grad`` and backward through their output raises a ``RuntimeError`` naming the
variant and pointing to ``sageattn`` (SageBwd), never silent wrong gradients. ``smooth_v`` follows upstream: honoured only with
``pv_accum_dtype="fp16"`` (fp16 PV) or ``"fp32"`` (FP8 PV), otherwise ignored with a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch

from .core import Prepared, prepare_inputs
from .modes import GRANULARITIES, QK_QUANT_DTYPES, ROTATIONS, SageConfig, sage_attention_mode
from .sagebwd.autograd import no_backward

__all__ = [
    "KERNELS",
    "KernelChain",
    "kernel_supports",
    "register_kernel",
    "sageattn_qk_int8_pv_fp8_cuda",
    "sageattn_qk_int8_pv_fp8_cuda_sm90",
    "sageattn_qk_int8_pv_fp16_cuda",
    "variant_config",
]

_log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "cuda")
#: kernels by function name: ``fn(prepared, cfg) -> result``, raising ``NotImplementedError`` for a
#: config or device it does not run (a :class:`KernelChain` where several are registered).
KERNELS: dict[str, Callable] = {}


class KernelChain:
    """Kernels of one variant in priority order: the first that does not raise
    ``NotImplementedError`` runs; if all raise, the chain raises ``NotImplementedError`` with every reason.

    A kernel may carry ``supports(p, cfg) -> str | None`` (None: it runs this call); one without it
    is assumed to run every call (:meth:`supports` is then None).
    """

    def __init__(self, kernels: tuple[Callable, ...]) -> None:
        if not kernels or not all(callable(k) for k in kernels):
            raise TypeError(f"kernels must be a non-empty tuple of callables, got {kernels!r}")
        self.kernels = tuple(kernels)

    def __call__(self, p: Prepared, cfg: SageConfig):
        reasons = []
        for kernel in self.kernels:
            try:
                return kernel(p, cfg)
            except NotImplementedError as exc:
                _log.debug("%s: %s; trying the next kernel", getattr(kernel, "__name__", kernel), exc)
                reasons.append(str(exc))
        raise NotImplementedError("; ".join(reasons))

    def supports(self, p: Prepared, cfg: SageConfig) -> str | None:
        reasons = []
        for kernel in self.kernels:
            why = _supports(kernel, p, cfg)
            if why is None:
                return None
            reasons.append(why)
        return "; ".join(reasons)

    def __repr__(self) -> str:
        return f"KernelChain({', '.join(getattr(k, '__qualname__', repr(k)) for k in self.kernels)})"


def _supports(kernel: Callable, p: Prepared, cfg: SageConfig) -> str | None:
    check = getattr(kernel, "supports", None)
    return None if check is None else check(p, cfg)


def register_kernel(name: str, fn: Callable, *, first: bool = False) -> None:
    """Register ``fn(prepared, cfg)`` for the variant ``name``: alone, or chained with the kernel(s)
    already registered, before them (``first=True``: compiled CUDA before Triton) or after them.
    Registering the same function twice keeps one entry."""
    if name not in _CONFIGS:
        raise ValueError(f"name must be one of {tuple(_CONFIGS)}, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    old = KERNELS.get(name)
    have = () if old is None else old.kernels if isinstance(old, KernelChain) else (old,)
    have = tuple(k for k in have if k is not fn)
    chain = (fn, *have) if first else (*have, fn)
    KERNELS[name] = chain[0] if len(chain) == 1 else KernelChain(chain)


def kernel_supports(name: str, p: Prepared, cfg: SageConfig) -> bool:
    """Whether a kernel registered for ``name`` runs ``cfg`` on ``p`` (kernels that do not say are
    assumed to)."""
    kernel = KERNELS.get(name)
    return kernel is not None and _supports(kernel, p, cfg) is None


def _check_choice(name: str, val: object, allowed: tuple) -> None:
    if val is not None and not isinstance(val, str):
        raise TypeError(f"{name} must be a str, got {type(val).__name__}")
    if val not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {val!r}")


def _check_qk_dtype(qk_quant_dtype: object) -> str:
    _check_choice("qk_quant_dtype", qk_quant_dtype, QK_QUANT_DTYPES)
    return qk_quant_dtype


def _check_flag(name: str, val: object) -> bool:
    if not isinstance(val, bool):
        raise TypeError(f"{name} must be a bool, got {type(val).__name__}")
    return val


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, sm{major}{minor})"
    return str(device)


def _run(name, q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask, cfg, backend):
    _check_choice("backend", backend, BACKENDS)
    p = prepare_inputs(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask)
    kernel = KERNELS.get(name)
    on_cuda = p.q.device.type == "cuda"
    if backend == "cuda" or (backend == "auto" and kernel is not None and on_cuda):
        why = "no kernel is registered" if kernel is None else "CPU tensors" if not on_cuda else None
        if why is None:
            try:
                return kernel(p, cfg)
            except NotImplementedError as exc:
                why = str(exc)
                _log.debug("%s: %s; running the reference (the same maths)", name, why)
        if backend == "cuda":
            raise RuntimeError(
                f"{name}: no kernel runs this call on device {_device_name(p.q.device)} ({why}); "
                f"available backends: 'torch' (the same maths in PyTorch, any device) and 'auto' "
                f"(the kernel where it runs, else 'torch')"
            )
    if p.is_empty:
        return p.empty_result()
    o, lse = sage_attention_mode(
        p.q, p.k, p.v, sm_scale=p.sm_scale, cfg=cfg, is_causal=p.is_causal, mask=p.mask
    )
    return p.finish(o, lse)


def _padded_dim(d: int) -> int:
    return 64 if d <= 64 else 128 if d <= 128 else -(-d // 128) * 128


def _mode_args(qk_quant_gran, pv_accum_dtype, pv_allowed, smooth_q, qk_rotation, smooth_k) -> None:
    _check_choice("qk_quant_gran", qk_quant_gran, GRANULARITIES)
    _check_choice("pv_accum_dtype", pv_accum_dtype, pv_allowed)
    _check_choice("qk_rotation", qk_rotation, ROTATIONS)
    _check_flag("smooth_q", smooth_q)
    _check_flag("smooth_k", smooth_k)


def _smooth_v(smooth_v: object, pv_accum_dtype: str, honoured: str) -> bool:
    smooth_v = _check_flag("smooth_v", smooth_v)
    if smooth_v and pv_accum_dtype != honoured:
        warnings.warn(f"pv_accum_dtype is {pv_accum_dtype!r}, smooth_v will be ignored.", stacklevel=4)
        return False
    return smooth_v


def _config_fp16(
    d: int, *, qk_quant_gran: str = "per_thread", pv_accum_dtype: str = "fp32", smooth_k: bool = True,
    smooth_v: bool = False, smooth_q: bool = False, qk_rotation: str | None = None,
) -> SageConfig:  # fmt: skip
    _mode_args(qk_quant_gran, pv_accum_dtype, ("fp32", "fp16+fp32", "fp16"), smooth_q, qk_rotation, smooth_k)
    sv = _smooth_v(smooth_v, pv_accum_dtype, "fp16")
    warpq = 16 if (_padded_dim(d) == 128 and pv_accum_dtype == "fp16+fp32") else 32
    return SageConfig(
        qk_quant_gran=qk_quant_gran, blkq=128, warpq=warpq, blkk=64, warpk=64, prescale_q=False,
        smooth_k=smooth_k, smooth_q=smooth_q, qk_rotation=qk_rotation, pv_dtype="fp16",
        pv_accum_dtype=pv_accum_dtype, smooth_v=sv, pv_block=64,
    )  # fmt: skip


def _config_fp8(
    d: int, *, qk_quant_gran: str = "per_thread", pv_accum_dtype: str = "fp32+fp16", smooth_k: bool = True,
    smooth_v: bool = False, smooth_q: bool = False, qk_rotation: str | None = None,
) -> SageConfig:  # fmt: skip
    _mode_args(
        qk_quant_gran, pv_accum_dtype, ("fp32", "fp32+fp32", "fp32+fp16"), smooth_q, qk_rotation, smooth_k
    )
    sv = _smooth_v(smooth_v, pv_accum_dtype, "fp32")
    return SageConfig(
        qk_quant_gran=qk_quant_gran, blkq=128, warpq=32, blkk=64, warpk=64, prescale_q=False,
        smooth_k=smooth_k, smooth_q=smooth_q, qk_rotation=qk_rotation, pv_dtype="fp8",
        pv_accum_dtype=pv_accum_dtype, smooth_v=sv, pv_block=64,
        v_scale_max=2.25 if pv_accum_dtype == "fp32+fp16" else 448.0,
    )  # fmt: skip


def _config_sm90(
    d: int, *, qk_quant_gran: str = "per_thread", pv_accum_dtype: str = "fp32+fp32", smooth_k: bool = True,
    smooth_q: bool = False, qk_rotation: str | None = None,
) -> SageConfig:  # fmt: skip
    _mode_args(qk_quant_gran, pv_accum_dtype, ("fp32", "fp32+fp32"), smooth_q, qk_rotation, smooth_k)
    if pv_accum_dtype == "fp32":
        raise NotImplementedError("Please use pv_accum_dtype='fp32+fp32' for sm90.")
    return SageConfig(
        qk_quant_gran=qk_quant_gran, blkq=64, warpq=16, blkk=128, warpk=128, prescale_q=False,
        smooth_k=smooth_k, smooth_q=smooth_q, qk_rotation=qk_rotation, pv_dtype="fp8",
        pv_accum_dtype=pv_accum_dtype, pv_block=128,
    )  # fmt: skip


_CONFIGS: dict[str, Callable[..., SageConfig]] = {
    "sageattn_qk_int8_pv_fp16_cuda": _config_fp16,
    "sageattn_qk_int8_pv_fp8_cuda": _config_fp8,
    "sageattn_qk_int8_pv_fp8_cuda_sm90": _config_sm90,
}


def variant_config(name: str, head_dim: int, **kwargs) -> SageConfig:
    """The :class:`SageConfig` the variant ``name`` runs for q's head dim ``head_dim`` and its
    quantization keywords (``qk_quant_gran``, ``pv_accum_dtype``, ``smooth_k``, ``smooth_v`` (not
    sm90), ``smooth_q``, ``qk_rotation``; upstream defaults for the rest), validated as the variant
    validates them. Unknown keywords are a ``TypeError``."""
    if name not in _CONFIGS:
        raise ValueError(f"name must be one of {tuple(_CONFIGS)}, got {name!r}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    return _CONFIGS[name](head_dim, **kwargs)


@no_backward
def sageattn_qk_int8_pv_fp16_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32",
    smooth_k: bool = True,
    smooth_v: bool = False,
    return_lse: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    smooth_q: bool | None = None,
    qk_rotation: str | None = None,
    backend: str = "auto",
    qk_quant_dtype: str = "int8",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 with INT8 Q/K and fp16 P·V (upstream's sm80 CUDA kernel).

    Q tiles of 128 tokens with warps of 32 rows (16 when the padded head dim is 128 and
    ``pv_accum_dtype="fp16+fp32"``, as upstream), K tiles of 64; scores dequantized then times
    ``sm_scale·log2 e``. ``pv_accum_dtype``: ``"fp32"`` (fp16 MMA with float32 accumulator),
    ``"fp16+fp32"`` (fp16 accumulator per 64-key block added into float32), ``"fp16"`` (all in
    fp16; ``smooth_v`` subtracts mean(V) and adds it back). Returns ``o`` in q's dtype and layout,
    and with ``return_lse`` the natural-log lse ``[B, Hq, Nq]`` of the un-smoothed scores.
    ``qk_quant_dtype="int4"``: INT4 Q/K (``max/7`` scales) in the same groups, Q smoothing on unless
    ``smooth_q=False`` (= :func:`sageattention.int4.sageattn_qk_int4_pv_fp16_cuda`).
    Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs.
    """
    if _check_qk_dtype(qk_quant_dtype) == "int4":
        from .int4 import sageattn_qk_int4_pv_fp16_cuda as int4_variant

        return int4_variant(
            q, k, v, tensor_layout, is_causal, qk_quant_gran, sm_scale, pv_accum_dtype, smooth_k, smooth_v,
            return_lse, smooth_q=True if smooth_q is None else smooth_q, attn_mask=attn_mask,
            qk_rotation=qk_rotation, backend=backend,
        )  # fmt: skip
    smooth_q = False if smooth_q is None else smooth_q
    cfg = _config_fp16(
        q.shape[-1] if isinstance(q, torch.Tensor) else 0, qk_quant_gran=qk_quant_gran,
        pv_accum_dtype=pv_accum_dtype, smooth_k=smooth_k, smooth_v=smooth_v, smooth_q=smooth_q,
        qk_rotation=qk_rotation,
    )  # fmt: skip
    return _run(
        "sageattn_qk_int8_pv_fp16_cuda", q, k, v, tensor_layout, is_causal, sm_scale, return_lse,
        smooth_k, attn_mask, cfg, backend,
    )  # fmt: skip


@no_backward
def sageattn_qk_int8_pv_fp8_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32+fp16",
    smooth_k: bool = True,
    smooth_v: bool = False,
    return_lse: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    smooth_q: bool | None = None,
    qk_rotation: str | None = None,
    backend: str = "auto",
    qk_quant_dtype: str = "int8",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2/2++ with INT8 Q/K and FP8 (E4M3) P·V (upstream's sm89/sm120 CUDA kernel).

    Q tiles of 128 tokens, warps of 32 rows, K tiles of 64. ``P`` E4M3 of ``P·448``, V E4M3 per
    channel. ``pv_accum_dtype``: ``"fp32"`` (one level, the fp22-precision MMA accumulator; with
    ``smooth_v``), ``"fp32+fp32"`` (fp22 per 64-key block, then float32), ``"fp32+fp16"``
    (SageAttention2++, the default: fp16 accumulator per block, V scaled to max 2.25, then float32).
    Returns as :func:`sageattn_qk_int8_pv_fp16_cuda`; ``qk_quant_dtype="int4"`` as there
    (= :func:`sageattention.int4.sageattn_qk_int4_pv_fp8_cuda`, with this function's default
    accumulation). Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs.
    """
    if _check_qk_dtype(qk_quant_dtype) == "int4":
        from .int4 import sageattn_qk_int4_pv_fp8_cuda as int4_variant

        return int4_variant(
            q, k, v, tensor_layout, is_causal, qk_quant_gran, sm_scale, pv_accum_dtype, smooth_k, smooth_v,
            return_lse, smooth_q=True if smooth_q is None else smooth_q, attn_mask=attn_mask,
            qk_rotation=qk_rotation, backend=backend,
        )  # fmt: skip
    smooth_q = False if smooth_q is None else smooth_q
    cfg = _config_fp8(
        q.shape[-1] if isinstance(q, torch.Tensor) else 0, qk_quant_gran=qk_quant_gran,
        pv_accum_dtype=pv_accum_dtype, smooth_k=smooth_k, smooth_v=smooth_v, smooth_q=smooth_q,
        qk_rotation=qk_rotation,
    )  # fmt: skip
    return _run(
        "sageattn_qk_int8_pv_fp8_cuda", q, k, v, tensor_layout, is_causal, sm_scale, return_lse,
        smooth_k, attn_mask, cfg, backend,
    )  # fmt: skip


@no_backward
def sageattn_qk_int8_pv_fp8_cuda_sm90(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32+fp32",
    smooth_k: bool = True,
    return_lse: bool = False,
    *,
    attn_mask: torch.Tensor | None = None,
    smooth_q: bool = False,
    qk_rotation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 with INT8 Q/K and FP8 P·V (upstream's Hopper wgmma kernel).

    Q tiles of 64 tokens with warps of 16 rows, K tiles of 128 (per_thread K groups of 128 tokens),
    key blocks of 128 for the online softmax, V E4M3 per channel (max 448). Only
    ``pv_accum_dtype="fp32+fp32"`` (fp22 per 128-key block, then float32); ``"fp32"`` raises
    ``NotImplementedError`` as upstream. No ``smooth_v``. Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs.
    """
    cfg = _config_sm90(
        q.shape[-1] if isinstance(q, torch.Tensor) else 0, qk_quant_gran=qk_quant_gran,
        pv_accum_dtype=pv_accum_dtype, smooth_k=smooth_k, smooth_q=smooth_q, qk_rotation=qk_rotation,
    )  # fmt: skip
    return _run(
        "sageattn_qk_int8_pv_fp8_cuda_sm90", q, k, v, tensor_layout, is_causal, sm_scale, return_lse,
        smooth_k, attn_mask, cfg, backend,
    )  # fmt: skip
