"""Loading of the compiled module and small helpers to call it with raw pointers."""

from __future__ import annotations

import torch

try:
    from . import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _C = None
    _IMPORT_ERROR = exc


def native():
    """The compiled module, or a clear error saying why it is missing."""
    if _C is None:
        raise RuntimeError(
            "shared_kernels._C (the compiled CPU/CUDA kernels) is not importable: "
            f"{_IMPORT_ERROR!r}. Reinstall shared-kernels (pip install ./shared-kernels or uv sync), "
            "or use backend='torch'."
        )
    return _C


def native_available() -> bool:
    return _C is not None


def cuda_compiled() -> bool:
    return _C is not None and bool(_C.cuda_compiled)


def cuda_runtime_available() -> bool:
    return torch.cuda.is_available()


def stream_of(t: torch.Tensor) -> int:
    """The current CUDA stream of ``t``'s device as an integer handle (0 for CPU tensors)."""
    if t.device.type != "cuda":
        return 0
    return int(torch.cuda.current_stream(t.device).cuda_stream)


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


def launch(kernel: str, like: torch.Tensor, *args, force_scalar: bool = False) -> None:
    """Call the compiled entry point ``<kernel>_cpu`` or ``<kernel>_cuda`` for ``like``'s device with
    ``args``: the CUDA one also gets the current stream; the CPU one gets ``force_scalar=True`` only
    when asked (it then skips its AVX-512 path; tests compare both paths)."""
    mod = native()
    if like.device.type == "cuda":
        getattr(mod, f"{kernel}_cuda")(*args, stream_of(like))
    elif force_scalar:
        getattr(mod, f"{kernel}_cpu")(*args, force_scalar=True)
    else:
        getattr(mod, f"{kernel}_cpu")(*args)
