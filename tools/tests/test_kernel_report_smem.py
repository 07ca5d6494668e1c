"""tools/kernel_report.py: shared memory per block against each arch's opt-in limit.

Triton rows use fake compiled kernels (``triton_compile`` and ``cuobjdump`` replaced), so nothing is
compiled; the CUDA part parses real ``cuobjdump -res-usage`` text of tools/tests/data/static_smem.cu
and, where nvcc exists, runs the report on that file built for sm80/sm89.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import kernel_report as kr
import pytest
from shared_kernels.kernel_specs import CudaKernelSpec, TritonKernelSpec

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TILE = "_Z8tile_sumPKfPf"  # 16384 B of static shared memory
DYN = "_Z7dyn_sumPKfPf"  # dynamic only: 0 B static
HEADER_SMEM = kr.HEADER.index("smem B")

# A Triton matmul's SASS and res-usage, shaped like cuobjdump's output for a Triton cubin.
FAKE_SASS = "\t\tFunction : fake\n        /*0000*/                   HMMA.16816.F32 R4, R8, R12, R4 ;\n"
FAKE_RES = (
    " Function fake:\n  REG:96 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:416 TEXTURE:0 SURFACE:0 SAMPLER:0\n"
)


# ----------------------------------------------------------------------------------------- limits


def test_limits_are_the_programming_guide_opt_in_maxima():
    # 163 KB (cc 8.0), 99 KB (cc 8.6/8.9/12.0), 227 KB (cc 9.0, 10.0): opt-in per-block maxima.
    assert kr.SMEM_LIMITS == {80: 166912, 89: 101376, 90: 232448, 100: 232448}
    assert set(kr.SMEM_LIMITS) == set(kr.ARCHS) == set(kr.SMEM_CLASS)
    assert [kr.smem_limit(a) for a in ("sm_80", "sm_89", "sm_90a", "sm_100a", 89)] == [
        166912,
        101376,
        232448,
        232448,
        101376,
    ]
    with pytest.raises(kr.ToolError, match="no shared-memory limit for 'sm_75'"):
        kr.smem_limit("sm_75")


def test_a_spec_cannot_carry_its_own_limit():
    names = {f.name for f in dataclasses.fields(TritonKernelSpec)} | {
        f.name for f in dataclasses.fields(CudaKernelSpec)
    }
    assert not any("smem" in n or "shared" in n for n in names)
    with pytest.raises(TypeError):
        TritonKernelSpec("x", lambda: None, {}, {}, {}, max_smem_bytes=1 << 20)


def test_judge_checks_shared_memory_only_when_given_a_limit():
    assert kr.judge({"mma"}, ("mma",), 0, 0, 101376, 101376) == ("ok", False)
    assert kr.judge({"mma"}, ("mma",), 0, 0, 101377, 101376) == ("SMEM 101377 > 101376 B", True)
    assert kr.judge(set(), ("mma",), 4, 0, 108544, 101376) == (
        "MISSING mma, SPILLS, SMEM 108544 > 101376 B",
        True,
    )
    assert kr.judge({"mma"}, ("mma",), 0, 0, None, 101376) == ("SMEM UNKNOWN", True)
    assert kr.judge({"mma"}, ("mma",), 0, 0, 10**9) == ("ok", False)  # no limit: not checked


def test_smem_error_names_kernel_arch_bytes_and_limit():
    assert kr.smem_error("k", "sm_89", 101376) is None
    msg = kr.smem_error("sage_bwd_dq", "sm_89", 108544)
    assert msg.startswith("sage_bwd_dq on sm_89: 108544 B of shared memory per block (106.0 KB)")
    assert "exceeds the 101376 B (99 KB) opt-in maximum of sm86/sm89/sm12x" in msg
    assert "232448 B (227 KB)" in kr.smem_error("k", "sm_90a", 232449)
    assert "unknown" in kr.smem_error("k", "sm_80", None)


# ------------------------------------------------------------------------------- Triton (faked)


def _spec(name: str, smem: int, archs=(80, 89)) -> TritonKernelSpec:
    # The fake compiler below reads the shared-memory size from the constexprs.
    return TritonKernelSpec(
        name=name,
        fn=lambda: None,
        signature={},
        constexprs={"SMEM": smem},
        expect=dict.fromkeys(archs, ("mma",)),
        archs=archs,
    )


def _fake_compile(spec, cc):
    target = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
    return SimpleNamespace(
        asm={"ptx": f".target {target}\n", "cubin": b"\0"},
        metadata=SimpleNamespace(name="fake", shared=spec.constexprs["SMEM"]),
    )


def _fake_cuobjdump(tool, args, path):
    return FAKE_SASS if "-sass" in args else FAKE_RES


@pytest.fixture
def fake_triton(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kr, "triton_compile", _fake_compile)
    monkeypatch.setattr(kr, "cuobjdump", _fake_cuobjdump)
    monkeypatch.setattr(kr, "find_cuobjdump", lambda: "cuobjdump")


def test_triton_row_over_the_sm89_limit_fails_and_under_it_passes(fake_triton):
    rows = kr.triton_rows([_spec("fake_bwd", 108544)], [80, 89], "cuobjdump", lambda msg: None)
    by_arch = {r.arch: r for r in rows}
    assert set(by_arch) == {"sm_80", "sm_89"}
    ok, bad = by_arch["sm_80"], by_arch["sm_89"]
    assert (ok.status, ok.failed, ok.smem_bytes, ok.details["smem_error"]) == ("ok", False, 108544, None)
    assert ok.details["smem_limit_bytes"] == 166912 and ok.details["shared_bytes"] == 108544
    assert (bad.status, bad.failed, bad.smem_bytes) == ("SMEM 108544 > 101376 B", True, 108544)
    assert bad.details["smem_error"].startswith("fake_bwd on sm_89: 108544 B")
    assert "108544" in bad.cells() and bad.cells()[HEADER_SMEM] == "108544"


def test_triton_limits_at_each_arch_boundary(fake_triton):
    archs = [80, 89, 90, 100]
    for limit_case, delta, failed in (("at", 0, False), ("over", 1, True)):
        for cc in archs:
            spec = _spec(f"k_{limit_case}_{cc}", kr.SMEM_LIMITS[cc] + delta, archs=(cc,))
            (row,) = kr.triton_rows([spec], archs, "cuobjdump", lambda msg: None)
            assert row.failed is failed, (limit_case, cc, row.status)


def test_triton_row_without_shared_metadata_fails(fake_triton, monkeypatch):
    def no_shared(spec, cc):
        k = _fake_compile(spec, cc)
        del k.metadata.shared
        return k

    monkeypatch.setattr(kr, "triton_compile", no_shared)
    (row,) = kr.triton_rows([_spec("k", 0, archs=(90,))], [90], "cuobjdump", lambda msg: None)
    assert (row.status, row.failed, row.smem_bytes) == ("SMEM UNKNOWN", True, None)
    assert row.cells()[HEADER_SMEM] == "-"


def test_main_exit_status_message_and_outputs(fake_triton, tmp_path, capsys):
    mod = tmp_path / "smem_fake_specs.py"
    mod.write_text(
        "from shared_kernels.kernel_specs import TritonKernelSpec\n"
        "def _s(name, smem):\n"
        "    return TritonKernelSpec(name, lambda: None, {}, {'SMEM': smem}, {80: ('mma',), 89: ('mma',)},\n"
        "                            archs=(80, 89))\n"
        "TRITON_KERNELS = [_s('fits_everywhere', 65536), _s('too_big_for_ada', 122888)]\n"
    )
    base = ["--no-discover", "--no-cuda", "-q", "--spec-module", str(mod), "--arch", "80", "89"]
    try:
        assert kr.main([*base, "--only", "fits_everywhere"]) == 0
        out = capsys.readouterr().out
        assert "error:" not in out
        assert "largest Triton shared memory per block: sm_80 65536 B of 166912 B (fits_everywhere)" in out

        js, md = tmp_path / "kr.json", tmp_path / "kr.md"
        assert kr.main([*base, "--json", str(js), "--markdown", str(md)]) == 1
        out = capsys.readouterr().out
        errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
        assert errors == [
            "error: too_big_for_ada on sm_89: 122888 B of shared memory per block (120.0 KB) exceeds the "
            "101376 B (99 KB) opt-in maximum of sm86/sm89/sm12x (RTX 30xx/40xx/50xx, L4, L40)"
        ]
        assert "sm_89 122888 B of 101376 B (too_big_for_ada)" in out
        rows = {(r["kernel"], r["arch"]): r for r in json.loads(js.read_text())["rows"]}
        assert rows["too_big_for_ada", "sm_89"]["smem_bytes"] == 122888
        assert rows["too_big_for_ada", "sm_89"]["failed"] and not rows["too_big_for_ada", "sm_80"]["failed"]
        assert rows["fits_everywhere", "sm_89"]["smem_limit_bytes"] == 101376
        text = md.read_text()
        assert text.splitlines()[0] == (
            "| kernel | kind | arch | families | regs | spill B | smem B | expected | status |"
        )
        assert (
            "| too_big_for_ada | triton | sm_89 | mma | 96 | 0 | 122888 | mma | SMEM 122888 > 101376 B |"
            in text
        )
    finally:
        sys.modules.pop("smem_fake_specs", None)


# -------------------------------------------------------------------------------------------- CUDA


def test_res_usage_records_static_shared_memory():
    res = kr.parse_res_usage((DATA / "res_usage_static_shared.txt").read_text())
    assert set(res) == {(a, f) for a in ("sm_80", "sm_89") for f in (TILE, DYN)}
    assert all(res[a, TILE]["SHARED"] == 16384 for a in ("sm_80", "sm_89"))  # float tile[4096]
    assert all(res[a, DYN]["SHARED"] == 0 for a in ("sm_80", "sm_89"))  # extern __shared__: dynamic


def _cuda_rows_from_samples(monkeypatch, text: str, specs):
    def fake(tool, args, path):
        if "-res-usage" in args:
            return text
        sm = args[args.index("-arch") + 1]
        return "".join(f"\tcode for {sm}\n\t\tFunction : {f}\n" for f in (TILE, DYN))

    monkeypatch.setattr(kr, "cuobjdump", fake)
    return kr.cuda_rows(specs, kr.CudaBinary("lib.so", ["80", "89"]), [80, 89], None, "cuobjdump")


def test_cuda_rows_report_static_shared_memory(monkeypatch):
    specs = [CudaKernelSpec("tile", match="tile_sum", expect={80: ("none",), 89: ("none",)})]
    rows = _cuda_rows_from_samples(monkeypatch, (DATA / "res_usage_static_shared.txt").read_text(), specs)
    spec_rows = [r for r in rows if r.kernel.startswith("tile ")]
    assert [r.arch for r in spec_rows] == ["sm_80", "sm_89"]
    for r in spec_rows:
        assert (r.status, r.failed, r.smem_bytes) == ("ok", False, 16384)
        assert r.details["static_shared_bytes"] == 16384 and r.cells()[HEADER_SMEM] == "16384+dyn"
    (info,) = [r for r in rows if r.status == "no spec (info)"]
    assert info.smem_bytes == 0 and info.cells()[HEADER_SMEM] == "0+dyn"
    assert info.details["per_arch"]["sm_89"]["static_shared_bytes"] == 0


def test_cuda_static_shared_memory_over_the_limit_fails(monkeypatch):
    text = (DATA / "res_usage_static_shared.txt").read_text().replace("SHARED:16384", "SHARED:110000")
    specs = [CudaKernelSpec("tile", match="tile_sum")]
    rows = {
        r.arch: r for r in _cuda_rows_from_samples(monkeypatch, text, specs) if r.kernel.startswith("tile ")
    }
    assert (rows["sm_80"].status, rows["sm_80"].failed) == ("ok", False)
    assert (rows["sm_89"].status, rows["sm_89"].failed) == ("SMEM 110000 > 101376 B", True)
    assert rows["sm_89"].details["smem_error"].startswith("tile [tile_sum] on sm_89: 110000 B")


def test_cuda_binary_end_to_end_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: cannot build the CUDA fixture")
    lib = tmp_path / "libsmem.so"
    subprocess.run(
        [
            nvcc,
            "-shared",
            "-Xcompiler",
            "-fPIC",
            "-gencode",
            "arch=compute_80,code=sm_80",
            "-gencode",
            "arch=compute_89,code=sm_89",
            "-o",
            str(lib),
            str(DATA / "static_smem.cu"),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    rows = kr.cuda_rows(
        [CudaKernelSpec("tile", match="tile_sum")],
        kr.CudaBinary(str(lib), kr.binary_archs(kr.find_cuobjdump(), str(lib))),
        [80, 89],
        None,
        kr.find_cuobjdump(),
    )
    got = {(r.kernel.split(" ")[0], r.arch): r.smem_bytes for r in rows}
    assert got == {("tile", "sm_80"): 16384, ("tile", "sm_89"): 16384, ("dyn_sum", "sm_80,sm_89"): 0}
    assert not any(r.failed for r in rows)


def test_cuda_row_without_res_usage_is_not_checked_for_shared_memory(monkeypatch):
    rows = _cuda_rows_from_samples(monkeypatch, "", [CudaKernelSpec("tile", match="tile_sum")])
    spec_rows = [r for r in rows if r.kernel.startswith("tile ")]
    assert len(spec_rows) == 2
    assert all(
        (r.status, r.failed, r.smem_bytes, r.cells()[HEADER_SMEM]) == ("ok", False, None, "-")
        for r in spec_rows
    )
