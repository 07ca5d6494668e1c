"""Triton SageAttention: ``sageattn_qk_int8_pv_fp16_triton`` (upstream's name, signature, defaults) and
``sageattn_qk_int8_pv_fp8_triton`` (FP8 P·V with a per-channel V scale) and ``sageattn_varlen_triton``
(packed sequences, upstream ``sageattn_varlen``'s signature).

All three validate their arguments here and run ``sageattention.triton.pipeline`` (the INT8
quantizers with fused K smoothing, then the attention forward) on CUDA tensors, and on CPU tensors in Triton's interpreter when
``TRITON_INTERPRET=1`` (slow; tests only). Triton is imported on first call only. The maths is
``sageattention.reference.sage_attention`` (per-block, fp16 PV) and
``sageattention.triton.emulate`` (per-warp Q, FP8 PV, fp16 accumulator, varlen); each call is one
``torch.library`` custom op (``sageattention::qk_int8_attn_triton``, ``::qk_int8_varlen_triton``)
with a fake implementation,
so ``torch.compile(fullgraph=True)`` traces it.
"""

from __future__ import annotations

import os

import torch

from . import reference as ref
from .core import _check_bool, _check_qkv, _resolve_scale, check_layout, check_mask, check_qkv_consistent

__all__ = ["sageattn_qk_int8_pv_fp8_triton", "sageattn_qk_int8_pv_fp16_triton", "sageattn_varlen_triton"]

_Q_GROUP = {"per_block": ref.BLKQ, "per_warp": 32}
_MAX_HEAD_DIM = 256


def _hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "NHD" else x


@torch.library.custom_op("sageattention::qk_int8_attn_triton", mutates_args=())
def _attn_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    tensor_layout: str,
    is_causal: bool,
    sm_scale: float,
    smooth_k: bool,
    q_group: int,
    pv_fp8: bool,
    quant_backend: str,
    pv_acc16: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton import pipeline

    return pipeline.run_dense(
        q, k, v, mask, tensor_layout, is_causal, sm_scale, smooth_k, q_group, pv_fp8, quant_backend, pv_acc16
    )


@_attn_op.register_fake
def _(q, k, v, mask, tensor_layout, is_causal, sm_scale, smooth_k, q_group, pv_fp8, quant_backend, pv_acc16):
    qh = _hnd(q, tensor_layout)
    o = q.new_empty((*q.shape[:-1], v.shape[-1]))
    return o, q.new_empty(qh.shape[:-1], dtype=torch.float32)


def _check_mask(attn_mask: object, shape: tuple[int, int, int, int], device: torch.device):
    """``core.check_mask``; the kernel reads bool masks and float32 additive masks as they are."""
    attn_mask = check_mask(attn_mask, shape, device)
    if attn_mask is None:
        return None
    return attn_mask if attn_mask.dtype in (torch.bool, torch.float32) else attn_mask.float()


def _validate(q, k, v, tensor_layout, quantization_backend, is_causal, attn_mask, sm_scale, smooth_k,
              return_lse, qk_quant_gran, scale, dropout_p, enable_gqa, pv_fp8):  # fmt: skip
    tensor_layout = check_layout(tensor_layout)
    q, k, v = _check_qkv("q", q), _check_qkv("k", k), _check_qkv("v", v)
    for name, val in (("is_causal", is_causal), ("smooth_k", smooth_k), ("return_lse", return_lse),
                      ("enable_gqa", enable_gqa)):  # fmt: skip
        _check_bool(name, val)
    if quantization_backend not in ("triton", "cuda"):
        raise ValueError(f"quantization_backend must be 'triton' or 'cuda', got {quantization_backend!r}")
    if qk_quant_gran not in _Q_GROUP:
        raise ValueError(f"qk_quant_gran must be one of {tuple(_Q_GROUP)}, got {qk_quant_gran!r}")
    if quantization_backend == "cuda" and pv_fp8:
        raise ValueError("quantization_backend='cuda' is only offered by sageattn_qk_int8_pv_fp16_triton")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if dropout_p != 0:
        raise ValueError(f"dropout_p must be 0 (inference attention without dropout), got {dropout_p}")
    qh, kh, vh = check_qkv_consistent(q, k, v, tensor_layout)
    b, hq, nq, d = qh.shape
    nk = kh.shape[2]
    sm_scale = _resolve_scale(sm_scale, scale, d)
    for name, dim in (("q/k head dim", d), ("v head dim", vh.shape[3])):
        if not 1 <= dim <= _MAX_HEAD_DIM:
            raise ValueError(f"{name} must be in [1, {_MAX_HEAD_DIM}], got {dim}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {x.stride()}")
    if is_causal and attn_mask is not None:
        raise ValueError(
            "attn_mask and is_causal cannot both be set (as in SDPA): fold the causal mask into attn_mask"
        )
    mask = _check_mask(attn_mask, (b, hq, nq, nk), q.device)
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"the Triton kernels need CUDA tensors, got {q.device} (on the CPU use sageattn, or set "
            "TRITON_INTERPRET=1 before importing triton to run them in the slow interpreter)"
        )
    if pv_fp8 and q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 9):
        raise ValueError(
            "FP8 P·V needs sm89 or newer (Triton has no e4m3 on sm80/sm86); use the fp16 variant"
        )
    return mask, sm_scale, _Q_GROUP[qk_quant_gran]


def _attend(q, k, v, tensor_layout, quantization_backend, is_causal, attn_mask, sm_scale, smooth_k,
            return_lse, qk_quant_gran, scale, dropout_p, enable_gqa, pv_fp8, pv_accum_dtype="fp32"):  # fmt: skip
    if pv_accum_dtype not in ("fp32", "fp16+fp32"):
        raise ValueError(f"pv_accum_dtype must be 'fp32' or 'fp16+fp32', got {pv_accum_dtype!r}")
    mask, sm_scale, q_group = _validate(
        q, k, v, tensor_layout, quantization_backend, is_causal, attn_mask, sm_scale, smooth_k,
        return_lse, qk_quant_gran, scale, dropout_p, enable_gqa, pv_fp8,
    )  # fmt: skip
    o, lse = torch.ops.sageattention.qk_int8_attn_triton(
        q, k, v, mask, tensor_layout, is_causal, sm_scale, smooth_k, q_group, pv_fp8, quantization_backend,
        pv_accum_dtype == "fp16+fp32",
    )  # fmt: skip
    return (o, lse) if return_lse else o


def sageattn_qk_int8_pv_fp16_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    quantization_backend: str = "triton",
    is_causal: bool = False,
    attn_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    smooth_k: bool = True,
    return_lse: bool = False,
    *,
    qk_quant_gran: str = "per_block",
    scale: float | None = None,
    dropout_p: float = 0.0,
    enable_gqa: bool = False,
    pv_accum_dtype: str = "fp32",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 forward, ``softmax(Q·Kᵀ·sm_scale + mask)·V``, INT8 Q/K and fp16 P·V (Triton).

    Upstream's signature and defaults. ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``,
    ``v [B, Hkv, Nk, Dv]`` in ``"HND"`` (or ``[B, N, H, D]`` in ``"NHD"``), one dtype (fp16, bf16,
    fp32), last dim contiguous, ``Hq % Hkv == 0`` (GQA/MQA), ``Nq != Nk`` allowed, any
    ``D, Dv <= 256`` (padded in registers). Q is quantized per 128 tokens (``qk_quant_gran=
    "per_block"``) or per 32 (``"per_warp"``) with ``sm_scale·log2 e`` folded in; K per 64 tokens
    after subtracting its token mean (``smooth_k``); ``quantization_backend="cuda"`` quantizes with
    the shared-kernels CUDA kernel instead. V is divided by a per-channel power of two so that
    ``|V| <= 256`` in fp16 (no overflow for bf16 inputs of any range); P·V runs on fp16 tensor cores
    with fp32 accumulation (``pv_accum_dtype="fp32"``) or, like upstream's Triton kernel, with an fp16
    accumulator per 64-key block added into fp32 (``"fp16+fp32"``: 2x the fp16 MMA rate on consumer
    GPUs; overflow-free since a block sum is at most 64·256). ``attn_mask``: bool (True = attend) or additive float, broadcastable
    to ``[B, Hq, Nq, Nk]``, not with ``is_causal``; causal is top-left like SDPA. Rows whose keys
    are all masked give 0 and lse ``-inf``; NaN in an input propagates. ``scale`` (alias of
    ``sm_scale``), ``dropout_p`` (must be 0) and ``enable_gqa`` are SDPA's keywords; any other
    keyword is a TypeError. Returns O in q's dtype and layout, and with ``return_lse`` the
    natural-log LSE ``[B, Hq, Nq]`` float32 of the un-smoothed scores. Inputs are not modified.

    Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` ops (halved when causal), see ``sageattention.triton.attn``.
    """
    return _attend(q, k, v, tensor_layout, quantization_backend, is_causal, attn_mask, sm_scale, smooth_k,
                   return_lse, qk_quant_gran, scale, dropout_p, enable_gqa, False, pv_accum_dtype)  # fmt: skip


def sageattn_qk_int8_pv_fp8_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    attn_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    smooth_k: bool = True,
    return_lse: bool = False,
    *,
    qk_quant_gran: str = "per_block",
    scale: float | None = None,
    dropout_p: float = 0.0,
    enable_gqa: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 forward with FP8 E4M3 P·V (Triton, sm89+): as ``sageattn_qk_int8_pv_fp16_triton``
    except that V is quantized per channel, ``v_scale = max_tokens|v| / 448``, and ``P`` enters the
    MMA as ``e4m3(448·P)``; fp32 accumulation, the V scale is applied in the epilogue.
    """
    return _attend(q, k, v, tensor_layout, "triton", is_causal, attn_mask, sm_scale, smooth_k,
                   return_lse, qk_quant_gran, scale, dropout_p, enable_gqa, True)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Packed variable-length sequences


@torch.library.custom_op("sageattention::qk_int8_varlen_triton", mutates_args=())
def _varlen_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    is_causal: bool,
    sm_scale: float,
    smooth_k: bool,
    q_group: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton import pipeline

    return pipeline.run_varlen(q, k, v, cu_q, cu_k, is_causal, sm_scale, smooth_k, q_group)


@_varlen_op.register_fake
def _(q, k, v, cu_q, cu_k, is_causal, sm_scale, smooth_k, q_group):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2])), q.new_empty(
        (q.shape[1], q.shape[0]), dtype=torch.float32
    )


def _check_cu(name: str, cu: object, total: int, device: torch.device) -> torch.Tensor:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(
            f"{name} must be 1-D with at least 2 entries ([0, len0, len0+len1, ...]), got {tuple(cu.shape)}"
        )
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device}, q on {device}: put them on the same device")
    if int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()) or int(cu[-1]) != total:
        raise ValueError(f"{name} must start at 0, never decrease and end at the packed length {total}")
    return cu.to(torch.int32).contiguous()


def sageattn_varlen_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    is_causal: bool = False,
    sm_scale: float | None = None,
    smooth_k: bool = True,
    return_lse: bool = False,
    *,
    qk_quant_gran: str = "per_block",
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention2 (INT8 QK, fp16 P·V) on packed sequences, upstream ``sageattn_varlen``'s signature.

    ``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D|Dv]`` (one dtype: fp16, bf16, fp32; last dim contiguous);
    sequence ``s`` owns rows ``cu_seqlens_q[s] .. cu_seqlens_q[s+1]-1`` of q and the matching rows
    of k/v (int32/int64 ``[S+1]``, from 0 to the packed length). Each sequence attends only to its
    own keys, causal top-left within the sequence; quantization blocks never straddle sequences.
    Unlike upstream (which smooths K over the whole packed batch), K's mean and V's scale are per
    sequence. ``max_seqlen_q/k`` are checked against the lengths. With ``return_lse`` also the
    natural-log LSE ``[Hq, Tq]`` (flash-attn's layout) of the un-smoothed scores; a sequence without
    keys gives 0 and ``-inf``. Inputs are not modified. The tile tables are built on the host
    (one device→host copy of the cu_seqlens).
    """
    q, k, v = _check_qkv3("q", q), _check_qkv3("k", k), _check_qkv3("v", v)
    _check_bool("is_causal", is_causal)
    _check_bool("smooth_k", smooth_k)
    _check_bool("return_lse", return_lse)
    _, sm_scale, q_group = _validate(
        q[None], k[None], v[None], "NHD", "triton", is_causal, None, sm_scale, smooth_k, return_lse,
        qk_quant_gran, scale, dropout_p, False, False,
    )  # fmt: skip
    cu_q = _check_cu("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    cu_k = _check_cu("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must list the same number of sequences, got "
                         f"{cu_q.numel() - 1} and {cu_k.numel() - 1}")  # fmt: skip
    for name, val, cu in (("max_seqlen_q", max_seqlen_q, cu_q), ("max_seqlen_k", max_seqlen_k, cu_k)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise TypeError(f"{name} must be an int, got {type(val).__name__}")
        if val < int((cu[1:] - cu[:-1]).max()):
            raise ValueError(
                f"{name}={val} is smaller than the longest sequence ({int((cu[1:] - cu[:-1]).max())})"
            )
    o, lse = torch.ops.sageattention.qk_int8_varlen_triton(
        q, k, v, cu_q, cu_k, is_causal, sm_scale, smooth_k, q_group
    )
    return (o, lse) if return_lse else o


def _check_qkv3(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be 3-D packed [total_tokens, H, D], got {tuple(x.shape)}")
    return x
