"""Declarations read by ``tools/kernel_report``: which kernels exist and which tensor-core
instruction families each must use on each architecture.

Every package that ships GPU kernels exposes a module ``<import_name>.kernel_specs`` with two lists,
``TRITON_KERNELS`` (AOT-compiled by the report for each arch) and ``CUDA_KERNELS`` (matched by name
against the cubins inside the compiled module). Instruction families:

- ``"mma"``: warp-level ``mma.sync`` (SASS ``HMMA``/``IMMA``/``QMMA``), sm80+;
- ``"wgmma"``: Hopper warpgroup MMA (SASS ``HGMMA``/``IGMMA``/``QGMMA``), sm90a;
- ``"tcgen05"``: Blackwell 5th-gen tensor cores (SASS ``UTC*MMA``), sm100a;
- ``"none"``: the kernel is expected to use no tensor-core instruction (memory-bound kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FAMILIES = ("mma", "wgmma", "tcgen05", "none")
ARCHS = (80, 89, 90, 100)


@dataclass(frozen=True)
class TritonKernelSpec:
    """One AOT compilation of a ``@triton.jit`` kernel.

    ``signature`` maps every non-constexpr argument to a Triton type string ("*fp16", "i32", ...);
    ``constexprs`` gives every ``tl.constexpr`` argument its value; ``divisible_by_16`` lists the
    pointer/int arguments the autotuner would see as multiples of 16. ``expect`` maps an arch to the
    families that must appear; an arch missing from ``expect`` is compiled but not checked.
    """

    name: str
    fn: Callable[[], object]  # returns the @triton.jit function (imported lazily)
    signature: dict[str, str]
    constexprs: dict[str, object]
    expect: dict[int, tuple[str, ...]]
    divisible_by_16: tuple[str, ...] = ()
    num_warps: int = 4
    num_stages: int = 3
    archs: tuple[int, ...] = ARCHS


@dataclass(frozen=True)
class CudaKernelSpec:
    """Kernels of the compiled module whose mangled or demangled name contains ``match``."""

    name: str
    match: str
    expect: dict[int, tuple[str, ...]] = field(default_factory=dict)
    max_spill_bytes: int = 0


def _collect(attr: str) -> list:
    """Gather ``attr`` (``TRITON_SPECS`` or ``CUDA_SPECS``) from every ``shared_kernels.ops`` module."""
    import importlib
    import pkgutil

    from . import ops

    out: list = []
    for m in sorted(pkgutil.iter_modules(ops.__path__), key=lambda m: m.name):
        out.extend(getattr(importlib.import_module(f"{ops.__name__}.{m.name}"), attr, ()))
    return out


def __getattr__(name: str):
    if name == "TRITON_KERNELS":
        return _collect("TRITON_SPECS")
    if name == "CUDA_KERNELS":
        return _collect("CUDA_SPECS")
    raise AttributeError(name)
