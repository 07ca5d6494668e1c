"""Triton quantizers of SageAttention: per-group INT8 for Q and K, K smoothing, FP8 E4M3 V.

Every kernel reads a ``[B, H, N, D]`` view through its strides (HND or NHD, last dim contiguous)
and writes contiguous ``[B, H, N, D]`` outputs, so no layout copy is made. The maths is that of
``sageattention.reference``, bit for bit:

- ``token_reduce_kernel``: per (b, h, channel) over all tokens, the mean in float64 (rounded once to
  float32: what K smoothing subtracts) or ``max|x|`` (V's channel range). One pass over the tensor.
  Roofline: reads ``B·H·N·D`` elements once, writes ``B·H·D`` floats; ``B·H·N·D`` float64 adds
  (mean) or float32 max; memory bound on every GPU (H100 3.35 TB/s, RTX 4090 1.0 TB/s: a
  ``[1, 32, 16384, 128]`` bf16 K (134 MB) takes ~40 µs / ~135 µs).
- ``quant_int8_kernel``: INT8 per group of ``GS`` consecutive tokens of one head (``GS = 128`` per
  block for Q, 64 for K, 32 = one warp's rows for Q per warp): ``y = (x - mean) · multiplier``
  (``multiplier = sm_scale·log2(e)`` for Q, so the attention kernel can use ``exp2``),
  ``scale = max|y| / 127``, ``x8 = trunc(y / scale + 0.5·sign(y))`` clamped to ±127 (round half
  away from zero); an all-zero group gets scale 0 and zeros; a group holding inf/NaN gets scale NaN
  (and zeros), so NaN propagates through the attention. Roofline: reads ``B·H·N·D`` elements
  (2 B each for fp16/bf16) and writes ``B·H·N·D`` bytes plus one float per group, ~5 FLOPs per
  element: ``[1, 32, 16384, 128]`` moves 201 MB, ~60 µs on H100, ~200 µs on an RTX 4090.
- ``quant_int8_rows_kernel``: the same INT8 maths with one scale per token (per_thread groups
  of tokens ``n % 8`` (Q) / ``(n % 8) // 2`` (K) inside each warp tile, or per_token), the
  ``modes.quantize_int8_groups`` layout; same traffic as ``quant_int8_kernel`` plus 4 B per token.
- ``quant_fp8_kernel``: V per channel to FP8 E4M3, ``v8 = e4m3(clamp(v / v_scale, ±448))`` with
  ``v_scale = max_tokens|v| / 448`` (computed from ``token_reduce_kernel``'s max); a zero channel has
  scale 0 and zeros. Reads 2 B and writes 1 B per element: ``[1, 32, 16384, 128]`` moves 201 MB, ~60 µs on H100,
  ~200 µs on an RTX 4090.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FLT_MAX = tl.constexpr(3.4028234663852886e38)
FP8_MAX = tl.constexpr(448.0)


@triton.jit
def e4m3_rne(y):
    """``y`` (float32, |y| <= 448 or NaN) rounded to the nearest E4M3 value, ties to even, as float32.

    Used under the Triton interpreter, whose float32 -> fp8 cast does not carry a mantissa round-up
    into the exponent (127.98 -> 64); a GPU's ``cvt.rn.satfinite.e4m3x2.f32`` rounds correctly.
    """
    e = (y.to(tl.int32, bitcast=True) >> 23) & 0xFF
    e = tl.maximum(e, 127 - 6)  # below 2^-6 the E4M3 grid is the subnormal step 2^-9
    ulp = ((e - 3) << 23).to(tl.float32, bitcast=True)
    t = y / ulp  # exact: a power-of-two divisor
    r = (t + 12582912.0) - 12582912.0  # round half to even (|t| < 16)
    return tl.where(r == 0.0, y * 0.0, r * ulp)  # keep the sign of values that round to zero


@triton.jit
def token_reduce_kernel(
    x_ptr,
    out_ptr,
    cu_ptr,
    N,
    D,
    H,
    stride_b,
    stride_h,
    stride_n,
    MEAN: tl.constexpr,
    CHUNK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """out[b, h, :] = mean_n x[b, h, n, :] (float64 sum, MEAN) or max_n |x[b, h, n, :]| (NaN wins).

    VARLEN: ``b`` is a sequence of the packed ``x [1, H, T, D]``, its tokens ``cu[b] .. cu[b+1]-1``.
    """
    pid_d = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    if VARLEN:
        lo = tl.load(cu_ptr + b)
        n = tl.load(cu_ptr + b + 1) - lo
        base = x_ptr + h * stride_h + lo.to(tl.int64) * stride_n
    else:
        n = N
        base = x_ptr + b * stride_b + h * stride_h
    if MEAN:
        acc = tl.zeros([CHUNK_N, BLOCK_D], dtype=tl.float64)
    else:
        acc = tl.zeros([CHUNK_N, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, n, CHUNK_N):
        r = n0 + tl.arange(0, CHUNK_N)
        m = (r < n)[:, None] & cmask[None, :]
        x = tl.load(base + r[:, None].to(tl.int64) * stride_n + cols[None, :], mask=m, other=0.0)
        if MEAN:
            acc += x.to(tl.float64)
        else:
            acc = tl.maximum(acc, tl.abs(x.to(tl.float32)), propagate_nan=tl.PropagateNan.ALL)
    if MEAN:
        res = (tl.sum(acc, axis=0) / tl.cast(n, tl.float64)).to(tl.float32)  # fp64 division is IEEE
    else:
        # a NaN anywhere in the column wins (as torch.amax); tl.max would drop it
        nan_any = tl.sum((acc != acc).to(tl.int32), axis=0) > 0
        res = tl.where(nan_any, float("nan"), tl.max(acc, axis=0))
    tl.store(out_ptr + bh.to(tl.int64) * D + cols, res, mask=cmask)


@triton.jit
def quant_int8_kernel(
    x_ptr,
    mean_ptr,
    q_ptr,
    scale_ptr,
    gtab_ptr,
    N,
    D,
    H,
    NG,
    stride_b,
    stride_h,
    stride_n,
    multiplier,
    HAS_MEAN: tl.constexpr,
    GS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """One program per group of ``GS`` tokens of one (b, h): INT8 values and one float32 scale.

    VARLEN: packed ``x [1, H, T, D]``; group ``g`` covers rows ``gtab[3g] .. gtab[3g+1]-1`` of
    sequence ``gtab[3g+2]`` (whose K mean it subtracts), so no group straddles two sequences.
    """
    g = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    if VARLEN:
        r0 = tl.load(gtab_ptr + 3 * g)
        r1 = tl.load(gtab_ptr + 3 * g + 1)
        mrow = tl.load(gtab_ptr + 3 * g + 2).to(tl.int64) * H + h
    else:
        r0 = g * GS
        r1 = N
        mrow = bh
    rows = r0 + tl.arange(0, GS)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    m = (rows < r1)[:, None] & cmask[None, :]
    src = x_ptr + b * stride_b + h * stride_h + rows[:, None].to(tl.int64) * stride_n + cols[None, :]
    y = tl.load(src, mask=m, other=0.0).to(tl.float32)
    if HAS_MEAN:
        mu = tl.load(mean_ptr + mrow * D + cols, mask=cmask, other=0.0)
        y = y - mu[None, :]
    y = y * multiplier
    a = tl.where(m, tl.abs(y), 0.0)
    a = tl.where(a <= FLT_MAX, a, float("inf"))  # inf and NaN count as +inf
    amax = tl.max(tl.max(a, axis=1), axis=0)
    scale = tl.where(amax <= FLT_MAX, tl.div_rn(amax, 127.0), float("nan"))
    tl.store(scale_ptr + bh * NG + g, scale)
    ok = scale > 0.0
    safe = tl.where(ok, scale, 1.0)
    v = tl.div_rn(y, safe) + tl.where(y < 0.0, -0.5, 0.5)
    v = tl.minimum(tl.maximum(v, -127.0), 127.0)
    v = tl.where(ok, v, 0.0)
    dst = q_ptr + bh * N * D + rows[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(dst, v.to(tl.int32).to(tl.int8), mask=m)


@triton.jit
def quant_int8_rows_kernel(
    x_ptr,
    mean_ptr,
    q_ptr,
    scale_ptr,
    N,
    D,
    H,
    stride_b,
    stride_h,
    stride_n,
    multiplier,
    HAS_MEAN: tl.constexpr,
    TILE: tl.constexpr,
    T: tl.constexpr,
    C: tl.constexpr,
    ADD_EPS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """INT8 with one scale per token (a vector ``scale [B, H, N]``), shared inside groups.

    Token ``n`` belongs to group ``(n // TILE)·T + (n % (T·C)) // C`` (``modes._group_shape``):
    per_thread Q ``TILE = warpq, T = 8, C = 1`` (rows with equal ``n % 8`` of a warp's rows),
    per_thread K ``TILE = warpk, T = 4, C = 2`` (equal ``(n % 8) // 2``), per_token ``1, 1, 1``.
    ``scale = max|y| / 127`` over the group (``+ 1e-7`` with ``ADD_EPS``, as upstream per_thread),
    ``y = (x - mean) · multiplier``, values as in ``quant_int8_kernel``. One program per
    ``BLOCK_R`` tokens (a multiple of ``TILE``, so no group straddles programs); the group maximum
    is a masked ``[BLOCK_R, BLOCK_R]`` max.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    rmask = rows < N
    m = rmask[:, None] & cmask[None, :]
    src = x_ptr + b * stride_b + h * stride_h + rows[:, None].to(tl.int64) * stride_n + cols[None, :]
    y = tl.load(src, mask=m, other=0.0).to(tl.float32)
    if HAS_MEAN:
        mu = tl.load(mean_ptr + bh * D + cols, mask=cmask, other=0.0)
        y = y - mu[None, :]
    y = y * multiplier
    a = tl.where(m, tl.abs(y), 0.0)
    a = tl.where(a <= FLT_MAX, a, float("inf"))  # inf and NaN count as +inf
    ra = tl.max(a, axis=1)
    grp = (rows // TILE) * T + (rows % (T * C)) // C
    same = grp[:, None] == grp[None, :]
    gmax = tl.max(tl.where(same, ra[None, :], 0.0), axis=1)
    scale = tl.where(gmax <= FLT_MAX, tl.div_rn(gmax, 127.0), float("nan"))
    if ADD_EPS:
        scale = scale + 1e-7
    tl.store(scale_ptr + bh * N + rows, scale, mask=rmask)
    ok = scale > 0.0
    safe = tl.where(ok, scale, 1.0)
    v = tl.div_rn(y, safe[:, None]) + tl.where(y < 0.0, -0.5, 0.5)
    v = tl.minimum(tl.maximum(v, -127.0), 127.0)
    v = tl.where(ok[:, None], v, 0.0)
    dst = q_ptr + bh * N * D + rows[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(dst, v.to(tl.int32).to(tl.int8), mask=m)


@triton.jit
def quant_fp8_kernel(
    x_ptr,
    scale_ptr,
    q_ptr,
    N,
    D,
    H,
    stride_b,
    stride_h,
    stride_n,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EMULATE_CVT: tl.constexpr,
):
    """One program per ``BLOCK_N`` tokens of one (b, h): ``e4m3(clamp(x / scale[channel], ±448))``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    m = (rows < N)[:, None] & cmask[None, :]
    src = x_ptr + b * stride_b + h * stride_h + rows[:, None].to(tl.int64) * stride_n + cols[None, :]
    x = tl.load(src, mask=m, other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + bh * D + cols, mask=cmask, other=1.0)
    safe = tl.where(s > 0.0, s, 1.0)
    y = tl.div_rn(x, safe[None, :])
    y = tl.minimum(tl.maximum(y, -FP8_MAX), FP8_MAX)  # NaN stays NaN
    if EMULATE_CVT:
        y = e4m3_rne(y)
    dst = q_ptr + bh * N * D + rows[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(dst, y.to(tl.float8e4nv), mask=m)


# --------------------------------------------------------------------------------------------------
# Launchers: x is a [B, H, N, D] view with a contiguous last dim; outputs are contiguous.


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    assert x.stride(-1) == 1, "last dim must be contiguous"
    return x.stride(0), x.stride(1), x.stride(2)


def token_reduce(
    x: torch.Tensor, out: torch.Tensor, mean: bool, cu: torch.Tensor | None = None
) -> torch.Tensor:
    """``out [B, H, D]`` float32: the token mean (``mean``) or the channel ``max|x|`` of ``x``.

    With ``cu`` (int32 ``[S+1]``), ``x`` is packed ``[1, H, T, D]`` and ``out [S, H, D]`` per sequence.
    """
    b, h, n, d = x.shape
    nb = b if cu is None else cu.numel() - 1
    block_d = min(64, triton.next_power_of_2(d))
    chunk = 64 if x.is_cuda else max(16, min(1024, triton.next_power_of_2(n)))
    grid = (triton.cdiv(d, block_d), nb * h)
    token_reduce_kernel[grid](
        x, out, cu if cu is not None else out, n, d, h, *_strides(x),
        MEAN=mean, CHUNK_N=chunk, BLOCK_D=block_d, VARLEN=cu is not None,
    )  # fmt: skip
    return out


def quant_int8(
    x: torch.Tensor,
    mean: torch.Tensor | None,
    out: torch.Tensor,
    scale: torch.Tensor,
    group: int,
    multiplier: float,
    gtab: torch.Tensor | None = None,
) -> None:
    """``out [B, H, N, D]`` int8 and ``scale [B, H, ceil(N / group)]`` float32 of ``x``.

    With ``gtab`` (int32 ``[G, 3]``: start row, end row, sequence), ``x`` is packed ``[1, H, T, D]``
    and ``scale [1, H, G]``; ``mean`` is then per sequence ``[S, H, D]``.
    """
    b, h, n, d = x.shape
    ng = triton.cdiv(n, group) if gtab is None else gtab.shape[0]
    block_d = max(16, triton.next_power_of_2(d))
    quant_int8_kernel[(ng, b * h)](
        x,
        mean if mean is not None else scale,
        out,
        scale,
        gtab if gtab is not None else scale,
        n,
        d,
        h,
        ng,
        *_strides(x),
        float(multiplier),
        HAS_MEAN=mean is not None,
        GS=group,
        BLOCK_D=block_d,
        VARLEN=gtab is not None,
        num_warps=8 if group * block_d >= 8192 else 4,
    )


def quant_int8_rows(
    x: torch.Tensor,
    mean: torch.Tensor | None,
    out: torch.Tensor,
    scale: torch.Tensor,
    groups: tuple[int, int, int],
    multiplier: float,
    add_eps: bool,
) -> None:
    """``out [B, H, N, D]`` int8 and the per-token ``scale [B, H, N]`` float32 of ``x``.

    ``groups = (tile, t, c)`` as ``modes._group_shape``; ``mean [B, H, D]`` subtracted if given.
    """
    b, h, n, d = x.shape
    tile, t, c = groups
    block_r = max(64, tile)
    assert block_r % tile == 0 and tile % (t * c) == 0, groups
    block_d = max(16, triton.next_power_of_2(d))
    quant_int8_rows_kernel[(triton.cdiv(n, block_r), b * h)](
        x, mean if mean is not None else scale, out, scale, n, d, h, *_strides(x), float(multiplier),
        HAS_MEAN=mean is not None, TILE=tile, T=t, C=c, ADD_EPS=add_eps, BLOCK_R=block_r,
        BLOCK_D=block_d, num_warps=8 if block_r * block_d >= 8192 else 4,
    )  # fmt: skip


def quant_fp8(x: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> None:
    """``out [B, H, N, D]`` float8_e4m3fn of ``x`` with the per-channel ``scale [B, H, D]``."""
    b, h, n, d = x.shape
    block_d = max(16, triton.next_power_of_2(d))
    block_n = 64 if x.is_cuda else max(16, min(1024, triton.next_power_of_2(n)))
    quant_fp8_kernel[(triton.cdiv(n, block_n), b * h)](
        x, scale, out, n, d, h, *_strides(x), BLOCK_N=block_n, BLOCK_D=block_d, EMULATE_CVT=not x.is_cuda
    )
