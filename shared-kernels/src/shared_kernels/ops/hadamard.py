"""Walsh-Hadamard transform over groups of the last dimension as a torch custom op, and the
random ±1 signs of a randomized Hadamard transform (QuaRot, TetraJet-v2)."""

from __future__ import annotations

import functools
import math

import torch

from .. import _alloc, _backend, _lib, _validate
from ..kernel_specs import CudaKernelSpec, TritonKernelSpec
from ..reference import hadamard as _ref

__all__ = ["hadamard_transform", "random_hadamard_signs"]

_OP = "hadamard_transform"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
BLOCK_SIZES = (16, 32, 64, 128)

_backend.register_op(
    _OP,
    backends=("torch", "cpu", "cuda", "triton"),
    summary="Walsh-Hadamard transform (Sylvester order) over groups of 16/32/64/128 of the last dim",
)


def _signs_f32(signs: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if signs is None else signs.to(device=device, dtype=torch.float32).contiguous()


def _run_native(
    x: torch.Tensor, block_size: int, signs: torch.Tensor | None, normalize: bool, force_scalar: bool = False
) -> torch.Tensor:
    """The compiled CPU or CUDA kernel for ``x``'s device; ``force_scalar`` skips the CPU's AVX-512
    path (tests compare both)."""
    y = _alloc.new_empty(x.shape, x.dtype, x.device)
    s = _signs_f32(signs, x.device)
    if x.numel():
        _lib.launch(
            "hadamard_transform", x,
            _lib.ptr(x), _lib.ptr(y), _lib.ptr(s), x.numel() // block_size, block_size,
            _DTYPE_CODE[x.dtype], normalize,
            force_scalar=force_scalar,
        )  # fmt: skip
    return y


@functools.lru_cache(maxsize=32)
def _cached_matrix(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _ref.hadamard_matrix(n, dtype, device)


def _run_triton(x, block_size, signs, normalize):
    from ..triton_kernels import hadamard as tk

    y = _alloc.new_empty(x.shape, x.dtype, x.device)
    m = _cached_matrix(block_size, x.dtype, x.device)
    if signs is not None:  # M = diag(s) · H, still exactly ±1 in x's dtype
        m = (signs.to(device=x.device, dtype=x.dtype)[:, None] * m).contiguous()
    scale = 1.0 / math.sqrt(block_size) if normalize else 1.0
    if x.numel():
        tk.launch(x, m, y, x.numel() // block_size, block_size, scale, _backend.triton_interpreter())
    return y


@torch.library.custom_op("shared_kernels::hadamard_transform", mutates_args=())
def _hadamard_transform_op(
    x: torch.Tensor, block_size: int, signs: torch.Tensor | None, normalize: bool, backend: str
) -> torch.Tensor:
    if backend in ("cpu", "cuda"):
        return _run_native(x, block_size, signs, normalize)
    if backend == "triton":
        return _run_triton(x, block_size, signs, normalize)
    return _ref.hadamard_transform(x, block_size, signs=signs, normalize=normalize)


@_hadamard_transform_op.register_fake
def _(x, block_size, signs, normalize, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def hadamard_transform(
    x: torch.Tensor,
    block_size: int = 128,
    *,
    signs: torch.Tensor | None = None,
    normalize: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Walsh-Hadamard transform of ``x [..., D]`` in independent groups of ``block_size`` along D.

    Per group ``y_g = c · H_n · (s ⊙ x_g)`` with the Sylvester Hadamard matrix
    (``H_1 = [1]``, ``H_2n = [[H, H], [H, -H]]``), ``n = block_size`` in {16, 32, 64, 128}, optional
    ±1 ``signs`` of length n (float32 or x's dtype) and ``c = 1/sqrt(n)`` if ``normalize`` else 1.
    Normalized without signs the transform is orthonormal and its own inverse; with signs the
    inverse is ``s ⊙ (c · H · y)``. Computed in float32, returned in x's dtype (D divisible by n).

    Cost: ``n·log2(n)`` adds per group (butterfly; ``2·n²`` FLOPs per group on the Triton matmul
    path); bytes moved ``2·|x|``.
    """
    _validate.check_tensor("x", x, dtypes=_DTYPES, min_ndim=1, contiguous=True)
    block_size = _validate.check_int("block_size", block_size, allowed=BLOCK_SIZES)
    normalize = _validate.check_bool("normalize", normalize)
    if x.shape[-1] % block_size:
        raise ValueError(
            f"x's last dimension ({x.shape[-1]}) must be divisible by block_size={block_size}; "
            "pad it or choose another block_size"
        )
    if signs is not None:
        _validate.check_tensor("signs", signs, dtypes=(torch.float32, x.dtype), ndim=1, device=x.device)
        if signs.shape[0] != block_size:
            raise ValueError(f"signs must have block_size={block_size} entries, got {signs.shape[0]}")
        if not torch.compiler.is_compiling() and not bool((signs.abs() == 1).all()):
            raise ValueError("signs must hold only +1 and -1")
    resolved = _backend.resolve_backend(_OP, backend, x.device)
    return torch.ops.shared_kernels.hadamard_transform(x, block_size, signs, normalize, resolved)


def random_hadamard_signs(
    block_size: int, seed: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Random ±1 signs of length ``block_size`` for a randomized Hadamard transform, drawn with a
    CPU ``torch.Generator`` seeded by ``seed`` (the same signs on every device)."""
    block_size = _validate.check_int("block_size", block_size, minimum=1)
    seed = _validate.check_int("seed", seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    bits = torch.randint(0, 2, (block_size,), generator=g)
    return (bits * 2 - 1).to(dtype=dtype, device=device)


def _triton_kernel():
    from ..triton_kernels.hadamard import hadamard_dot_kernel

    return hadamard_dot_kernel


_TC = {80: ("mma",), 89: ("mma",), 90: ("wgmma",), 100: ("tcgen05",)}

TRITON_SPECS = [
    TritonKernelSpec(
        name="hadamard_dot_fp16_n128",
        fn=_triton_kernel,
        signature={"x_ptr": "*fp16", "m_ptr": "*fp16", "y_ptr": "*fp16", "G": "i32", "scale": "fp32"},
        constexprs={"BLOCK_M": 64, "BLOCK_K": 128, "N": 128, "IEEE": False, "UPCAST": False},
        expect=_TC,
        divisible_by_16=("x_ptr", "m_ptr", "y_ptr"),
        num_warps=4,
        num_stages=1,
    ),
    TritonKernelSpec(  # fp32 inputs: exact ieee products on CUDA cores (the tile the launcher uses)
        name="hadamard_dot_fp32_ieee_n128",
        fn=_triton_kernel,
        signature={"x_ptr": "*fp32", "m_ptr": "*fp32", "y_ptr": "*fp32", "G": "i32", "scale": "fp32"},
        constexprs={"BLOCK_M": 32, "BLOCK_K": 16, "N": 128, "IEEE": True, "UPCAST": False},
        expect={80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)},
        divisible_by_16=("x_ptr", "m_ptr", "y_ptr"),
        num_warps=4,
        num_stages=1,
    ),
]

CUDA_SPECS = [
    CudaKernelSpec(
        name="hadamard_butterfly",
        match="sk_hadamard_butterfly_kernel",
        expect={80: ("none",), 89: ("none",), 90: ("none",), 100: ("none",)},
    ),
]
