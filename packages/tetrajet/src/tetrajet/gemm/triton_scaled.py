"""MX block-scaled GEMM in Triton with ``tl.dot_scaled`` (MXFP4 / MXFP8 operands, E8M0 scales).

OCP MX v1.0 GEMM on the packed storage of ``shared_kernels.quantize_mx``::

    C[m, n] = sum_k (a[m, k] * 2^(sa[m, k // 32] - 127)) * (b[n, k] * 2^(sb[n, k // 32] - 127))

a and b hold E2M1 ("mxfp4", two codes per uint8 byte along K, low nibble = even k) or E4M3 / E5M2
("mxfp8_*", one float8 per element); the scales are E8M0 bytes (uint8), one per 32 consecutive k.
Accumulation in float32. On sm100a Triton lowers ``tl.dot_scaled`` to the Blackwell block-scaled
tensor-core MMA (PTX ``tcgen05.mma.cta_group::1.kind::mxf4.block_scale.block32`` for MXFP4 x MXFP4,
``kind::mxf8f6f4.block_scale.block32`` for MXFP8 and mixed pairs; SASS ``UTCOMMA`` / ``UTCQMMA``);
on sm80/sm89/sm90a it decodes and scales the operands to bf16 in registers and multiplies with
``mma.sync`` (HMMA, sm80/89) or ``wgmma`` (HGMMA, sm90a): correct, but no faster than a BF16 GEMM.
Triton has no float8 on sm80, so MXFP8 operands need sm89+.

Cost: 2·M·N·K FLOPs; bytes moved M·K·ba + N·K·bb (b = 0.5 for MXFP4, 1 for MXFP8) + (M + N)·K/32
scale bytes + M·N·itemsize(out) (each operand tile is re-read once per output tile of the other
operand: ceil(N / BLOCK_N)·M·K·ba + ceil(M / BLOCK_M)·N·K·bb from L2/HBM).
"""

from __future__ import annotations

import os

import torch

__all__ = ["MX_FORMATS", "jit_kernel", "mx_matmul", "tile_config"]

MX_FORMATS = ("mxfp4", "mxfp8_e4m3", "mxfp8_e5m2")
_TL_FORMAT = {"mxfp4": "e2m1", "mxfp8_e4m3": "e4m3", "mxfp8_e5m2": "e5m2"}
_DATA_DTYPE = {"mxfp4": torch.uint8, "mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2}
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BLOCK = 32

_KERNEL = None


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def mx_matmul_kernel(
        a_ptr,
        sa_ptr,
        b_ptr,
        sb_ptr,
        c_ptr,
        M,
        N,
        K,
        stride_am,
        stride_ak,
        stride_sam,
        stride_sak,
        stride_bn,
        stride_bk,
        stride_sbn,
        stride_sbk,
        stride_cm,
        stride_cn,
        A_FMT: tl.constexpr,
        B_FMT: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """One BLOCK_M x BLOCK_N tile of C = (A ⊙ SA) · (B ⊙ SB)ᵀ; K in steps of BLOCK_K (multiple of 32)."""
        A_PACK: tl.constexpr = 2 if A_FMT == "e2m1" else 1
        B_PACK: tl.constexpr = 2 if B_FMT == "e2m1" else 1
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_ak = tl.arange(0, BLOCK_K // A_PACK)
        offs_bk = tl.arange(0, BLOCK_K // B_PACK)
        offs_s = tl.arange(0, BLOCK_K // 32)
        m_ok = offs_m < M
        n_ok = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ka = k0 // A_PACK + offs_ak
            kb = k0 // B_PACK + offs_bk
            ks = k0 // 32 + offs_s
            a = tl.load(
                a_ptr + offs_m[:, None] * stride_am + ka[None, :] * stride_ak,
                mask=m_ok[:, None] & (ka < K // A_PACK)[None, :],
                other=0,
            )
            # b is read transposed: a [BLOCK_K / pack, BLOCK_N] tile, packed along K.
            b = tl.load(
                b_ptr + kb[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                mask=(kb < K // B_PACK)[:, None] & n_ok[None, :],
                other=0,
            )
            # Scales outside M/N/K are 127 (= 1.0); their data are 0, so they add exact zeros.
            sa = tl.load(
                sa_ptr + offs_m[:, None] * stride_sam + ks[None, :] * stride_sak,
                mask=m_ok[:, None] & (ks < K // 32)[None, :],
                other=127,
            )
            sb = tl.load(
                sb_ptr + offs_n[:, None] * stride_sbn + ks[None, :] * stride_sbk,
                mask=n_ok[:, None] & (ks < K // 32)[None, :],
                other=127,
            )
            acc = tl.dot_scaled(a, sa, A_FMT, b, sb, B_FMT, acc)
        if c_ptr.dtype.element_ty == tl.bfloat16:
            # Round to nearest even on the bits (Triton's interpreter truncates float32 -> bfloat16;
            # on a GPU this equals the hardware RNE cast): the cast below is then exact.
            bits = acc.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            acc = tl.where(acc != acc, acc, bits.to(tl.float32, bitcast=True))
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    return mx_matmul_kernel


def jit_kernel():
    """The ``@triton.jit`` kernel (built on first use; triton is imported lazily)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    return _KERNEL


def tile_config(device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) for ``device``: the shapes the kernel report checks."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 10:
        return 128, 128, 128, 4
    return 128, 128, 64, 8


def _check_operand(side: str, data: object, scales: object, fmt: object) -> tuple[int, int]:
    """Validate one operand; returns (rows, K)."""
    if not isinstance(fmt, str) or fmt not in MX_FORMATS:
        raise ValueError(f"fmt_{side}={fmt!r} is not supported; supported: {MX_FORMATS}")
    for name, t in ((f"{side}_data", data), (f"{side}_scales", scales)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    want = _DATA_DTYPE[fmt]
    if data.dtype != want:
        raise TypeError(
            f"{side}_data.dtype must be {want} for fmt_{side}={fmt!r} "
            f"({'packed E2M1, two codes per byte' if fmt == 'mxfp4' else 'one float8 per element'}), "
            f"got {data.dtype}"
        )
    if scales.dtype != torch.uint8:
        raise TypeError(f"{side}_scales.dtype must be torch.uint8 (E8M0 bytes), got {scales.dtype}")
    if scales.device != data.device:
        raise ValueError(f"{side}_scales is on {scales.device} but {side}_data is on {data.device}")
    rows = data.shape[0]
    k = data.shape[1] * (2 if fmt == "mxfp4" else 1)
    if tuple(scales.shape) != (rows, k // _BLOCK) or k % _BLOCK:
        raise ValueError(
            f"{side}_scales must have shape (rows, K / 32) = ({rows}, {k // _BLOCK}) for {side}_data of shape "
            f"{tuple(data.shape)} (K = {k} must be a multiple of 32), got {tuple(scales.shape)}"
        )
    return rows, k


def mx_matmul(
    a_data: torch.Tensor,
    a_scales: torch.Tensor,
    b_data: torch.Tensor,
    b_scales: torch.Tensor,
    fmt_a: str = "mxfp4",
    fmt_b: str = "mxfp4",
    out_dtype: torch.dtype = torch.float32,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """C = A · Bᵀ for MX operands A [M, K] and B [N, K], blocked along K (``tl.dot_scaled``).

    ``a_data``: [M, K/2] uint8 (``fmt_a="mxfp4"``) or [M, K] float8 (``"mxfp8_e4m3"``/``"mxfp8_e5m2"``),
    ``a_scales``: [M, K/32] uint8 E8M0; the same for b with N rows. This is what
    ``shared_kernels.quantize_mx(x, fmt, axis=-1)`` returns for x [M, K]; for an operand quantized with
    ``axis=-2`` along K (x [K, N]) pass ``data.t()`` and ``scales.t()`` (any strides are read in
    place, nothing is copied). K must be a multiple of 32; M and N are arbitrary (masked).
    ``out_dtype``: float32, bfloat16 or float16 (float32 accumulation, one rounding at the end).
    ``block_m``/``block_n`` (powers of two >= 16) and ``block_k`` (power of two >= 32) override the
    tile (launched with 4 warps); by default ``tile_config(device)``: 128x128x128 with 4 warps on
    compute capability 10.x (block-scaled tcgen05 MMA), 128x128x64 with 8 warps elsewhere (the
    upcast path spills with the larger tile; see ``tetrajet.kernel_specs``). Each operand's data
    and the output must hold < 2^31 elements (int32 offsets).
    Returns a new [M, N] tensor; the inputs are not modified.
    """
    m, k = _check_operand("a", a_data, a_scales, fmt_a)
    n, kb = _check_operand("b", b_data, b_scales, fmt_b)
    if kb != k:
        raise ValueError(
            f"a and b must have the same K: a_data {tuple(a_data.shape)} ({fmt_a}) gives K = {k}, "
            f"b_data {tuple(b_data.shape)} ({fmt_b}) gives K = {kb}"
        )
    if b_data.device != a_data.device:
        raise ValueError(f"b_data is on {b_data.device} but a_data is on {a_data.device}")
    if a_data.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"mx_matmul runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1), got {a_data.device}; "
            "use TetraJet's 'emulated' backend or shared_kernels.mx_gemm(..., backend='torch') elsewhere"
        )
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype!r}")
    if a_data.device.type == "cuda" and torch.cuda.get_device_capability(a_data.device) < (8, 9):
        fp8 = [f for f in (fmt_a, fmt_b) if f != "mxfp4"]
        if fp8:
            raise ValueError(
                f"{fp8[0]} operands need compute capability >= 8.9 in Triton, got {a_data.device}"
            )
    for name, t in (("a_data", a_data), ("b_data", b_data)):
        if t.numel() >= 2**31:
            raise ValueError(f"{name} has {t.numel()} elements; at most 2^31 - 1 (int32 offsets)")
    if m * n >= 2**31:
        raise ValueError(f"the output would have M·N = {m * n} elements; at most 2^31 - 1 (int32 offsets)")
    bm, bn, bk, warps = tile_config(a_data.device)
    if (block_m, block_n, block_k) != (None, None, None):
        warps = 4
    for name, v, lo in (("block_m", block_m, 16), ("block_n", block_n, 16), ("block_k", block_k, 32)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo or v & (v - 1)):
            raise ValueError(f"{name} must be a power of two >= {lo} (or None), got {v!r}")
    block_m, block_n, block_k = block_m or bm, block_n or bn, block_k or bk
    out = torch.empty((m, n), dtype=out_dtype, device=a_data.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    # float8 payloads are passed as their bytes (what tl.dot_scaled reads for e4m3/e5m2).
    a = a_data if fmt_a == "mxfp4" else a_data.view(torch.uint8)
    b = b_data if fmt_b == "mxfp4" else b_data.view(torch.uint8)
    grid = (-(-m // block_m), -(-n // block_n))
    jit_kernel()[grid](
        a, a_scales, b, b_scales, out,
        m, n, k,
        a.stride(0), a.stride(1), a_scales.stride(0), a_scales.stride(1),
        b.stride(0), b.stride(1), b_scales.stride(0), b_scales.stride(1),
        out.stride(0), out.stride(1),
        A_FMT=_TL_FORMAT[fmt_a], B_FMT=_TL_FORMAT[fmt_b],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, num_stages=3,
    )  # fmt: skip
    return out
