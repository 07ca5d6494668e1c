"""MX block-scaled GEMM (OCP MX v1.0 operands, E8M0 scales per 32 along K) as a torch custom op.

Backends: "cuda" is a CUTLASS 4.x block-scaled GEMM for Blackwell (sm100a: ``tcgen05.mma`` with
``block_scale``; ``csrc/cuda_sm100/mx_gemm_sm100.cu``), present when shared-kernels was built with
100a in ``SHARED_KERNELS_CUDA_ARCHS``, and run only on a compute-capability 10.0 device (B200/GB200); "torch" is
the reference (dequantize, float32 matmul) on any device. ``backend="auto"`` takes "cuda" when it can
run the call and "torch" otherwise (same maths: exact products, float32 accumulation).
"""

from __future__ import annotations

import torch

from .. import _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec
from ..reference import mx_gemm as _ref

__all__ = ["mx_gemm", "mx_gemm_sm100_available", "mx_scales_to_blocked"]

_OP = "mx_gemm"
FORMATS = ("mxfp4", "mxfp8_e4m3")
_DATA_DTYPE = {"mxfp4": torch.uint8, "mxfp8_e4m3": torch.float8_e4m3fn}
_FMT_CODE = {"mxfp4": 0, "mxfp8_e4m3": 1}
_OUT_DTYPES = (torch.bfloat16, torch.float32)
_OUT_CODE = {torch.float32: 0, torch.bfloat16: 2}
_MAX_DIM = 2**31 - 1

_backend.register_op(
    _OP,
    backends=("cuda", "torch"),
    summary="MX block-scaled GEMM a[M, K] · b[N, K]ᵀ (MXFP4 x MXFP4 or MXFP8 E4M3 x E4M3); CUDA on sm100a",
)


def mx_scales_to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 scales [R, K/32] (row-major, one per 32 k) -> CUTLASS/cuBLAS block-scaled layout (1-D).

    The matrix is padded to [ceil(R/128)·128, ceil(K/128)·4] with 127 (2^0; the padded data are
    zero) and cut into 128x4 tiles stored tile after tile, K-tiles fastest; inside a tile, scale
    (r, c) sits at byte (r % 32)·16 + (r // 32)·4 + c (CUTLASS ``Sm1xxBlkScaledConfig`` SfAtom
    ((32, 4), (32, 4)) : ((16, 4), (0, 1)) for K-major operands). Bytes moved: 2·R·K/32.
    """
    _validate.check_tensor("scales", scales, dtypes=(torch.uint8,), ndim=2)
    rows, cols = scales.shape
    rb, cb = -(-rows // 128), -(-cols // 4)
    padded = scales.new_full((rb * 128, cb * 4), 127)
    padded[:rows, :cols] = scales
    tiles = padded.view(rb, 128, cb, 4).permute(0, 2, 1, 3)  # [rb, cb, 128, 4]
    return tiles.reshape(rb, cb, 4, 32, 4).transpose(2, 3).reshape(-1).contiguous()


def mx_gemm_sm100_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(True, "") when the CUTLASS sm100a kernel is built and ``device`` (default: current CUDA
    device) is a compute-capability 10.0 GPU; else (False, the reason)."""
    if not _lib.native_available():
        return False, f"the compiled module is missing ({_lib._IMPORT_ERROR!r})"
    if not _lib.cuda_compiled():
        return (
            False,
            "this shared-kernels build has no CUDA code (built without nvcc or SHARED_KERNELS_CUDA=OFF)",
        )
    if not getattr(_lib.native(), "mx_gemm_sm100_compiled", False):
        return False, "this shared-kernels build has no sm100a code (100a not in SHARED_KERNELS_CUDA_ARCHS)"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    dev = torch.device("cuda") if device is None else torch.device(device)
    if dev.type != "cuda":
        return False, f"the CUTLASS sm100a GEMM runs on CUDA tensors, these are on {dev.type}"
    major, minor = torch.cuda.get_device_capability(dev)
    if (major, minor) != (10, 0):  # sm_100a code runs on 10.0 only (arch-specific, not forward compatible)
        return (
            False,
            f"the CUTLASS block-scaled GEMM is built for sm_100a (compute capability 10.0), got {major}.{minor}",
        )
    return True, ""


def _cuda_shape_problem(a_data, b_data, fmt, out_dtype, n) -> str | None:
    """Why the CUTLASS kernel cannot take these tensors (TMA alignment), or None."""
    for name, t in (("a_data", a_data), ("b_data", b_data)):
        if t.data_ptr() % 16:
            return f"{name} must start on a 16-byte boundary for TMA"
    out_align = 16 // torch.empty((), dtype=out_dtype).element_size()
    if n % out_align:
        return f"N = {n} must be a multiple of {out_align} for a {out_dtype} output (16-byte rows for TMA)"
    return None


def _run_cuda(a_data, a_scales, b_data, b_scales, fmt, out_dtype) -> torch.Tensor:
    C = _lib.native()
    m, n = a_data.shape[0], b_data.shape[0]
    k = a_data.shape[1] * (2 if fmt == "mxfp4" else 1)
    out = torch.empty((m, n), dtype=out_dtype, device=a_data.device)
    sfa = mx_scales_to_blocked(a_scales)
    sfb = mx_scales_to_blocked(b_scales)
    fcode, ocode = _FMT_CODE[fmt], _OUT_CODE[out_dtype]
    ws_bytes = int(C.mx_gemm_sm100_workspace_size(fcode, ocode, m, n, k))
    ws = torch.empty((max(ws_bytes, 1),), dtype=torch.uint8, device=a_data.device)
    C.mx_gemm_sm100_cuda(
        fcode, ocode, _lib.ptr(a_data), _lib.ptr(sfa), _lib.ptr(b_data), _lib.ptr(sfb), _lib.ptr(out),
        m, n, k, _lib.ptr(ws), ws_bytes, _lib.stream_of(a_data),
    )  # fmt: skip
    return out


@torch.library.custom_op("shared_kernels::mx_gemm", mutates_args=())
def _mx_gemm_op(
    a_data: torch.Tensor,
    a_scales: torch.Tensor,
    b_data: torch.Tensor,
    b_scales: torch.Tensor,
    fmt: str,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    if backend == "cuda":
        return _run_cuda(a_data, a_scales, b_data, b_scales, fmt, out_dtype)
    return _ref.mx_gemm(a_data, a_scales, b_data, b_scales, fmt, out_dtype)


@_mx_gemm_op.register_fake
def _(a_data, a_scales, b_data, b_scales, fmt, out_dtype, backend):
    return a_data.new_empty((a_data.shape[0], b_data.shape[0]), dtype=out_dtype)


def mx_gemm(
    a_data: torch.Tensor,
    a_scales: torch.Tensor,
    b_data: torch.Tensor,
    b_scales: torch.Tensor,
    fmt: str = "mxfp4",
    *,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
) -> torch.Tensor:
    """MX GEMM ``out = A · Bᵀ`` for A [M, K] and B [N, K], both blocked along K (OCP MX v1.0)::

        out[m, n] = sum_k (a[m, k]·2^(sa[m, k//32] - 127)) · (b[n, k]·2^(sb[n, k//32] - 127))

    Operands as ``quantize_mx(x, fmt, axis=-1)`` stores them, contiguous: ``fmt="mxfp4"``: data uint8
    [rows, K/2] (two E2M1 codes per byte, low nibble = even k); ``fmt="mxfp8_e4m3"``: data
    float8_e4m3fn [rows, K]; scales uint8 E8M0 [rows, K/32]. Both operands share ``fmt``; K must be
    a multiple of 32 (M, N >= 1 arbitrary). ``out_dtype``: bfloat16 or float32 (float32 accumulation,
    one rounding). NaN scales (0xFF) give NaN like the format says. Returns a new [M, N] tensor.

    ``backend``: "auto", "cuda" (CUTLASS sm100a; also needs 16-byte aligned data and N a multiple of
    8 (bf16) / 4 (fp32)) or "torch" (reference). Cost: 2·M·N·K FLOPs; bytes moved
    (M + N)·K·(0.5 or 1) + (M + N)·K/32 scales (+ the same again for the scale re-layout on "cuda")
    + M·N·itemsize(out_dtype).
    """
    _validate.check_choice("fmt", fmt, FORMATS)
    dt = _DATA_DTYPE[fmt]
    _validate.check_tensor("a_data", a_data, dtypes=(dt,), ndim=2, contiguous=True)
    dev = a_data.device
    _validate.check_tensor("b_data", b_data, dtypes=(dt,), ndim=2, contiguous=True, device=dev)
    _validate.check_tensor("a_scales", a_scales, dtypes=(torch.uint8,), ndim=2, contiguous=True, device=dev)
    _validate.check_tensor("b_scales", b_scales, dtypes=(torch.uint8,), ndim=2, contiguous=True, device=dev)
    if not isinstance(out_dtype, torch.dtype):
        raise TypeError(f"out_dtype must be a torch.dtype, got {type(out_dtype).__name__}")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype} is not supported; supported: bfloat16, float32")
    pack = 2 if fmt == "mxfp4" else 1
    m, n = a_data.shape[0], b_data.shape[0]
    k = a_data.shape[1] * pack
    if b_data.shape[1] * pack != k:
        raise ValueError(
            f"b_data must have K = {k} like a_data ({fmt}: [rows, K{'/2' if pack == 2 else ''}]), "
            f"got shapes {tuple(a_data.shape)} and {tuple(b_data.shape)}"
        )
    if m < 1 or n < 1 or k < 32 or k % 32:
        raise ValueError(
            f"need M, N >= 1 and K a positive multiple of 32, got M = {m}, N = {n}, K = {k} "
            f"(a_data {tuple(a_data.shape)}, b_data {tuple(b_data.shape)}, fmt={fmt!r})"
        )
    if max(m, n, k) > _MAX_DIM:
        raise ValueError(f"M, N and K must be < 2^31, got M = {m}, N = {n}, K = {k}")
    for name, s, rows in (("a_scales", a_scales, m), ("b_scales", b_scales, n)):
        if tuple(s.shape) != (rows, k // 32):
            raise ValueError(f"{name} must have shape ({rows}, K / 32 = {k // 32}), got {tuple(s.shape)}")
    if not isinstance(backend, str) or backend not in ("auto", "cuda", "torch"):
        raise ValueError(f"backend={backend!r} is not supported; supported: 'auto', 'cuda', 'torch'")
    if backend == "torch":
        resolved = "torch"
    else:
        ok, why = mx_gemm_sm100_available(dev)
        if ok:
            why = _cuda_shape_problem(a_data, b_data, fmt, out_dtype, n) or ""
            ok = not why
        if backend == "cuda" and not ok:
            raise RuntimeError(f"mx_gemm: backend 'cuda' is not available: {why}")
        resolved = "cuda" if ok else "torch"
    return torch.ops.shared_kernels.mx_gemm(a_data, a_scales, b_data, b_scales, fmt, out_dtype, resolved)


# One row per output type (bf16, fp32). On sm80/89/90a the symbols are CUTLASS's arch-guard stubs
# (no MMA, nothing expected; the op refuses those devices).
CUDA_SPECS = [
    CudaKernelSpec(
        name="mx_gemm_sm100 MXFP4xMXFP4 (CUTLASS tcgen05.mma kind::mxf4 block_scale)",
        match="SM100_MMA_MXF4_SS",
        expect={100: ("tcgen05",)},
    ),
    CudaKernelSpec(
        name="mx_gemm_sm100 MXFP8xMXFP8 (CUTLASS tcgen05.mma kind::mxf8f6f4 block_scale)",
        match="SM100_MMA_MXF8F6F4_SS",
        expect={100: ("tcgen05",)},
    ),
]
