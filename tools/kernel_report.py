"""Static kernel report: tensor-core instruction families, registers, spills and shared memory of every
GPU kernel.

    python tools/kernel_report.py                         # every declared kernel, sm80/89/90/100
    python tools/kernel_report.py --arch 90 100 --only attn
    python tools/kernel_report.py --json out/kr.json --markdown out/kr.md --require-cuda
    python tools/kernel_report.py --spec-module tools/tests/report_kernels.py --no-discover

Triton kernels (``TritonKernelSpec``) are compiled ahead of time with ``triton.compile`` for each
arch (cc 90 compiles as sm_90a, cc 100 as sm_100a); CUDA kernels (``CudaKernelSpec``) are looked
up by name in the cubins inside ``shared_kernels._C``. Both are inspected with ``cuobjdump``:
``-sass`` gives the instruction families (HMMA/IMMA/QMMA/OMMA/DMMA -> mma, HGMMA/IGMMA/QGMMA ->
wgmma, UTC*MMA -> tcgen05; Triton's PTX is checked too) and the spill bytes (bytes moved by the
LDL/STL instructions, loads + stores: the figure ``ptxas -v`` prints as spill loads/stores),
``-res-usage`` the registers, stack and static shared memory. No GPU is needed.

Shared memory (column ``smem B``): a Triton row reports ``CompiledKernel.metadata.shared``, the
bytes of dynamic shared memory Triton requests for every launch (Triton kernels have no static
shared memory); the row fails when it exceeds the opt-in per-block maximum of its arch class
(``SMEM_LIMITS``; a spec cannot raise it). A CUDA row reports the *static* shared memory of the
function (``SHARED`` of ``cuobjdump -res-usage``, shown as ``N+dyn``): dynamic shared memory is
set at launch by the host code and cannot be checked statically, so a CUDA row is only checked
on its static part.

Specs come from ``shared_kernels.kernel_specs``, every ``<import>.kernel_specs`` module of
``packages/*/src/<import>/`` and each ``--spec-module`` (a dotted name or a .py path). The exit
status is 1 when a kernel lacks an expected family, uses one where "none" is declared, spills more
than allowed, needs more shared memory per block than its arch allows, fails to compile or is not
found in a built cubin; CUDA rows of a CPU-only build
say "not built" and fail only with ``--require-cuda``. Kernels found in the cubins that no spec
covers are listed for information. Triton's cache (``~/.triton/cache``) makes reruns fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, SHARED_KERNELS_DIR, ToolError, load_packages, run_main

ARCHS = (80, 89, 90, 100)
FAMILIES = ("mma", "wgmma", "tcgen05", "none")

# Opt-in maximum of shared memory per thread block (cudaDevAttrMaxSharedMemoryPerBlockOptin), bytes,
# per reported arch class. Sources: CUDA C++ Programming Guide, "Compute Capabilities" appendix
# (table "Technical Specifications per Compute Capability", row "Maximum amount of shared memory per
# thread block"; section "Shared Memory" of cc 8.x: "Devices of compute capability 8.0 and 8.7 allow
# a single thread block to address up to 163 KB of shared memory, while devices of compute
# capabilities 8.6 and 8.9 allow up to 99 KB"; of cc 12.0: "up to 99 KB"); Hopper Tuning Guide
# 1.4.1.1 (H100, cc 9.0: 227 KB per thread block of the 228 KB per SM) and Blackwell Tuning Guide
# 1.4.1.1 (cc 10.0: 227 KB; cc 12.0: 99 KB). The 1 KB between the SM's capacity and the per-block
# maximum is reserved for system use. The sm89 cubins also serve sm86 and sm12x (same 99 KB).
KB = 1024
SMEM_LIMITS = {80: 163 * KB, 89: 99 * KB, 90: 227 * KB, 100: 227 * KB}
SMEM_CLASS = {
    80: "sm80/sm87 (A100)",
    89: "sm86/sm89/sm12x (RTX 30xx/40xx/50xx, L4, L40)",
    90: "sm90 (H100/H200)",
    100: "sm100 (B200/GB200)",
}

# --------------------------------------------------------------------------------------------------
# Parsing of cuobjdump and PTX text

_SASS_FAMILY = {
    **dict.fromkeys(("HMMA", "IMMA", "QMMA", "OMMA", "DMMA", "BMMA"), "mma"),
    **dict.fromkeys(("HGMMA", "IGMMA", "QGMMA", "BGMMA"), "wgmma"),
}
_UTC_MMA = re.compile(r"^UTC\w*MMA$")
_SASS_INSTR = re.compile(r"^\s*/\*[0-9a-fA-F]+\*/\s+(?:@!?\w+\s+)?([A-Z][A-Z0-9_]*(?:\.\w+)*)")
_SASS_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_SASS_ARCH = re.compile(r"^\s*(?:code for|arch =)\s*(sm_\w+)")
_RES_FUNC = re.compile(r"^\s*Function\s+(\S+?):\s*$")
_RES_ARCH = re.compile(r"^\s*arch\s*=\s*(sm_\w+)")
_RES_FIELD = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")
_PTX_INSTR = re.compile(r"^\s*(?:@!?%?\w+\s+)?([a-z][\w.:]*)")
_LOCAL_WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}


def sass_family(opcode: str) -> str | None:
    """Tensor-core family of one SASS opcode (``"HGMMA.64x128x16.F32"`` -> ``"wgmma"``), else None."""
    base = opcode.split(".", 1)[0]
    if base in _SASS_FAMILY:
        return _SASS_FAMILY[base]
    if _UTC_MMA.match(base):
        return "tcgen05"
    return None


def local_access_bytes(opcode: str) -> int:
    """Bytes moved by one LDL/STL instruction (0 for any other opcode)."""
    parts = opcode.split(".")
    if parts[0] not in ("LDL", "STL"):
        return 0
    for mod in parts[1:]:
        if mod in _LOCAL_WIDTH:
            return _LOCAL_WIDTH[mod]
    return 4


def ptx_families(ptx: str) -> set[str]:
    """Families of the tensor-core instructions in PTX text."""
    out = set()
    for line in ptx.splitlines():
        m = _PTX_INSTR.match(line.split("//", 1)[0])
        if not m:
            continue
        ins = m.group(1)
        if ins.startswith("wgmma.mma_async"):
            out.add("wgmma")
        elif ins.startswith("tcgen05.mma"):
            out.add("tcgen05")
        elif ins.startswith(("mma.", "wmma.mma")):
            out.add("mma")
    return out


@dataclass
class SassFunction:
    families: set[str] = field(default_factory=set)
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    instructions: int = 0

    @property
    def spill_bytes(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes


def parse_sass(text: str, arch: str | None = None) -> dict[tuple[str, str], SassFunction]:
    """``cuobjdump -sass`` text -> ``{(arch, function): SassFunction}``.

    The arch comes from the ``arch = sm_XX`` / ``code for sm_XX`` headers (``arch`` if there are
    none). A function that appears in several cubins of one arch (one per translation unit) is merged.
    """
    out: dict[tuple[str, str], SassFunction] = {}
    cur: SassFunction | None = None
    for line in text.splitlines():
        m = _SASS_ARCH.match(line)
        if m:
            arch, cur = m.group(1), None
            continue
        m = _SASS_FUNC.match(line)
        if m:
            cur = out.setdefault((arch or "?", m.group(1)), SassFunction())
            continue
        if cur is None:
            continue
        m = _SASS_INSTR.match(line)
        if not m:
            continue
        op = m.group(1)
        cur.instructions += 1
        fam = sass_family(op)
        if fam:
            cur.families.add(fam)
        nbytes = local_access_bytes(op)
        if op.startswith("STL"):
            cur.spill_store_bytes += nbytes
        else:
            cur.spill_load_bytes += nbytes
    return out


def parse_res_usage(text: str, arch: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """``cuobjdump -res-usage`` text -> ``{(arch, function): {"REG": .., "STACK": .., ...}}``."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    func: str | None = None
    for line in text.splitlines():
        m = _RES_ARCH.match(line)
        if m:
            arch, func = m.group(1), None
            continue
        m = _RES_FUNC.match(line)
        if m:
            func = m.group(1)
            continue
        if func is not None and "REG:" in line:
            fields = {k: int(v) for k, v in _RES_FIELD.findall(line)}
            prev = out.get((arch or "?", func))
            out[(arch or "?", func)] = (
                fields if prev is None else {k: max(v, prev.get(k, 0)) for k, v in fields.items()}
            )
            func = None
    return out


def arch_number(arch: str | int) -> int:
    """``"sm_90a"``, ``"90a"``, ``90`` -> 90."""
    m = re.fullmatch(r"(?:sm_)?(\d+)[a-z]?", str(arch))
    if not m:
        raise ToolError(f"not an architecture: {arch!r} (use e.g. 80, 89, 90, 100)")
    return int(m.group(1))


def smem_limit(arch: str | int) -> int:
    """Opt-in per-block shared-memory maximum (bytes) of a reported arch: ``"sm_89"`` -> 101376."""
    n = arch_number(arch)
    if n not in SMEM_LIMITS:
        raise ToolError(f"no shared-memory limit for {arch!r}: the report knows {sorted(SMEM_LIMITS)}")
    return SMEM_LIMITS[n]


def smem_error(kernel: str, arch: str, nbytes: int | None) -> str | None:
    """Why ``kernel`` cannot launch on ``arch`` for its shared memory, or None when it fits.

    ``nbytes`` is the shared memory one block needs; None (unknown) is an error, not a pass.
    """
    limit = smem_limit(arch)
    cls = SMEM_CLASS[arch_number(arch)]
    if nbytes is None:
        return (
            f"{kernel} on {arch}: shared memory per block unknown (the {limit} B limit of {cls} is unchecked)"
        )
    if nbytes > limit:
        return (
            f"{kernel} on {arch}: {nbytes} B of shared memory per block ({nbytes / KB:.1f} KB) exceeds the "
            f"{limit} B ({limit // KB} KB) opt-in maximum of {cls}"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Tools


def find_cuobjdump() -> str:
    """``$CUOBJDUMP``, the cuobjdump bundled with triton, or the one on PATH."""
    env = os.environ.get("CUOBJDUMP")
    if env:
        return env
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        cand = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("cuobjdump")
    if found:
        return found
    raise ToolError(
        "cuobjdump not found: install triton (it bundles one) or nvidia-cuda-cuobjdump, "
        "or set CUOBJDUMP=/path/to/cuobjdump"
    )


def cuobjdump(tool: str, args: list[str], path: str) -> str:
    """stdout of ``cuobjdump <args> <path>``; empty text when the file holds no device code."""
    proc = subprocess.run([tool, *args, path], capture_output=True, text=True)
    if proc.returncode != 0:
        if "does not contain device code" in proc.stdout + proc.stderr:
            return ""
        raise ToolError(f"`cuobjdump {' '.join(args)} {path}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def demangle(names: Iterable[str]) -> dict[str, str]:
    """Mangled -> demangled names via ``c++filt`` (identity where it is missing)."""
    names = sorted(set(names))
    exe = shutil.which("c++filt")
    if not names or not exe:
        return {n: n for n in names}
    proc = subprocess.run([exe], input="\n".join(names) + "\n", capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(names):
        return {n: n for n in names}
    return dict(zip(names, lines, strict=True))


# --------------------------------------------------------------------------------------------------
# Report rows


@dataclass
class Row:
    kernel: str
    kind: str  # "triton" | "cuda"
    arch: str  # "sm_90a"; "-" when not built
    families: list[str] = field(default_factory=list)
    regs: int | None = None
    spill_bytes: int | None = None
    expected: list[str] | None = None  # None: not checked on this arch
    status: str = "ok"
    failed: bool = False
    details: dict = field(default_factory=dict)
    smem_bytes: int | None = None  # Triton: all of it (dynamic); CUDA: the static part only

    def smem_cell(self) -> str:
        if self.smem_bytes is None:
            return "-"
        return f"{self.smem_bytes}+dyn" if self.kind == "cuda" else str(self.smem_bytes)

    def cells(self) -> list[str]:
        return [
            self.kernel,
            self.kind,
            self.arch,
            ",".join(self.families) or "-",
            "-" if self.regs is None else str(self.regs),
            "-" if self.spill_bytes is None else str(self.spill_bytes),
            self.smem_cell(),
            ",".join(self.expected) if self.expected else "-",
            self.status,
        ]


HEADER = ["kernel", "kind", "arch", "families", "regs", "spill B", "smem B", "expected", "status"]


def judge(
    found: set[str],
    expected: tuple[str, ...] | None,
    spill: int,
    max_spill: int,
    smem: int | None = None,
    max_smem: int | None = None,
) -> tuple[str, bool]:
    """Status text and whether it is a failure. ``smem`` is checked only when ``max_smem`` is given
    (then an unknown ``smem`` fails too)."""
    problems = []
    if expected:
        if "none" in expected:
            problems += [f"UNEXPECTED {f}" for f in sorted(found)]
        else:
            problems += [f"MISSING {f}" for f in expected if f not in found]
    if spill > max_spill:
        problems.append("SPILLS")
    if max_smem is not None:
        if smem is None:
            problems.append("SMEM UNKNOWN")
        elif smem > max_smem:
            problems.append(f"SMEM {smem} > {max_smem} B")
    return (", ".join(problems), True) if problems else ("ok", False)


# --------------------------------------------------------------------------------------------------
# Discovery


@dataclass
class Specs:
    triton: list = field(default_factory=list)
    cuda: list = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def _import_spec_module(ref: str):
    if ref.endswith(".py") or "/" in ref or os.sep in ref:
        path = Path(ref).resolve()
        if not path.is_file():
            raise ToolError(f"--spec-module {ref}: no such file")
        # Import it under its own name with its folder on sys.path, so sibling imports work.
        loaded = sys.modules.get(path.stem)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
            raise ToolError(
                f"--spec-module {ref}: a different module named {path.stem!r} is already imported"
            )
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        ref = path.stem
    try:
        return importlib.import_module(ref)
    except Exception as exc:
        raise ToolError(f"cannot import spec module {ref}: {type(exc).__name__}: {exc}") from exc


def discover_modules(root: Path) -> list[str]:
    """``shared_kernels.kernel_specs`` and each ``<import>.kernel_specs`` present under packages/."""
    refs = ["shared_kernels.kernel_specs"]
    for pkg in load_packages(root):
        if pkg.path == SHARED_KERNELS_DIR:
            continue
        base = root / pkg.path / "src" / pkg.import_name
        if (base / "kernel_specs.py").is_file() or (base / "kernel_specs" / "__init__.py").is_file():
            refs.append(f"{pkg.import_name}.kernel_specs")
    return refs


def load_specs(refs: list[str]) -> Specs:
    from shared_kernels.kernel_specs import CudaKernelSpec, TritonKernelSpec

    out = Specs()
    seen: dict[tuple[str, str], str] = {}
    for ref in refs:
        module = _import_spec_module(ref)
        for wrong, right in (("TRITON_SPECS", "TRITON_KERNELS"), ("CUDA_SPECS", "CUDA_KERNELS")):
            if hasattr(module, wrong) and not hasattr(module, right):
                raise ToolError(f"{ref} defines {wrong}; a kernel_specs module exposes {right}")
        try:
            triton_specs = list(getattr(module, "TRITON_KERNELS", ()))
            cuda_specs = list(getattr(module, "CUDA_KERNELS", ()))
        except Exception as exc:  # kernel_specs collects lazily from the ops modules
            raise ToolError(f"cannot read the specs of {ref}: {type(exc).__name__}: {exc}") from exc
        for kind, specs, cls in (
            ("triton", triton_specs, TritonKernelSpec),
            ("cuda", cuda_specs, CudaKernelSpec),
        ):
            for s in specs:
                if not isinstance(s, cls):
                    raise ToolError(f"{ref}: {s!r} in its {kind} list is not a {cls.__name__}")
                for arch, fams in s.expect.items():
                    if arch not in ARCHS or not set(fams) <= set(FAMILIES) or not fams:
                        raise ToolError(
                            f"{ref}: spec {s.name!r} expects {fams!r} on {arch!r}; archs are {ARCHS}, "
                            f"families {FAMILIES}"
                        )
                if (kind, s.name) in seen:
                    raise ToolError(
                        f"spec name {s.name!r} is declared twice ({seen[kind, s.name]} and {ref})"
                    )
                seen[kind, s.name] = ref
        out.triton += triton_specs
        out.cuda += cuda_specs
        out.sources.append(ref)
    return out


# --------------------------------------------------------------------------------------------------
# Triton


def triton_compile(spec, cc: int):
    """AOT-compile one spec for compute capability ``cc`` (no GPU needed). Returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec.fn()
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise ToolError(
            f"{spec.name}: fn() returned {type(fn).__name__}, not a @triton.jit function "
            "(was the kernel module imported with TRITON_INTERPRET=1? run the report without it)"
        )
    names = list(fn.arg_names)
    unknown = (set(spec.signature) | set(spec.constexprs)) - set(names)
    if unknown:
        raise ToolError(f"{spec.name}: {sorted(unknown)} are not arguments of {fn.__name__}{tuple(names)}")
    sig = {}
    for n in names:
        if n in spec.constexprs:
            sig[n] = "constexpr"
        elif n in spec.signature:
            sig[n] = spec.signature[n]
        else:
            raise ToolError(
                f"{spec.name}: argument {n!r} has no type in signature and no value in constexprs"
            )
    bad = [n for n in spec.divisible_by_16 if n not in spec.signature]
    if bad:
        raise ToolError(f"{spec.name}: divisible_by_16 names {bad}, which are not typed arguments")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.divisible_by_16}
    src = ASTSource(fn=fn, signature=sig, constexprs=dict(spec.constexprs), attrs=attrs)
    return triton.compile(
        src,
        target=GPUTarget("cuda", cc, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )


def triton_rows(specs: list, archs: list[int], tool: str, log) -> list[Row]:
    rows = []
    for spec in specs:
        for cc in [a for a in archs if a in spec.archs]:
            expected = list(spec.expect.get(cc, ())) or None
            t0 = time.perf_counter()
            captured = io.StringIO()
            try:
                with contextlib.redirect_stdout(captured):  # ptxas failures print the whole PTX
                    k = triton_compile(spec, cc)
            except ToolError:
                raise
            except Exception as exc:
                first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                details = {"error": str(exc), "log": captured.getvalue()}
                rows.append(
                    Row(
                        spec.name,
                        "triton",
                        f"cc{cc}",
                        expected=expected,
                        details=details,
                        status=f"COMPILE ERROR: {first[:120]}",
                        failed=True,
                    )
                )
                log(f"  {spec.name} cc{cc}: compile error: {first}")
                continue
            secs = time.perf_counter() - t0
            ptx, name = k.asm["ptx"], k.metadata.name
            m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.MULTILINE)
            arch = m.group(1) if m else f"sm_{cc}"
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, f"{name}.cubin")
                with open(path, "wb") as fh:
                    fh.write(k.asm["cubin"])
                sass = parse_sass(cuobjdump(tool, ["-sass"], path), arch)
                res = parse_res_usage(cuobjdump(tool, ["-res-usage"], path), arch)
            sf = sass.get((arch, name)) or next(iter(sass.values()), SassFunction())
            ru = res.get((arch, name)) or next(iter(res.values()), {})
            pfam = ptx_families(ptx)
            found = pfam | sf.families
            smem = getattr(k.metadata, "shared", None)
            status, failed = judge(found, expected, sf.spill_bytes, 0, smem, smem_limit(arch))
            if cc >= 90 and not arch.endswith("a"):  # wgmma / tcgen05 need the arch-specific target
                status = f"TARGET {arch} (want {arch}a)" + ("" if status == "ok" else f", {status}")
                failed = True
            details = {
                "function": name,
                "ptx_families": sorted(pfam),
                "sass_families": sorted(sf.families),
                "spill_store_bytes": sf.spill_store_bytes,
                "spill_load_bytes": sf.spill_load_bytes,
                "stack_bytes": ru.get("STACK"),
                "shared_bytes": smem,
                "smem_limit_bytes": smem_limit(arch),
                "smem_error": smem_error(spec.name, arch, smem),
                "num_warps": spec.num_warps,
                "num_stages": spec.num_stages,
                "compile_s": round(secs, 3),
            }
            rows.append(
                Row(
                    spec.name,
                    "triton",
                    arch,
                    sorted(found),
                    ru.get("REG"),
                    sf.spill_bytes,
                    expected,
                    status,
                    failed,
                    details,
                    smem,
                )
            )
            log(f"  {spec.name} {arch}: {status} ({secs:.2f} s)")
    return rows


# --------------------------------------------------------------------------------------------------
# CUDA


@dataclass
class CudaBinary:
    path: str | None
    archs: list[str]  # as built: "80", "90a", ...
    reason: str = ""  # why there is no CUDA code, when path is None
    info: dict = field(default_factory=dict)


def shared_kernels_binary() -> CudaBinary:
    """The compiled module of shared-kernels and the archs it was built for."""
    try:
        C = importlib.import_module("shared_kernels._C")
    except Exception as exc:
        return CudaBinary(None, [], f"shared_kernels._C is not importable: {type(exc).__name__}: {exc}")
    info = {
        "module": C.__file__,
        "cuda_version": getattr(C, "cuda_version", ""),
        "cutlass_version": getattr(C, "cutlass_version", ""),
    }
    if not getattr(C, "cuda_compiled", False):
        return CudaBinary(None, [], "shared_kernels._C was built without CUDA (CPU-only build)", info)
    archs = [a.strip() for a in str(C.cuda_archs).replace(";", ",").split(",") if a.strip()]
    return CudaBinary(C.__file__, archs, "", info)


def binary_archs(tool: str, path: str) -> list[str]:
    """Archs of the cubins inside a binary (``cuobjdump -lelf``)."""
    text = cuobjdump(tool, ["-lelf"], path)
    return sorted(
        {m.group(1) for m in re.finditer(r"\bsm_(\w+?)\.cubin", text)}, key=lambda a: (arch_number(a), a)
    )


def cuda_rows(
    specs: list, binary: CudaBinary, archs: list[int], only: str | None, tool: str | None
) -> list[Row]:
    if binary.path is None:
        return [
            Row(s.name, "cuda", "-", status="not built", details={"reason": binary.reason}) for s in specs
        ]
    selected = [a for a in binary.archs if arch_number(a) in archs]
    funcs: dict[str, dict[str, tuple[SassFunction, dict]]] = {}  # name -> "sm_XX" -> (sass, res-usage)
    for a in selected:
        sm = f"sm_{a}"
        sass = parse_sass(cuobjdump(tool, ["-sass", "-arch", sm], binary.path), sm)
        res = parse_res_usage(cuobjdump(tool, ["-res-usage", "-arch", sm], binary.path), sm)
        for arch, name in sass.keys() | res.keys():
            if arch == sm:
                funcs.setdefault(name, {})[sm] = (
                    sass.get((arch, name), SassFunction()),
                    res.get((arch, name), {}),
                )
    pretty = demangle(funcs)
    rows: list[Row] = []
    covered: set[str] = set()
    for spec in specs:
        matched = sorted(n for n in funcs if spec.match in n or spec.match in pretty[n])
        covered.update(matched)
        for a in selected:
            sm = f"sm_{a}"
            expected = list(spec.expect.get(arch_number(a), ())) or None
            here = [n for n in matched if sm in funcs[n]]
            if not here:
                why = (
                    f"no function matches {spec.match!r}"
                    if any(sm in per for per in funcs.values())
                    else f"no {sm} kernels in the binary"
                )
                rows.append(
                    Row(spec.name, "cuda", sm, expected=expected, status=f"NOT FOUND ({why})", failed=True)
                )
                continue
            for n in here:
                sf, ru = funcs[n][sm]
                static = ru.get("SHARED")  # None: no res-usage line; the static part is not checked
                status, failed = judge(
                    sf.families,
                    expected,
                    sf.spill_bytes,
                    spec.max_spill_bytes,
                    static,
                    None if static is None else smem_limit(sm),
                )
                details = {
                    "spec": spec.name,
                    "function": n,
                    "demangled": pretty[n],
                    "stack_bytes": ru.get("STACK"),
                    "static_shared_bytes": static,
                    "smem_limit_bytes": smem_limit(sm),
                    "smem_error": None
                    if static is None
                    else smem_error(f"{spec.name} [{_short(pretty[n])}]", sm, static),
                    "spill_store_bytes": sf.spill_store_bytes,
                    "spill_load_bytes": sf.spill_load_bytes,
                }
                rows.append(
                    Row(
                        f"{spec.name} [{_short(pretty[n])}]",
                        "cuda",
                        sm,
                        sorted(sf.families),
                        ru.get("REG"),
                        sf.spill_bytes,
                        expected,
                        status,
                        failed,
                        details,
                        static,
                    )
                )
    for n in sorted(set(funcs) - covered, key=lambda n: pretty[n]):
        if only and only not in n and only not in pretty[n]:
            continue
        per = funcs[n]
        regs = [ru["REG"] for _, ru in per.values() if "REG" in ru]
        per_arch = {
            a: {
                "families": sorted(sf.families),
                "regs": ru.get("REG"),
                "stack_bytes": ru.get("STACK"),
                "static_shared_bytes": ru.get("SHARED"),
                "spill_bytes": sf.spill_bytes,
            }
            for a, (sf, ru) in per.items()
        }
        shared = [ru["SHARED"] for _, ru in per.values() if "SHARED" in ru]
        rows.append(
            Row(
                _short(pretty[n]),
                "cuda",
                ",".join(sorted(per, key=arch_number)),
                sorted(set().union(*(sf.families for sf, _ in per.values()))),
                max(regs) if regs else None,
                max(sf.spill_bytes for sf, _ in per.values()),
                status="no spec (info)",
                details={"function": n, "demangled": pretty[n], "per_arch": per_arch},
                smem_bytes=max(shared) if shared else None,
            )
        )
    return rows


def _short(name: str, width: int = 60) -> str:
    """A demangled name for the table: no return type, no parameter list, at most ``width`` chars."""
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    name = re.sub(r"^void\s+", "", name)
    name = re.sub(r"(?:\b[A-Za-z_]\w*|\(anonymous namespace\))::", "", name)  # namespaces hide template args
    return name if len(name) <= width else name[: width - 3] + "..."


# --------------------------------------------------------------------------------------------------
# Output


def format_table(rows: list[Row]) -> str:
    cells = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def smem_lines(rows: list[Row]) -> list[str]:
    """The shared-memory failures (kernel, arch, bytes, limit) and the largest Triton row per arch."""
    out = [f"error: {r.details['smem_error']}" for r in rows if r.failed and r.details.get("smem_error")]
    largest: dict[str, Row] = {}
    for r in rows:
        if r.kind == "triton" and r.smem_bytes is not None:
            if r.arch not in largest or r.smem_bytes > largest[r.arch].smem_bytes:
                largest[r.arch] = r
    if largest:
        out.append(
            "largest Triton shared memory per block: "
            + "; ".join(
                f"{a} {r.smem_bytes} B of {smem_limit(a)} B ({r.kernel})"
                for a, r in sorted(largest.items(), key=lambda kv: arch_number(kv[0]))
            )
        )
    return out


def format_markdown(rows: list[Row]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(esc(c) for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--arch",
        nargs="+",
        default=[str(a) for a in ARCHS],
        metavar="CC",
        help="architectures to report (default: 80 89 90 100)",
    )
    ap.add_argument("--only", metavar="NAME", help="only kernels whose name contains NAME")
    ap.add_argument(
        "--spec-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="extra spec module (dotted name or .py path) with TRITON_KERNELS / CUDA_KERNELS; repeatable",
    )
    ap.add_argument(
        "--no-discover",
        action="store_true",
        help="skip the repository's own spec modules (use only --spec-module)",
    )
    ap.add_argument(
        "--cuda-binary",
        metavar="PATH",
        help="inspect this binary instead of shared_kernels._C (archs from its cubins)",
    )
    ap.add_argument("--require-cuda", action="store_true", help="fail when the CUDA kernels are not built")
    ap.add_argument("--no-cuda", action="store_true", help="skip the CUDA part")
    ap.add_argument("--no-triton", action="store_true", help="skip the Triton part")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    ap.add_argument("--markdown", type=Path, metavar="PATH", help="also write a Markdown table")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    archs = sorted({arch_number(a) for a in args.arch})
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise ToolError(f"--arch {bad}: supported archs are {ARCHS}")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    if os.environ.pop("TRITON_INTERPRET", None) not in (None, "", "0"):
        log("note: TRITON_INTERPRET was set; unset it for AOT compilation")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning

    refs = ([] if args.no_discover else discover_modules(REPO_ROOT)) + args.spec_module
    specs = load_specs(refs)
    if args.only:
        specs.triton = [s for s in specs.triton if args.only in s.name]
        specs.cuda = [s for s in specs.cuda if args.only in s.name or args.only in s.match]
    log(
        f"spec modules: {', '.join(specs.sources) or '-'}; "
        f"{len(specs.triton)} triton and {len(specs.cuda)} cuda specs; archs {archs}"
    )

    rows: list[Row] = []
    if not args.no_triton and specs.triton:
        rows += triton_rows(specs.triton, archs, find_cuobjdump(), log)
    binary = None
    if not args.no_cuda:
        if args.cuda_binary:
            if not Path(args.cuda_binary).is_file():
                raise ToolError(f"--cuda-binary {args.cuda_binary}: no such file")
            tool = find_cuobjdump()
            binary = CudaBinary(
                args.cuda_binary, binary_archs(tool, args.cuda_binary), "", {"module": args.cuda_binary}
            )
        else:
            binary = shared_kernels_binary()
            tool = find_cuobjdump() if binary.path else None
        if binary.path:
            log(f"cuda: {binary.path} (built for {','.join(binary.archs) or 'no arch'})")
        else:
            log(f"cuda: {binary.reason}")
        rows += cuda_rows(specs.cuda, binary, archs, args.only, tool)

    failures = [r for r in rows if r.failed]
    cuda_missing = binary is not None and binary.path is None
    wall = time.perf_counter() - t0
    print(format_table(rows) if rows else "(no kernels)")
    print()
    for line in smem_lines(rows):
        print(line)
    summary = f"{len(rows)} rows, {len(failures)} failing"
    if cuda_missing:
        summary += f"; CUDA not built ({binary.reason})"
    elif binary is not None:
        n = len({r.details["function"] for r in rows if r.kind == "cuda" and "function" in r.details})
        summary += f"; CUDA built for {','.join(binary.archs) or 'no arch'}, {n} CUDA kernel(s) listed"
    print(f"{summary}; wall time {wall:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "archs": archs,
            "spec_modules": specs.sources,
            "wall_s": round(wall, 3),
            "cuda": None
            if binary is None
            else {"path": binary.path, "archs": binary.archs, "reason": binary.reason, **binary.info},
            "failures": len(failures),
            "rows": [
                {
                    "kernel": r.kernel,
                    "kind": r.kind,
                    "arch": r.arch,
                    "families": r.families,
                    "regs": r.regs,
                    "spill_bytes": r.spill_bytes,
                    "smem_bytes": r.smem_bytes,
                    "expected": r.expected,
                    "status": r.status,
                    "failed": r.failed,
                    **r.details,
                }
                for r in rows
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(format_markdown(rows))
    if failures:
        return 1
    if args.require_cuda and cuda_missing:
        print(f"error: --require-cuda: {binary.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
