"""Fused INT8 attention forward (SageAttention2 per-block INT8 Q·Kᵀ, fp16 P·V) as a torch custom op."""

from __future__ import annotations

import torch

from .. import _alloc, _backend, _lib, _validate
from ..reference import int8_attention as _ref

__all__ = ["int8_attention"]

_OP = "int8_attention"
BLOCK_K = _ref.BLOCK_K
MAX_D = 131071  # int32 accumulation of Q8·K8ᵀ exact (see int8_gemm)

_backend.register_op(
    _OP,
    backends=("torch", "cpu"),
    summary="fused INT8 attention forward (per-block INT8 Q·Kᵀ, online exp2 softmax, fp16 P·V), lse in log2",
)


_V_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _new_outputs(q8, v):
    b, hq, nq, _ = q8.shape
    o = _alloc.new_empty((b, hq, nq, v.shape[-1]), torch.float32, q8.device)
    lse = _alloc.new_empty((b, hq, nq), torch.float32, q8.device)
    return o, lse


def _run_native(q8, k8, q_scale, k_scale, v, v_scale, mask, block_q, is_causal, force_scalar: bool = False):
    """The compiled CPU kernel; ``force_scalar`` skips its AVX-512 VNNI path (tests compare both)."""
    o, lse = _new_outputs(q8, v)
    b, hq, nq, d = q8.shape
    hkv, nk, dv = k8.shape[1], k8.shape[2], v.shape[-1]
    if mask is not None:
        mask = mask.expand(b, hq, nq, nk)
    strides = mask.stride() if mask is not None else (0, 0, 0, 0)
    if o.numel() or lse.numel():
        _lib.launch(
            "int8_attention", q8,
            _lib.ptr(q8), _lib.ptr(k8), _lib.ptr(q_scale), _lib.ptr(k_scale), _lib.ptr(v), _lib.ptr(v_scale),
            _lib.ptr(mask), *strides, _lib.ptr(o), _lib.ptr(lse),
            b, hq, hkv, nq, nk, d, dv, block_q, is_causal, _DTYPE_CODE[v.dtype],
            force_scalar=force_scalar,
        )  # fmt: skip
    return o, lse


@torch.library.custom_op("shared_kernels::int8_attention", mutates_args=())
def _int8_attention_op(
    q8: torch.Tensor,
    k8: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor | None,
    mask: torch.Tensor | None,
    block_q: int,
    is_causal: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cpu":
        return _run_native(q8, k8, q_scale, k_scale, v, v_scale, mask, block_q, is_causal)
    return _ref.int8_attention(q8, k8, q_scale, k_scale, v, v_scale, mask, block_q, is_causal)


@_int8_attention_op.register_fake
def _(q8, k8, q_scale, k_scale, v, v_scale, mask, block_q, is_causal, backend):
    b, hq, nq, _ = q8.shape
    return q8.new_empty((b, hq, nq, v.shape[-1]), dtype=torch.float32), q8.new_empty(
        (b, hq, nq), dtype=torch.float32
    )


def _check_shape(name: str, t: torch.Tensor, want: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must have shape {want} ({what}), got {tuple(t.shape)}")


def int8_attention(
    q8: torch.Tensor,
    k8: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor | None = None,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    block_q: int = 128,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused SageAttention2 forward on already-quantized operands: ``softmax₂(S)·V`` with
    ``S = float32(int32(Q8·K8ᵀ))·q_scale·k_scale`` in log2 units, online ``exp2`` softmax over blocks
    of 64 keys, ``P`` and ``V`` rounded to fp16 and multiplied with float32 accumulation; ``S`` is
    never materialised beyond one block (numerics step by step: ``reference.int8_attention``).

    ``q8`` int8 ``[B, Hq, Nq, D]`` (``sm_scale·log2 e`` folded in before quantization) with
    ``q_scale`` float32 ``[B, Hq, ceil(Nq / block_q)]``; ``k8`` int8 ``[B, Hkv, Nk, D]`` (smoothed or
    not) with ``k_scale`` float32 ``[B, Hkv, ceil(Nk / 64)]`` (what ``quantize_int8_per_block``
    returns with blocks ``block_q`` and 64); ``v`` float32/float16/bfloat16 ``[B, Hkv, Nk, Dv]`` and
    optional ``v_scale`` float32 broadcastable to ``[B, Hkv, 1, Dv]``: the kernel rounds
    ``v / v_scale`` to fp16 and multiplies the output by ``v_scale`` (a power of two per channel keeps
    large V finite in fp16 without changing its rounding). GQA/MQA: query head ``h`` reads kv head ``h // (Hq // Hkv)``. ``attn_mask``: float32 additive mask in natural-log
    units (``-inf`` = masked) broadcastable to ``[B, Hq, Nq, Nk]`` (never expanded in memory);
    ``is_causal``: key ``j`` visible to query ``i`` iff ``j <= i`` (top-left, like SDPA).

    Returns ``(o float32 [B, Hq, Nq, Dv], lse2 float32 [B, Hq, Nq])``, ``lse2 = log2 Σ_j 2^{S_ij}``;
    rows with every key masked give ``o = 0``, ``lse2 = -inf``. NaN in an operand propagates to the
    rows (q, scales, mask) or channels (v) that read it. Backends ``"cpu"`` (AVX-512 VNNI or scalar,
    identical bits) and ``"torch"`` agree bit for bit (NaN payloads aside).

    Cost: ``2·B·Hq·Nq·Nk·(D + Dv)`` ops (int8 for Q·Kᵀ, float32 for P·V) and ``B·Hq·Nq·Nk`` exp2
    (half with ``is_causal``); bytes moved ``B·(Hq·Nq·(D + 4·Dv + 8) + Hkv·Nk·(D + s·Dv))`` (``s``
    the itemsize of v) plus the mask as stored.
    """
    _validate.check_tensor("q8", q8, dtypes=(torch.int8,), ndim=4, contiguous=True)
    dev = q8.device
    _validate.check_tensor("k8", k8, dtypes=(torch.int8,), ndim=4, contiguous=True, device=dev)
    _validate.check_tensor("q_scale", q_scale, dtypes=(torch.float32,), ndim=3, contiguous=True, device=dev)
    _validate.check_tensor("k_scale", k_scale, dtypes=(torch.float32,), ndim=3, contiguous=True, device=dev)
    _validate.check_tensor("v", v, dtypes=_V_DTYPES, ndim=4, contiguous=True, device=dev)
    block_q = _validate.check_int("block_q", block_q, minimum=1)
    is_causal = _validate.check_bool("is_causal", is_causal)
    b, hq, nq, d = q8.shape
    hkv, nk, dv = k8.shape[1], k8.shape[2], v.shape[-1]
    if k8.shape[0] != b or k8.shape[3] != d:
        raise ValueError(f"k8 must be [B={b}, Hkv, Nk, D={d}] like q8, got {tuple(k8.shape)}")
    if hkv < 1 or hq % hkv:
        raise ValueError(f"the q heads ({hq}) must be a multiple of the k heads ({hkv}) (GQA/MQA)")
    if tuple(v.shape[:3]) != (b, hkv, nk):
        raise ValueError(f"v must be [B, Hkv, Nk, Dv] = [{b}, {hkv}, {nk}, Dv] like k8, got {tuple(v.shape)}")
    if d < 1 or dv < 1 or nk < 1:
        raise ValueError(f"q8/k8 need D >= 1 and Nk >= 1 and v Dv >= 1, got D={d}, Nk={nk}, Dv={dv}")
    if d > MAX_D:
        raise ValueError(f"q8 has D = {d}; at most {MAX_D} keeps the int32 accumulation exact")
    _check_shape("q_scale", q_scale, (b, hq, -(-nq // block_q)), f"one scale per {block_q} queries")
    _check_shape("k_scale", k_scale, (b, hkv, -(-nk // BLOCK_K)), f"one scale per {BLOCK_K} keys")
    if v_scale is not None:
        _validate.check_tensor("v_scale", v_scale, dtypes=(torch.float32,), device=dev)
        try:
            v_scale = v_scale.expand(b, hkv, 1, dv).reshape(b, hkv, dv).contiguous()
        except RuntimeError:
            raise ValueError(
                f"v_scale must be broadcastable to [B, Hkv, 1, Dv] = {[b, hkv, 1, dv]}, got {tuple(v_scale.shape)}"
            ) from None
    if attn_mask is not None:
        _validate.check_tensor("attn_mask", attn_mask, dtypes=(torch.float32,), device=dev)
        shape = (b, hq, nq, nk)
        try:
            ok = attn_mask.dim() <= 4 and torch.broadcast_shapes(attn_mask.shape, shape) == shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"attn_mask must be broadcastable to [B, Hq, Nq, Nk] = {list(shape)}, got {tuple(attn_mask.shape)}"
            )
    resolved = _backend.resolve_backend(_OP, backend, dev)
    return torch.ops.shared_kernels.int8_attention(
        q8, k8, q_scale, k_scale, v, v_scale, attn_mask, block_q, is_causal, resolved
    )
