"""Backend registry and selection.

Every op declares the backends it implements. ``backend="auto"`` picks the fastest one available for
the tensors' device; an explicit backend that is missing raises and says why. All backends of one op
compute the same maths (the compiled and Triton kernels are tested bit-exact or within a stated
tolerance against the reference), so ``auto`` never changes what the caller asked for.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch

from . import _lib

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")


@dataclass
class OpInfo:
    name: str
    backends: tuple[str, ...]
    summary: str = ""
    extra: dict = field(default_factory=dict)


_OPS: dict[str, OpInfo] = {}


def register_op(name: str, backends: tuple[str, ...], summary: str = "") -> OpInfo:
    bad = [b for b in backends if b not in BACKENDS or b == "auto"]
    if bad:
        raise ValueError(f"unknown backends {bad} for op {name}")
    info = OpInfo(name, tuple(backends), summary)
    _OPS[name] = info
    return info


def registered_ops() -> dict[str, OpInfo]:
    return dict(_OPS)


@functools.cache
def triton_available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton missing
        return False, f"triton is not importable ({exc!r})"
    return True, ""


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_status(backend: str, device_type: str) -> tuple[bool, str]:
    """(available, reason-if-not) of ``backend`` for tensors on ``device_type``."""
    if backend == "torch":
        return True, ""
    if backend == "cpu":
        if device_type != "cpu":
            return False, f"backend 'cpu' runs on CPU tensors, these are on {device_type}"
        if not _lib.native_available():
            return False, f"the compiled module is missing ({_lib._IMPORT_ERROR!r})"
        return True, ""
    if backend == "cuda":
        if device_type != "cuda":
            return False, f"backend 'cuda' runs on CUDA tensors, these are on {device_type}"
        if not _lib.native_available():
            return False, f"the compiled module is missing ({_lib._IMPORT_ERROR!r})"
        if not _lib.cuda_compiled():
            return (
                False,
                "this shared-kernels build has no CUDA code (built without nvcc or with SHARED_KERNELS_CUDA=OFF)",
            )
        return True, ""
    if backend == "triton":
        ok, why = triton_available()
        if not ok:
            return False, why
        if device_type == "cuda" or triton_interpreter():
            return True, ""
        return False, "Triton kernels run on CUDA tensors (or on the CPU with TRITON_INTERPRET=1)"
    raise ValueError(f"unknown backend {backend!r}")


_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}


def resolve_backend(op: str, backend: object, device: torch.device) -> str:
    """Validate ``backend`` for ``op`` on ``device`` and return the concrete backend to run."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; supported: {', '.join(map(repr, BACKENDS))}")
    info = _OPS[op]
    if backend == "auto":
        for cand in _AUTO_ORDER.get(device.type, ("torch",)):
            if cand in info.backends and backend_status(cand, device.type)[0]:
                return cand
        return "torch"
    if backend not in info.backends:
        raise ValueError(f"{op} has no {backend!r} backend; it has: {', '.join(info.backends)}")
    ok, why = backend_status(backend, device.type)
    if not ok:
        raise RuntimeError(f"{op}: backend {backend!r} is not available: {why}")
    return backend
