"""``capabilities()``: what this installation of shared-kernels holds."""

from __future__ import annotations

import platform
from typing import Any

import torch

from . import _backend, _lib


def capabilities() -> dict[str, Any]:
    """Report CPU ISA paths, compiled CUDA archs, CUTLASS version and, per op, which backends exist.

    For each op and backend the report says whether it is usable here and, if not, why.
    """
    from . import __version__

    C = _lib._C
    cpu: dict[str, Any] = {"machine": platform.machine(), "compiled": C is not None}
    if C is not None:
        cpu.update(C.cpu_features())
        cpu["openmp"] = bool(C.openmp)
        cpu["threads"] = int(C.num_threads())
        cpu["isa_paths"] = ["scalar"] + (["avx512"] if cpu["avx512_compiled"] else [])
    cuda = {
        "compiled": _lib.cuda_compiled(),
        "archs": [a for a in (C.cuda_archs.split(",") if C is not None and C.cuda_archs else []) if a],
        "cuda_version": C.cuda_version if C is not None else "",
        "cutlass_version": C.cutlass_version if C is not None else "",
        "runtime_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    tri_ok, tri_why = _backend.triton_available()
    triton_info: dict[str, Any] = {"available": tri_ok, "interpreter": _backend.triton_interpreter()}
    if tri_ok:
        import triton

        triton_info["version"] = triton.__version__
    else:
        triton_info["reason"] = tri_why
    ops: dict[str, Any] = {}
    for name, info in sorted(_backend.registered_ops().items()):
        entry: dict[str, Any] = {}
        for b in info.backends:
            dev = "cuda" if b in ("cuda", "triton") else "cpu"
            ok, why = _backend.backend_status(b, dev)
            if ok and not torch.cuda.is_available():
                if b == "cuda":
                    ok, why = False, "compiled, but no CUDA GPU is present"
                elif b == "triton" and not _backend.triton_interpreter():
                    ok, why = False, "no CUDA GPU is present (set TRITON_INTERPRET=1 to run it on the CPU)"
            entry[b] = {"usable": ok} if ok else {"usable": False, "reason": why}
        ops[name] = {"summary": info.summary, "backends": entry}
    return {
        "version": __version__,
        "torch": torch.__version__,
        "native_import_error": None if C is not None else repr(_lib._IMPORT_ERROR),
        "cpu": cpu,
        "cuda": cuda,
        "triton": triton_info,
        "ops": ops,
    }
