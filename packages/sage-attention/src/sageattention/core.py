"""``sageattn``: SageAttention2 (INT8 QK, fp16/FP8 PV) with upstream's and SDPA's keywords, its
device dispatch, and the input validation shared by every public function of the package."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import torch
from shared_kernels import int8_attention, quantize_int8_per_block

from . import reference as ref

__all__ = ["Prepared", "cuda_dispatch", "prepare_inputs", "sageattn"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BACKENDS = ("auto", "torch", "cpu")


def _check_qkv(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D ([B, H, N, D] for HND, [B, N, H, D] for NHD), got {tuple(x.shape)}"
        )
    return x


def _check_bool(name: str, x: object) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return x


def _resolve_scale(sm_scale: object, scale: object, d: int) -> float:
    for name, val in (("sm_scale", sm_scale), ("scale", scale)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float))):
            raise TypeError(f"{name} must be a float or None, got {type(val).__name__}")
        if val is not None and not math.isfinite(val):
            raise ValueError(f"{name} must be finite, got {val}")
    if sm_scale is not None and scale is not None and float(sm_scale) != float(scale):
        raise ValueError(
            f"sm_scale={sm_scale} and scale={scale} differ; scale is an alias of sm_scale, pass one"
        )
    val = sm_scale if sm_scale is not None else scale
    return float(val) if val is not None else d**-0.5


def check_mask(attn_mask: object, shape: tuple[int, int, int, int], device: torch.device):
    """Validate the user's ``attn_mask`` (bool or floating, on ``device``, broadcastable to ``shape``)."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(
            f"attn_mask must be bool (True = attend) or a floating additive mask, got {attn_mask.dtype}"
        )
    if attn_mask.device != device:
        raise ValueError(f"attn_mask is on {attn_mask.device}, q on {device}: put them on the same device")
    if attn_mask.dim() > 4:
        raise ValueError(
            f"attn_mask must be broadcastable to [B, Hq, Nq, Nk] = {list(shape)}, got {tuple(attn_mask.shape)}"
        )
    try:
        ok = torch.broadcast_shapes(attn_mask.shape, shape) == torch.Size(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"attn_mask must be broadcastable to [B, Hq, Nq, Nk] = {list(shape)}, got {tuple(attn_mask.shape)}"
        )
    return attn_mask


def _additive_mask(attn_mask: object, shape: tuple[int, int, int, int], device: torch.device):
    """The user's mask as a float32 additive mask (natural log units) broadcastable to ``shape``."""
    attn_mask = check_mask(attn_mask, shape, device)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=torch.float32, device=device)
        return torch.where(attn_mask, zero, torch.full((), float("-inf"), device=device))
    return attn_mask.float()


@dataclasses.dataclass
class Prepared:
    """Validated inputs in HND layout (see :func:`prepare_inputs`)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: str
    is_causal: bool
    sm_scale: float
    mask: torch.Tensor | None
    return_lse: bool
    smooth_k: bool

    def finish(self, o: torch.Tensor, lse: torch.Tensor):
        """Output in q's dtype and the caller's layout (and the lse if asked)."""
        o = o.to(self.q.dtype)
        if self.layout == "NHD":
            o = o.transpose(1, 2).contiguous()
        return (o, lse) if self.return_lse else o

    def empty_result(self):
        """The result when ``Nq == 0`` or ``Nk == 0``: zeros and lse ``-inf``."""
        b, hq, nq = self.q.shape[:3]
        o = self.q.new_zeros((b, hq, nq, self.v.shape[3]), dtype=torch.float32)
        return self.finish(o, self.q.new_full((b, hq, nq), float("-inf"), dtype=torch.float32))

    @property
    def is_empty(self) -> bool:
        return self.q.shape[2] == 0 or self.k.shape[2] == 0


def check_layout(tensor_layout: object) -> str:
    if not isinstance(tensor_layout, str) or tensor_layout not in ("HND", "NHD"):
        hint = (
            " (SDPA's 4th positional argument is attn_mask: pass it by keyword)"
            if isinstance(tensor_layout, torch.Tensor)
            else ""
        )
        raise TypeError(
            f"tensor_layout must be 'HND' or 'NHD', got {type(tensor_layout).__name__} {tensor_layout!r:.40}{hint}"
        )
    return tensor_layout


def check_qkv_consistent(q, k, v, tensor_layout: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (already checked one by one) share dtype, device, batch; k and v share heads and length;
    q and k share the head dim; Hq is a multiple of Hkv (GQA/MQA). Returns HND views."""
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}: q, k, v must share one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q on {q.device}: q, k, v must share one device")
    if tensor_layout == "NHD":
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    b, hq, _, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"q, k, v must share the batch size, got {b}, {k.shape[0]}, {v.shape[0]}")
    if v.shape[1] != hkv or v.shape[2] != nk:
        raise ValueError(
            f"k and v must share heads and length, got k {tuple(k.shape)} and v {tuple(v.shape)} (HND)"
        )
    if k.shape[3] != d:
        raise ValueError(f"q and k must share the head dim, got {d} and {k.shape[3]}")
    if hkv < 1 or hq % hkv:
        raise ValueError(
            f"the number of q heads ({hq}) must be a multiple of the number of k/v heads ({hkv})"
        )
    return q, k, v


def prepare_inputs(
    q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask=None, scale=None
) -> Prepared:
    """Validate q, k, v (dtype, device, shapes, GQA), flags, scale and mask; move to HND."""
    tensor_layout = check_layout(tensor_layout)
    q, k, v = _check_qkv("q", q), _check_qkv("k", k), _check_qkv("v", v)
    is_causal = _check_bool("is_causal", is_causal)
    return_lse = _check_bool("return_lse", return_lse)
    smooth_k = _check_bool("smooth_k", smooth_k)
    q, k, v = check_qkv_consistent(q, k, v, tensor_layout)
    b, hq, nq, d = q.shape
    nk = k.shape[2]
    if d < 1 or v.shape[3] < 1:
        raise ValueError(f"head dims must be >= 1, got q/k {d} and v {v.shape[3]}")
    if is_causal and attn_mask is not None:
        raise ValueError(
            "attn_mask and is_causal cannot both be set (as in SDPA): fold the causal mask into attn_mask"
        )
    sm_scale = _resolve_scale(sm_scale, scale, d)
    mask = _additive_mask(attn_mask, (b, hq, nq, nk), q.device)
    return Prepared(q, k, v, tensor_layout, is_causal, sm_scale, mask, return_lse, smooth_k)


def cuda_dispatch(capability: tuple[int, int]) -> tuple[str, dict]:
    """Upstream ``sageattn``'s choice for a CUDA compute capability: ``(function name, kwargs)``.

    sm80 -> fp16 CUDA (``pv_accum_dtype="fp32"``); sm86 -> the Triton kernel; sm89 -> fp8 CUDA
    (SageAttention2++, ``"fp32+fp16"``); sm90 -> the sm90 fp8 kernel (``"fp32+fp32"``);
    sm120/sm121 -> fp8 CUDA with ``per_warp`` and ``"fp32+fp16"``. Beyond upstream (which raises
    "Unsupported CUDA architecture"): sm100/sm103 -> fp8 CUDA with ``per_thread`` and ``"fp32+fp32"``
    (Blackwell's FP8 MMA accumulates accurately); anything else -> ``"reference"`` (per-block maths).
    ``sageattn`` then runs this choice only where a registered kernel implements it (the compiled
    mma.sync kernel has every mode chosen here, SageAttention2++'s ``"fp32+fp16"`` included; for the
    FP8 variant ``"fp32+fp32"`` is still tried second), else the Triton kernel.
    """
    major, minor = capability
    if (major, minor) == (8, 0):
        return "sageattn_qk_int8_pv_fp16_cuda", {"pv_accum_dtype": "fp32"}
    if (major, minor) == (8, 6):
        return "sageattn_qk_int8_pv_fp16_triton", {}
    if (major, minor) == (8, 9):
        return "sageattn_qk_int8_pv_fp8_cuda", {"pv_accum_dtype": "fp32+fp16"}
    if major == 9:
        return "sageattn_qk_int8_pv_fp8_cuda_sm90", {"pv_accum_dtype": "fp32+fp32"}
    if major == 12:
        return "sageattn_qk_int8_pv_fp8_cuda", {"qk_quant_gran": "per_warp", "pv_accum_dtype": "fp32+fp16"}
    if major == 10:
        return "sageattn_qk_int8_pv_fp8_cuda", {"qk_quant_gran": "per_thread", "pv_accum_dtype": "fp32+fp32"}
    return "reference", {}


_TRITON = "sageattn_qk_int8_pv_fp16_triton"


def _kernel_kwargs(name, kw, q, k, v, tensor_layout, is_causal, sm_scale, attn_mask, smooth_k):
    """Upstream's kwargs ``kw`` for the variant ``name`` if a kernel registered for it runs them on
    these inputs; else, for the FP8 variant, the same with ``pv_accum_dtype="fp32+fp32"`` (two-level
    float32 accumulation, as accurate as SageAttention2++'s ``"fp32+fp16"`` or more; a kernel that
    ran only that mode would still be used); else None."""
    from . import variants

    if name not in variants.KERNELS:
        return None
    p = prepare_inputs(q, k, v, tensor_layout, is_causal, sm_scale, False, smooth_k, attn_mask)
    cands = [kw]
    if name == "sageattn_qk_int8_pv_fp8_cuda" and kw.get("pv_accum_dtype") != "fp32+fp32":
        cands.append({**kw, "pv_accum_dtype": "fp32+fp32"})
    for cand in cands:
        cfg = variants.variant_config(name, p.q.shape[3], smooth_k=smooth_k, **cand)
        if variants.kernel_supports(name, p, cfg):
            return cand
    return None


def _dispatch_cuda(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, attn_mask, smooth_k):
    from . import variants

    name, kw = cuda_dispatch(torch.cuda.get_device_capability(q.device))
    if name not in ("reference", _TRITON):
        kw = _kernel_kwargs(name, kw, q, k, v, tensor_layout, is_causal, sm_scale, attn_mask, smooth_k)
    if name == "reference" or kw is None:
        # No kernel of upstream's variant runs this call in this build: the fastest kernel that is
        # built, Triton INT8 QK (per-warp Q scales, at least as accurate as per-block) with fp16 P·V.
        name, kw = _TRITON, {"qk_quant_gran": "per_warp"}
    if name == _TRITON:
        if importlib.util.find_spec("triton") is None:  # no Triton installed: the reference maths
            name = "reference"
        else:
            from .triton_api import sageattn_qk_int8_pv_fp16_triton as fn

            return fn(
                q, k, v, tensor_layout=tensor_layout, is_causal=is_causal, attn_mask=attn_mask,
                sm_scale=sm_scale, smooth_k=smooth_k, return_lse=return_lse, **kw,
            )  # fmt: skip
    if name == "reference":
        return None
    return getattr(variants, name)(
        q, k, v, tensor_layout=tensor_layout, is_causal=is_causal, sm_scale=sm_scale,
        smooth_k=smooth_k, return_lse=return_lse, attn_mask=attn_mask, **kw,
    )  # fmt: skip


def _attention_cpu(q, k, v, sm_scale, is_causal, mask, smooth_k):
    """``reference.sage_attention``'s maths with the shared-kernels quantizer and fused INT8 attention
    kernel (AVX-512 VNNI Q8·K8ᵀ, online exp2 softmax, fp16 P·V per block of 64 keys; S is never
    materialised). It matches ``backend="torch"`` up to the last bits of ``exp2`` and of the float32
    summation order, which can flip the fp16 rounding of a P element by one ulp (2^-10 relative):
    ``|o_cpu - o_torch| <= 2^-9 · max_j |v[j, c]|`` per output channel (tested)."""
    q8, qs, _ = quantize_int8_per_block(q.contiguous(), ref.BLKQ, multiplier=sm_scale * ref.LOG2E)
    k8, ks, km = quantize_int8_per_block(k.contiguous(), ref.BLKK, subtract_mean=smooth_k)
    vs = ref.v_channel_scale(v)  # the kernel rounds v / vs to fp16 and multiplies the output by vs
    o, lse2 = int8_attention(
        q8, k8, qs, ks, v.contiguous(), vs, attn_mask=mask, is_causal=is_causal, block_q=ref.BLKQ
    )
    return o, ref.lse_natural(lse2, q, km, sm_scale)


def sageattn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: float | None = None,
    return_lse: bool = False,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    enable_gqa: bool = False,
    smooth_k: bool = True,
    backend: str = "auto",
    qk_quant_dtype: str = "int8",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 forward: ``softmax(Q·Kᵀ·sm_scale + mask)·V`` with INT8 Q/K and fp16 P/V
    (on CUDA, FP8 P/V where upstream's dispatch picks an FP8 variant).

    Upstream ``sageattention.sageattn`` signature plus SDPA's ``attn_mask``, ``dropout_p`` (must be
    0), ``scale`` (alias of ``sm_scale``) and ``enable_gqa`` (accepted; GQA/MQA always works when
    ``Hq % Hkv == 0``, as upstream). ``tensor_layout`` ``"HND"`` = ``[B, H, N, D]``, ``"NHD"`` =
    ``[B, N, H, D]``. q, k, v: same dtype (fp16, bf16, fp32) and device; k and v share B, H, N; q and
    k share D; v may have its own Dv. ``attn_mask``: bool (True = attend) or additive float,
    broadcastable to ``[B, Hq, Nq, Nk]``, not with ``is_causal``. Causal masking is top-left
    aligned like SDPA. Rows whose keys are all masked give 0 (and lse ``-inf``). Returns the
    output in q's dtype and layout, and with ``return_lse`` also the natural-log LSE
    ``[B, Hq, Nq]`` (float32) of the un-smoothed scores. Inputs are never modified.

    ``backend``: ``"torch"`` runs ``reference.sage_attention`` (per-block INT8 QK, fp16 PV, plain
    PyTorch, any device); ``"cpu"`` runs the fused shared-kernels INT8 CPU kernel (AVX-512 VNNI; the same maths
    to within one fp16 ulp of P: ``|o_cpu - o_torch| <= 2^-9·max|v|`` per channel, see ``_attention_cpu``);
    ``"auto"`` picks ``"cpu"`` on the CPU and, on CUDA, the variant upstream picks for the device's
    compute capability (:func:`cuda_dispatch`; sm100 too) when a kernel of this build runs that
    variant on these inputs (the compiled mma.sync kernel: sm80 fp16 P·V; sm89/sm120 FP8 P·V with
    SageAttention2++'s ``"fp32+fp16"``, sm100 with ``"fp32+fp32"``, no masks; the Hopper kernel on sm90), else the
    Triton kernel (``sageattn_qk_int8_pv_fp16_triton`` with per-warp Q scales and fp32 P·V
    accumulation) on every CUDA device; the plain reference only where Triton is missing. Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` FLOPs.

    Training: when grad mode is on and q, k or v requires grad, ``sageattn`` runs SageBwd
    (:func:`sageattention.sagebwd.sageattn_train`): its forward is SageBwd's per-block INT8 forward
    (INT8 Q, K, V and per-token INT8 P, not the SageAttention2 fp16/FP8 P·V above) and the backward
    quantizes QKᵀ, dV, dQ, dK to per-block INT8 with dO·Vᵀ in fp16. ``backend="auto"`` then runs
    the Triton kernels on CUDA (head dims ≤ 256) and the PyTorch reference elsewhere; ``"torch"``
    and ``"cpu"`` run the PyTorch reference (the fused CPU kernel has no backward). The lse is
    differentiable too; ``attn_mask`` must not require grad.

    ``qk_quant_dtype`` (opt-in 4-bit attention, inference only; :mod:`sageattention.low_bit`):
    ``"int8"`` (default, everything above), ``"int4"`` (SageAttention2's INT4 per-thread Q·Kᵀ with Q
    and K smoothing: ``sageattn_qk_int4_pv_fp16_cuda`` on the CPU and sm80-sm87, ``..._fp8_cuda``
    on sm89+), ``"nvfp4"`` (SageAttention3, :func:`sageattention.sageattn3_blackwell`: NVFP4 Q, K, P,
    V; its kernel where FP4 tensor cores exist). ``sageattn`` never chooses these by itself; with
    inputs requiring grad INT4 raises at backward and NVFP4 at the call (there is no 4-bit backward).
    """
    tensor_layout = check_layout(tensor_layout)
    _check_bool("enable_gqa", enable_gqa)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if dropout_p != 0:
        raise ValueError(
            f"dropout_p must be 0 (sageattn is inference attention without dropout), got {dropout_p}"
        )
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    from .low_bit import check_qk_quant_dtype, sageattn_low_bit

    if check_qk_quant_dtype(qk_quant_dtype) != "int8":
        return sageattn_low_bit(
            qk_quant_dtype, q, k, v, tensor_layout, is_causal, sm_scale, return_lse, attn_mask, scale,
            smooth_k, backend,
        )  # fmt: skip
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in (q, k, v)):
        from .sagebwd import sageattn_train  # training: SageBwd's INT8 forward, with a backward

        return sageattn_train(
            q, k, v, tensor_layout, is_causal, sm_scale, return_lse, attn_mask=attn_mask, scale=scale,
            smooth_k=smooth_k, backend="auto" if backend == "auto" else "torch",
        )  # fmt: skip
    p = prepare_inputs(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, smooth_k, attn_mask, scale)
    if backend == "auto":
        if p.q.device.type == "cuda":
            out = _dispatch_cuda(
                q, k, v, tensor_layout, p.is_causal, p.sm_scale, p.return_lse, attn_mask, p.smooth_k
            )
            if out is not None:
                return out
        backend = "cpu" if p.q.device.type == "cpu" else "torch"
    if backend == "cpu" and p.q.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got {p.q.device}; use backend='torch' or 'auto'")
    if p.is_empty:
        return p.empty_result()
    if backend == "cpu":
        o, lse = _attention_cpu(p.q, p.k, p.v, p.sm_scale, p.is_causal, p.mask, p.smooth_k)
    else:
        o, lse = ref.sage_attention(
            p.q, p.k, p.v, sm_scale=p.sm_scale, is_causal=p.is_causal, mask=p.mask, smooth_k=p.smooth_k
        )
    return p.finish(o, lse)
