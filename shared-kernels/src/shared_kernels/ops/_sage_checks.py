"""Argument checks shared by the SageAttention forward ops (``sage_attention_fwd`` (INT8), its INT4 and
sm90 variants): output dtype, GQA head layout, per-thread scale-group shapes and the FP8 V scale."""

from __future__ import annotations

import torch

from .. import _validate

OUT_DTYPES = (torch.float16, torch.bfloat16)


def check_out_dtype(out_dtype: object) -> torch.dtype:
    if not isinstance(out_dtype, torch.dtype):
        raise TypeError(f"out_dtype must be a torch.dtype, got {type(out_dtype).__name__}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype} is not supported; supported: float16, bfloat16")
    return out_dtype


def check_kv_heads(hq: int, k: torch.Tensor) -> tuple[int, int]:
    """``(Hkv, Nk)`` of ``k`` ``[B, Hkv, Nk, ·]``: Hq a multiple of Hkv (GQA/MQA), at least one key."""
    hkv, nk = k.shape[1], k.shape[2]
    if hkv < 1 or hq % hkv:
        raise ValueError(
            f"q has {hq} heads and k {hkv}: the q heads must be a multiple of the kv heads (GQA)"
        )
    if nk < 1:
        raise ValueError(f"k has {nk} keys; at least 1 is needed")
    return hkv, nk


def check_scale_groups(
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    b: int,
    hq: int,
    hkv: int,
    want_q: int,
    want_k: int,
    q_rows: int,
    k_keys: int,
) -> None:
    """``q_scale`` ``[B, Hq, >= want_q]`` (8 per-thread groups per ``q_rows`` rows) and ``k_scale``
    ``[B, Hkv, >= want_k]`` (4 per-thread groups per ``k_keys`` keys)."""
    if tuple(q_scale.shape[:2]) != (b, hq) or q_scale.shape[2] < want_q:
        raise ValueError(
            f"q_scale must be [B={b}, Hq={hq}, >= {want_q}] (8 per-thread groups per {q_rows} rows), "
            f"got {tuple(q_scale.shape)}"
        )
    if tuple(k_scale.shape[:2]) != (b, hkv) or k_scale.shape[2] < want_k:
        raise ValueError(
            f"k_scale must be [B={b}, Hkv={hkv}, >= {want_k}] (4 per-thread groups per {k_keys} keys), "
            f"got {tuple(k_scale.shape)}"
        )


def check_v_scale(v: torch.Tensor, v_scale: torch.Tensor | None, b: int, hkv: int, d: int) -> None:
    """An FP8 (e4m3) ``v`` needs a float32 ``v_scale`` ``[B, Hkv, D]``; an fp16 ``v`` takes none."""
    if v.dtype == torch.float8_e4m3fn:
        if v_scale is None:
            raise ValueError("v is float8_e4m3fn (FP8 PV): v_scale float32 [B, Hkv, D] is required")
        _validate.check_tensor("v_scale", v_scale, dtypes=(torch.float32,), contiguous=True, device=v.device)
        if tuple(v_scale.shape) != (b, hkv, d):
            raise ValueError(f"v_scale must have shape {(b, hkv, d)}, got {tuple(v_scale.shape)}")
    elif v_scale is not None:
        raise ValueError(
            "v_scale is only used with a float8_e4m3fn v (FP8 PV); v is float16, pass v_scale=None"
        )
