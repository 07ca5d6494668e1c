"""tools/kernel_report.py: parsers on real cuobjdump/PTX text, status rules, and end-to-end runs
(Triton AOT for sm80/sm90 and a small nvcc-built CUDA binary)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kernel_report as kr
import pytest

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TOOL = HERE.parent / "kernel_report.py"
WMMA = "_ZN4demo16wmma_fp16_kernelEPK6__halfS2_Pf"
SCALE = "_ZN4demo12scale_kernelILi4EEEvPffi"


def _run(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(TOOL), "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------------------------- parsers


def test_res_usage_of_a_fatbin_per_arch_and_function():
    res = kr.parse_res_usage((DATA / "res_usage_fatbin.txt").read_text())
    assert set(res) == {(a, f) for a in ("sm_80", "sm_90a") for f in (WMMA, SCALE, "plain_copy")}
    assert res["sm_80", WMMA]["REG"] == 22
    assert res["sm_80", "plain_copy"]["REG"] == 8
    assert res["sm_90a", "plain_copy"]["REG"] == 10
    assert res["sm_90a", SCALE] == {
        "REG": 8,
        "STACK": 0,
        "SHARED": 0,
        "LOCAL": 0,
        "CONSTANT[0]": 544,
        "TEXTURE": 0,
        "SURFACE": 0,
        "SAMPLER": 0,
    }


def test_res_usage_of_a_triton_cubin_uses_the_given_arch():
    res = kr.parse_res_usage((DATA / "res_usage_triton_spill_sm80.txt").read_text(), "sm_80")
    assert res == {
        ("sm_80", "mm"): {
            "REG": 32,
            "STACK": 8392,
            "SHARED": 0,
            "LOCAL": 0,
            "CONSTANT[0]": 416,
            "TEXTURE": 0,
            "SURFACE": 0,
            "SAMPLER": 0,
        }
    }


def test_sass_of_a_fatbin_attributes_instructions_to_functions():
    sass = kr.parse_sass((DATA / "sass_fatbin_sm90a.txt").read_text())
    assert set(sass) == {("sm_90a", f) for f in (WMMA, SCALE, "plain_copy")}
    assert sass["sm_90a", WMMA].families == {"mma"}
    assert sass["sm_90a", SCALE].families == set()
    assert sass["sm_90a", "plain_copy"].families == set()
    assert all(f.instructions > 5 and f.spill_bytes == 0 for f in sass.values())


@pytest.mark.parametrize(
    ("sample", "arch", "family"),
    [
        ("sass_triton_mm_sm80.txt", "sm_80", "mma"),
        ("sass_triton_mm_sm90a.txt", "sm_90a", "wgmma"),
        ("sass_triton_mm_sm100a.txt", "sm_100a", "tcgen05"),
    ],
)
def test_sass_families_of_triton_matmuls(sample, arch, family):
    sass = kr.parse_sass((DATA / sample).read_text())
    assert set(sass) == {(arch, "mm")}
    assert sass[arch, "mm"].families == {family}


def test_spill_bytes_count_each_local_access_width():
    # The excerpt holds 2x STL, 2x STL.64 (stores: 2*4 + 2*8) and 2x each of LDL, LDL.64, LDL.LU,
    # LDL.LU.64 (loads: 2*4 + 2*8 + 2*4 + 2*8), counted by hand.
    f = kr.parse_sass((DATA / "sass_triton_spill_sm80_excerpt.txt").read_text())["sm_80", "mm"]
    assert (f.spill_store_bytes, f.spill_load_bytes) == (24, 48)
    assert f.families == {"mma"}


@pytest.mark.parametrize(
    ("opcode", "family"),
    [
        ("HMMA.16816.F32", "mma"),
        ("HMMA.16816.F32.BF16", "mma"),
        ("IMMA.16832.S8.S8.SAT", "mma"),
        ("QMMA.16832.F32.E4M3.E4M3", "mma"),
        ("OMMA.SP.16864.F32.E2M1.E2M1", "mma"),
        ("DMMA.884", "mma"),
        ("HGMMA.64x128x16.F32", "wgmma"),
        ("IGMMA.64x128x32.S32.S8.S8", "wgmma"),
        ("QGMMA.64x128x32.F32.E4M3.E4M3", "wgmma"),
        ("UTCHMMA", "tcgen05"),
        ("UTCQMMA.2CTA", "tcgen05"),
        ("UTCIMMA", "tcgen05"),
        ("UTCOMMA", "tcgen05"),
        ("HFMA2.MMA", None),
        ("UTCBAR", None),
        ("IMAD.WIDE", None),
        ("LDSM.16.M88.4", None),
        ("WARPGROUP.ARRIVE", None),
    ],
)
def test_sass_family(opcode, family):
    assert kr.sass_family(opcode) == family


def test_predicated_instructions_are_parsed():
    text = "\tcode for sm_90a\n\t\tFunction : k\n" + "\n".join(
        f"        /*00{i}0*/                   {ins} ;   /* 0x0 */"
        for i, ins in enumerate(
            [
                "@P0 HGMMA.64x64x16.F32 R24, gdesc[UR4], R24",
                "@!PT STL.128 [R1], R4",
                "@!UP0 LDL.U8 R2, [R1+0x4]",
                "@P1 BRA 0x100",
            ]
        )
    )
    f = kr.parse_sass(text)["sm_90a", "k"]
    assert (f.families, f.spill_store_bytes, f.spill_load_bytes, f.instructions) == ({"wgmma"}, 16, 1, 4)


def test_ptx_families():
    ptx = """
    .target sm_90a
    // mma.sync.aligned.m16n8k16 in a comment does not count
    wgmma.fence.sync.aligned;
    wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%f1}, %rd1, %rd2, 1, 1, 1, 0, 1;
    @%p7 tcgen05.mma.cta_group::1.kind::f16 [%r1], %rd3, %rd4, %r2, %p1;
    tcgen05.commit.cta_group::1.mbarrier::arrive::one.b64 [%r3];
    """
    assert kr.ptx_families(ptx) == {"wgmma", "tcgen05"}
    assert kr.ptx_families(
        "\tmma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%r1}, {%r2}, {%r3}, {%r4};"
    ) == {"mma"}
    assert kr.ptx_families("wmma.mma.sync.aligned.row.col.m16n16k16.f32.f16 {%f1};") == {"mma"}
    assert kr.ptx_families("ld.global.v4.f32 {%f1}, [%rd1];\nst.global.f32 [%rd2], %f2;") == set()


def test_local_access_bytes():
    assert [
        kr.local_access_bytes(op)
        for op in ("STL", "STL.64", "STL.128", "LDL.LU", "LDL.LU.64", "LDL.U8", "LDL.S16", "LDS.128", "STG.E")
    ] == [4, 8, 16, 4, 8, 1, 2, 0, 0]


def test_judge():
    assert kr.judge({"mma"}, ("mma",), 0, 0) == ("ok", False)
    assert kr.judge({"mma"}, ("wgmma",), 0, 0) == ("MISSING wgmma", True)
    assert kr.judge({"mma", "wgmma"}, ("wgmma",), 0, 0) == ("ok", False)
    assert kr.judge(set(), ("none",), 0, 0) == ("ok", False)
    assert kr.judge({"mma"}, ("none",), 0, 0) == ("UNEXPECTED mma", True)
    assert kr.judge({"mma"}, ("mma",), 8, 0) == ("SPILLS", True)
    assert kr.judge({"mma"}, ("mma",), 8, 8) == ("ok", False)
    assert kr.judge(set(), ("tcgen05",), 4, 0) == ("MISSING tcgen05, SPILLS", True)
    assert kr.judge({"mma"}, None, 0, 0) == ("ok", False)  # arch not declared: not checked


def test_display_names_and_arch_numbers():
    assert kr._short("void demo::scale_kernel<4>(float*, float, int)") == "scale_kernel<4>"
    assert kr._short("f(int (*)(int))") == "f"
    assert [kr.arch_number(a) for a in ("sm_90a", "100a", 89, "80")] == [90, 100, 89, 80]
    with pytest.raises(kr.ToolError):
        kr.arch_number("hopper")


def test_markdown_escapes_pipes():
    row = kr.Row("a|b", "cuda", "sm_80", ["mma"], 10, 0, ["mma"], "ok", False)
    md = kr.format_markdown([row])
    assert md.splitlines()[0] == (
        "| kernel | kind | arch | families | regs | spill B | smem B | expected | status |"
    )
    assert "| a\\|b | cuda | sm_80 | mma | 10 | 0 | - | mma | ok |" in md


# ----------------------------------------------------------------------------------- CUDA rules


def test_cpu_only_build_says_not_built_and_passes_unless_required(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kr, "shared_kernels_binary", lambda: kr.CudaBinary(None, [], "built without CUDA"))
    args = ["--no-discover", "--no-triton", "-q", "--spec-module", str(HERE / "report_kernels.py")]
    assert kr.main(args) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.endswith("not built")]
    assert len(rows) == 2 and rows[0].startswith("demo_wmma") and "CUDA not built" in out
    assert kr.main([*args, "--require-cuda"]) == 1


def test_discovery_finds_the_repository_spec_modules():
    refs = kr.discover_modules(kr.REPO_ROOT)
    assert refs[0] == "shared_kernels.kernel_specs"
    specs = kr.load_specs(refs)  # the declared specs load and validate
    assert specs.sources == refs


def test_invalid_spec_is_rejected(tmp_path):
    bad = tmp_path / "bad_family_specs.py"
    bad.write_text(
        "from shared_kernels.kernel_specs import CudaKernelSpec\n"
        "CUDA_KERNELS = [CudaKernelSpec('x', match='x', expect={90: ('hgmma',)})]\n"
    )
    with pytest.raises(kr.ToolError, match="expects"):
        kr.load_specs([str(bad)])


# -------------------------------------------------------------------------------- end to end


def test_triton_aot_fp16_matmul_sm80_mma_sm90_wgmma(tmp_path):
    out = tmp_path / "kr.json"
    p = _run(
        "--no-discover",
        "--no-cuda",
        "--spec-module",
        "report_kernels.py",
        "--only",
        "test_fp16",
        "--arch",
        "80",
        "90",
        "--json",
        str(out),
        "--markdown",
        str(tmp_path / "kr.md"),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {r["arch"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"sm_80", "sm_90a"}
    assert rows["sm_80"]["sass_families"] == ["mma"] and rows["sm_80"]["ptx_families"] == ["mma"]
    assert rows["sm_90a"]["sass_families"] == ["wgmma"] and rows["sm_90a"]["ptx_families"] == ["wgmma"]
    assert all(r["status"] == "ok" and r["spill_bytes"] == 0 and 0 < r["regs"] <= 255 for r in rows.values())
    assert "wall time" in p.stdout
    assert "| test_fp16_matmul | triton | sm_90a | wgmma |" in (tmp_path / "kr.md").read_text()


def test_expecting_wgmma_on_sm80_fails():
    p = _run("--no-discover", "--no-cuda", "--spec-module", "report_kernels_bad.py", "--only", "bad_wgmma")
    assert p.returncode == 1, p.stdout + p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("bad_wgmma_on_sm80"))
    assert "MISSING wgmma" in line and " mma " in line


@pytest.fixture
def compiled_kernels(monkeypatch):
    """tools/tests/report_kernels*.py imported with real @triton.jit kernels (not the interpreter)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for name in ("report_kernels_bad", "report_kernels"):
        sys.modules.pop(name, None)
    mod = importlib.import_module("report_kernels_bad")
    yield mod
    for name in ("report_kernels_bad", "report_kernels"):
        sys.modules.pop(name, None)


def test_spill_bytes_match_ptxas(compiled_kernels, tmp_path):
    """The SASS-based spill count equals what ptxas -v prints for the same PTX."""
    import triton

    spec = next(s for s in compiled_kernels.TRITON_KERNELS if s.name == "bad_spilling_matmul")
    k = kr.triton_compile(spec, 80)
    (tmp_path / "k.ptx").write_text(k.asm["ptx"])
    (tmp_path / "k.cubin").write_bytes(k.asm["cubin"])
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    log = subprocess.run(
        [
            str(ptxas),
            "-v",
            "-lineinfo",
            "--regAllocOptLevel=2",
            "--gpu-name=sm_80",
            str(tmp_path / "k.ptx"),
            "-o",
            str(tmp_path / "o.cubin"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    import re

    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    assert stores > 0
    tool = kr.find_cuobjdump()
    f = kr.parse_sass(kr.cuobjdump(tool, ["-sass"], str(tmp_path / "k.cubin")), "sm_80")[
        "sm_80", k.metadata.name
    ]
    assert (f.spill_store_bytes, f.spill_load_bytes) == (stores, loads)
    assert kr.judge(f.families, spec.expect[80], f.spill_bytes, 0) == ("SPILLS", True)


@pytest.fixture(scope="module")
def demo_binary(tmp_path_factory):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: cannot build the CUDA fixture")
    out = tmp_path_factory.mktemp("cuda") / "libdemo.so"
    subprocess.run(
        [
            nvcc,
            "-shared",
            "-Xcompiler",
            "-fPIC",
            "-gencode",
            "arch=compute_80,code=sm_80",
            "-gencode",
            "arch=compute_90a,code=sm_90a",
            "-o",
            str(out),
            str(DATA / "demo_kernels.cu"),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    return out


def test_cuda_binary_specs_and_unspecified_kernels(demo_binary, tmp_path):
    out = tmp_path / "kr.json"
    p = _run(
        "--no-discover",
        "--no-triton",
        "--spec-module",
        "report_kernels.py",
        "--cuda-binary",
        str(demo_binary),
        "--json",
        str(out),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())
    assert data["cuda"]["archs"] == ["80", "90a"]
    rows = {(r["kernel"].split(" ")[0], r["arch"]): r for r in data["rows"]}
    for arch in ("sm_80", "sm_90a"):
        assert rows["demo_wmma", arch]["families"] == ["mma"] and rows["demo_wmma", arch]["status"] == "ok"
        assert rows["demo_wmma", arch]["function"] == WMMA
        assert rows["demo_scale", arch]["families"] == [] and rows["demo_scale", arch]["status"] == "ok"
    info = rows["plain_copy", "sm_80,sm_90a"]
    assert info["status"] == "no spec (info)" and not info["failed"]
    assert set(info["per_arch"]) == {"sm_80", "sm_90a"}


def test_cuda_spec_with_no_matching_kernel_fails(demo_binary):
    p = _run(
        "--no-discover",
        "--no-triton",
        "--spec-module",
        "report_kernels_bad.py",
        "--cuda-binary",
        str(demo_binary),
        "--only",
        "demo_missing",
    )
    assert p.returncode == 1
    assert "NOT FOUND" in p.stdout


def test_against_the_installed_shared_kernels_module(tmp_path):
    """The real compiled module, no specs: every kernel in its cubins is listed for information only;
    --require-cuda passes iff CUDA was compiled."""
    import shared_kernels._C as C

    out = tmp_path / "kr.json"
    p = _run("--no-discover", "--no-triton", "--require-cuda", "--json", str(out))
    if not C.cuda_compiled:
        assert p.returncode == 1 and "--require-cuda" in p.stderr and "CUDA not built" in p.stdout
        return
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())
    assert data["cuda"]["archs"] == C.cuda_archs.split(",")
    assert all(r["status"] == "no spec (info)" and not r["failed"] for r in data["rows"])
    raw = subprocess.run(
        [kr.find_cuobjdump(), "-res-usage", C.__file__], capture_output=True, text=True
    ).stdout
    names = {line.split()[1].rstrip(":") for line in raw.splitlines() if line.strip().startswith("Function ")}
    assert {r["function"] for r in data["rows"]} == names


def test_shared_kernels_path_with_a_missing_arch(demo_binary, monkeypatch, capsys):
    """Archs come from shared_kernels._C.cuda_archs; a listed arch without cubins fails the specs."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(
        kr, "shared_kernels_binary", lambda: kr.CudaBinary(str(demo_binary), ["80", "89", "90a"])
    )
    args = ["--no-discover", "--no-triton", "-q", "--spec-module", str(HERE / "report_kernels.py")]
    assert kr.main([*args, "--only", "demo_wmma", "--arch", "80", "90"]) == 0
    out = capsys.readouterr().out
    assert "sm_89" not in out and out.count("demo_wmma [wmma_fp16_kernel]") == 2
    assert kr.main([*args, "--only", "demo_wmma"]) == 1
    assert "NOT FOUND (no sm_89 kernels in the binary)" in capsys.readouterr().out


def test_misnamed_spec_list_is_rejected(tmp_path):
    bad = tmp_path / "misnamed_specs.py"
    bad.write_text("TRITON_SPECS = []\n")
    with pytest.raises(kr.ToolError, match="exposes TRITON_KERNELS"):
        kr.load_specs([str(bad)])
